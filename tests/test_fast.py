"""The fast strip engine equals the reference engine bit for bit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import kernelcli.engine as engine
import kernelcli.fast as fast
from kernelcli.options import Geometry, parse_border
from kernelcli.filters import Options, apply_kernels
from kernelcli.images import Raster

from .conftest import BORDERS


@pytest.fixture(autouse=True)
def small_strips(monkeypatch):
    monkeypatch.setattr(engine, "STRIP_BYTES", 64)  # many strips even on tiny images: halos must join


def both(raster: Raster, kernels, options: Options):
    """(fast result, reference result, their Stats) on the CPU: the fast engine must have
    run every step of the first, the reference engine (on a float copy) every step of the
    second."""
    options = replace(options, device="cpu")
    quick, quick_stats = apply_kernels(raster, kernels, options)
    assert [st.engine for st in quick_stats] == ["fast"] * len(kernels)
    slow_raster = Raster(raster.pixels.astype(np.float64 if raster.maxval > 255 else np.float32),
                         raster.alpha, raster.maxval)
    slow, slow_stats = apply_kernels(slow_raster, kernels, options)
    assert [st.engine for st in slow_stats] == ["reference"] * len(kernels)
    return quick, slow, quick_stats, slow_stats


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_plain_kernel_every_border(library, rng, border, channels):
    mode, value = parse_border(border)
    pixels = rng.integers(0, 256, (channels, 23, 17)).astype(np.uint8)
    for kernel in (k for k in library if k.kind == "plain"):
        for mapping in ("clip", "abs", "offset"):
            options = Options(geometry=Geometry(mode, value), map=mapping)
            assert fast.eligible(kernel, options.geometry, mapping, 255.0, channels)
            quick, slow, qs, ss = both(Raster(pixels, maxval=255.0), [kernel], options)
            assert quick.pixels.dtype == np.uint8
            np.testing.assert_array_equal(quick.pixels, slow.pixels.astype(np.uint8), err_msg=f"{kernel.name} {mapping}")
            assert qs[0].clipped == pytest.approx(ss[0].clipped, abs=1e-6)
            assert (qs[0].minimum, qs[0].maximum) == pytest.approx((ss[0].minimum, ss[0].maximum), abs=1e-4)


@pytest.mark.parametrize("spec", ["gaussian:1", "box:4", "log:0.8", "unsharp:0.8,1.5", "motion:5,30", "1/3 1/3 1/3"])
@pytest.mark.parametrize("kw", [{}, {"dilation": 2}, {"border": "reflect", "dilation": 3}])
def test_generated_and_fractional_kernels(library, rng, spec, kw):
    pixels = rng.integers(0, 256, (3, 31, 29)).astype(np.uint8)
    quick, slow, _, _ = both(Raster(pixels, maxval=255.0), [library.resolve(spec)], Options(geometry=Geometry(**kw)))
    np.testing.assert_array_equal(quick.pixels, slow.pixels.astype(np.uint8))


def test_sequences_scale_bias_convolve_and_16_bit(library, rng):
    pixels8 = rng.integers(0, 256, (3, 19, 21)).astype(np.uint8)
    ks = [library.get("blur"), library.get("emboss"), library.get("sharpen")]
    for options in (Options(), Options(scale=0.5, bias=0.25), Options(convolve=True, map="abs"),
                    Options(geometry=Geometry("constant", 100.0))):
        quick, slow, _, _ = both(Raster(pixels8, maxval=255.0), ks, options)
        np.testing.assert_array_equal(quick.pixels, slow.pixels.astype(np.uint8))
    pixels16 = rng.integers(0, 65536, (1, 19, 21)).astype(np.uint16)
    quick, slow, _, _ = both(Raster(pixels16, maxval=65535.0), ks, Options())
    assert quick.pixels.dtype == np.uint16
    np.testing.assert_array_equal(quick.pixels, slow.pixels.astype(np.uint16))


def test_opaque_alpha_is_carried(library, rng):
    pixels = rng.integers(0, 256, (3, 9, 9)).astype(np.uint8)
    alpha = np.full((9, 9), 255, np.uint8)
    quick, slow, _, _ = both(Raster(pixels, alpha, 255.0), [library.get("outline")], Options())
    np.testing.assert_array_equal(quick.pixels, slow.pixels.astype(np.uint8))
    np.testing.assert_array_equal(quick.alpha, alpha)


def test_not_eligible_cases(library):
    geo = Geometry()
    assert not fast.eligible(library.get("rgb-to-gray"), geo, "clip", 255.0, 3)  # multi-channel
    assert not fast.eligible(library.get("blur"), Geometry(stride=2), "clip", 255.0, 1)
    assert not fast.eligible(library.get("blur"), Geometry(padding="valid"), "clip", 255.0, 1)
    assert not fast.eligible(library.get("blur"), geo, "normalize", 255.0, 1)
    assert not fast.eligible(library.get("blur"), geo, "clip", None, 1)


@pytest.mark.parametrize("spec", ["gaussian:2.5", "box:9", "gaussian:2,9@90", "[[1],[2],[3],[2],[1]]"])
@pytest.mark.parametrize("kw", [{}, {"border": "symmetric", "dilation": 2}, {"border": "constant", "border_value": 40.0}])
def test_large_separable_kernels_as_banded_products(library, rng, spec, kw, monkeypatch):
    monkeypatch.setattr(engine, "BAND_ROWS", 7)  # many bands, partial last ones
    kernel = library.resolve(spec)
    geo = Geometry(**kw)
    pixels = rng.integers(0, 256, (3, 40, 37)).astype(np.uint8)
    if fast.banded(kernel) is None:
        assert spec.startswith("[[")  # a 5x1 kernel needs no banded product
    quick, slow, qs, ss = both(Raster(pixels, maxval=255.0), [kernel], Options(geometry=geo))
    # float weights: the two summation orders agree to float rounding, so at most a value
    # that lies within ~1e-5 of a rounding boundary may land on the other side
    diff = np.abs(quick.pixels.astype(int) - slow.pixels.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert (qs[0].minimum, qs[0].maximum) == pytest.approx((ss[0].minimum, ss[0].maximum), abs=1e-3)


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("channels", [1, 3])
def test_combined_kernels_stream_by_strips(library, rng, border, channels):
    """sobel, prewitt, scharr, compass: part by part within each strip, equal to the
    reference engine, which holds one response per part of the whole image."""
    mode, value = parse_border(border)
    pixels = rng.integers(0, 256, (channels, 23, 17)).astype(np.uint8)
    combined = [k for k in library if k.kind == "combined"]
    assert {"sobel", "compass"} <= {k.name for k in combined}
    for kernel in combined:
        for options in (Options(geometry=Geometry(mode, value)), Options(geometry=Geometry(mode, value), map="offset",
                                                                         scale=0.7, bias=-0.1, convolve=True)):
            quick, slow, qs, ss = both(Raster(pixels, maxval=255.0), [kernel], options)
            assert (qs[0].engine, ss[0].engine) == ("fast", "reference")
            np.testing.assert_array_equal(quick.pixels, slow.pixels.astype(np.uint8), err_msg=kernel.name)
            assert qs[0].clipped == pytest.approx(ss[0].clipped, abs=1e-6)


def test_combined_kernels_16_bit(library, rng):
    pixels = rng.integers(0, 65536, (1, 19, 21)).astype(np.uint16)
    for name in ("sobel", "compass"):
        quick, slow, qs, _ = both(Raster(pixels, maxval=65535.0), [library.get(name)], Options())
        assert qs[0].engine == "fast"
        np.testing.assert_array_equal(quick.pixels, slow.pixels.astype(np.uint16))


def test_the_plan_says_how_the_fast_engine_runs(library, rng):
    """engine.plan is the one decision: strips for small kernels, banded products for large
    separable ones, combined kernels part by part; the Stats report what ran."""
    from kernelcli.filters import plan

    raster = Raster(rng.integers(0, 256, (3, 12, 10)).astype(np.uint8), maxval=255.0)
    options = Options(device="cpu")
    for spec, method in (("sharpen", "strips"), ("gaussian:3", "banded"), ("sobel", "combined")):
        kernels = [library.resolve(spec)]
        assert [(s.engine, s.method) for s in plan(raster, kernels, options)] == [("fast", method)]
        _, stats = apply_kernels(raster, kernels, options)
        assert (stats[0].engine, stats[0].method) == ("fast", method)
