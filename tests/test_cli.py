"""The command line: outputs, refusals, exit codes, stdout hygiene, start-up cost."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from tests.conftest import gray_image, run, scipy_correlate, to_8bit
from tests.test_kernels import EXPECTED

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


@pytest.fixture
def gray_png(tmp_path, rng):
    return gray_image(tmp_path, rng, (12, 10), "in.png")


def test_apply_writes_beside_the_input_silently(gray_png):
    path, arr = gray_png
    result = run("apply", "-k", "sharpen", path)
    assert result.exit_code == 0, result.output
    out = path.with_name("in-sharpen.png")
    assert result.stdout == ""
    assert result.stderr == ""  # one file: silent on success unless -v (issue 13)
    ref = to_8bit(scipy_correlate(arr.astype(float), EXPECTED["sharpen"], "replicate"))
    np.testing.assert_array_equal(np.asarray(Image.open(out)), ref)


def test_existing_output_is_refused_before_work_and_kept(gray_png):
    path, _ = gray_png
    out = path.with_name("in-sharpen.png")
    out.write_bytes(b"precious")
    result = run("apply", "-k", "sharpen", path)
    assert result.exit_code == 2
    assert result.stderr == f"kernelcli: error: {out}: already exists; pass --overwrite to replace it or --skip-existing to keep it\n"
    assert out.read_bytes() == b"precious"
    assert run("apply", "-k", "sharpen", path, "--overwrite").exit_code == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_output_equal_to_input_is_refused(gray_png):
    path, _ = gray_png
    before = path.read_bytes()
    result = run("apply", "-k", "blur", path, "-o", path, "--overwrite")
    assert result.exit_code == 2
    assert "is an input; refusing to overwrite it" in result.stderr
    assert path.read_bytes() == before


def test_chained_kernels_name_and_value(gray_png):
    path, arr = gray_png
    assert run("apply", "-k", "blur", "-k", "outline", path).exit_code == 0
    step = to_8bit(scipy_correlate(arr.astype(float), EXPECTED["blur"], "replicate"))
    ref = to_8bit(scipy_correlate(step.astype(float), EXPECTED["outline"], "replicate"))
    np.testing.assert_array_equal(np.asarray(Image.open(path.with_name("in-blur+outline.png"))), ref)


def test_unknown_kernel_is_a_usage_error_with_suggestion(gray_png):
    result = run("apply", "-k", "sharpn", gray_png[0])
    assert result.exit_code == 2
    assert result.stderr == "kernelcli: error: unknown kernel 'sharpn'; did you mean 'sharpen'?\n"


@pytest.mark.parametrize("args, code, message", [
    (["apply", "-k", "blur", "missing.png"], 2, "missing.png: no such file"),
    (["apply", "-k", "blur", "{tmp}/empty"], 2, "no input images found in"),
    (["apply", "-k", "blur", "--border", "mirror", "{img}"], 2, "unknown border 'mirror'"),
    (["apply", "-k", "blur", "--padding", "lots", "{img}"], 2, "--padding': 'lots'"),
    (["apply", "-k", "blur", "--device", "cuda:7", "{img}"], 2, "device 'cuda:7' is not available"),
    (["apply", "-k", "blur", "--bias", "half", "{img}"], 2, "'half': write a fraction"),
    (["apply", "-k", "blur", "{img}", "-o", "{tmp}/x.xyz"], 2, "cannot tell the output format"),
    (["apply", "-k", "1,2;3", "{img}"], 2, "row 2 has 1 values"),
    (["apply", "-k", "blur", "{text}"], 1, "not a recognised image"),
])
def test_error_exit_codes(tmp_path, gray_png, args, code, message):
    text = tmp_path / "fake.jpg"
    text.write_text("hello")
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path, img=gray_png[0], text=text) for a in args]
    result = run(*args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stdout == ""


def test_bad_kernel_file_exit_2(tmp_path, gray_png):
    bad = tmp_path / "k.yaml"
    bad.write_text("kernels:\n  a:\n    description: d\n    matrix: [[1, yes]]\n")
    result = run("apply", "--kernels", bad, "-k", "a", gray_png[0])
    assert result.exit_code == 2
    assert f"{bad}:4: kernel 'a', row 1, column 2: 'yes' is a boolean" in result.stderr


def test_stdin_to_stdout_png(gray_png):
    path, arr = gray_png
    result = run("apply", "-k", "emboss", "-", "-o", "-", input=path.read_bytes())
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    ref = to_8bit(scipy_correlate(arr.astype(float), EXPECTED["emboss"], "replicate"))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(result.stdout_bytes))), ref)


def test_stdout_format_option(gray_png):
    result = run("apply", "-k", "blur", "-", "-o", "-", "--format", "jpg", input=gray_png[0].read_bytes())
    assert result.stdout_bytes[:2] == b"\xff\xd8"


def test_arrays_in_and_out_reproduce_the_worked_example():
    result = run("apply", "-k", "0 1; 2 3", "--padding", "valid", SAMPLES / "example-3x3.csv", "-o", "-")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "19,25\n37,43\n"


def test_npy_output_is_raw_float(tmp_path, gray_png):
    out = tmp_path / "edges.npy"
    assert run("apply", "-k", "sobel-right", gray_png[0], "-o", out).exit_code == 0
    ref = scipy_correlate(gray_png[1].astype(float), EXPECTED["sobel-right"], "replicate")
    np.testing.assert_allclose(np.load(out), ref, atol=1e-4)
    assert np.load(out).min() < 0  # nothing was clipped


def test_stats_go_to_stderr(gray_png, tmp_path):
    result = run("apply", "-k", "outline", "--stats", gray_png[0], "-o", tmp_path / "o.png")
    assert result.exit_code == 0
    assert "outline: min " in result.stderr and "clipped" in result.stderr
    assert result.stdout == ""


def test_kernels_list_plain_and_json():
    plain = run("kernels", "list")
    assert plain.exit_code == 0
    names = [line.split("\t")[0] for line in plain.stdout.splitlines()]
    assert set(EXPECTED) <= set(names)
    data = json.loads(run("kernels", "list", "--json").stdout)
    sharpen = next(d for d in data if d["name"] == "sharpen")
    assert sharpen["matrix"] == EXPECTED["sharpen"] and sharpen["description"]


def test_kernels_show_json_gives_effective_weights():
    data = json.loads(run("kernels", "show", "blur", "--json").stdout)
    assert data["matrix"] == (np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16).tolist()
    assert data["separable"] is True and data["sum"] == 1.0


def test_kernels_show_reports_override(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("kernels:\n  blur:\n    description: my blur\n    matrix: [[1, 1]]\n    divisor: 2\n")
    result = run("kernels", "show", "blur", "--kernels", f)
    assert "(overrides 'blur' from " in result.stdout
    assert "my blur" in result.stdout


def test_user_kernels_from_environment(tmp_path, monkeypatch, gray_png):
    f = tmp_path / "env.yaml"
    f.write_text("kernels:\n  double:\n    description: x2\n    matrix: [[2]]\n")
    monkeypatch.setenv("KERNELCLI_KERNELS", str(f))
    assert "double\t1x1\tx2" in run("kernels", "list").stdout


@pytest.mark.parametrize("command", [(), ("apply",), ("kernels",), ("kernels", "list"), ("kernels", "show")])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.stdout and len(result.stdout) > 200


@pytest.mark.parametrize("argv", [["--help"], ["kernels", "list"], ["kernels", "show", "sobel-right"]])
def test_fast_commands_do_not_import_torch(argv):
    code = (
        "import sys; from kernelcli.cli import main\n"
        f"try: main({argv!r})\nexcept SystemExit: pass\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr.strip().endswith("False")


def test_version():
    assert run("--version").stdout.startswith("kernelcli, version ")
