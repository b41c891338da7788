"""Image modes, alpha, bit depth, EXIF orientation, ICC; safe writes."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageCms

from kernelcli.errors import ImageError
from kernelcli.compute.filters import Options, apply_kernels
from kernelcli.io.images import encode, read, write_atomic

from tests.conftest import scipy_correlate, to_8bit
from tests.test_kernels import EXPECTED


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def roundtrip(img: Image.Image, kernels, fmt="PNG", **kw) -> Image.Image:
    raster = read("in.png", png_bytes(img) if fmt == "PNG" else img)
    out, _ = apply_kernels(raster, kernels, Options(**kw))
    return Image.open(io.BytesIO(encode(out, fmt)))


def test_alpha_is_preserved_and_transparent_colour_does_not_bleed(library, rng):
    rgb = rng.integers(0, 256, (10, 10, 3)).astype(np.uint8)
    alpha = np.full((10, 10), 255, np.uint8)
    alpha[:, 6:] = 0  # right part fully transparent
    alpha[2, 2] = 128
    results = []
    for hidden in (0, 255):  # what colour the transparent pixels happen to store
        pixels = rgb.copy()
        pixels[alpha == 0] = hidden
        img = Image.fromarray(np.dstack([pixels, alpha]))
        out = roundtrip(img, [library.get("blur")])
        assert out.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(out)[..., 3], alpha)
        results.append(np.asarray(out)[..., :3][alpha > 0])
    np.testing.assert_array_equal(results[0], results[1])


def test_blur_of_flat_colour_with_transparent_surround_has_no_dark_halo(library):
    rgba = np.zeros((9, 9, 4), np.uint8)
    rgba[2:7, 2:7] = (200, 100, 50, 255)
    out = np.asarray(roundtrip(Image.fromarray(rgba), [library.get("gaussian-5x5")]))
    visible = out[rgba[..., 3] > 0]
    assert (visible[:, :3] == (200, 100, 50)).all()


def test_opaque_rgba_filters_like_rgb(library, rng):
    rgb = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    rgba = np.dstack([rgb, np.full((8, 8), 255, np.uint8)])
    a = np.asarray(roundtrip(Image.fromarray(rgba), [library.get("sharpen")]))
    b = np.asarray(roundtrip(Image.fromarray(rgb), [library.get("sharpen")]))
    np.testing.assert_array_equal(a[..., :3], b)


def test_la_gray_with_alpha(library, rng):
    la = Image.fromarray(rng.integers(0, 256, (6, 6, 2)).astype(np.uint8))
    out = roundtrip(la, [library.get("identity")])
    assert out.mode == "LA"
    np.testing.assert_array_equal(np.asarray(out)[..., 1], np.asarray(la)[..., 1])


def test_16_bit_png_stays_16_bit(library, rng):
    arr = rng.integers(0, 65536, (8, 8)).astype(np.uint16)
    out = roundtrip(Image.fromarray(arr), [library.get("blur")])
    assert out.mode.startswith("I;16") or out.mode == "I"
    ref = np.clip(np.round(scipy_correlate(arr.astype(float), EXPECTED["blur"], "replicate")), 0, 65535)
    np.testing.assert_array_equal(np.asarray(out).astype(np.int64), ref.astype(np.int64))


def test_palette_is_converted_not_filtered_as_indices(library):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:, 2:] = (255, 0, 0)
    pal = Image.fromarray(rgb).quantize(4)
    out = roundtrip(pal, [library.get("identity")])
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), rgb)


def test_palette_with_transparency_gets_alpha(library):
    pal = Image.new("P", (3, 3), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    out = roundtrip(pal, [library.get("identity")])
    assert out.mode == "RGBA"
    assert np.asarray(out)[..., 3].tolist() == [[0, 0, 0], [0, 255, 0], [0, 0, 0]]


def test_exif_rotated_input_is_filtered_upright(library, rng):
    upright = rng.integers(0, 256, (6, 10)).astype(np.uint8)  # 6 rows, 10 columns as seen
    stored = np.rot90(upright, 1)  # camera stored it turned; orientation 6 turns it back
    img = Image.fromarray(np.ascontiguousarray(stored))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = png_bytes(img, exif=exif.tobytes())
    raster = read("rot.png", data)
    out, _ = apply_kernels(raster, [library.get("sobel-right")], Options())
    ref = to_8bit(scipy_correlate(np.rot90(stored, -1).astype(float), EXPECTED["sobel-right"], "replicate"))
    np.testing.assert_array_equal(out.pixels[0].astype(np.uint8), ref)
    written = Image.open(io.BytesIO(encode(out, "PNG")))
    assert written.size == (10, 6)
    assert written.getexif().get(0x0112) in (None, 1)


def test_icc_profile_is_carried(library):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.new("RGB", (4, 4), (10, 20, 30))
    raster = read("in.png", png_bytes(img, icc_profile=icc))
    out, _ = apply_kernels(raster, [library.get("blur")], Options())
    assert Image.open(io.BytesIO(encode(out, "JPEG"))).info.get("icc_profile") == icc


@pytest.mark.parametrize("data, message", [
    (b"", "empty file"),
    (b"<html>not an image</html>", "not a recognised image"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not a recognised image"),
])
def test_unreadable_inputs(data, message):
    with pytest.raises(ImageError, match=f"x.jpg: {message}"):
        read("x.jpg", data)


def test_truncated_png_is_an_error():
    data = png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    with pytest.raises(ImageError, match="t.png: cannot decode image"):
        read("t.png", data[: len(data) // 2])


def test_write_atomic_never_clobbers_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(ImageError, match="already exists"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    write_atomic(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_write_atomic_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.png", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o644


def test_jpeg_cannot_hold_alpha(library):
    raster = read("in.png", png_bytes(Image.new("RGBA", (2, 2))))
    out, _ = apply_kernels(raster, [library.get("identity")], Options())
    with pytest.raises(Exception, match="JPEG cannot store transparency"):
        encode(out, "JPEG", name="o.jpg")
