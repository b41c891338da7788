"""Reading and writing images and numeric arrays; modes, alpha, EXIF/ICC, safe writes.

Inside kernelcli an image is a :class:`Raster`: float pixels (C, H, W) in the file's own
units (0–255 for 8-bit, 0–65535 for 16-bit), alpha kept apart, and ``maxval`` telling the
bit depth (``None`` for raw numbers from .npy/.csv or float images).
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
import tempfile
import threading
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ..errors import ImageError, UsageError, WriteError

# Decoders we allow, by content; EPS/PDF/PSD/FITS and friends are never invoked.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF", "PPM", "TGA")
ARRAY_FORMATS = ("NPY", "CSV")
_ARRAY_EXT = {".npy": "NPY", ".csv": "CSV", ".txt": "CSV"}
_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"}
_NPY_MAGIC = b"\x93NUMPY"
_CSV_TEXT = re.compile(rb"[\s\d.,eE+-]+")  # numbers as text: what a CSV on stdin holds
# Formats whose transparency does not come back: none in JPEG, PPM (Pillow drops it silently),
# BMP (no gray + alpha; Pillow reads 32-bit BMP back as RGB).
_NO_ALPHA = {"JPEG", "PPM", "BMP"}
_JPEG_MARKER_BYTES = 65533  # the most an APP1 (EXIF) segment holds
_ICC_CHUNK = _JPEG_MARKER_BYTES - 14  # an APP2 segment's share of an ICC profile ("ICC_PROFILE\0", number, count)


@dataclass(frozen=True)
class Limits:
    """What kernelcli agrees to decode. Pixel and side limits are checked from the header,
    before any pixel is decoded; ``allow_truncated`` accepts cut-off files with a warning."""

    max_pixels: int = 100_000_000
    max_side: int = 65_535
    max_bytes: int = 1 << 30  # a file or stdin larger than this is refused
    allow_truncated: bool = False


_truncated_lock = threading.Lock()

# kernelcli checks every header against its own Limits (and the memory budget) before decoding;
# Pillow's own limit would only warn between 89.5 and 179 MP (a raw DecompressionBombWarning)
# and refuse above, before kernelcli could say which limit and how to raise it. Off, in one place.
Image.MAX_IMAGE_PIXELS = None


@dataclass
class Raster:
    """Pixels (C, H, W), C = 1 (gray) or 3 (RGB) for images, any C for arrays: uint8 or
    uint16 as decoded (often a view of an (H, W, C) array), float for results and arrays."""

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    maxval: float | None = 255.0
    format: str | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return self.pixels.shape[-2], self.pixels.shape[-1]


# The one table of output formats: a file extension (also the --format word) → the format.
# It decides what -o NAME writes and which --format words the commands accept.
FORMATS = {
    "png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP",
    "gif": "GIF", "ppm": "PPM", "pgm": "PPM", "pbm": "PPM", "pnm": "PPM", "tga": "TGA",
    "npy": "NPY", "csv": "CSV", "txt": "CSV",
}
TEXT_FORMATS = ("CSV",)  # printable at a terminal; every other format is binary
DEEP_FORMATS = ("PNG", "TIFF", "PPM")  # formats that hold 16 bits per channel (gray and colour)
DEPTHS = (8, 16)  # bits per channel an image output may be given (--depth)


def format_for_path(path: str | Path, word: str | None = None) -> str:
    """The output format of a file name (e.g. 'PNG' for x.png, 'NPY' for x.npy). ``word`` (a
    --format word) must agree with an extension of the table, and decides alone for a name whose
    extension names no format (``-o g.out --format gif`` writes a GIF, as ImageMagick's gif:g.out)."""
    ext = Path(str(path)).suffix.lower()  # str(): also an object URL (storage.ObjectPath)
    fmt = FORMATS.get(ext[1:]) if ext else None
    chosen = FORMATS.get(word.lower()) if word else None
    if fmt is None and chosen is None:
        raise UsageError(
            f"{path}: cannot tell the output format from {ext or 'no extension'!r}; "
            f"use {', '.join('.' + e for e in FORMATS)}, or --format"
        )
    if fmt is not None and chosen is not None and chosen != fmt:
        raise UsageError(f"--format {word} does not match the output name {path}")
    return fmt or chosen


def check_depth(fmt: str | None, depth: int | None, name: str) -> None:
    """16 bits per channel go only into a format that holds them (checked before any work;
    ``fmt`` None: not known yet)."""
    if depth == 16 and fmt is not None and fmt not in DEEP_FORMATS and fmt not in ARRAY_FORMATS:
        raise UsageError(f"{name}: {fmt} holds 8 bits per channel; 16 bits go into .png, .tif or .ppm")


def at_depth(raster: Raster, depth: int | None) -> Raster:
    """A mapped image at 8 or 16 bits per channel (None: as it is): 16 → 8 rounds v·255/65535,
    8 → 16 multiplies by 257 (255 → 65535). Arrays and float images (no depth) stay as they are."""
    maxval = {8: 255.0, 16: 65535.0}.get(depth)
    if maxval is None or raster.maxval is None or raster.maxval == maxval:
        return raster
    dtype = np.uint8 if depth == 8 else np.uint16

    def convert(values):
        return np.round(np.asarray(values, dtype=np.float64) * (maxval / raster.maxval)).astype(dtype)

    return replace(raster, pixels=convert(raster.pixels), maxval=maxval,
                   alpha=None if raster.alpha is None else convert(raster.alpha))


def extension_for(fmt: str) -> str:
    """The usual extension of a format: the first of the table's names for it."""
    return "." + next(ext for ext, f in FORMATS.items() if f == fmt)


# --------------------------------------------------------------------------- reading


def read(source: str | Path, data: bytes | None = None, limits: Limits = Limits()) -> Raster:
    """Read an image or array from a path, or from ``data`` bytes (stdin) named ``source``."""
    name = str(source)
    if data is None:
        path = Path(source)
        data = read_regular(path, limits.max_bytes + 1, name)
        if path.suffix.lower() in _ARRAY_EXT:
            if len(data) > limits.max_bytes:
                raise ImageError(f"{name}: more than {limits.max_bytes} bytes; refused")
            return _read_array(name, io.BytesIO(data), _ARRAY_EXT[path.suffix.lower()])
    if not data:
        raise ImageError(f"{name}: empty file, not an image" if name != "-" else "no image data on stdin")
    if len(data) > limits.max_bytes:
        raise ImageError(f"{name}: more than {limits.max_bytes} bytes; refused")
    if data.startswith(_NPY_MAGIC):
        return _read_array(name, io.BytesIO(data), "NPY")
    if _CSV_TEXT.fullmatch(data) and re.search(rb"\d", data):  # CSV text: no image starts like that
        return _read_array(name, io.BytesIO(data), "CSV")
    return _read_image(name, data, limits)


def read_regular(path: str | Path, limit: int, name: str | None = None) -> bytes:
    """Up to ``limit`` bytes of a regular file. Anything else (a FIFO, a device, a socket, a
    folder) is refused without reading from it: the file is opened non-blocking and checked
    with fstat first, so no read can wait forever for a writer."""
    name = str(path) if name is None else name
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise ImageError(f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    with open(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ImageError(f"{name}: is a directory, not an image")
        if not stat.S_ISREG(mode):
            raise ImageError(f"{name}: not a regular file (a FIFO, device or socket); refused")
        try:
            return read_capped(fh, limit)
        except OSError as exc:
            raise ImageError(f"{name}: cannot read: {exc.strerror or exc}") from None


def read_capped(fh, limit: int) -> bytes:
    """Up to ``limit`` bytes of a binary file object, in pieces sized by the file's own size
    where it has one (else 1 MiB, growing to 64 MiB): ``fh.read(limit)`` would reserve ``limit``
    bytes first (Python allocates the whole request), 1 GiB for a 7 KB image, which a process
    under ``ulimit -v`` does not have (and ``-j N`` reserves N times)."""
    try:
        size = os.fstat(fh.fileno()).st_size if stat.S_ISREG(os.fstat(fh.fileno()).st_mode) else None
    except (OSError, AttributeError, ValueError):
        size = None
    want = min(limit, size + 1 if size is not None else 1 << 20)
    pieces, total = [], 0
    while total < limit:
        piece = fh.read(min(want, limit - total))
        if not piece:
            break
        pieces.append(piece)
        total += len(piece)
        want = min(max(want, 1 << 20) * 2, 64 << 20)
    return b"".join(pieces)


def _read_array(name: str, src, fmt: str) -> Raster:
    try:
        if fmt == "NPY":
            arr = np.load(src, allow_pickle=False)
        else:
            text = src.read().decode("utf-8")
            first = text.lstrip().split("\n", 1)[0]
            arr = np.loadtxt(io.StringIO(text), delimiter="," if "," in first else None, ndmin=2)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{name}: not a readable {fmt.lower()} array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise ImageError(f"{name}: array of {arr.dtype} is not numeric")
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise ImageError(f"{name}: array of shape {arr.shape}; expected H×W or H×W×C")
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # arrays are H×W×C, as numpy images
    dtype = np.float64 if arr.dtype in (np.float64, np.int64, np.uint64, np.int32, np.uint32) else np.float32
    pixels = arr.astype(dtype)
    if not np.isfinite(pixels).all():
        raise ImageError(f"{name}: array holds NaN or infinite values")
    return Raster(pixels, maxval=None, format=fmt)


def _read_image(name: str, data: bytes, limits: Limits = Limits()) -> Raster:
    """Decode with Pillow. With :func:`route_warnings` installed, Pillow's warnings about
    damaged data become notes naming the file (per thread); where the warnings filter turns
    them into errors, they are this file's error."""
    _pending.notes = []
    try:
        raster = _decode(name, data, limits)
    except Warning as exc:
        raise ImageError(f"{name}: damaged image data: {exc}") from None
    finally:
        caught, _pending.notes = _pending.notes, None
    raster.notes.extend(f"{name}: {text}" for text in dict.fromkeys(caught))
    return raster


_pending = threading.local()


def route_warnings() -> None:
    """Send warnings raised while this thread decodes an image to that image's notes (the CLI
    prints them as ``kernelcli: warning: FILE: …``); other warnings show as usual. Idempotent."""
    original = warnings.showwarning
    if getattr(original, "kernelcli", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        notes = getattr(_pending, "notes", None)
        if notes is not None:
            notes.append(str(message).strip())
        else:
            original(message, category, filename, lineno, file, line)

    show.kernelcli = True
    warnings.showwarning = show


# What Pillow raises on damaged or hostile data besides its own errors (found by fuzzing:
# a malformed TIFF raises TypeError when its frames are counted).
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError,
                   struct.error, ZeroDivisionError, OverflowError, RecursionError)


def _decode(name: str, data: bytes, limits: Limits) -> Raster:
    notes = []
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        width, height = img.size
        if width * height > limits.max_pixels or max(width, height) > limits.max_side:
            raise ImageError(
                f"{name}: refused, {width}x{height} is over the limit of {limits.max_pixels} pixels "
                f"or {limits.max_side} a side (--max-pixels raises it)"
            )
        if _is_deep_colour(img, data):  # Pillow would make it 8-bit: decode it with numpy instead
            return _read_deep_colour(name, img, data)
        fast = _decode_jpeg(img, data)
        if fast is not None:
            return replace(fast, format="JPEG", icc_profile=img.info.get("icc_profile"), exif=_exif_bytes(img.getexif()))
        try:
            img.load()
        except OSError as exc:
            if not (limits.allow_truncated and "truncated" in str(exc)):
                raise
            img = _load_truncated(data)
            notes.append(f"{name}: truncated file; the missing part is filled in (--allow-truncated)")
        fmt = img.format
        if getattr(img, "n_frames", 1) > 1:
            notes.append(f"{name}: has {img.n_frames} frames; using the first")
        icc = img.info.get("icc_profile")
        exif = img.getexif()
        if exif.get(0x0112, 1) != 1:  # turn upright (only then: exif_transpose copies otherwise)
            img = ImageOps.exif_transpose(img)
            exif = img.getexif()
        raster = from_pil(img, name)
        exif_bytes = _exif_bytes(exif)
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image (allowed: {', '.join(IMAGE_FORMATS)})") from None
    except _DECODER_ERRORS as exc:  # truncated, corrupt or hostile data
        hint = "; --allow-truncated accepts it" if "truncated" in str(exc) else ""
        raise ImageError(f"{name}: cannot decode image: {exc or type(exc).__name__}{hint}") from None
    return replace(raster, format=fmt, icc_profile=icc, exif=exif_bytes, notes=notes)


def _exif_bytes(exif: Image.Exif) -> bytes | None:
    """The EXIF block to carry to the output: without the orientation, which is applied."""
    exif.pop(0x0112, None)
    return exif.tobytes() if len(exif) else None


def _decode_jpeg(img: Image.Image, data: bytes) -> Raster | None:
    """8-bit gray or RGB JPEG pixels straight from libjpeg-turbo into numpy (simplejpeg): the
    same pixels as Pillow's decoder, about twice as fast on large photos. None where Pillow
    must decode: other modes (CMYK), a turned image (EXIF orientation), or any warning from the
    decoder (truncated, corrupt), so that Pillow's path gives its notes and errors as before."""
    if img.format != "JPEG" or img.mode not in ("L", "RGB") or img.getexif().get(0x0112, 1) != 1:
        return None
    try:
        import simplejpeg
    except ImportError:  # an install without it: Pillow decodes everything
        return None
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="GRAY" if img.mode == "L" else "RGB", strict=True)
    except ValueError:
        return None
    if arr.shape[:2] != (img.height, img.width):
        return None
    return Raster(arr.transpose(2, 0, 1), maxval=255.0)  # a (C, H, W) view, as from_pil gives


def _encode_jpeg(raster: Raster, quality: int) -> bytes | None:
    """8-bit gray or RGB pixels to JPEG with libjpeg-turbo (simplejpeg), 4:2:0 chroma and the
    quantisation of Pillow's defaults, EXIF and ICC kept; None where Pillow encodes (alpha, other
    depths, an EXIF block too big for a JPEG, which Pillow's path refuses with its message)."""
    c = raster.pixels.shape[0]
    if (raster.maxval != 255.0 or raster.alpha is not None or c not in (1, 3)
            or (raster.exif and len(raster.exif) > _JPEG_MARKER_BYTES)  # Pillow's path says why
            or (raster.icc_profile and len(raster.icc_profile) > 255 * _ICC_CHUNK)):
        return None
    try:
        import simplejpeg
    except ImportError:
        return None
    arr = np.ascontiguousarray(raster.pixels.transpose(1, 2, 0), dtype=np.uint8)
    if c == 1:
        data = simplejpeg.encode_jpeg(arr, quality=quality, colorspace="GRAY", colorsubsampling="Gray")
    else:
        data = simplejpeg.encode_jpeg(arr, quality=quality, colorspace="RGB", colorsubsampling="420")
    return _with_metadata(data, raster.exif, raster.icc_profile)


def _with_metadata(data: bytes, exif: bytes | None, icc: bytes | None) -> bytes:
    """A JPEG with an EXIF block (APP1) and an ICC profile (APP2, in chunks, as the ICC spec and
    Pillow write it) inserted after its JFIF header."""
    markers = []
    if exif:
        markers.append(b"\xff\xe1" + struct.pack(">H", 2 + len(exif)) + exif)
    if icc:
        chunks = [icc[i:i + _ICC_CHUNK] for i in range(0, len(icc), _ICC_CHUNK)]
        for number, chunk in enumerate(chunks, 1):
            markers.append(b"\xff\xe2" + struct.pack(">H", 16 + len(chunk)) + b"ICC_PROFILE\0"
                           + bytes((number, len(chunks))) + chunk)
    if not markers:
        return data
    at = 4 + struct.unpack(">H", data[4:6])[0] if data[2:4] == b"\xff\xe0" else 2  # after SOI and JFIF
    return data[:at] + b"".join(markers) + data[at:]


# 16-bit colour (RGB, RGBA, gray+alpha) in PNG and TIFF: Pillow holds only 8-bit colour, so these
# are decoded with pypng and tifffile and encoded with numpy + zlib and tifffile; never a silent
# 8-bit result.
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # EXIF orientation → the turn that makes it upright


def _is_deep_colour(img: Image.Image, data: bytes) -> bool:
    """Whether the header says 16-bit samples with colour or alpha."""
    if img.format == "PNG":  # IHDR comes first: bit depth at byte 24, colour type at 25
        return len(data) > 25 and data[24] == 16 and data[25] in (2, 4, 6)
    if img.format == "TIFF":
        bits = img.tag_v2.get(258, 1)
        bits = bits if isinstance(bits, tuple) else (bits,)
        return img.tag_v2.get(277, 1) > 1 and 16 in bits
    if img.format == "PPM":  # binary P6 with maxval > 255: Pillow scales it down to 8 bits
        return _ppm_maxval(img) > 255
    return False


def _ppm_maxval(img: Image.Image) -> int:
    """The maxval of a binary colour PPM (P6) as Pillow's header reader left it; 0 for others."""
    tile = img.tile[0] if img.mode == "RGB" and len(img.tile) == 1 else None
    if tile is None or tile[0] != "ppm" or not isinstance(tile[3], tuple):
        return 0
    return int(tile[3][1])


def _read_deep_colour(name: str, img: Image.Image, data: bytes) -> Raster:
    import png
    import tifffile

    try:
        if img.format == "PNG":
            width, height, rows, info = png.Reader(bytes=data).asDirect()
            arr = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, info["planes"])
        elif img.format == "PPM":  # binary P6, samples big-endian, scaled from maxval to 65535
            maxval, count = _ppm_maxval(img), img.width * img.height * 3
            arr = np.frombuffer(data, ">u2", count=count, offset=img.tile[0][2]).reshape(img.height, img.width, 3)
            arr = np.round(np.minimum(arr, maxval) * (65535 / maxval)).astype(np.uint16)
        else:
            arr = tifffile.imread(io.BytesIO(data), key=0)
    except (png.Error, tifffile.TiffFileError, ValueError, OSError, EOFError, KeyError, IndexError,
            NotImplementedError, struct.error, zlib.error) as exc:
        raise ImageError(f"{name}: cannot decode 16-bit colour {img.format}: {exc or type(exc).__name__}") from None
    if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (2, 3, 4):
        raise ImageError(f"{name}: 16-bit {img.format} of {arr.dtype} {arr.shape} is not supported")
    exif = img.getexif()
    turn = _TRANSPOSE.get(exif.pop(0x0112, 1))
    if turn is not None:  # upright, plane by plane, with Pillow's own turns
        arr = np.dstack([np.asarray(Image.fromarray(arr[..., c]).transpose(turn)) for c in range(arr.shape[2])])
    alpha = arr[..., -1] if arr.shape[2] in (2, 4) else None
    pixels = arr.transpose(2, 0, 1)[: 1 if arr.shape[2] == 2 else 3]
    notes = [f"{name}: has {img.n_frames} frames; using the first"] if getattr(img, "n_frames", 1) > 1 else []
    return Raster(pixels, alpha=alpha, maxval=65535.0, format=img.format, icc_profile=img.info.get("icc_profile"),
                  exif=exif.tobytes() if len(exif) else None, notes=notes)


def _eight_bits_only(name: str, fmt: str, what: str) -> UsageError:
    return UsageError(f"{name}: {fmt} holds 8 bits per channel, the result is 16-bit {what}; write .png, .tif or "
                      ".ppm to keep 16 bits, or pass --depth 8")


def _encode_deep_colour(raster: Raster, fmt: str, name: str) -> bytes:
    """16-bit colour or 16-bit with alpha as PNG or TIFF (tifffile), with its ICC profile."""
    planes = [*raster.pixels, *([] if raster.alpha is None else [raster.alpha])]
    arr = np.ascontiguousarray(np.stack(planes, axis=-1), dtype=np.uint16)
    height, width, c = arr.shape
    buf = io.BytesIO()
    if fmt == "PNG":
        return _png16(arr, raster.icc_profile)
    if fmt == "TIFF":
        import tifffile

        tifffile.imwrite(buf, arr, photometric="rgb" if c >= 3 else "minisblack",
                         extrasamples=["unassalpha"] if raster.alpha is not None else None,
                         iccprofile=raster.icc_profile)
        return buf.getvalue()
    raise _eight_bits_only(name, fmt, "colour")


def _ppm16(raster: Raster, name: str) -> bytes:
    """16-bit gray (P5) or colour (P6) with maxval 65535, samples big-endian (Netpbm)."""
    if raster.alpha is not None:
        raise _no_alpha(name, "PPM")
    c, height, width = raster.pixels.shape
    if c not in (1, 3):
        raise UsageError(f"{name}: the result has {c} channels; an image needs 1 or 3 (write .npy instead)")
    body = np.ascontiguousarray(raster.pixels.transpose(1, 2, 0), dtype=">u2").tobytes()
    return f"P{5 if c == 1 else 6}\n{width} {height}\n65535\n".encode() + body


def _png16(arr: np.ndarray, icc_profile: bytes | None) -> bytes:
    """A 16-bit PNG of an (H, W, C) uint16 array, C = 1..4, rows "Up"-filtered, numpy and zlib only
    (pypng writes about 30 times slower)."""
    height, width, c = arr.shape
    rows = arr.astype(">u2").view(np.uint8).reshape(height, width * c * 2)
    up = rows.copy()
    up[1:] -= rows[:-1]  # filter 2 ("Up"): each byte minus the byte above, modulo 256
    raw = np.hstack([np.full((height, 1), 2, np.uint8), up])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))]
    if icc_profile:
        parts.append(chunk(b"iCCP", b"icc\0\0" + zlib.compress(icc_profile)))
    parts += [chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)), chunk(b"IEND", b"")]
    return b"".join(parts)


def _load_truncated(data: bytes) -> Image.Image:
    """Decode a cut-off file as far as it goes (Pillow's switch is process-wide: held briefly)."""
    with _truncated_lock:
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            img.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
    return img


def from_pil(img: Image.Image, name: str = "image") -> Raster:
    """Convert a PIL image to a Raster, choosing colour, alpha and bit depth deliberately."""
    mode = img.mode
    if mode == "1":
        img, mode = img.convert("L"), "L"
    elif mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in img.info
        mode = "RGBA" if has_alpha else "RGB"
        img = img.convert(mode)
    elif mode == "La":
        img, mode = img.convert("LA"), "LA"
    elif mode in _TO_RGB:
        mode = "RGBA" if mode == "RGBa" else "RGB"
        img = img.convert(mode)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageError(f"{name}: 32-bit integer image with values outside 0–65535 is not supported")
        return Raster(arr.astype(np.uint16)[None], maxval=65535.0)
    if mode == "F":
        return Raster(np.asarray(img, dtype=np.float32)[None], maxval=None)
    if mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageError(f"{name}: image mode {mode!r} is not supported")
    arr = np.asarray(img)  # uint8, (H, W) or (H, W, C); kept as is, no float copy
    if arr.ndim == 2:
        arr = arr[:, :, None]
    pixels = arr.transpose(2, 0, 1)  # a (C, H, W) view of the (H, W, C) pixels
    alpha = None
    if mode in ("LA", "RGBA"):
        pixels, alpha = pixels[:-1], arr[..., -1]
    return Raster(pixels, alpha=alpha, maxval=255.0)


# --------------------------------------------------------------------------- writing


def encode(raster: Raster, fmt: str, *, quality: int = 95, name: str = "output", background=None,
           depth: int | None = None) -> bytes:
    """Encode a Raster whose pixels are already mapped to its bit depth (or raw for arrays).
    ``background`` (an RGB tuple) flattens transparency for formats without alpha; ``depth``
    (8 or 16) converts an image to that many bits per channel first (None: as it is)."""
    buf = io.BytesIO()
    if depth is not None and fmt not in ARRAY_FORMATS:
        check_depth(fmt, depth, name)
        raster = at_depth(raster, depth)
    if raster.pixels.dtype.kind == "f" and not _all_finite(raster.pixels):
        raise ImageError(f"{name}: the result holds NaN or infinite values (an overflow?); nothing written")
    if raster.alpha is not None and fmt in _NO_ALPHA and background is not None:
        raster = flatten(raster, background)
    if fmt == "NPY":
        arr = raster.pixels[0] if raster.pixels.shape[0] == 1 else raster.pixels.transpose(1, 2, 0)  # H×W×C
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        return buf.getvalue()
    if fmt == "CSV":
        if raster.pixels.shape[0] != 1:
            raise UsageError(f"{name}: a .csv holds one 2-D table but the result has {raster.pixels.shape[0]} channels; use .npy")
        text = io.StringIO()
        np.savetxt(text, raster.pixels[0], fmt="%.10g", delimiter=",")
        return text.getvalue().encode()
    if raster.maxval is not None and raster.maxval > 255 and fmt == "PPM":
        return _ppm16(raster, name)
    if raster.maxval is not None and raster.maxval > 255 and (raster.pixels.shape[0] == 3 or raster.alpha is not None):
        return _encode_deep_colour(raster, fmt, name)
    if fmt == "JPEG":
        fast = _encode_jpeg(raster, quality)
        if fast is not None:
            return fast
    img = to_pil(raster, fmt, name)
    if fmt == "GIF" and img.mode == "LA":  # Pillow's GIF writer drops LA's alpha; from RGBA it keeps it
        img = img.convert("RGBA")
    options = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    if fmt in ("PNG", "JPEG", "WEBP", "TIFF") and raster.icc_profile:
        options["icc_profile"] = raster.icc_profile
    if fmt in ("PNG", "JPEG", "WEBP") and raster.exif:
        if fmt == "JPEG" and len(raster.exif) > _JPEG_MARKER_BYTES:
            raise ImageError(f"{name}: the EXIF data ({len(raster.exif)} bytes) does not fit in a JPEG "
                             f"(at most {_JPEG_MARKER_BYTES}); write .png, .webp or .tif")
        options["exif"] = raster.exif
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _all_finite(pixels: np.ndarray) -> bool:
    """Every value finite, without a boolean copy of the whole: a finite sum proves it (NaN or
    infinity anywhere makes it NaN or infinite); an overflowed sum is checked row block by block."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(pixels.sum()):
            return True
    return all(np.isfinite(pixels[..., i:i + 64, :]).all() for i in range(0, pixels.shape[-2], 64))


def to_pil(raster: Raster, fmt: str = "PNG", name: str = "output") -> Image.Image:
    """The PIL image of a mapped Raster (pixels already rounded into 0..maxval)."""
    c = raster.pixels.shape[0]
    if c not in (1, 3):
        raise UsageError(f"{name}: the result has {c} channels; an image needs 1 or 3 (write .npy instead)")
    if raster.maxval is None:  # float data: only TIFF holds it
        if fmt != "TIFF" or c != 1 or raster.alpha is not None:
            raise UsageError(f"{name}: float results can be written as .npy or gray .tif; or pass --map to make 8-bit")
        return Image.fromarray(raster.pixels[0].astype(np.float32))
    if raster.maxval > 255:
        if c != 1 or raster.alpha is not None:
            raise UsageError(f"{name}: 16-bit output is gray only")
        if fmt not in ("PNG", "TIFF"):
            raise _eight_bits_only(name, fmt, "gray")
        return Image.fromarray(raster.pixels[0].astype(np.uint16))
    arr = raster.pixels.transpose(1, 2, 0)  # (H, W, C): no copy when the pixels are such a view
    if raster.alpha is not None:
        if fmt in _NO_ALPHA:
            raise _no_alpha(name, fmt)
        colour, arr = arr, np.empty((*arr.shape[:2], c + 1), dtype=np.uint8)  # one 8-bit copy, not a float one
        arr[..., :c], arr[..., c] = colour, raster.alpha
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)  # L, LA, RGB or RGBA


def _no_alpha(name: str, fmt: str) -> UsageError:
    return UsageError(f"{name}: {fmt} cannot store transparency; pass --background COLOR to flatten it, "
                      "or write .png, .webp or .tif")


def flatten(raster: Raster, background) -> Raster:
    """Composite over an RGB background colour; the result has no alpha."""
    maxval = raster.maxval or 255.0
    a = raster.alpha.astype(np.float64) / maxval
    colour = np.asarray(background, dtype=np.float64)[: raster.pixels.shape[0], None, None] * (maxval / 255.0)
    if raster.pixels.shape[0] == 1:
        colour = np.asarray([np.dot(background, (0.299, 0.587, 0.114))])[:, None, None] * (maxval / 255.0)
    pixels = raster.pixels * a + colour * (1 - a)
    pixels = np.clip(np.round(pixels), 0, maxval).astype(np.uint8 if maxval == 255 else np.uint16)
    return replace(raster, pixels=pixels, alpha=None)


def _read_umask() -> int:
    """The process umask: from /proc where it can be read without changing it, else by
    setting and restoring it (done at import, before any thread writes files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = [_read_umask()]  # read once per process; a forked server worker reads its client's


def _forget_umask() -> None:
    _UMASK[0] = None


os.register_at_fork(after_in_child=_forget_umask)


def _umask() -> int:
    if _UMASK[0] is None:  # first use in a forked child, after it took its client's umask
        _UMASK[0] = _read_umask()
    return _UMASK[0]


TEMP_PREFIX = ".kc-"  # kernelcli's temporary files: .kc-HOST-PID-RANDOM.part, short whatever the real name
TEMP_SUFFIX = ".part"
NEWBORN_TEMP = 60.0  # s: an empty temp file this young may be a writer's that has not locked it yet
FOREIGN_TEMP = 24 * 3600.0  # s: a temp file from another host (or an older kernelcli) is left this long

try:
    import fcntl
except ImportError:  # no flock (Windows): liveness falls back on the age alone
    fcntl = None


def host_id() -> str:
    """Eight hex digits naming this running kernel: its boot id, the same in every container and
    PID namespace of this machine (they share one table of file locks), another on other hosts
    and after a reboot. Without /proc, the host name."""
    import hashlib
    import socket

    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = socket.gethostname()
    return hashlib.sha1(boot.encode()).hexdigest()[:8]


_HOST = host_id()


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporary files of kernelcli's own naming in ``folder`` that no kernelcli is still
    writing (left by kill -9 or a crash); returns them. Liveness never rests on a process id,
    which means nothing in another PID namespace (a container sharing the volume) or on another
    host (a shared mount): a writer holds a lock (flock) on its temp file until the file is gone.

    - written on this machine (the host id in the name): removed when nobody holds its lock,
      unless it is empty and under NEWBORN_TEMP seconds old (a writer between creating and
      locking it);
    - from another host, or by an older kernelcli (no host id): its lock may not be visible here
      (file systems without shared locks), so it is removed only when untouched for FOREIGN_TEMP
      seconds and unlocked.

    Others' files, links and anything not a regular file are left alone."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX) and _remove_if_stale(Path(folder) / name):
            removed.append(Path(folder) / name)
    return removed


def _remove_if_stale(path: Path) -> bool:
    import time

    flags = os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:  # for writing where we may: NFS carries flock as a POSIX lock, which needs it
        fd = os.open(path, os.O_RDWR | flags)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY | flags)
        except OSError:
            return False  # gone, a link, or not ours to read
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        locking = fcntl is not None
        if locking:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live writer holds it
            except OSError:
                locking = False  # this file system keeps no locks
        age = time.time() - info.st_mtime
        ours = path.name[len(TEMP_PREFIX):].split("-", 1)[0] == _HOST
        if not (age > FOREIGN_TEMP or (ours and locking and (info.st_size > 0 or age > NEWBORN_TEMP))):
            return False
        os.unlink(path)  # still holding its lock: no writer can take it meanwhile
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _hold(fd: int) -> None:
    """Lock a new temp file for as long as it exists (see remove_stale_temps)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # no locks on this file system: the age rules still hold


def write_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    The real name never holds a partial file; the temporary file (``.kc-HOST-PID-RANDOM.part``,
    short whatever the real name's length, locked while it exists) is removed on any error and
    on Ctrl-C/SIGTERM. Missing parent folders are created (one rule for every output). Without
    ``overwrite`` an existing file is never replaced, even one that appears meanwhile. Raises
    WriteError when the destination fails (stops a batch) and ImageError when only this output
    cannot be written (a name too long, a folder in the way).
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise _write_error(path, exc) from None
    _hold(fd)  # released last, once the temp file is gone
    try:
        with os.fdopen(os.dup(fd), "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: no clobbering, atomically
            except FileExistsError:
                raise ImageError(f"{path}: already exists; pass --overwrite to replace it") from None
            except OSError as exc:
                if exc.errno in _THIS_OUTPUT_ONLY:
                    raise
                if os.path.lexists(path):  # file systems without hard links
                    raise ImageError(f"{path}: already exists; pass --overwrite to replace it") from None
                os.replace(tmp, path)
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        finally:
            os.close(fd)


_THIS_OUTPUT_ONLY = (errno.ENAMETOOLONG, errno.EISDIR)


def _write_error(path: Path, exc: OSError) -> ImageError:
    """A name too long or a folder in the way fails this output only; anything else is the
    destination failing (disk full, read-only, no permission)."""
    if exc.errno == errno.EISDIR or (exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and path.is_dir()):
        return ImageError(f"{path}: is a directory; refusing to replace it")
    if exc.errno == errno.ENAMETOOLONG:
        return ImageError(f"{path}: file name too long")
    return WriteError(f"{path}: cannot write: {exc.strerror or exc}")
