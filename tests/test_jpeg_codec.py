"""JPEG through libjpeg-turbo straight into numpy (simplejpeg), Pillow for everything else:
the same pixels in, a valid 4:2:0 JPEG out, EXIF orientation and ICC kept."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin

from kernelcli.io import images
from kernelcli.errors import ImageError
from kernelcli.io.images import Raster, encode, read


@pytest.fixture
def calls(monkeypatch):
    """Counts the simplejpeg calls (the fast path ran)."""
    seen = {"decode": 0, "encode": 0}

    def counting(name, real):
        def wrapper(*args, **kw):
            seen[name] += 1
            return real(*args, **kw)
        return wrapper

    monkeypatch.setattr(simplejpeg, "decode_jpeg", counting("decode", simplejpeg.decode_jpeg))
    monkeypatch.setattr(simplejpeg, "encode_jpeg", counting("encode", simplejpeg.encode_jpeg))
    return seen


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def noise(rng, mode, size=(37, 53)):
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_decode_gives_pillows_pixels_through_the_fast_path(rng, calls, mode):
    data = jpeg(noise(rng, mode))
    raster = read("x.jpg", data)
    assert calls["decode"] == 1
    expected = np.asarray(Image.open(io.BytesIO(data)))
    expected = expected[None] if expected.ndim == 2 else expected.transpose(2, 0, 1)
    assert raster.pixels.dtype == np.uint8 and raster.format == "JPEG" and raster.maxval == 255.0
    np.testing.assert_array_equal(raster.pixels, expected)


def test_turned_photo_is_read_upright_by_pillow(rng, calls):
    img = noise(rng, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "maker"
    data = jpeg(img, exif=exif.tobytes())
    raster = read("x.jpg", data)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))).transpose(2, 0, 1)
    np.testing.assert_array_equal(raster.pixels, expected)
    assert calls["decode"] == 0
    kept = Image.Exif()
    kept.load(raster.exif)
    assert 0x0112 not in kept and kept[0x010F] == "maker"


def test_icc_and_exif_are_read_and_written(rng, calls):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "maker"
    raster = read("x.jpg", jpeg(noise(rng, "RGB"), icc_profile=icc, exif=exif.tobytes()))
    assert calls["decode"] == 1 and raster.icc_profile == icc
    out = Image.open(io.BytesIO(encode(raster, "JPEG", quality=90)))
    assert out.info["icc_profile"] == icc and out.getexif()[0x010F] == "maker" and calls["encode"] == 1


def test_cmyk_is_still_decoded_by_pillow(calls):
    data = jpeg(Image.new("CMYK", (8, 8), (0, 255, 0, 0)))
    raster = read("x.jpg", data)
    assert calls["decode"] == 0 and raster.pixels.shape == (3, 8, 8)


def test_truncated_jpeg_is_still_an_error(rng):
    data = jpeg(noise(rng, "RGB", (64, 64)))
    with pytest.raises(ImageError, match="truncated"):
        read("x.jpg", data[: len(data) // 2])


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_encode_through_the_fast_path_like_pillows_defaults(rng, calls, mode):
    smooth = np.add.outer(np.arange(48), np.arange(64)).astype(np.uint8) * 2
    arr = smooth if mode == "L" else np.dstack([smooth, smooth[::-1], 255 - smooth])
    pixels = arr[None] if mode == "L" else arr.transpose(2, 0, 1)
    data = encode(Raster(pixels, maxval=255.0), "JPEG", quality=95)
    assert calls["encode"] == 1
    out = Image.open(io.BytesIO(data))
    assert out.format == "JPEG" and out.mode == mode and out.size == (64, 48)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "JPEG", quality=95)
    pillow = Image.open(buf)
    assert JpegImagePlugin.get_sampling(out) == JpegImagePlugin.get_sampling(pillow)  # 4:2:0 for RGB
    assert out.quantization == pillow.quantization  # the same quality scale
    assert np.abs(np.asarray(out).astype(int) - arr).max() <= 8  # a quality-95 encode of a smooth ramp


def test_large_icc_profile_and_exif_are_embedded_by_the_fast_encoder(rng, calls):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    big_icc = icc + bytes(rng.integers(0, 256, 150_000, dtype=np.uint8))  # three APP2 chunks
    exif = Image.Exif()
    exif[0x010F] = "maker"
    pixels = rng.integers(0, 256, (3, 16, 24), dtype=np.uint8)
    data = encode(Raster(pixels, maxval=255.0, icc_profile=big_icc, exif=exif.tobytes()), "JPEG", quality=90)
    assert calls["encode"] == 1
    out = Image.open(io.BytesIO(data))
    out.load()
    assert out.info["icc_profile"] == big_icc and out.getexif()[0x010F] == "maker" and out.size == (24, 16)


def test_exif_too_big_for_a_jpeg_is_still_refused(rng):
    raster = Raster(rng.integers(0, 256, (3, 8, 8), dtype=np.uint8), maxval=255.0, exif=b"Exif\0\0" + bytes(70_000))
    with pytest.raises(ImageError, match="does not fit in a JPEG"):
        encode(raster, "JPEG", quality=90)
