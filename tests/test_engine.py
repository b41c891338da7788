"""The torch engine against independent references: scipy.ndimage and a plain numpy loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernelcli
from kernelcli.compute.convolve import Geometry, correlate, output_size, resolve_device
from kernelcli.compute.options import border_index
from kernelcli.errors import DeviceError, UsageError
from kernelcli.compute.filters import Options, apply_kernels
from kernelcli.io.images import Raster

from tests.conftest import BORDERS, loop_correlate, scipy_correlate, to_8bit
from tests.test_kernels import EXPECTED


def geo(border="replicate", **kw):
    from kernelcli.compute.options import parse_border

    mode, value = parse_border(border)
    return Geometry(mode, value, **kw)


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_kernel_every_border_gray_and_rgb(library, rng, name, border):
    kernel = library.get(name)
    gray = rng.integers(0, 256, (1, 13, 17)).astype(np.float32)
    rgb = rng.integers(0, 256, (3, 11, 9)).astype(np.float32)
    options = Options(geometry=geo(border), map="clip")
    for pixels in (gray, rgb):
        reference = np.stack([scipy_correlate(ch, kernel.weights, border) for ch in pixels])
        # 8-bit output: exactly the reference rounded and clipped
        out, _ = apply_kernels(Raster(pixels, maxval=255.0), [kernel], options)
        np.testing.assert_array_equal(out.pixels.astype(np.uint8), to_8bit(reference))
        # float output in 0..1 data: within 1e-4
        unit = pixels / 255.0
        raw, _ = apply_kernels(Raster(unit, maxval=None), [kernel], Options(geometry=geo(border), raw=True))
        ref_unit = np.stack([scipy_correlate(ch, kernel.weights, border) for ch in unit])
        np.testing.assert_allclose(raw.pixels, ref_unit, atol=1e-4)


def test_impulse_shows_correlation_orientation():
    impulse = np.zeros((5, 5))
    impulse[2, 2] = 1
    k = np.arange(1, 10).reshape(3, 3)
    out = kernelcli.apply(impulse, "1 2 3; 4 5 6; 7 8 9", border="zeros")
    np.testing.assert_array_equal(out[1:4, 1:4], k[::-1, ::-1])  # 9 8 7 / 6 5 4 / 3 2 1
    flipped = kernelcli.apply(impulse, "1 2 3; 4 5 6; 7 8 9", border="zeros", convolve=True)
    np.testing.assert_array_equal(flipped[1:4, 1:4], k)  # true convolution: as written


def test_worked_example_2x2_kernel_valid():
    x = np.arange(9, dtype=float).reshape(3, 3)
    out = kernelcli.apply(x, "0 1; 2 3", padding="valid")
    np.testing.assert_array_equal(out, [[19, 25], [37, 43]])


def test_band_example_gives_plus_minus_one_columns():
    x = np.ones((6, 8))
    x[:, 2:6] = 0
    out = kernelcli.apply(x, "[1, -1]", padding="valid")
    expected = np.zeros((6, 7))
    expected[:, 1], expected[:, 5] = 1, -1
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(kernelcli.apply(x.T, "edge-vertical", padding="valid"), expected.T)


@pytest.mark.parametrize(
    "padding, stride, shape, pad",
    [("valid", 1, (3, 3), 0), (1, 1, (5, 5), 1), ("valid", 2, (2, 2), 0), (1, 2, (3, 3), 1)],
)
def test_teaching_5x5_examples(padding, stride, shape, pad):
    x = np.arange(25, dtype=float).reshape(5, 5)
    w = np.array([[0, 1, 0], [1, 2, 1], [0, 1, 0]], float)
    out = kernelcli.apply(x, kernelcli.parse_inline("0 1 0; 1 2 1; 0 1 0"), padding=padding, stride=stride, border="zeros")
    assert out.shape == shape
    np.testing.assert_allclose(out, loop_correlate(x, w, stride=stride, pad=pad))


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("k", [(3, 3), (2, 5), (1, 4)])
def test_stride_dilation_against_loop_and_formula(rng, stride, dilation, k):
    x = rng.normal(size=(12, 15))
    w = rng.normal(size=k)
    out = kernelcli.apply(x, kernelcli.parse_inline(";".join(",".join(map(str, r)) for r in w)),
                          padding=2, stride=stride, dilation=dilation, border="zeros")
    ref = loop_correlate(x, w, stride=stride, dilation=dilation, pad=2)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    assert out.shape == (output_size(12, k[0], 4, stride, dilation), output_size(15, k[1], 4, stride, dilation))
    # the formula agrees with torch's own Conv2d shape
    conv = torch.nn.Conv2d(1, 1, k, stride=stride, padding=2, dilation=dilation)
    assert out.shape == conv(torch.zeros(1, 1, 12, 15)).shape[-2:]


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (1, 3), (3, 2)])
def test_images_smaller_than_the_kernel_work_in_every_mode(rng, border, size):
    x = rng.integers(0, 256, size).astype(np.float64)
    w = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256
    out = kernelcli.apply(x, "gaussian-5x5", border=border)
    np.testing.assert_allclose(out, scipy_correlate(x, w, border), atol=1e-9)


@pytest.mark.parametrize("mode, expected", [
    ("replicate", "aaa|abcd|ddd"), ("reflect", "dcb|abcd|cba"),
    ("symmetric", "cba|abcd|dcb"), ("circular", "bcd|abcd|abc"),
])
def test_border_index_matches_the_facts_table(mode, expected):
    got = "".join("abcd"[i] for i in border_index(4, 3, 3, mode))
    assert got == expected.replace("|", "")


def test_same_padding_keeps_size_with_stride_as_ceil(rng):
    x = torch.from_numpy(rng.normal(size=(1, 1, 7, 10)))
    out = correlate(x, np.ones((3, 3)), geo=Geometry(stride=2))
    assert out.shape[-2:] == (4, 5)


def test_kernel_larger_than_image_with_valid_is_a_usage_error():
    with pytest.raises(UsageError, match="does not fit"):
        kernelcli.apply(np.zeros((2, 2)), "box-blur", padding="valid")


def test_color_modes(rng):
    rgb = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
    luma = rgb.astype(float) @ np.array([0.299, 0.587, 0.114])
    w = np.array(EXPECTED["sharpen"], float)
    gray = kernelcli.apply(rgb, "sharpen", color="gray")
    assert gray.shape == (6, 7)
    np.testing.assert_array_equal(gray, to_8bit(scipy_correlate(luma, w, "replicate")))
    summed = kernelcli.apply(rgb.astype(np.float64), "sharpen", color="sum")
    ref = sum(scipy_correlate(rgb[..., c].astype(float), w, "replicate") for c in range(3))
    np.testing.assert_allclose(summed, ref, atol=1e-9)
    # luma: only luminance changes; R-Y, B-Y (the chroma) stay put
    out = kernelcli.apply(rgb.astype(np.float64), "sharpen", color="luma")
    delta = scipy_correlate(luma, w, "replicate") - luma
    np.testing.assert_allclose(out, rgb + delta[..., None], atol=1e-9)


def test_sequence_equals_two_steps_with_rounding(rng):
    img = rng.integers(0, 256, (9, 9)).astype(np.uint8)
    once = kernelcli.apply(img, "blur", "outline")
    twice = kernelcli.apply(kernelcli.apply(img, "blur"), "outline")
    np.testing.assert_array_equal(once, twice)


@pytest.mark.parametrize("mode", ["clip", "abs", "offset", "normalize"])
def test_value_mappings(rng, mode):
    img = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    raw = scipy_correlate(img.astype(float), EXPECTED["sobel-right"], "replicate")
    expected = {
        "clip": raw,
        "abs": np.abs(raw),
        "offset": raw + 128,
        "normalize": (raw - raw.min()) * 255 / (raw.max() - raw.min()),
    }[mode]
    out = kernelcli.apply(img, "sobel-right", map=mode)
    np.testing.assert_array_equal(out, to_8bit(expected))


def test_scale_and_bias_fraction_of_full_scale(rng):
    img = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    raw = scipy_correlate(img.astype(float), EXPECTED["laplacian"], "replicate")
    out = kernelcli.apply(img, "laplacian", scale=0.5, bias=0.25)
    np.testing.assert_array_equal(out, to_8bit(raw * 0.5 + 0.25 * 255))


def test_kernel_default_map_applies(library, rng):
    img = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    assert library.get("scharr-x").map == "abs"
    raw = scipy_correlate(img.astype(float), EXPECTED["scharr-x"], "replicate")
    np.testing.assert_array_equal(kernelcli.apply(img, "scharr-x"), to_8bit(np.abs(raw)))


def test_16_bit_stays_16_bit(rng):
    img = rng.integers(0, 65536, (7, 7)).astype(np.uint16)
    out = kernelcli.apply(img, "blur")
    assert out.dtype == np.uint16
    ref = scipy_correlate(img.astype(float), EXPECTED["blur"], "replicate")
    np.testing.assert_array_equal(out, np.clip(np.round(ref), 0, 65535).astype(np.uint16))


def test_torch_tensor_in_and_out(rng):
    x = torch.from_numpy(rng.normal(size=(2, 6, 6)))
    out = kernelcli.apply(x, "sobel-top")
    assert isinstance(out, torch.Tensor) and out.shape == (2, 6, 6)
    ref = scipy_correlate(x[1].numpy(), EXPECTED["sobel-top"], "replicate")
    np.testing.assert_allclose(out[1].numpy(), ref, atol=1e-9)


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="device 'cuda' is not available"):
            resolve_device("cuda")
    if not (torch.backends.mps.is_available()):
        with pytest.raises(DeviceError, match="'mps' is not available"):
            resolve_device("mps")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(library, rng):
    img = rng.integers(0, 256, (3, 64, 48)).astype(np.float32)
    for name in ("sharpen", "gaussian-5x5", "sobel-right"):
        k = library.get(name)
        cpu, _ = apply_kernels(Raster(img), [k], Options(device="cpu"))
        gpu, _ = apply_kernels(Raster(img), [k], Options(device="cuda"))
        # cuDNN may pick Winograd/FFT algorithms: float results agree to ~1e-5, so a value on
        # an exact .5 (possible for /256) may round the other way. TF32 is off, so no more.
        diff = np.abs(cpu.pixels.astype(int) - gpu.pixels.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, name
    assert torch.backends.cudnn.allow_tf32 is False


@pytest.mark.parametrize("kw", [
    {},
    {"geometry": Geometry(border="reflect", stride=2)},
    {"geometry": Geometry(border="zeros", padding=2, dilation=2)},
    {"color": "gray"},
    {"color": "sum", "convolve": True},
    {"raw": True, "geometry": Geometry(border="circular")},
])
def test_bank_of_kernels_equals_one_by_one(library, rng, kw):
    from kernelcli.compute.filters import apply_each

    kernels = [k for k in library if k.kind == "plain"]
    raster = Raster(rng.integers(0, 256, (3, 17, 12)).astype(np.float32),
                    alpha=np.full((17, 12), 255.0, np.float32), maxval=255.0)
    options = Options(**kw)
    for kernel, (result, stats) in zip(kernels, apply_each(raster, kernels, options)):
        alone, alone_stats = apply_kernels(raster, [kernel], options)
        np.testing.assert_array_equal(result.pixels, alone.pixels, err_msg=kernel.name)
        np.testing.assert_array_equal(result.alpha, alone.alpha)
        assert stats.clipped == alone_stats[0].clipped
        assert (stats.minimum, stats.maximum) == pytest.approx((alone_stats[0].minimum, alone_stats[0].maximum), rel=1e-6)


def test_bank_with_valid_padding_and_equal_shapes(library, rng):
    from kernelcli.compute.filters import apply_each

    kernels = [library.get(n) for n in ("sobel-left", "sobel-right", "sharpen")]
    raster = Raster(rng.integers(0, 256, (1, 9, 9)).astype(np.float32))
    options = Options(geometry=Geometry(padding="valid"))
    for kernel, (result, _) in zip(kernels, apply_each(raster, kernels, options)):
        np.testing.assert_array_equal(result.pixels, apply_kernels(raster, [kernel], options)[0].pixels)
        assert result.pixels.shape == (1, 7, 7)


# --------------------------------------------------------------------------- one decision: engine.plan

PLAN_CASES = [  # (kernels, options, engine on 8/16-bit pixels for 1 and 3 channels): every method there is
    (["sharpen"], {}, "fast fast"), (["gaussian:3"], {}, "fast fast"), (["sobel"], {}, "fast fast"),
    (["blur", "emboss"], {"scale": 0.5}, "fast fast"), (["log:3"], {}, "fast fast"),
    (["motion:15,30"], {}, "reference reference"),
    (["sharpen"], {"map": "normalize"}, "reference reference"),
    (["blur"], {"geometry": Geometry(stride=2)}, "reference reference"),
    (["compass"], {"color": "sum"}, "fast reference"), (["rgb-to-gray"], {}, "reference reference"),
    (["outline", "gaussian:3"], {"convolve": True}, "fast fast"), (["sharpen"], {"raw": True}, "reference reference"),
    (["sobel", "sharpen"], {"geometry": Geometry("constant", 7.0)}, "fast fast"),
]


@pytest.mark.parametrize("kinds", [(np.uint8, 255.0), (np.uint16, 65535.0), (np.float32, 255.0)])
@pytest.mark.parametrize("size", [(1, 9, 11), (3, 40, 37)])
@pytest.mark.parametrize("names, kw, expected", PLAN_CASES)
def test_memory_estimate_prices_the_engine_that_runs(library, rng, monkeypatch, names, kw, expected, size, kinds):
    """The memory check and the engine take the same decision (engine.plan): the steps the
    estimate priced are the engine and method every step's Stats report, small tiles
    included (TILE_BYTES shrunk so the reference engine tiles)."""
    import kernelcli.compute.budget as budget
    import kernelcli.compute.convolve as convolve
    import kernelcli.compute.engine as engine

    dtype, maxval = kinds
    if names == ["rgb-to-gray"]:
        size = (3, *size[1:])  # a kernel for three input channels
    monkeypatch.setattr(engine, "TILE_BYTES", 4096)
    priced = []
    real = budget.apply_estimate

    def spy(*args, steps, **kwargs):
        priced.append(steps)
        return real(*args, steps=steps, **kwargs)

    monkeypatch.setattr(budget, "apply_estimate", spy)
    tiles = []
    real_tiled = convolve._tiled

    def tiled(x, weights, amounts, geo, method, out_h, tile_rows):
        tiles.append(tile_rows)
        return real_tiled(x, weights, amounts, geo, method, out_h, tile_rows)

    monkeypatch.setattr(convolve, "_tiled", tiled)
    pixels = rng.integers(0, int(maxval) + 1, size).astype(dtype)
    kernels = [library.resolve(n) for n in names]
    _, stats = apply_kernels(Raster(pixels, maxval=maxval), kernels, Options(device="cpu", **kw))
    assert len(priced) == 1
    assert [(s.engine, s.method) for s in priced[0]] == [(st.engine, st.method) for st in stats]
    single = [s.tile_rows for s in priced[0] if s.method in ("direct", "separable", "fft")]
    if len(single) == len(priced[0]):  # one correlation a step: the tiles it ran are the ones priced
        assert tiles == [t for t in single if t is not None]
    engine_ran = "reference" if dtype == np.float32 else expected.split()[size[0] == 3]
    assert {st.engine for st in stats} == {engine_ran}


def test_a_file_is_planned_and_priced_once(tmp_path, monkeypatch, rng):
    """The runner checks a file's memory from its header before reading it; when the pixels
    arrive, the engine runs that same plan: engine.plan and the estimate run once per file
    (again only where the decoded image differs from its header: a new source)."""
    from PIL import Image

    import kernelcli.compute.budget as budget
    import kernelcli.compute.engine as engine
    from kernelcli.compute import filters
    from kernelcli.run import runner

    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    planned, priced = [], []
    real_plan, real_estimate = engine.plan, budget.apply_estimate
    monkeypatch.setattr(engine, "plan", lambda *a: (planned.append(1), real_plan(*a))[1])
    monkeypatch.setattr(budget, "apply_estimate", lambda *a, **k: (priced.append(1), real_estimate(*a, **k))[1])
    filters._planned.cache_clear()
    filters._priced.cache_clear()
    report = runner.apply_paths([str(tmp_path / "in.png")], ["gaussian:2"],
                                batch=runner.Batch(output=str(tmp_path / "out.png"), verbosity=0))
    assert report.exit_code == 0 and (tmp_path / "out.png").exists()
    assert (len(planned), len(priced)) == (1, 1)
