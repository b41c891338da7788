"""Bad inputs and faults: a corpus of broken and unusual files through single and batch runs."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from tests.conftest import run


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 10)) + png_chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(size, mode="RGB", seed=0):
    channels = {"RGB": 3, "L": 1}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels)).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr)


def make_corpus(folder: Path) -> dict[str, tuple[int, str]]:
    """Write the corpus; return {file name: (exit code alone, text expected on stderr)}."""
    folder.mkdir(parents=True, exist_ok=True)
    good_png = encoded(noise((64, 64)), "PNG")
    good_jpg = encoded(noise((64, 64)), "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0])
    frames = [noise((8, 8), seed=i).convert("P") for i in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    cases = {
        "empty.png": (b"", 1, "empty file, not an image"),
        "text.png": (b"<html><body>not an image</body></html>", 1, "not a recognised image"),
        "eps.jpg": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 1, "not a recognised image"),
        "cut-png.png": (good_png[: len(good_png) // 2], 1, "cannot decode image"),
        "cut-jpg.jpg": (good_jpg[: len(good_jpg) // 2], 1, "--allow-truncated accepts it"),
        "bomb.png": (png_header_only(30000, 30000), 1, "30000x30000 is over the limit of 100000000 pixels"),
        "zero.png": (png_header_only(0, 10), 1, "not a recognised image"),
        "cmyk.jpg": (encoded(noise((16, 16)).convert("CMYK"), "JPEG"), 0, ""),
        "palette-trns.png": (encoded(pal, "PNG", transparency=0), 0, ""),
        "sixteen.png": (encoded(Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000), "PNG"), 0, ""),
        "float.tif": (encoded(Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)), "TIFF"), 1,
                      "pass --map normalize"),  # float into 8-bit PNG: refused, never clipped unasked
        "rotated.jpg": (encoded(noise((20, 10)), "JPEG", exif=exif.tobytes()), 0, ""),
        "animated.gif": (animated.getvalue(), 0, "has 3 frames; using the first"),
        "one.png": (encoded(noise((1, 1)), "PNG"), 0, ""),
    }
    for name, (data, _, _) in cases.items():
        (folder / name).write_bytes(data)
    return {name: (code, text) for name, (_, code, text) in cases.items()}




@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    return folder, make_corpus(folder)


def test_each_corpus_file_alone(corpus, tmp_path):
    folder, expected = corpus
    for name, (code, text) in expected.items():
        out = tmp_path / "single" / f"{Path(name).stem}-out.png"
        out.parent.mkdir(exist_ok=True)
        result = run("apply", "-k", "sharpen", folder / name, "-o", out)
        assert result.exit_code == code, f"{name}: {result.stderr}"
        assert text in result.stderr, f"{name}: {result.stderr}"
        if code:
            named = out if name == "float.tif" else folder / name  # a format problem names the output
            assert result.stderr.startswith(f"kernelcli: error: {named}:"), result.stderr
            assert not out.exists()
        else:
            assert out.exists()


def test_corpus_outputs_are_right(corpus, tmp_path):
    folder, _ = corpus
    def out_of(name, ext=".png"):
        target = tmp_path / f"{Path(name).stem}-o{ext}"
        result = run("apply", "-k", "identity", folder / name, "-o", target)
        assert result.exit_code == 0, result.stderr
        with Image.open(target) as im:
            im.load()
            return im

    assert out_of("cmyk.jpg").mode == "RGB"
    assert out_of("palette-trns.png").mode == "RGBA"
    sixteen = out_of("sixteen.png")
    assert sixteen.mode in ("I;16", "I")
    np.testing.assert_array_equal(np.asarray(sixteen), np.arange(64).reshape(8, 8) * 1000)
    floats = out_of("float.tif", ".tif")
    assert floats.mode == "F"
    np.testing.assert_allclose(np.asarray(floats), np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), atol=1e-6)
    assert out_of("rotated.jpg").size == (10, 20)  # turned upright
    assert out_of("one.png").size == (1, 1)


def test_batch_of_the_whole_corpus_with_good_files(corpus, tmp_path):
    folder, expected = corpus
    for i in range(3):
        noise((32, 24), seed=10 + i).save(folder / f"good-{i}.png")
    out = tmp_path / "out"
    report = tmp_path / "report.jsonl"
    result = run("apply", "-k", "blur", folder, "-o", out, "--format", "png", "--report", report)
    assert result.exit_code == 3
    bad = sorted(n for n, (code, _) in expected.items() if code)
    good = sorted([f"good-{i}.png" for i in range(3)] + [n for n, (code, _) in expected.items() if not code])
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(n).stem + ".png" for n in good)
    for name in bad:
        assert f"  failed: {folder / name}" in result.stderr
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(Path(r["input"]).name for r in records if r["status"] == "failed") == bad


def test_allow_truncated_accepts_with_a_warning(corpus, tmp_path):
    folder, _ = corpus
    result = run("apply", "-k", "blur", folder / "cut-jpg.jpg", "-o", tmp_path / "t.png", "--allow-truncated")
    assert result.exit_code == 0, result.stderr
    assert "truncated file; the missing part is filled in" in result.stderr


def test_max_pixels_is_checked_before_decoding(tmp_path):
    noise((50, 40)).save(tmp_path / "a.png")
    result = run("apply", "-k", "blur", tmp_path / "a.png", "--max-pixels", "1000")
    assert result.exit_code == 1
    assert "50x40 is over the limit of 1000 pixels" in result.stderr


def test_rgba_to_jpeg_names_the_option_and_background_flattens(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 0
    rgba[0, 0] = (200, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    result = run("apply", "-k", "identity", tmp_path / "a.png", "-o", tmp_path / "a.jpg")
    assert result.exit_code == 1 and "pass --background COLOR to flatten it" in result.stderr
    assert not (tmp_path / "a.jpg").exists()
    ok = run("apply", "-k", "identity", tmp_path / "a.png", "-o", tmp_path / "a.jpg", "--background", "#00ff00")
    assert ok.exit_code == 0, ok.stderr
    with Image.open(tmp_path / "a.jpg") as im:
        pixels = np.asarray(im).astype(int)
    assert abs(pixels[3, 3] - (0, 255, 0)).max() < 8  # transparent → the background colour


def test_non_finite_results_are_not_written(tmp_path):
    np.save(tmp_path / "big.npy", np.full((4, 4), 3e38, np.float32))
    result = run("apply", "-k", "sharpen", tmp_path / "big.npy", "-o", tmp_path / "o.png", "--map", "clip")
    assert result.exit_code == 1 and "NaN or infinite" in result.stderr
    result = run("apply", "-k", "sharpen", tmp_path / "big.npy", "-o", tmp_path / "o.npy")
    assert result.exit_code == 1
    assert "NaN or infinite values" in result.stderr
    assert not (tmp_path / "o.npy").exists()


def test_undecodable_file_names_print_and_report_safely(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.fsdecode(b"bad\xffname.png")
    (folder / odd).write_bytes(b"not an image")
    noise((8, 8)).save(folder / "fine.png")
    report = tmp_path / "r.jsonl"
    result = run("apply", "-k", "blur", folder, "-o", tmp_path / "out", "--report", report)
    assert result.exit_code == 3
    assert "not a recognised image" in result.stderr
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert {r["status"] for r in records} == {"ok", "failed"}


def test_stdin_size_cap(monkeypatch):
    import kernelcli.run.runner as runner

    class Stdin:
        class buffer:
            @staticmethod
            def read(n):
                return b"x" * n

    monkeypatch.setattr(runner.sys, "stdin", Stdin)
    with pytest.raises(Exception, match="stdin: more than 100 bytes; refused"):
        runner.read_stdin(100)


def test_tiled_equals_untiled_in_every_mode(rng):
    import torch

    from kernelcli.compute.convolve import correlate
    from kernelcli.compute.options import Geometry

    x = torch.from_numpy(rng.integers(0, 256, (1, 2, 23, 19)).astype(np.float64))
    w = rng.integers(-3, 4, (3, 4)).astype(float)
    for border in ("replicate", "reflect", "symmetric", "circular", "zeros", "constant"):
        for kw in ({}, {"stride": 2}, {"dilation": 2, "padding": 3}, {"padding": "valid"}):
            geo = Geometry(border, 9.0, **kw)
            whole = correlate(x, w, geo=geo)
            for tile in (1, 4, 7):
                np.testing.assert_array_equal(correlate(x, w, geo=geo, tile_rows=tile).numpy(), whole.numpy())


# Inputs the fuzzers (tests/fuzz/) found crashing the reader; each must now be a clean error.
FUZZ_REGRESSIONS = {
    "tiff-missing-dimensions": "SUkqAAgAAAAJAAABBAABAAAABgAAAAEBBAABAAAABQAAAAIBAwABAAABCAAAAAMBAwABAAAAAQAAAAYBAwABAAAA"
    "AQAAABEBBAABAAAAegAAABYB/////////////////////////////////wQAAQAAAAUAAAAXAQQAAQAAAB4AAAAcAQMAAQAA"
    "AAEAAAAAAAAAAQEBAQEBAQEBATABAQEBAQEBAQEBAQEBAQEBAQEA",
}


@pytest.mark.parametrize("name", sorted(FUZZ_REGRESSIONS))
def test_fuzz_regressions(name):
    import base64

    from kernelcli.errors import ImageError
    from kernelcli.io.images import read

    data = base64.b64decode(FUZZ_REGRESSIONS[name])
    try:
        read(name, data)
    except ImageError as exc:
        assert str(exc).startswith(f"{name}: ")
