"""Properties (hypothesis) and fuzzing of the two parsers: only kernelcli's own errors escape.

The default is a short run for CI; KERNELCLI_FUZZ_EXAMPLES=5000 python -m pytest
tests/test_properties.py runs a long one.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import kernelcli
from kernelcli.compute.convolve import correlate
from kernelcli.errors import ImageError, KernelcliError, KernelFileError
from kernelcli.io.images import read
from kernelcli.kernels.library import load_file
from kernelcli.compute.options import BORDERS, Geometry
from kernelcli.compute.shapes import output_size

EXAMPLES = int(os.environ.get("KERNELCLI_FUZZ_EXAMPLES", "60"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

borders = st.sampled_from(BORDERS)
small_images = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1)).map(
    lambda t: np.random.default_rng(t[2]).integers(0, 256, (t[0], t[1])).astype(np.uint8))


@fuzz
@given(small_images, borders)
def test_identity_is_exact(img, border):
    assert np.array_equal(kernelcli.apply(img, "identity", border=border), img)


@fuzz
@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 6), st.integers(1, 6), st.integers(1, 3),
       st.integers(1, 3), st.integers(0, 4))
def test_output_shape_formula(h, w, kh, kw, stride, dilation, p):
    x = torch.zeros(1, 1, h, w)
    geo = Geometry(padding=p, stride=stride, dilation=dilation)
    expected = (output_size(h, kh, 2 * p, stride, dilation), output_size(w, kw, 2 * p, stride, dilation))
    if min(expected) < 1:
        return
    assert correlate(x, np.ones((kh, kw)), geo=geo).shape[-2:] == expected


@fuzz
@given(st.integers(0, 255), st.lists(st.integers(0, 9), min_size=9, max_size=9).filter(any), borders)
def test_flat_image_stays_flat_under_a_normalised_kernel(value, weights, border):
    """Borders that copy the image keep a flat image flat; the constant borders (here 0)
    keep the pixels whose window stays inside, and darken the rim by a convex mix of the
    value and 0 (the weights are >= 0)."""
    flat = np.full((7, 9), value, np.uint8)
    spec = ";".join(",".join(str(v) for v in weights[r * 3:r * 3 + 3]) for r in range(3))
    kernel = kernelcli.parse_inline(spec)
    from dataclasses import replace

    normalised = replace(kernel, divisor=float(sum(weights)))
    out = kernelcli.apply(flat, normalised, border=border)
    if border in ("zeros", "constant"):
        assert np.all(out[1:-1, 1:-1] == value)
        assert np.all((out >= 0) & (out <= value))
    else:
        assert np.all(out == value)


@fuzz
@given(st.integers(1, 20), st.integers(1, 15), st.integers(1, 5), st.integers(1, 5), borders,
       st.integers(1, 3), st.integers(1, 2), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_tiled_equals_untiled(h, w, kh, kw, border, stride, dilation, tile, seed):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, (1, 1, h, w)).astype(np.float64))
    weights = rng.integers(-4, 5, (kh, kw)).astype(float)
    geo = Geometry(border, 3.0, padding=2, stride=stride, dilation=dilation)
    try:
        whole = correlate(x, weights, geo=geo)
    except KernelcliError:
        return  # the kernel does not fit: the same error either way
    assert torch.equal(correlate(x, weights, geo=geo, tile_rows=tile), whole)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                         st.text(max_size=12))


def _nested(inner):  # a def, not a lambda: hypothesis reads its source to see that it recurses
    return st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5))


yaml_values = st.recursive(yaml_scalars, _nested, max_leaves=30)
kernel_entries = st.dictionaries(
    st.sampled_from(["description", "matrix", "divisor", "scale", "bias", "map", "origin", "aliases", "combine",
                     "of", "mix", "weight", "extra"]),
    st.one_of(yaml_values, st.lists(st.lists(st.one_of(st.integers(-9, 9), st.floats(allow_nan=True), st.text(max_size=4)),
                                             max_size=4), max_size=4)),
    max_size=6)


@fuzz
@given(st.one_of(yaml_values, st.fixed_dictionaries({"kernels": st.dictionaries(st.text(max_size=8), kernel_entries,
                                                                                  max_size=3)})))
def test_kernel_validator_returns_finite_matrices_or_our_error(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("k") / "k.yaml"
    path.write_text(yaml.safe_dump(value, allow_unicode=True))
    try:
        kernels = load_file(path)
    except KernelFileError:
        return
    for k in kernels:
        if k.kind == "plain":
            assert np.isfinite(k.weights).all() and k.weights.size > 0


@fuzz
@given(st.text(max_size=300))
def test_kernel_file_parser_on_any_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("t") / "k.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    try:
        load_file(path)
    except KernelFileError:
        pass


def _seed_images() -> list[bytes]:
    out = []
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "L"), ("WEBP", "RGB")):
        buf = io.BytesIO()
        Image.new(mode, (5, 4), 1).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


@fuzz
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8),
       st.integers(0, 400))
def test_image_reader_on_mutated_files(seed, flips, cut):
    data = bytearray(seed)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    data = bytes(data[: max(0, len(data) - cut)])
    try:
        raster = read("fuzz.bin", data)
    except ImageError:
        return
    assert raster.pixels.ndim == 3


@fuzz
@given(st.binary(max_size=200))
def test_image_reader_on_random_bytes(data):
    try:
        read("random.bin", data)
    except ImageError:
        pass
