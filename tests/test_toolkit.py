"""The convolution toolkit: generated and combined kernels, multi-channel weights, pooling,
transposed convolution, upsampling, learning kernels, explaining shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import kernelcli
from kernelcli.compute.convolve import Geometry, correlate
from kernelcli.io.images import Raster
from kernelcli.kernels.analysis import describe

from tests.conftest import run, scipy_correlate
from tests.test_kernels import EXPECTED

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def csv_out(result) -> np.ndarray:
    assert result.exit_code == 0, result.stderr
    return np.loadtxt(result.stdout.splitlines(), delimiter=",", ndmin=2)


# ---------------------------------------------------------------- generated kernels


def test_gaussian_generator(library):
    k = library.resolve("gaussian:1.5")
    assert k.shape == (11, 11)  # 2*ceil(4.5)+1
    x = np.arange(11) - 5
    g = np.exp(-x**2 / (2 * 1.5**2))
    np.testing.assert_allclose(k.weights, np.outer(g, g) / np.outer(g, g).sum(), atol=1e-15)
    assert library.resolve("gaussian:2,7").shape == (7, 7)


def test_box_motion_log_dog_unsharp(library):
    np.testing.assert_allclose(library.resolve("box:4").weights, np.full((4, 4), 1 / 16))
    horizontal = library.resolve("motion:5,0").weights
    assert horizontal.sum() == pytest.approx(1)
    np.testing.assert_allclose(horizontal[2], np.full(5, 0.2), atol=1e-12)  # the middle row only
    vertical = library.resolve("motion:5,90").weights
    np.testing.assert_allclose(vertical, horizontal.T, atol=1e-12)
    log = library.resolve("log:1.4").weights
    assert abs(log.sum()) < 1e-12 and log[log.shape[0] // 2, log.shape[1] // 2] > 0
    dog = library.resolve("dog:1,2").weights
    assert abs(dog.sum()) < 1e-9 and dog.shape == (13, 13)
    unsharp = library.resolve("unsharp:1,0.5").weights
    assert unsharp.sum() == pytest.approx(1) and unsharp[3, 3] > 1


@pytest.mark.parametrize("spec, expected", [
    ("sobel-right@90", "sobel-top"), ("sobel-right@180", "sobel-left"), ("sobel-right@270", "sobel-bottom"),
    ("sobel-top@90", "sobel-left"), ("sobel-right@360", "sobel-right"),
])
def test_rotations_by_quarter_turns(library, spec, expected):
    np.testing.assert_array_equal(library.resolve(spec).weights, EXPECTED[expected])


def test_rotation_by_45_moves_the_ring(library):
    np.testing.assert_array_equal(library.resolve("sobel-right@45").weights, [[0, 1, 2], [-1, 0, 1], [-2, -1, 0]])
    with pytest.raises(kernelcli.KernelFileError, match="45-degree turns need a 3x3 kernel"):
        library.resolve("gaussian-5x5@45")


@pytest.mark.parametrize("spec, message", [
    ("gaussian:0", "sigma must be > 0"), ("gaussian:30", "over the limit"), ("box:2.5", "whole number"),
    ("motion:5", "expected motion:LENGTH,ANGLE"), ("sharpen@33", "multiples of 45"),
])
def test_generator_errors(library, spec, message):
    with pytest.raises(kernelcli.KernelFileError, match=message):
        library.resolve(spec)


# ---------------------------------------------------------------- algorithms


@pytest.mark.parametrize("method", ["separable", "fft"])
@pytest.mark.parametrize("geo", [Geometry(), Geometry("reflect", stride=2), Geometry("zeros", padding=3, dilation=2),
                                 Geometry(padding="valid")])
def test_fast_paths_equal_direct(rng, method, geo):
    x = torch.from_numpy(rng.random((1, 2, 40, 33)))
    w = np.outer(rng.random(9), rng.random(9)) if method == "separable" else rng.normal(size=(13, 11))
    direct = correlate(x, w, geo=geo, method="direct")
    fast = correlate(x, w, geo=geo, method=method)
    assert fast.shape == direct.shape
    np.testing.assert_allclose(fast.numpy(), direct.numpy(), atol=1e-9)


def test_auto_picks_by_size(library):
    from kernelcli.compute.convolve import choose_method

    assert choose_method(library.get("sharpen").weights) == "direct"
    assert choose_method(library.resolve("gaussian:3").weights) == "separable"
    assert choose_method(library.resolve("log:3").weights) == "fft"


def test_large_generated_kernel_matches_scipy(library, rng):
    img = rng.integers(0, 256, (30, 40)).astype(np.float64)
    for spec in ("gaussian:2.5", "log:2"):
        w = library.resolve(spec).weights
        np.testing.assert_allclose(kernelcli.apply(img, spec, border="reflect"), scipy_correlate(img, w, "reflect"),
                                   atol=1e-8)


# ---------------------------------------------------------------- combined kernels


def test_sobel_magnitude_and_compass(library, rng):
    img = rng.integers(0, 256, (12, 14)).astype(np.float64)
    gx = scipy_correlate(img, EXPECTED["sobel-right"], "replicate")
    gy = scipy_correlate(img, EXPECTED["sobel-bottom"], "replicate")
    np.testing.assert_allclose(kernelcli.apply(img, "sobel"), np.hypot(gx, gy), atol=1e-9)
    compass = [np.rot90(EXPECTED["sobel-right"], q) for q in range(4)]
    diag = np.array([[0, 1, 2], [-1, 0, 1], [-2, -1, 0]])
    compass += [np.rot90(diag, q) for q in range(4)]
    ref = np.max([np.abs(scipy_correlate(img, c, "replicate")) for c in compass], axis=0)
    np.testing.assert_allclose(kernelcli.apply(img, "compass"), ref, atol=1e-9)
    assert describe(library.get("sobel"))["kind"] == "combined"


def test_combined_kernel_in_a_user_file(tmp_path, rng):
    f = tmp_path / "k.yaml"
    f.write_text("kernels:\n  both:\n    description: d\n    combine: sum\n    of: [sobel-left, sobel-right]\n")
    lib = kernelcli.load_library(f)
    img = rng.random((6, 6))
    np.testing.assert_allclose(kernelcli.apply(img, "both", library=lib), np.zeros((6, 6)), atol=1e-12)
    f.write_text("kernels:\n  bad:\n    description: d\n    combine: sum\n    of: [sobel-left, gaussian-5x5]\n")
    with pytest.raises(kernelcli.KernelFileError, match="parts must share one size"):
        kernelcli.load_library(f)


# ---------------------------------------------------------------- multi-channel kernels


def test_channel_mixers(rng):
    rgb = rng.integers(0, 256, (5, 6, 3)).astype(np.float64)
    np.testing.assert_allclose(kernelcli.apply(rgb, "rgb-to-gray"), rgb @ [0.299, 0.587, 0.114], atol=1e-9)
    sepia = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
    np.testing.assert_allclose(kernelcli.apply(rgb, "sepia"), rgb @ sepia.T, atol=1e-9)
    outline = sum(scipy_correlate(rgb[..., c], EXPECTED["outline"], "replicate") for c in range(3)) / 3
    np.testing.assert_allclose(kernelcli.apply(rgb, "rgb-outline"), outline, atol=1e-9)


def test_bank_writes_feature_maps_to_npy(tmp_path, rng):
    gray = rng.integers(0, 256, (8, 9)).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert run("apply", "-k", "sobel-xy", tmp_path / "g.png", "-o", tmp_path / "maps.npy").exit_code == 0
    maps = np.load(tmp_path / "maps.npy")
    assert maps.shape == (8, 9, 2)  # H×W×C, as every numpy array kernelcli reads and writes
    np.testing.assert_allclose(maps[..., 1], scipy_correlate(gray.astype(float), EXPECTED["sobel-bottom"], "replicate"), atol=1e-4)
    result = run("apply", "-k", "sobel-xy", tmp_path / "g.png", "-o", tmp_path / "maps.png")
    assert result.exit_code == 1 and "2 channels" in result.stderr


def test_channel_count_mismatch_is_explained(tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (4, 4)).astype(np.uint8)).save(tmp_path / "g.png")
    result = run("apply", "-k", "sepia", tmp_path / "g.png")
    assert result.exit_code == 1
    assert "kernel 'sepia' expects 3 input channel(s); the image has 1" in result.stderr


# ---------------------------------------------------------------- pooling, transposed convolution, upsampling


def window_loop(x, k, s, fn):
    oh, ow = (x.shape[0] - k) // s + 1, (x.shape[1] - k) // s + 1
    return np.array([[fn(x[i * s:i * s + k, j * s:j * s + k]) for j in range(ow)] for i in range(oh)])


@pytest.mark.parametrize("op, fn", [("max", np.max), ("avg", np.mean)])
def test_pool_the_5x5_example(op, fn):
    x = np.arange(25, dtype=float).reshape(5, 5)
    got = csv_out(run("pool", "--op", op, "--size", "2", SAMPLES / "example-5x5.csv", "-o", "-"))
    np.testing.assert_array_equal(got, window_loop(x, 2, 2, fn))
    got = csv_out(run("pool", "--op", op, "--size", "3", "--stride", "1", SAMPLES / "example-5x5.csv", "-o", "-"))
    np.testing.assert_array_equal(got, window_loop(x, 3, 1, fn))


def test_max_pool_of_an_image_is_exact(tmp_path, rng):
    arr = rng.integers(0, 256, (9, 8, 3)).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "c.png")
    assert run("pool", "--size", "2", tmp_path / "c.png", "-o", tmp_path / "p.png").exit_code == 0
    got = np.asarray(Image.open(tmp_path / "p.png"))
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], window_loop(arr[..., c], 2, 2, np.max))


def scatter_loop(x, k, s):
    out = np.zeros(((x.shape[0] - 1) * s + k.shape[0], (x.shape[1] - 1) * s + k.shape[1]))
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i * s:i * s + k.shape[0], j * s:j * s + k.shape[1]] += x[i, j] * k
    return out


def test_transpose_the_material_examples(tmp_path):
    src = tmp_path / "x.csv"
    src.write_text("0,1\n2,3\n")
    k = np.array([[0, 1], [2, 3]], float)
    x = np.array([[0, 1], [2, 3]], float)
    np.testing.assert_array_equal(csv_out(run("transpose", "-k", "0 1; 2 3", src, "-o", "-")), [[0, 0, 1], [0, 4, 6], [4, 12, 9]])
    np.testing.assert_array_equal(csv_out(run("transpose", "-k", "0 1; 2 3", "--padding", "1", src, "-o", "-")), [[4]])
    got = csv_out(run("transpose", "-k", "0 1; 2 3", "--stride", "2", src, "-o", "-"))
    assert got.shape == (4, 4)
    np.testing.assert_array_equal(got, scatter_loop(x, k, 2))


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_upsample_equals_bilinear_interpolation(rng, factor):
    from kernelcli.teach.toolkit import upsample

    x = rng.random((1, 6, 5))
    out = upsample(Raster(x, maxval=None), factor).pixels[0]
    ref = ndimage.zoom(x[0], factor, order=1, grid_mode=True, mode="nearest")
    assert out.shape == (6 * factor, 5 * factor)
    np.testing.assert_allclose(out, ref, atol=1e-9)
    flat = upsample(Raster(np.full((1, 4, 4), 7.0), maxval=None), factor).pixels
    np.testing.assert_allclose(flat, 7.0)  # no dark frame at the edges


def test_upsample_image_cli(tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)).save(tmp_path / "s.png")
    assert run("upsample", "--factor", "3", tmp_path / "s.png").exit_code == 0
    with Image.open(tmp_path / "s-x3.png") as im:
        assert im.size == (21, 15)


# ---------------------------------------------------------------- learning


PLAIN_3X3 = [n for n, w in EXPECTED.items() if np.shape(w) == (3, 3)]


@pytest.mark.parametrize("name", PLAIN_3X3)
def test_learn_recovers_every_shipped_3x3_kernel(tmp_path, name):
    target = tmp_path / "t.npy"
    assert run("apply", "-k", name, SAMPLES / "camera.png", "-o", target).exit_code == 0
    result = run("learn", SAMPLES / "camera.png", target, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    np.testing.assert_allclose(data["kernels"][0], np.asarray(EXPECTED[name], float), atol=1e-3)
    assert data["explained"] is True


def test_learn_the_band_edge_kernel(tmp_path):
    target = tmp_path / "y.csv"
    assert run("apply", "-k", "1, -1", "--padding", "valid", SAMPLES / "band-6x8.csv", "-o", target).exit_code == 0
    result = run("learn", SAMPLES / "band-6x8.csv", target, "--size", "1x2", "--padding", "valid")
    assert result.exit_code == 0, result.stderr
    assert [float(v) for v in result.stdout.split()] == pytest.approx([1, -1], abs=1e-9)


def test_learn_from_clipped_8bit_target_and_rgb(tmp_path):
    target = tmp_path / "t.png"
    assert run("apply", "-k", "emboss", SAMPLES / "coffee.jpg", "-o", target).exit_code == 0
    data = json.loads(run("learn", SAMPLES / "coffee.jpg", target, "--json").stdout)
    np.testing.assert_allclose(data["kernels"][0], EXPECTED["emboss"], atol=2e-2)
    per = json.loads(run("learn", SAMPLES / "coffee.jpg", target, "--json", "--per-channel").stdout)
    assert len(per["kernels"]) == 3


def test_learn_says_when_no_kernel_explains_the_pair(tmp_path, rng):
    a = rng.integers(0, 256, (20, 20)).astype(np.uint8)
    b = rng.integers(0, 256, (20, 20)).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    result = run("learn", tmp_path / "a.png", tmp_path / "b.png")
    assert result.exit_code == 0
    assert "is not explained by a 3x3 kernel" in result.stderr


def test_learn_size_mismatch(tmp_path):
    result = run("learn", SAMPLES / "band-6x8.csv", SAMPLES / "example-3x3.csv")
    assert result.exit_code == 2 and "TARGET is 3x3" in result.stderr


def test_learn_save_adds_to_a_library_and_refuses_duplicates(tmp_path):
    target = tmp_path / "t.npy"
    run("apply", "-k", "laplacian", SAMPLES / "camera.png", "-o", target)
    lib = tmp_path / "mine.yaml"
    lib.write_text("# my kernels\nversion: 1\nkernels:\n  other:\n    description: o\n    matrix: [[1]]\n")
    result = run("learn", SAMPLES / "camera.png", target, "--save", "my-lap", "--to", lib)
    assert result.exit_code == 0, result.stderr
    assert lib.read_text().startswith("# my kernels")  # appended, comments kept
    loaded = kernelcli.load_library(lib)
    np.testing.assert_allclose(loaded.get("my-lap").weights, EXPECTED["laplacian"], atol=1e-6)
    again = run("learn", SAMPLES / "camera.png", target, "--save", "my-lap", "--to", lib, "--kernels", lib)
    assert again.exit_code == 2 and "exists already" in again.stderr
    assert run("learn", SAMPLES / "camera.png", target, "--save", "sharpen", "--to", lib).exit_code == 2
    ok = run("learn", SAMPLES / "camera.png", target, "--save", "my-lap", "--to", lib, "--overwrite")
    assert ok.exit_code == 0, ok.stderr
    assert sorted(k.name for k in kernelcli.load_library(lib, shipped=False)) == ["my-lap", "other"]


# ---------------------------------------------------------------- explaining


def torch_chain_shapes(size, steps):
    x = torch.zeros(1, 1, *size)
    shapes = []
    for kind, k, s, p in steps:
        if kind == "conv":
            x = torch.nn.functional.pad(x, p) if isinstance(p, tuple) else x
            x = torch.nn.Conv2d(1, 1, k, stride=s, padding=0 if isinstance(p, tuple) else p)(x)
        elif kind == "pool":
            x = torch.nn.MaxPool2d(k, stride=s, padding=p)(x)
        else:
            x = torch.nn.ConvTranspose2d(1, 1, k, stride=s, padding=p)(x)
        shapes.append(list(x.shape[-2:]))
    return shapes


def test_explain_sizes_equal_torch_shapes():
    steps = ["sharpen", "pool 2", "conv 3x3 stride=2 padding=1", "conv 5x5 padding=valid dilation=1",
             "transpose 2x2 stride=2", "upsample 2", "pool 3 stride=2 padding=1"]
    result = run("explain", "--size", "37x29", "--json", *sum((["-s", s] for s in steps), []))
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    torch_steps = [("conv", 3, 1, (1, 1, 1, 1)), ("pool", 2, 2, 0), ("conv", 3, 2, 1), ("conv", 5, 1, 0),
                   ("transpose", 2, 2, 0), ("transpose", 4, 2, 1), ("pool", 3, 2, 1)]
    assert [r["output"][:2] for r in rows] == torch_chain_shapes((37, 29), torch_steps)


def test_explain_receptive_field_and_formula():
    rows = json.loads(run("explain", "--size", "5x5", "--json", "-s", "conv 3x3 padding=valid",
                          "-s", "conv 3x3 stride=2 padding=valid").stdout)
    assert rows[0]["output"] == [3, 3, 1] and rows[0]["receptive_field"] == [3, 3]
    assert rows[1]["receptive_field"] == [5, 5] and rows[1]["jump"] == 2
    assert rows[0]["formula"]["height"] == "⌊(5 + 2·0 − 1·(3−1) − 1) / 1⌋ + 1 = 3"
    assert rows[0]["multiply_adds"] == 3 * 3 * 9


def test_explain_takes_applys_geometry_options():
    """Issue 13: `explain -k sharpen --padding valid --stride 2 --size 6x8` speaks apply's words;
    sizes from torch's own layer (the issue's 4x6 is the size without --stride 2)."""
    result = run("explain", "-k", "sharpen", "--padding", "valid", "--stride", "2", "--size", "6x8", "--json")
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["output"][:2] == torch_chain_shapes((6, 8), [("conv", 3, 2, 0)])[0] == [2, 3]
    assert row["receptive_field"] == [3, 3] and row["jump"] == 2
    chain = json.loads(run("explain", "-k", "blur", "-k", "gaussian:1,5", "--padding", "1", "--dilation", "2",
                           "--size", "37x29", "-s", "pool 2", "--json").stdout)
    x = torch.zeros(1, 1, 37, 29)
    x = torch.nn.Conv2d(1, 1, 3, padding=1, dilation=2)(x)
    x = torch.nn.Conv2d(1, 1, 5, padding=1, dilation=2)(x)
    assert [r["output"][:2] for r in chain[:2]] == [[35, 27], list(x.shape[-2:])]
    assert chain[1]["receptive_field"] == [1 + 2 * 2 + 2 * 4] * 2  # dilated 3, then dilated 5
    assert chain[2]["step"] == "pool 2x2"


def test_explain_piped_is_tsv():
    result = run("explain", "-k", "sharpen", "--padding", "valid", "--stride", "2", "--size", "6x8")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ("sharpen\t6x8x1\t2x3x1\t3x3\t2\t54\t⌊(6 + 2·0 − 1·(3−1) − 1) / 2⌋ + 1 = 2\t"
                             "⌊(8 + 2·0 − 1·(3−1) − 1) / 2⌋ + 1 = 3\n")


def test_explain_on_a_terminal_fits_80_columns():
    """A real pseudo-terminal: the table, formulas and the chain's result within 80 columns."""
    import os
    import pty
    import select
    import subprocess
    import sys

    main, sub = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "80"}
    proc = subprocess.Popen([sys.executable, "-m", "kernelcli", "explain", "--size", "224x224x3", "-k", "sharpen",
                             "-s", "pool 2", "-s", "conv 3x3 stride=2", "-s", "upsample 2", "-k", "unsharp:1,2,9"],
                            stdout=sub, stderr=subprocess.PIPE, env=env)
    os.close(sub)
    data = b""
    while select.select([main], [], [], 30)[0]:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        data += chunk
    os.close(main)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    proc.stderr.close()
    lines = data.decode().replace("\r\n", "\n").splitlines()
    assert lines[0].split() == ["step", "in", "out", "receptive", "field", "jump", "cost"]
    assert lines[1].split()[:3] == ["sharpen", "224x224x3", "224x224x3"]
    assert lines[-1] == "chain: 224x224x3 → 112x112x3, receptive field 20x20, jump 2"
    assert max(map(len, lines)) <= 80


# ---------------------------------------------------------------- describing


@pytest.mark.parametrize("name, kind", [("blur", "low-pass"), ("identity", "all-pass"), ("laplacian", "high-pass"),
                                        ("sharpen", "high-boost"), ("sobel-right", "band-pass"),
                                        ("edge-horizontal", "high-pass")])
def test_frequency_classes(library, name, kind):
    assert describe(library.get(name))["frequency"]["class"] == kind


def test_symmetry_and_separability(library):
    info = describe(library.get("sobel-right"))
    assert "odd left-right (mirror flips the sign)" in info["symmetry"] and "mirror top-bottom" in info["symmetry"]
    assert "unchanged by 90-degree turns" in describe(library.get("blur"))["symmetry"]
    assert describe(library.get("emboss"))["symmetry"] == ["mirror on the diagonal"]
