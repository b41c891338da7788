"""Arithmetic bounds and resource budgets (issue 10, items 3, 5, 6, 8): the fast engine never
wraps around, non-finite options and results are refused, huge numbers and sizes give a
one-line error instead of a traceback or an exhausted machine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import kernelcli.compute.engine as engine
import kernelcli.compute.fast as fast
from kernelcli.compute.filters import Options, apply_kernels
from kernelcli.io.images import Raster
from kernelcli.kernels.library import Kernel
from kernelcli.compute.options import Geometry

from tests.conftest import run

HUGE_FRACTION = "1" * 400 + "/3"  # 3.7e399: no float holds it


def one_line_error(result, code):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kernelcli: error: "), result.stderr
    assert "Traceback" not in result.output


@pytest.fixture
def white(tmp_path):
    path = tmp_path / "white.png"
    Image.new("L", (16, 12), 255).save(path)
    return path


def pixels_of(path):
    return np.asarray(Image.open(path))


# --------------------------------------------------------------------------- item 3: no wrap-around


@pytest.mark.parametrize("args", [
    ["-k", "8 16 8; 16 32 16; 8 16 8", "--map", "offset"],  # sum 128·255 + 128 overflows int16
    ["-k", "128", "--bias", "100%"],  # 128·255 + 255 overflows int16
])
def test_fast_engine_does_not_wrap_around(white, tmp_path, args):
    fast_out, ref_out = tmp_path / "fast.png", tmp_path / "ref.png"
    assert run("apply", *args, white, "-o", fast_out).exit_code == 0
    # --padding 1 is not 'same': the reference engine computes it (on a frame one pixel wider)
    assert run("apply", *args, "--padding", "1", white, "-o", ref_out).exit_code == 0
    assert (pixels_of(fast_out) == 255).all()
    assert (pixels_of(ref_out) == 255).all()


MAGNITUDES = [1, 3, 16, 128, 129, 1000, 2**15, 60_000]  # around the int16, int32 and float32 limits


@st.composite
def integer_steps(draw):
    m = draw(st.sampled_from(MAGNITUDES))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    taps = draw(st.lists(st.integers(-m, m), min_size=kh * kw, max_size=kh * kw))
    matrix = tuple(tuple(float(v) for v in taps[r * kw:(r + 1) * kw]) for r in range(kh))
    divisor = draw(st.sampled_from([1, 1, 2, 3, 16, 255]))
    bias = draw(st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, -3.0, 100.0]), st.floats(-4, 4)))
    mode = draw(st.sampled_from(["clip", "abs", "offset"]))
    border = draw(st.sampled_from([("replicate", 0.0), ("zeros", 0.0), ("constant", 255.0), ("constant", -300.0),
                                   ("constant", 1000.0)]))
    return Kernel("drawn", matrix, divisor=float(divisor)), bias, mode, border


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(step=integer_steps(), seed=st.integers(0, 2**16), sixteen=st.booleans(), channels=st.sampled_from([1, 3]))
def test_fast_engine_equals_reference_up_to_the_bounds(step, seed, sixteen, channels):
    kernel, bias, mode, (border, value) = step
    rng = np.random.default_rng(seed)
    maxval = 65535.0 if sixteen else 255.0
    pixels = rng.integers(0, int(maxval) + 1, (channels, 7, 9)).astype(np.uint16 if sixteen else np.uint8)
    pixels[:, 0, :] = int(maxval)  # the extremes are always present
    pixels[:, 1, :] = 0
    options = Options(geometry=Geometry(border, value), map=mode, bias=bias, device="cpu")
    quick, quick_stats = apply_kernels(Raster(pixels, maxval=maxval), [kernel], options)
    reference_pixels = pixels.astype(np.float64 if sixteen else np.float32)  # float input: reference engine
    slow, slow_stats = apply_kernels(Raster(reference_pixels, maxval=maxval), [kernel], options)
    assert slow_stats[0].engine == "reference"
    eligible = fast.eligible(kernel, options.geometry, mode, maxval, channels, 1.0, bias)
    assert quick_stats[0].engine == ("fast" if eligible else "reference")
    np.testing.assert_array_equal(quick.pixels, slow.pixels.astype(quick.pixels.dtype))


def test_a_bias_below_one_level_with_offset_maps_like_the_reference(rng):
    """offset + a bias too small to change mid-gray: the strips' integer sums must not
    take the bias as whole (hypothesis found 7.5e-281); both engines map alike."""
    pixels = rng.integers(0, 256, (1, 6, 7)).astype(np.uint8)
    for bias in (7.5e-281, 0.1, 1 / 255):
        options = Options(map="offset", bias=bias, device="cpu")
        kernel = Kernel("k", ((0.0, 1.0, -1.0),))
        quick, quick_stats = apply_kernels(Raster(pixels, maxval=255.0), [kernel], options)
        slow, _ = apply_kernels(Raster(pixels.astype(np.float32), maxval=255.0), [kernel], options)
        assert quick_stats[0].engine == "fast"
        np.testing.assert_array_equal(quick.pixels, slow.pixels.astype(np.uint8))


def test_the_bound_includes_bias_and_offset():
    k = Kernel("k", ((128.0,),))
    geo = Geometry()
    assert engine.reach(k, geo, 255.0) == 128 * 255
    assert engine.reach(k, geo, 255.0, bias=1.0) == 128 * 255 + 255
    assert engine.reach(k, geo, 255.0, mode="offset") == 128 * 255 + 128
    assert engine.reach(Kernel("k", ((1.0, -2.0),)), Geometry("constant", -10.0), 255.0) == 2 * 255 + 1 * 10
    assert not fast.eligible(Kernel("k", ((1e300,),)), geo, "clip", 255.0, 1)
    assert not fast.eligible(Kernel("k", ((1.0,),)), geo, "clip", 255.0, 1, scale=1e30)


# --------------------------------------------------------------------------- item 8: non-finite


@pytest.mark.parametrize("args", [["--scale", "nan"], ["--scale", "inf"], ["--scale", "-inf"], ["--bias", "nan"],
                                  ["--bias", "inf%"], ["--border", "constant:nan"]])
def test_non_finite_options_are_refused(white, tmp_path, args):
    result = run("apply", "-k", "sharpen", *args, white, "-o", tmp_path / "out.png")
    one_line_error(result, 2)
    assert "finite" in result.stderr
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("args, out", [
    *[(["-k", "1e300"], out) for out in ("out.png", "out.npy", "out.tif", "out.jpg")],
    (["-k", "1e300", "-k", "1"], "out.png"),
    (["-k", "1e300", "--each", "-k", "1"], "folder/"),
    (["-k", "sharpen", "--scale", "1e300"], "out.png"),
    (["-k", "sharpen", "--scale", "1e300"], "out.npy"),  # raw outputs are scaled too
    (["-k", "sobel", "--scale", "1e300"], "out.png"),
])
def test_overflowing_results_are_refused_on_every_path(white, tmp_path, args, out):
    result = run("apply", *args, white, "-o", tmp_path / out)
    one_line_error(result, 1)
    assert "NaN or infinite" in result.stderr
    assert not (tmp_path / out).exists() or not any((tmp_path / out).iterdir())


def test_map_values_checks_finite():
    import torch

    from kernelcli.errors import ImageError
    from kernelcli.compute.mapping import map_values

    with pytest.raises(ImageError, match="NaN or infinite"):
        map_values(torch.tensor([0.0, 1.0]), "clip", 255.0, scale=1e300)


# --------------------------------------------------------------------------- item 6: huge numbers


def test_huge_fraction_inline(white, tmp_path):
    one_line_error(run("apply", "-k", HUGE_FRACTION, white, "-o", tmp_path / "o.png"), 2)


def test_huge_fraction_in_generator(white, tmp_path):
    one_line_error(run("apply", "-k", f"box:{HUGE_FRACTION}", white, "-o", tmp_path / "o.png"), 2)


def test_huge_fraction_in_yaml(white, tmp_path):
    lib = tmp_path / "k.yaml"
    lib.write_text(f"kernels:\n  huge:\n    description: too big\n    matrix: [[{HUGE_FRACTION}]]\n")
    result = run("apply", "--kernels", lib, "-k", "huge", white, "-o", tmp_path / "o.png")
    one_line_error(result, 2)
    assert "too large" in result.stderr


def test_number_over_python_digit_limit():
    from kernelcli.errors import KernelFileError
    from kernelcli.kernels.library import parse_number

    with pytest.raises(KernelFileError, match="too large"):
        parse_number("1" * 5000 + "/7", "here")


# --------------------------------------------------------------------------- item 5: memory budgets


def test_parse_size_and_default_budget():
    from kernelcli.compute import budget
    from kernelcli.errors import UsageError

    assert budget.parse_size("512M") == 512 << 20
    assert budget.parse_size("1.5G") == 3 << 29
    assert budget.parse_size("2GiB") == 2 << 30
    assert budget.parse_size("1000") == 1000
    for bad in ("", "x", "-1G", "nan", "0"):
        with pytest.raises(UsageError):
            budget.parse_size(bad)
    assert 0 < budget.default_budget() <= budget.available()


def _stand_in(channels, height, width, dtype=np.uint8, maxval=255.0):
    """A Raster of any size without its memory (a broadcast view), as budget.probe makes."""
    return Raster(np.broadcast_to(np.zeros((), dtype), (channels, height, width)), maxval=maxval)


@pytest.mark.parametrize("name", ["sobel", "compass", "sharpen", "prewitt"])
def test_100_mp_edge_kernels_stream_within_4x_the_image(library, name):
    """The issue's OOM: 100 MP sobel needed 23 GB. Combined kernels now take the strip
    engine, whose estimate (input, output, strips) stays within 4x the 8-bit image."""
    from kernelcli.compute import budget
    from kernelcli.compute.filters import plan

    raster = _stand_in(3, 8165, 12247)
    kernels, options = [library.resolve(name)], Options(device="cpu")
    steps = plan(raster, kernels, options)
    assert steps[0].engine == "fast"
    need = budget.apply_estimate(3, 8165, 12247, 1, kernels, options, steps=steps)
    assert need <= 4 * raster.pixels.size + (256 << 20)


def test_reference_engine_tiles_on_the_cpu(library, rng, monkeypatch):
    """The reference engine works in tiles of about TILE_BYTES on the CPU: exactly the
    untiled result (integer kernel, float data), and never a whole-image unfold."""
    import torch

    import kernelcli.compute.convolve as convolve
    import kernelcli.compute.engine as engine
    from tests.conftest import scipy_correlate

    pixels = rng.integers(0, 256, (40, 31)).astype(np.float64)
    x = torch.from_numpy(pixels)[None, None]
    weights = np.array(library.get("outline").weights)
    assert convolve.cpu_tile_rows(x, (3, 3), 2, 40, "direct") is None  # small: one piece
    monkeypatch.setattr(engine, "TILE_BYTES", 4096)
    assert convolve.cpu_tile_rows(x, (3, 3), 2, 40, "direct") == 4096 // (33 * 8 * 9)
    for method in ("direct", "fft"):
        out = convolve.correlate(x, weights, method=method)[0, 0].numpy()
        np.testing.assert_allclose(out, scipy_correlate(pixels, weights, "replicate"), atol=1e-9)


@pytest.mark.parametrize("args", [
    ["apply", "-k", "sharpen", "--padding", "20000"],   # 19 GB on a 64x48 image
    ["apply", "-k", "sharpen", "--dilation", "1000000"],
    ["apply", "-k", "sobel", "--max-memory", "10K"],
    ["apply", "-k", "log:3", "--max-memory", "10K"],
    ["upsample", "--factor", "2000"],
    ["transpose", "-k", "1 1; 1 1", "--stride", "100000"],
    ["pool", "--size", "2", "--max-memory", "1K"],
])
def test_jobs_over_the_budget_are_refused_before_work(tmp_path, args):
    src = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(src)
    out = tmp_path / "out.png"
    if "--max-memory" not in args:  # the default budget grows with the machine: pin it
        args = [*args, "--max-memory", "2G"]
    result = run(*args, src, "-o", out)
    one_line_error(result, 2)
    assert "would need about" in result.stderr and "--max-memory raises it" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("args", [["apply", "-k", "sharpen", "--stride", "99999999999999999999"],
                                  ["pool", "--size", "99999999999999999999"],
                                  ["upsample", "--factor", "99999999999"],
                                  ["transpose", "-k", "1", "--dilation", "99999999999999999999"]])
def test_huge_geometry_values_are_one_line_errors(white, tmp_path, args):
    one_line_error(run(*args, white, "-o", tmp_path / "out.png"), 2)


def test_budget_failure_in_a_batch_fails_that_input_only(tmp_path):
    """In a batch, the image over the budget fails (exit 3) and the others are written."""
    src = tmp_path / "in"
    src.mkdir()
    Image.new("L", (16, 16), 9).save(src / "small.png")
    Image.new("L", (900, 900), 9).save(src / "large.png")
    result = run("apply", "-k", "sobel", src, "-o", tmp_path / "out", "--max-memory", "12M")
    assert result.exit_code == 3, result.output
    assert "large.png" in result.stderr and "--max-memory" in result.stderr
    assert (tmp_path / "out" / "small.png").exists() and not (tmp_path / "out" / "large.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--gap", "1000000", "-o", "sheet.png"], "--max-memory raises it"),
    (["--gap", "40000", "-o", "sheet.jpg"], "JPEG holds at most 65500"),
])
def test_grid_sheet_size_is_checked(white, tmp_path, args, message):
    *opts, _, name = args
    result = run("grid", "-k", "sharpen", *opts, "--max-memory", "2G", white, "-o", tmp_path / name)
    one_line_error(result, 2)
    assert message in result.stderr
