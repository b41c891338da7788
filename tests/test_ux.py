"""What a new user trips over (issue 13): text at a terminal, name typos, image-like -o for
many outputs, one format table, inline divisors, CSV on stdin, leftovers, shell completion."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import gray_image, run, scipy_correlate

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


def at_terminal(*args, cwd=ROOT, timeout=60):
    """Run kernelcli with stdout on a real pseudo-terminal; returns (exit code, stdout, stderr)."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "kernelcli", *map(str, args)], stdout=slave,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError(f"kernelcli {args} printed nothing for {timeout} s")
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not chunk:
                break
            out += chunk
        err = proc.stderr.read()
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
        proc.stderr.close()
    return code, out.decode().replace("\r\n", "\n"), err.decode()


# ---------------------------------------------------------------- 1. text prints at a terminal


@pytest.mark.parametrize("args, expected", [
    (["apply", "-k", "0 1; 2 3", "--padding", "valid", "samples/example-3x3.csv", "-o", "-"], "19,25\n37,43\n"),
    (["pool", "--op", "max", "--size", "2", "samples/example-5x5.csv", "-o", "-"], None),
    (["transpose", "-k", "0 1; 2 3", "samples/example-2x2.csv", "-o", "-"], "0,0,1\n0,4,6\n4,12,9\n"),
    (["apply", "-k", "identity", "samples/example-3x3.csv", "--format", "csv", "-o", "-"], None),
])
def test_csv_results_print_at_a_terminal(args, expected):
    code, out, err = at_terminal(*args)
    assert code == 0, err
    assert err == ""
    rows = [list(map(float, line.split(","))) for line in out.splitlines()]
    assert rows and all(len(r) == len(rows[0]) for r in rows)
    if expected is not None:
        assert out == expected


def test_image_data_is_still_refused_at_a_terminal(tmp_path):
    code, out, err = at_terminal("apply", "-k", "blur", SAMPLES / "camera.png", "-o", "-")
    assert (code, out) == (2, "")
    assert err == "kernelcli: error: refusing to write image data to a terminal; redirect stdout or use -o FILE\n"
    code, out, _ = at_terminal("apply", "-k", "blur", "samples/example-3x3.csv", "--format", "png", "-o", "-")
    assert (code, out) == (2, "")
    code, out, _ = at_terminal("grid", "-k", "blur", "samples/example-3x3.csv", "-o", "-")
    assert (code, out) == (2, "")


# ---------------------------------------------------------------- 2. names, not numbers


@pytest.mark.parametrize("args, message", [
    (["apply", "-k", "Sharpen", "{img}"], "unknown kernel 'Sharpen'; did you mean 'sharpen'?"),
    (["apply", "-k", "sobel_right", "{img}"], "unknown kernel 'sobel_right'; did you mean 'sobel-right'?"),
    (["apply", "-k", "SOBEL_Rght", "{img}"], "unknown kernel 'SOBEL_Rght'; did you mean 'sobel-right'?"),
    (["grid", "-k", "Blur", "{img}", "-o", "{tmp}/g.png"], "unknown kernel 'Blur'; did you mean 'blur'?"),
    (["kernels", "show", "Sharpen"], "unknown kernel 'Sharpen'; did you mean 'sharpen'?"),
    (["apply", "-k", "Gaussian-5x5", "{img}"], "unknown kernel 'Gaussian-5x5'; did you mean 'gaussian-5x5'?"),
    (["apply", "-k", "gausian:2", "{img}"], "unknown kernel generator 'gausian' in 'gausian:2'; did you mean "
     "'gaussian'? known generators: gaussian, box, motion, log, dog, unsharp"),
    (["kernels", "show", "Sharpen@90"], "unknown kernel 'Sharpen'; did you mean 'sharpen'?"),
])
def test_a_spec_shaped_like_a_word_is_a_name_with_a_suggestion(tmp_path, rng, args, message):
    img, _ = gray_image(tmp_path, rng, (6, 6), "in.png")
    result = run(*[a.format(img=img, tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    assert result.stderr == f"kernelcli: error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_a_name_far_from_every_kernel_points_to_the_list(tmp_path, rng):
    img, _ = gray_image(tmp_path, rng, (6, 6), "in.png")
    result = run("apply", "-k", "xyzzy", img)
    assert result.stderr == "kernelcli: error: unknown kernel 'xyzzy'; see 'kernelcli kernels list'\n"


# ---------------------------------------------------------------- inline divisors


@pytest.mark.parametrize("spec, weights", [
    ("1 2 1; 2 4 2; 1 2 1 / 16", np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16),
    ("1 2 1; 2 4 2; 1 2 1 / sum", np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16),
    ("[[1, 1], [1, 2]] / 5", np.array([[1, 1], [1, 2]]) / 5),
    ("[[1, 1], [1, 2]]/5", np.array([[1, 1], [1, 2]]) / 5),
    ("1/2 1/4 / 3/4", np.array([[1 / 2, 1 / 4]]) / 0.75),
    ("0 -1 0; -1 5 -1; 0 -1 0 / -2", np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]) / -2),
    ("1/16 1/8 1/16", np.array([[1 / 16, 1 / 8, 1 / 16]])),  # fractions as cells, no divisor
])
def test_inline_kernels_may_carry_a_divisor(tmp_path, rng, spec, weights):
    x = rng.normal(0, 50, (9, 11))
    np.save(tmp_path / "x.npy", x)
    result = run("apply", "-k", spec, tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), scipy_correlate(x, weights, "replicate"), atol=1e-9)


@pytest.mark.parametrize("spec, message", [
    ("1 -1 / sum", "kernel '1 -1 / sum': the weights sum to 0; '/ sum' cannot normalise them"),
    ("1 2 1 / 0", "kernel '1 2 1 / 0': the divisor is 0"),
    ("1 2 1 / x", "kernel '1 2 1 / x', divisor: 'x' is not a number"),
])
def test_bad_inline_divisors_are_usage_errors(spec, message):
    result = run("kernels", "show", spec)
    assert result.exit_code == 2
    assert result.stderr == f"kernelcli: error: {message}\n"


# ---------------------------------------------------------------- 7. an image name is not a folder


@pytest.mark.parametrize("inputs, flags, why", [
    (["photos"], [], "a folder input gives several outputs"),
    (["photos/a.png", "photos/b.png"], [], "2 inputs give several outputs"),
    (["photos/a.png"], ["-k", "sharpen", "--each"], "--each writes one output per kernel"),
])
def test_an_image_like_output_for_several_outputs_is_a_usage_error(tmp_path, rng, inputs, flags, why):
    photos = tmp_path / "photos"
    photos.mkdir()
    gray_image(photos, rng, (6, 6), "a.png")
    gray_image(photos, rng, (6, 6), "b.png")
    result = run("apply", "-k", "blur", *flags, *[tmp_path / i for i in inputs], "-o", tmp_path / "out9.png")
    assert result.exit_code == 2
    assert result.stderr == (f"kernelcli: error: {tmp_path / 'out9.png'}: -o names one .png file but {why}; "
                             "give -o a folder (e.g. out/) or a single input\n")
    assert not (tmp_path / "out9.png").exists()
    assert sorted(p.name for p in photos.iterdir()) == ["a.png", "b.png"]


def test_a_folder_output_with_a_slash_still_works(tmp_path, rng):
    photos = tmp_path / "photos"
    photos.mkdir()
    gray_image(photos, rng, (6, 6), "a.png")
    result = run("apply", "-k", "blur", photos, "-o", f"{tmp_path}/out.d/")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out.d" / "a.png").is_file()


# ---------------------------------------------------------------- 8. one format table


def test_every_output_extension_is_a_format_word_and_back():
    from kernelcli.cli.common import FormatChoice
    from kernelcli.io.images import ARRAY_FORMATS, FORMATS, format_for_path

    assert set(FormatChoice().choices) == set(FORMATS)
    assert set(FormatChoice(images_only=True).choices) == {e for e, f in FORMATS.items() if f not in ARRAY_FORMATS}
    for ext, fmt in FORMATS.items():
        assert format_for_path(f"x.{ext}") == fmt
    assert "gif" in FORMATS


@pytest.mark.parametrize("command", [["apply", "-k", "blur"], ["pool"], ["upsample"]])
def test_format_gif_works_like_a_gif_name(tmp_path, rng, command):
    img, _ = gray_image(tmp_path, rng, (8, 8), "in.png")
    by_name = run(*command, img, "-o", tmp_path / "a.gif")
    assert by_name.exit_code == 0, by_name.stderr
    by_word = run(*command, img, "--format", "gif", "-o", "-")
    assert by_word.exit_code == 0, by_word.stderr
    assert by_word.stdout_bytes == (tmp_path / "a.gif").read_bytes()
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.format == "GIF"


def test_grid_takes_the_image_formats_of_the_table(tmp_path, rng):
    img, _ = gray_image(tmp_path, rng, (8, 8), "in.png")
    result = run("grid", "-k", "blur", img, "--format", "gif", "-o", "-")
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes[:6] in (b"GIF87a", b"GIF89a")
    refused = run("grid", "-k", "blur", img, "--format", "npy", "-o", "-")
    assert refused.exit_code == 2 and "'npy' is not one of" in refused.stderr


# ---------------------------------------------------------------- 10. nothing left behind


def test_the_readme_setup_output_is_ignored_by_git():
    import re
    import shutil

    from tests.test_readme import setup_commands

    output = re.search(r" -o (\S+)", setup_commands()[0]).group(1)
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    check = subprocess.run(["git", "check-ignore", "-q", output], cwd=ROOT, timeout=30)
    assert check.returncode == 0, f"{output} (written by the README's first command) is not in .gitignore"


# ---------------------------------------------------------------- CSV on stdin


@pytest.mark.parametrize("sep", [",", " ", "\t"])
def test_csv_on_stdin_is_read_like_a_csv_file(rng, sep):
    x = rng.integers(-99, 100, (7, 9)).astype(float) / 4
    text = "\n".join(sep.join(f"{v:g}" for v in row) for row in x) + "\n"
    result = run("apply", "-k", "sobel-right", "-", "-o", "-", input=text.encode())
    assert result.exit_code == 0, result.stderr
    got = np.loadtxt(result.stdout.splitlines(), delimiter=",", ndmin=2)
    np.testing.assert_allclose(got, scipy_correlate(x, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], "replicate"), atol=1e-9)


def test_csv_on_stdin_through_a_real_pipe():
    data = (SAMPLES / "example-3x3.csv").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "kernelcli", "apply", "-k", "0 1; 2 3", "--padding", "valid",
                           "-", "-o", "-"], input=data, capture_output=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"19,25\n37,43\n"


def test_ragged_csv_on_stdin_is_a_one_line_error():
    result = run("apply", "-k", "identity", "-", "-o", "-", input=b"1,2\n3\n")
    assert result.exit_code == 1
    assert result.stderr.startswith("kernelcli: error: -: not a readable csv array: ")
    assert result.stderr.count("\n") == 1


# ---------------------------------------------------------------- shell completion


def complete(shell, words, cword, env=None):
    """Ask kernelcli what the shell would offer, as the shell's own script does."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "_KERNELCLI_COMPLETE": f"{shell}_complete",
               "COMP_WORDS": words, "COMP_CWORD": str(cword), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "kernelcli"], env=environ, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    if shell == "bash":
        return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if line]
    if shell == "zsh":  # type, value, help: three lines per item
        return proc.stdout.splitlines()[1::3]
    return [line.split(",", 1)[1].split("\t")[0] for line in proc.stdout.splitlines()]


def test_bash_completes_kernel_names_borders_and_commands(tmp_path):
    assert complete("bash", "kernelcli apply -k sobel-r", 3) == ["sobel-right"]
    assert set(complete("bash", "kernelcli apply -k sob", 3)) >= {"sobel-left", "sobel-right", "sobel-top", "sobel"}
    assert complete("bash", "kernelcli kernels show gaussian-", 3) == ["gaussian-3x3", "gaussian-5x5"]
    assert complete("bash", "kernelcli grid -k bl", 3) == ["blur"]
    assert "laplacian" in complete("bash", "kernelcli transpose -k lap", 3)
    assert complete("bash", "kernelcli apply --border re", 3) == ["replicate", "reflect"]
    assert complete("bash", "kernelcli apply --border ", 3) == [
        "replicate", "reflect", "symmetric", "circular", "zeros", "constant:"]
    assert complete("bash", "kernelcli learn a b --border c", 5) == ["circular", "constant:"]
    assert complete("bash", "kernelcli animate -k sobel-r", 3) == ["sobel-right"]
    assert complete("bash", "kernelcli ", 1) == ["animate", "apply", "bench", "explain", "grid", "kernels", "learn",
                                                 "pool", "server", "transpose", "upsample"]
    assert complete("bash", "kernelcli kernels ", 2) == ["list", "show"]


def test_completion_includes_the_users_kernel_files(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("version: 1\nkernels:\n  my-edge:\n    description: mine\n    matrix: [[1, -1]]\n")
    other = tmp_path / "other.yaml"
    other.write_text("version: 1\nkernels:\n  my-blob:\n    description: other\n    matrix: [[1]]\n")
    assert complete("bash", "kernelcli apply -k my-", 3, {"KERNELCLI_KERNELS": str(mine)}) == ["my-edge"]
    assert complete("bash", f"kernelcli apply --kernels {other} -k my-", 5) == ["my-blob"]
    config = tmp_path / "config"
    (config / "kernelcli").mkdir(parents=True)
    (config / "kernelcli" / "kernels.yaml").write_text(mine.read_text())
    assert complete("bash", "kernelcli kernels show my-", 3, {"XDG_CONFIG_HOME": str(config)}) == ["my-edge"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("kernels: [")
    assert complete("bash", "kernelcli apply -k sob", 3, {"KERNELCLI_KERNELS": str(broken)}) == []


def test_zsh_and_fish_complete_too():
    assert complete("zsh", "kernelcli apply -k sobel-r", 3) == ["sobel-right"]
    assert complete("fish", "kernelcli apply -k sobel-r", "sobel-r") == ["sobel-right"]
    assert complete("fish", "kernelcli apply --border zer", "zer") == ["zeros"]


def test_readme_tells_how_to_enable_completion_for_each_shell():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Shell completion", 1)[1].split("\n## ", 1)[0]
    for shell in ("bash", "zsh", "fish"):
        line = next(line for line in section.splitlines() if f"_KERNELCLI_COMPLETE={shell}_source kernelcli" in line)
        assert line
        proc = subprocess.run([sys.executable, "-m", "kernelcli"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "_KERNELCLI_COMPLETE": f"{shell}_source"})
        assert proc.returncode == 0 and "_KERNELCLI_COMPLETE" in proc.stdout


# ---------------------------------------------------------------- 5. one array layout


def test_cli_and_api_agree_on_colour_arrays(tmp_path, rng):
    import kernelcli

    rgb = rng.integers(0, 256, (7, 10, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    assert run("apply", "-k", "sharpen", tmp_path / "in.png", "-o", tmp_path / "a.npy").exit_code == 0
    a = np.load(tmp_path / "a.npy")
    assert a.shape == (7, 10, 3)  # H×W×C, like np.asarray(Image.open(...))
    sharpen = [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]
    reference = np.stack([scipy_correlate(rgb[..., c].astype(float), sharpen, "replicate") for c in range(3)], -1)
    np.testing.assert_allclose(a, reference, atol=1e-4)
    np.testing.assert_allclose(kernelcli.apply(rgb.astype(np.float64), "sharpen"), a, atol=1e-4)
    # the case: an array the command wrote, filtered further by the command and by the API
    assert run("apply", "-k", "blur", tmp_path / "a.npy", "-o", tmp_path / "b.npy").exit_code == 0
    by_cli = np.load(tmp_path / "b.npy")
    by_api = kernelcli.apply(np.load(tmp_path / "a.npy"), "blur")
    assert by_cli.shape == by_api.shape == (7, 10, 3)
    np.testing.assert_allclose(by_cli, by_api, atol=1e-4)
    blur = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    np.testing.assert_allclose(by_cli[..., 2], scipy_correlate(a[..., 2], blur, "replicate"), atol=1e-3)


def test_a_numpy_colour_array_reads_as_channels_last(tmp_path, rng):
    x = rng.normal(0, 10, (5, 6, 3))
    np.save(tmp_path / "x.npy", x)
    result = run("apply", "-k", "identity", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), x)
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2, 2)))
    bad = run("apply", "-k", "identity", tmp_path / "bad.npy", "-o", tmp_path / "z.npy")
    assert bad.exit_code == 1 and "array of shape (2, 2, 2, 2); expected H×W or H×W×C" in bad.stderr


# ---------------------------------------------------------------- 4. 16-bit colour stays 16-bit


def save16(path, arr, **tiff_options):
    """A 16-bit PNG (pypng) or TIFF (tifffile) of an H×W×C uint16 array, written without Pillow."""
    if path.suffix == ".png":
        import png

        h, w, c = arr.shape
        with path.open("wb") as fh:
            png.Writer(w, h, greyscale=c < 3, alpha=c in (2, 4), bitdepth=16).write(fh, arr.reshape(h, w * c))
    else:
        import tifffile

        tifffile.imwrite(path, arr, photometric="rgb" if arr.shape[2] >= 3 else "minisblack",
                         extrasamples=["unassalpha"] if arr.shape[2] in (2, 4) else None, **tiff_options)


def load16(path):
    if path.suffix == ".png":
        import png

        w, h, rows, info = png.Reader(bytes=path.read_bytes()).asDirect()
        assert info["bitdepth"] == 16
        return np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, info["planes"])
    import tifffile

    arr = tifffile.imread(path)
    assert arr.dtype == np.uint16
    return arr if arr.ndim == 3 else arr[..., None]


BLUR = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16


@pytest.mark.parametrize("src, dst", [("in.png", "out.png"), ("in.tif", "out.tif"), ("in.png", "out.tif")])
def test_16_bit_rgb_stays_16_bit(tmp_path, rng, src, dst):
    rgb = rng.integers(0, 65536, (9, 13, 3)).astype(np.uint16)  # values that need 16 bits
    save16(tmp_path / src, rgb)
    result = run("apply", "-k", "blur", tmp_path / src, "-o", tmp_path / dst)
    assert result.exit_code == 0, result.stderr
    out = load16(tmp_path / dst)
    assert out.shape == (9, 13, 3)
    expected = np.stack([scipy_correlate(rgb[..., c], BLUR, "replicate") for c in range(3)], -1)
    assert np.abs(out.astype(float) - np.clip(np.round(expected), 0, 65535)).max() <= 1
    assert len(np.unique(out % 256)) > 100  # not 8-bit values scaled up


@pytest.mark.parametrize("name, channels", [("in.png", 2), ("in.png", 4), ("in.tif", 4)])  # Pillow opens no LA16 TIFF
def test_16_bit_colour_with_alpha_keeps_alpha_and_depth(tmp_path, rng, name, channels):
    arr = rng.integers(0, 65536, (8, 7, channels)).astype(np.uint16)
    arr[..., -1] = 40001  # even alpha: premultiplied filtering equals plain filtering
    save16(tmp_path / name, arr)
    out_path = tmp_path / ("out" + Path(name).suffix)
    result = run("apply", "-k", "blur", tmp_path / name, "-o", out_path)
    assert result.exit_code == 0, result.stderr
    out = load16(out_path)
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out[..., -1], arr[..., -1])
    for c in range(channels - 1):
        expected = scipy_correlate(arr[..., c], BLUR, "replicate")
        assert np.abs(out[..., c] - np.round(expected)).max() <= 2


def test_16_bit_colour_keeps_its_icc_profile_and_turns_upright(tmp_path, rng):
    from PIL import Image as PILImage

    rgb = rng.integers(0, 65536, (5, 8, 3)).astype(np.uint16)
    profile = b"\0\0\1\0fake-icc-profile-bytes" * 4
    save16(tmp_path / "in.tif", rgb, iccprofile=profile, extratags=[(274, "H", 1, 6, False)])
    assert run("apply", "-k", "identity", tmp_path / "in.tif", "-o", tmp_path / "out.png").exit_code == 0
    out = load16(tmp_path / "out.png")
    upright = np.dstack([np.asarray(PILImage.fromarray(rgb[..., c]).transpose(PILImage.Transpose.ROTATE_270))
                         for c in range(3)])
    np.testing.assert_array_equal(out, upright)  # orientation 6: turned 90° clockwise
    assert out.shape == (8, 5, 3)
    with PILImage.open(tmp_path / "out.png") as img:
        assert img.info.get("icc_profile") == profile


def test_16_bit_colour_into_an_8_bit_format_is_refused(tmp_path, rng):
    save16(tmp_path / "in.png", rng.integers(0, 65536, (4, 4, 3)).astype(np.uint16))
    result = run("apply", "-k", "blur", tmp_path / "in.png", "-o", tmp_path / "out.jpg")
    assert result.exit_code != 0
    out = tmp_path / "out.jpg"
    assert result.stderr == (f"kernelcli: error: {out}: JPEG holds 8 bits per channel, the result is 16-bit colour; "
                             "write .png, .tif or .ppm to keep 16 bits, or pass --depth 8\n")
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize("name", ["in.png", "in.tif"])
def test_a_cut_16_bit_colour_file_is_a_one_line_error(tmp_path, rng, name):
    save16(tmp_path / name, rng.integers(0, 65536, (30, 30, 3)).astype(np.uint16))
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    result = run("apply", "-k", "blur", tmp_path / name, "-o", tmp_path / "out.png")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"kernelcli: error: {tmp_path / name}: cannot decode 16-bit colour ")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out.png").exists()
