"""The small ones of issue 18 (item 8): each a one-line message with the documented exit code, or
the behaviour the README states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
CAMERA = SAMPLES / "camera.png"


def test_a_constant_border_beyond_float32_is_refused(tmp_path):
    result = run("apply", "-k", "blur", CAMERA, "-o", tmp_path / "o.png", "--border", "constant:3.5e38")
    assert result.exit_code == 2
    assert result.stderr == "kernelcli: error: border value 3.5e+38 is beyond what float32 arithmetic holds (±3.403e+38)\n"
    assert not (tmp_path / "o.png").exists()
    result = run("apply", "-k", "blur", CAMERA, "-o", tmp_path / "o.png", "--border", "constant:1e30")
    assert result.exit_code == 0, result.stderr  # large values float32 holds still work (and clip to white)
    assert (np.asarray(Image.open(tmp_path / "o.png"))[0] == 255).all()


def test_a_deleted_current_folder_is_one_line(tmp_path):
    script = (f"mkdir gone && cd gone && rmdir ../gone && exec {sys.executable} -m kernelcli apply -k blur "
              f"{CAMERA} -o out.png")
    proc = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KERNELCLI_SERVER": "off", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == ("kernelcli: error: the current folder no longer exists (deleted while in use?); cd to an "
                           "existing folder and run again\n")


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
@pytest.mark.parametrize("ext", ["gif", "png", "webp", "tif", "tga"])
def test_transparency_survives_every_format_that_holds_it(tmp_path, mode, ext):
    pixels = np.full((6, 8, len(mode)), 180, np.uint8)
    pixels[..., -1] = 255
    pixels[:3, :, -1] = 0  # the top half transparent (GIF holds on/off only)
    Image.fromarray(pixels, mode).save(tmp_path / "in.png")
    result = run("apply", "-k", "identity", tmp_path / "in.png", "-o", tmp_path / f"out.{ext}")
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / f"out.{ext}") as out:
        alpha = np.asarray(out.convert("RGBA"))[..., 3]
    assert (alpha[:3] == 0).all() and (alpha[3:] == 255).all()


def test_scale_and_bias_apply_to_array_outputs(tmp_path):
    csv = SAMPLES / "example-3x3.csv"
    result = run("apply", "-k", "identity", csv, "-o", tmp_path / "o.csv", "--scale", "0.5", "--bias", "10")
    assert result.exit_code == 0, result.stderr
    expected = np.loadtxt(csv, delimiter=",") * 0.5 + 10  # arrays: the bias is added as it is
    assert np.array_equal(np.loadtxt(tmp_path / "o.csv", delimiter=","), expected)
    result = run("apply", "-k", "identity", CAMERA, "-o", tmp_path / "o.npy", "--scale", "2", "--bias", "10%")
    assert result.exit_code == 0, result.stderr
    gray = np.asarray(Image.open(CAMERA).convert("L"), np.float64)
    assert np.allclose(np.load(tmp_path / "o.npy"), gray * 2 + 0.1 * 255)  # an 8-bit input: 10% of 255


def test_a_map_for_an_array_output_is_refused_before_any_work(tmp_path):
    result = run("apply", "-k", "blur", CAMERA, "-o", tmp_path / "o.npy", "--map", "normalize")
    assert result.exit_code == 2
    assert result.stderr == (f"kernelcli: error: {tmp_path / 'o.npy'}: .npy keeps the raw values; --map normalize fits "
                             "results into an image's range (write an image format, or leave out --map)\n")
    assert not (tmp_path / "o.npy").exists()


def test_a_zero_kernel_is_not_described_as_all_pass():
    result = run("kernels", "show", "0 0 0; 0 0 0; 0 0 0", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["frequency"]["class"] == "zero"
    result = run("kernels", "show", "0 0 0; 0 0 0; 0 0 0")
    assert "frequency response: zero, passes nothing" in result.stdout and "all-pass" not in result.stdout


def test_a_report_name_too_long_is_refused_with_the_plan(tmp_path):
    (tmp_path / "in").mkdir()
    Image.open(CAMERA).save(tmp_path / "in" / "a.png")
    report = tmp_path / ("r" * 300 + ".jsonl")
    result = run("apply", "-k", "blur", tmp_path / "in", "-o", tmp_path / "out", "--report", report)
    assert result.exit_code == 2
    assert result.stderr == (f"kernelcli: error: --report {report}: cannot write here: a name of 306 bytes, over the "
                             "255 this file system allows\n")
    assert not (tmp_path / "out").exists()  # nothing written before the refusal


def test_cannot_write_here_names_an_output_of_the_run(tmp_path):
    (tmp_path / "in").mkdir()
    Image.open(CAMERA).save(tmp_path / "in" / "a.png")
    (tmp_path / "afile").write_text("a file, not a folder")
    result = run("apply", "-k", "blur", tmp_path / "in", "-o", f"{tmp_path / 'afile'}/sub/")
    assert result.exit_code == 2
    assert result.stderr == (f"kernelcli: error: {tmp_path / 'afile' / 'sub' / 'a.png'}: cannot write here: "
                             f"{tmp_path / 'afile'} is not a folder\n")


def test_a_name_replaced_by_a_later_library_says_so_once_per_run(tmp_path):
    library = tmp_path / "mine.yaml"
    library.write_text("version: 1\nkernels:\n  myblur:\n    description: mine\n    matrix: [[1, 1, 1]]\n"
                       "    divisor: 3\n    aliases: [sharpen]\n")
    result = run("apply", "--kernels", library, "-k", "sharpen", "-k", "sharpen", "-k", "blur", CAMERA,
                 "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.stderr
    shipped = ROOT / "kernelcli" / "kernels" / "kernels.yaml"
    assert result.stderr == (f"kernelcli: warning: kernel 'sharpen' is 'myblur' from {library}, which replaces "
                             f"'sharpen' from {shipped}\n")
