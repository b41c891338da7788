"""What a newcomer still tripped over (issue 22): ImageMagick habits, one shape vocabulary, checks
in the order a user expects, honest refusals, the help text, shell completion. The README's tour
typed in order is in test_readme.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tests.conftest import gray_image, run
from tests.test_ux import complete, load16, save16

ROOT = Path(__file__).resolve().parents[1]


def listing(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes: what a refused command must leave as it was."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def photo(tmp_path, rng):
    """A small RGB photo.png in an otherwise empty folder."""
    Image.fromarray(rng.integers(0, 256, (12, 15, 3)).astype(np.uint8)).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


# ---------------------------------------------------------------- 1. ImageMagick habits


def test_a_missing_last_input_that_looks_like_an_output_asks_for_o(photo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    result = run("apply", "-k", "sharpen", "photo.png", "out.jpg")
    assert result.exit_code == 2
    assert result.stderr == "kernelcli: error: out.jpg: no such file; did you mean -o out.jpg?\n"
    assert listing(tmp_path) == before  # nothing written: not photo-sharpen.png either


def test_every_named_input_is_checked_before_any_work(photo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b.png").write_bytes(photo.read_bytes())
    before = listing(tmp_path)
    result = run("apply", "-k", "blur", "photo.png", "nope.png", "b.png", "-o", "out/")
    assert (result.exit_code, result.stderr) == (2, "kernelcli: error: nope.png: no such file\n")
    result = run("apply", "-k", "blur", "photo.png", "gone.png", "-o", "out/")  # -o given: no hint
    assert (result.exit_code, result.stderr) == (2, "kernelcli: error: gone.png: no such file\n")
    result = run("apply", "-k", "blur", "a.png", "b.png", "c.png")
    assert result.exit_code == 2
    assert result.stderr == ("kernelcli: error: a.png: no such file; c.png: no such file; "
                             "did you mean -o c.png?\n")
    assert listing(tmp_path) == before


def test_a_kernel_given_as_the_first_input_asks_for_k(photo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("apply", "sharpen", "photo.png")
    assert (result.exit_code, result.stderr) == (
        2, "kernelcli: error: missing option '-k' / '--kernel'; did you mean -k sharpen?\n")
    result = run("apply", "gaussian:1.5", "photo.png")
    assert result.stderr.endswith("did you mean -k gaussian:1.5?\n")
    result = run("apply", "0 1; 2 3", "photo.png")
    assert result.stderr.endswith("did you mean -k '0 1; 2 3'?\n")  # quoted as the shell needs it
    result = run("grid", "sharpen", "photo.png", "-o", "g.png")
    assert (result.exit_code, result.stderr) == (
        2, "kernelcli: error: no kernels: give -k KERNEL (repeatable) or --all; did you mean -k sharpen?\n")
    result = run("apply", "photo.png")  # no kernel in sight: no guess
    assert (result.exit_code, result.stderr) == (2, "kernelcli: error: missing option '-k' / '--kernel'\n")
    assert listing(tmp_path) == {Path("photo.png"): photo.read_bytes()}


# ---------------------------------------------------------------- 2. one shape vocabulary


def test_every_size_like_option_reads_n_and_hxw_with_the_one_parser():
    from kernelcli.cli import common, main

    size_like = {}
    for name, command in main.commands.items():
        for param in command.params:
            for option in set(getattr(param, "opts", ())) & {"--size", "--factor"}:
                size_like[f"{name} {option}"] = param.type
    assert set(size_like) == {"pool --size", "learn --size", "explain --size", "animate --size",
                              "upsample --factor", "bench --size"}
    for where, kind in size_like.items():
        assert kind in (common.SHAPE, common.SHAPE_C, common.FACTOR), where
        assert kind.convert("3", None, None)[:2] == (3, 3) and kind.convert("2x5", None, None)[:2] == (2, 5), where
    assert common.SHAPE_C.convert("4x6x3", None, None) == (4, 6, 3)


@pytest.mark.parametrize("args, message", [
    (["upsample", "--factor", "1.5", "IN"], "invalid value for '--factor': '1.5': write N or HxW (e.g. 3 or 3x5); "
     "upsampling factors are whole numbers"),
    (["pool", "--size", "2.5", "IN"], "invalid value for '--size': '2.5': write N or HxW (e.g. 3 or 3x5); sizes are "
     "whole numbers"),
    (["learn", "IN", "IN", "--size", "3x"], "invalid value for '--size': '3x': write N or HxW (e.g. 3 or 3x5)"),
    (["explain", "--size", "0x4", "-k", "blur"], "invalid value for '--size': '0x4': every side must be at least 1"),
    (["explain", "--size", "4x4x3x2", "-k", "blur"],
     "invalid value for '--size': '4x4x3x2': write N, HxW or HxWxC (e.g. 32, 32x48 or 32x48x3)"),
    (["animate", "-k", "1", "--size", "99999999", "--trace"],
     "invalid value for '--size': '99999999': 99999999 is over the limit of 16777216"),
    (["explain", "--size", "8", "-s", "pool 2.5"], "step 'pool 2.5': '2.5': write N or HxW (e.g. 3 or 3x5); sizes "
     "are whole numbers"),
])
def test_a_size_that_is_not_n_or_hxw_is_one_line_naming_the_option(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 6)).astype(np.uint8)).save(tmp_path / "IN", "PNG")
    result = run(*args)
    assert (result.exit_code, result.stderr) == (2, f"kernelcli: error: {message}\n")


def test_n_and_nxn_are_the_same_size_everywhere(tmp_path, rng):
    path, _ = gray_image(tmp_path, rng, (8, 9), "g.png")
    for args in (["pool", "--op", "avg", path, "-o", "-", "--format", "npy"],
                 ["upsample", path, "-o", "-", "--format", "npy"],
                 ["learn", path, path],
                 ["explain", "-k", "blur", "--json"],
                 ["animate", "-k", "1 2; 3 4", "--trace"]):
        option = "--factor" if args[0] == "upsample" else "--size"
        square = run(*args, option, "3")
        assert square.exit_code == 0, (args, square.stderr)
        assert run(*args, option, "3x3").stdout_bytes == square.stdout_bytes, args


def test_a_pooling_window_may_be_hxw(tmp_path, rng):
    x = rng.integers(0, 100, (6, 9)).astype(float)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",")
    result = run("pool", "--op", "max", "--size", "2x3", tmp_path / "x.csv", "-o", "-")
    assert result.exit_code == 0, result.stderr
    got = np.loadtxt(result.stdout.splitlines(), delimiter=",")
    np.testing.assert_array_equal(got, x.reshape(3, 2, 3, 3).max(axis=(1, 3)))  # stride: the window
    result = run("pool", "--op", "avg", "--size", "2x3", "--stride", "1", tmp_path / "x.csv", "-o", "-")
    loop = [[x[i:i + 2, j:j + 3].mean() for j in range(7)] for i in range(5)]
    np.testing.assert_allclose(np.loadtxt(result.stdout.splitlines(), delimiter=","), loop)
    rows = json.loads(run("explain", "--size", "6x9", "-s", "pool 2x3", "--json").stdout)
    assert rows[0]["output"] == [3, 3, 1] and rows[0]["jump"] == [2, 3]
    trace = run("animate", "--pool", "max", "--size", "2x3", tmp_path / "x.csv", "--trace").stdout
    values = np.array([float(line.split("\t")[-1]) for line in trace.splitlines()]).reshape(3, 3)
    np.testing.assert_array_equal(values, x.reshape(3, 2, 3, 3).max(axis=(1, 3)))


def test_upsample_factors_may_differ_per_axis(tmp_path, rng):
    x = rng.random((5, 4))
    np.save(tmp_path / "x.npy", x)
    result = run("upsample", "--factor", "2x3", tmp_path / "x.npy", "-o", tmp_path / "up.npy")
    assert result.exit_code == 0, result.stderr
    ref = ndimage.zoom(x, (2, 3), order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(np.load(tmp_path / "up.npy"), ref, atol=1e-9)
    rows = json.loads(run("explain", "--size", "5x4", "-s", "upsample 2x3", "--json").stdout)
    assert rows[0]["output"] == [10, 12, 1]


def test_the_shared_vocabulary_is_read_by_one_parser_everywhere():
    """-k, -o, --size, --padding, --stride, --dilation, --border, --map, --device, -q/-v and
    --overwrite: the same words, read the same way, in every command that takes them (bench keeps
    its own --device and -q, passed on to the runs it times)."""
    from kernelcli.cli import common
    from kernelcli.kernels.kernel import MAP_MODES

    seen = {}
    for path, command in commands():
        for param in command.params:
            for option in getattr(param, "opts", ()):
                seen.setdefault(option, []).append((" ".join(path), param))
    for where, param in seen["--padding"]:
        assert isinstance(param.type, common.Parsed), where
        assert param.type.convert("valid", None, None) in ("valid", 0) and param.type.convert("2", None, None) == 2
    for option, kind in (("--border", common.BORDER), ("--device", common.DEVICE), ("--max-memory", common.MEMORY)):
        assert {where for where, p in seen[option] if p.type is not kind} <= {"bench"}, option
    for option in ("--stride", "--dilation"):
        assert all(isinstance(p.type, click.IntRange) and p.type.min == 1 for _, p in seen[option]), option
    assert all(tuple(p.type.choices) == MAP_MODES for _, p in seen["--map"])
    assert all(p._custom_shell_complete is common.complete_kernels and p.metavar == "KERNEL" for _, p in seen["-k"])
    assert all(p.metavar == "PATH" for _, p in seen["-o"])
    assert all(p.is_flag for _, p in seen["--overwrite"])
    for option, text in (("-q", common.QUIET_HELP), ("-v", common.VERBOSE_HELP)):
        assert {where for where, p in seen[option] if p.help != text} <= {"bench"}, option


# ---------------------------------------------------------------- 3. checks in the order a user expects


@pytest.mark.parametrize("args, message", [
    (["apply", "-k", "blur", "IN", "-o", "OUT", "--device", "gpu"],
     "invalid value for '--device': unknown device 'gpu'; use auto, cpu, cuda, cuda:N or mps"),
    (["apply", "-k", "blur", "IN", "-o", "OUT", "--device", "cuda:99"], "device 'cuda:99' is not available: "),
    (["apply", "-k", "blur", "MISSING", "-o", "OUT", "--device", "cuda:99"], "device 'cuda:99' is not available: "),
    (["grid", "-k", "blur", "IN", "-o", "OUT", "--device", "gpu"], "invalid value for '--device': unknown device"),
    (["pool", "IN", "-o", "OUT", "--device", "gpu"], "invalid value for '--device': unknown device"),
    (["upsample", "IN", "-o", "OUT", "--device", "cuda:99"], "device 'cuda:99' is not available: "),
    (["transpose", "-k", "1", "IN", "-o", "OUT", "--device", "gpu"], "invalid value for '--device': unknown device"),
    (["apply", "-k", "blur", "IN", "-o", "OUT", "--max-memory", "lots"],
     "invalid value for '--max-memory': 'lots': write a size such as 4G, 512M or 1.5G"),
    (["animate", "-k", "1", "IN", "-o", "OUT", "--max-memory", "lots"], "invalid value for '--max-memory': 'lots'"),
    (["apply", "-k", "blur", "IN", "-o", "OUT", "--padding", "wide"],
     "invalid value for '--padding': 'wide': use same, valid or a number of pixels"),
    (["apply", "-k", "blur", "IN", "-o", "OUT", "--border", "mirror"], "invalid value for '--border': unknown border "),
    (["apply", "-k", "blur", "IN", "-o", "OUT", "--bias", "half"], "invalid value for '--bias': 'half': "),
    (["learn", "IN", "IN", "--save", "Bad Name", "--to", "OUT/lib.yaml"], "--save 'Bad Name': use lowercase words"),
    (["animate", "-k", "blurr", "IN", "-o", "OUT"], "unknown kernel 'blurr'"),
    (["grid", "-k", "blur", "MISSING", "-o", "OUT"], "MISSING: no such file"),  # the inputs, then the output
    (["apply", "-k", "blur", "MISSING", "-o", "OUT"], "MISSING: no such file"),
])
def test_option_values_are_checked_before_any_file(tmp_path, rng, monkeypatch, args, message):
    """An existing output (or a missing input) is reported only after every option's value."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(rng.integers(0, 256, (6, 6)).astype(np.uint8)).save(tmp_path / "IN", "PNG")
    (tmp_path / "OUT").write_bytes(b"keep me")
    before = listing(tmp_path)
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"kernelcli: error: {message}") and result.stderr.count("\n") == 1
    assert listing(tmp_path) == before


# ---------------------------------------------------------------- 4. honest refusals


def test_grid_all_names_the_kernels_it_leaves_out(photo, tmp_path):
    result = run("grid", "--all", photo, "-o", tmp_path / "all.png", "--cell", "16")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ("--all leaves out the multi-channel kernels rgb-to-gray, sepia, rgb-outline, sobel-xy: "
                             "each needs images of a given number of channels; add one with -k NAME\n")
    result = run("grid", "--all", "-k", "sepia", photo, "-o", tmp_path / "all2.png", "--cell", "16")
    assert "rgb-to-gray, rgb-outline, sobel-xy:" in result.stderr  # the one asked for is in
    assert run("grid", "-q", "--all", photo, "-o", tmp_path / "q.png", "--cell", "16").stderr == ""


def commands(group=None, path=()):
    from kernelcli.cli import main

    group = group or main
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        yield (*path, name), command


def test_no_server_is_accepted_after_every_command(photo, tmp_path):
    for path, command in commands():
        assert "--no-server" in [o for p in command.params for o in getattr(p, "opts", ())], path
    result = run("apply", "-k", "blur", photo, "-o", tmp_path / "o.png", "--no-server")
    assert result.exit_code == 0, result.stderr
    assert run("kernels", "show", "--no-server", "blur").exit_code == 0
    assert run("--no-server", "kernels", "list").exit_code == 0


def test_the_client_honours_no_server_anywhere_before_a_double_dash(monkeypatch):
    from kernelcli.server.client import enabled

    monkeypatch.delenv("KERNELCLI_SERVER", raising=False)
    assert enabled(["apply", "-k", "blur", "x.png"])
    assert not enabled(["apply", "-k", "blur", "x.png", "--no-server"])
    assert not enabled(["--no-server", "kernels", "list"])
    assert enabled(["apply", "-k", "blur", "--", "--no-server"])  # a file named --no-server


def test_an_output_name_without_a_format_names_the_choices_and_format_decides(photo, tmp_path):
    result = run("apply", "-k", "blur", photo, "-o", tmp_path / "newout")
    assert result.exit_code == 2
    assert "cannot tell the output format from 'no extension'; use .png, .jpg" in result.stderr
    assert result.stderr.endswith(", or --format\n") and not (tmp_path / "newout").exists()
    for command in (["apply", "-k", "blur"], ["pool"], ["upsample"]):
        name = f"{command[0]}.out"
        result = run(*command, photo, "-o", tmp_path / name, "--format", "gif")
        assert result.exit_code == 0, (command, result.stderr)
        reference = run(*command, photo, "-o", tmp_path / f"{command[0]}.gif")
        assert reference.exit_code == 0
        assert (tmp_path / name).read_bytes()[:6] == b"GIF87a"
        assert (tmp_path / name).read_bytes() == (tmp_path / f"{command[0]}.gif").read_bytes()
    result = run("apply", "-k", "blur", photo, "-o", tmp_path / "x.jpg", "--format", "png")  # names disagree
    assert (result.exit_code, result.stderr) == (
        2, f"kernelcli: error: --format png does not match the output name {tmp_path / 'x.jpg'}\n")


def test_depth_8_lets_16_bit_colour_into_jpeg(tmp_path, rng):
    rgb = rng.integers(0, 65536, (9, 7, 3)).astype(np.uint16)
    save16(tmp_path / "in.png", rgb)
    assert run("apply", "-k", "blur", tmp_path / "in.png", "-o", tmp_path / "out16.png").exit_code == 0
    out16 = load16(tmp_path / "out16.png").astype(float)
    result = run("apply", "-k", "blur", tmp_path / "in.png", "-o", tmp_path / "out8.png", "--depth", "8")
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "out8.png") as img:
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), np.round(out16 * 255 / 65535))
    result = run("apply", "-k", "blur", tmp_path / "in.png", "-o", tmp_path / "out.jpg", "--depth", "8")
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "out.jpg") as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (7, 9))
    result = run("pool", "--size", "1", tmp_path / "in.png", "-o", tmp_path / "p.jpg", "--depth", "8")
    assert result.exit_code == 0, result.stderr


def test_depth_16_makes_16_bits_and_is_refused_where_a_format_has_8(photo, tmp_path):
    result = run("apply", "-k", "blur", photo, "-o", tmp_path / "out16.png", "--depth", "16")
    assert result.exit_code == 0, result.stderr
    assert run("apply", "-k", "blur", photo, "-o", tmp_path / "out8.png").exit_code == 0
    with Image.open(tmp_path / "out8.png") as img:
        eight = np.asarray(img).astype(np.uint32)
    np.testing.assert_array_equal(load16(tmp_path / "out16.png"), eight * 257)  # 255 → 65535
    result = run("apply", "-k", "blur", photo, "-o", tmp_path / "out.jpg", "--depth", "16")
    assert (result.exit_code, result.stderr) == (
        2, f"kernelcli: error: {tmp_path / 'out.jpg'}: JPEG holds 8 bits per channel; 16 bits go into .png, .tif "
        "or .ppm\n")
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize("channels, magic", [(3, b"P6"), (1, b"P5")])
def test_ppm_holds_16_bits(tmp_path, rng, channels, magic):
    arr = rng.integers(0, 65536, (5, 6, channels)).astype(np.uint16)
    save16(tmp_path / "in.png", arr) if channels == 3 else Image.fromarray(arr[..., 0]).save(tmp_path / "in.png")
    result = run("apply", "-k", "identity", tmp_path / "in.png", "-o", tmp_path / "out.ppm")
    assert result.exit_code == 0, result.stderr
    data = (tmp_path / "out.ppm").read_bytes()
    header = magic + b"\n6 5\n65535\n"
    assert data.startswith(header)
    np.testing.assert_array_equal(np.frombuffer(data[len(header):], ">u2").reshape(5, 6, channels), arr)
    result = run("apply", "-k", "identity", tmp_path / "out.ppm", "-o", tmp_path / "back.png")  # read back: 16 bits
    assert result.exit_code == 0, result.stderr
    back = load16(tmp_path / "back.png") if channels == 3 else np.asarray(Image.open(tmp_path / "back.png"))[..., None]
    np.testing.assert_array_equal(back, arr)


def test_full_stdout_exit_code_is_what_the_readme_says(photo, tmp_path):
    env = {**os.environ, "KERNELCLI_SERVER": "off", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "kernelcli", "apply", "-k", "blur", str(photo), "-o", "-"]
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == b"kernelcli: error: stdout: cannot write: No space left on device\n"
    closed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=120,
                            preexec_fn=lambda: os.close(1))
    assert closed.returncode == 2
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    row = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "stdout full" in row["1"] and "stdout closed" in row["2"]
    assert "full only when the data is written (exit 1" in " ".join(readme.split())


# ---------------------------------------------------------------- 5. what the README's examples show


def test_explain_writes_same_padding_as_both_sides():
    rows = json.loads(run("explain", "--size", "6x8", "-k", "sharpen", "-k", "edge-horizontal", "--json").stdout)
    assert rows[0]["formula"]["height"] == "⌊(6 + 2·1 − 1·(3−1) − 1) / 1⌋ + 1 = 6"
    assert rows[1]["formula"]["width"] == "⌊(8 + (0+1) − 1·(2−1) − 1) / 1⌋ + 1 = 8"  # 1x2: one column after


@pytest.mark.parametrize("size", ["224x224x3", "65535x65535x3", "16777216x16777216x16777216"])
def test_explain_table_keeps_80_columns_for_any_size(size):
    from kernelcli.teach.explain import explain, kernel_step, parse_step, render
    from kernelcli.run.runner import load_library
    from kernelcli.compute.shapes import parse_shape

    library = load_library()
    steps = [kernel_step("unsharp:1,2,9", library, dilation=16)] + [parse_step(s, library) for s in (
        "pool 2", "conv 3x3 stride=2", "upsample 2x3", "transpose 3x3 stride=2 padding=1", "conv 2x2", "pool 2x3")]
    text = render(explain(steps, *parse_shape(size, channels=True)), table=True)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert text.splitlines()[-1].startswith(("chain:", "  receptive field"))


def test_help_never_breaks_the_kernel_file_path(tmp_path):
    config = tmp_path / "a-very-long-folder-name-with-hyphens" / "config-home"
    env = {**os.environ, "XDG_CONFIG_HOME": str(config), "COLUMNS": "80", "PYTHONPATH": str(ROOT),
           "KERNELCLI_SERVER": "off"}
    path = str(config / "kernelcli" / "kernels.yaml")
    for command in (["apply"], ["learn"], ["kernels", "list"], ["explain"]):
        proc = subprocess.run([sys.executable, "-m", "kernelcli", *command, "--help"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert any(line.strip() == path for line in proc.stdout.splitlines()), (command, proc.stdout)


# ---------------------------------------------------------------- 6. shell completion


def test_completion_offers_generators_and_devices():
    assert complete("bash", "kernelcli apply -k gau", 3) == ["gaussian-3x3", "gaussian-5x5", "gaussian:"]
    assert complete("bash", "kernelcli apply -k box", 3) == ["box-blur", "box-3x3", "box:"]
    assert complete("bash", "kernelcli grid -k un", 3) == ["unsharp-5x5", "unsharp:"]
    assert complete("bash", "kernelcli apply --device ", 3) == ["auto", "cpu", "cuda", "cuda:", "mps"]
    assert complete("bash", "kernelcli pool --device c", 3) == ["cpu", "cuda", "cuda:"]
    assert complete("bash", "kernelcli transpose -k mot", 3) == ["motion:"]
