"""Reading and writing images and numeric arrays; modes, alpha, EXIF/ICC, safe writes.

Inside kernelcli an image is a :class:`Raster`: float pixels (C, H, W) in the file's own
units (0–255 for 8-bit, 0–65535 for 16-bit), alpha kept apart, and ``maxval`` telling the
bit depth (``None`` for raw numbers from .npy/.csv or float images).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import ImageError, UsageError, WriteError

# Decoders we allow, by content; EPS/PDF/PSD/FITS and friends are never invoked.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF", "PPM", "TGA")
ARRAY_FORMATS = ("NPY", "CSV")
_ARRAY_EXT = {".npy": "NPY", ".csv": "CSV", ".txt": "CSV"}
_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"}
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class Limits:
    """What kernelcli agrees to decode. Pixel and side limits are checked from the header,
    before any pixel is decoded; ``allow_truncated`` accepts cut-off files with a warning."""

    max_pixels: int = 100_000_000
    max_side: int = 65_535
    max_bytes: int = 1 << 30  # a file or stdin larger than this is refused
    allow_truncated: bool = False


_truncated_lock = threading.Lock()


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


def format_for_path(path: str | Path) -> str:
    """The output format implied by a file name (e.g. 'PNG' for x.png, 'NPY' for x.npy)."""
    ext = Path(str(path)).suffix.lower()  # str(): also an object URL (storage.ObjectPath)
    if ext in _ARRAY_EXT:
        return _ARRAY_EXT[ext]
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in IMAGE_FORMATS:
        raise UsageError(
            f"{path}: cannot tell the output format from {ext or 'no extension'!r}; "
            "use .png, .jpg, .webp, .tif, .bmp, .npy or .csv, or --format"
        )
    return fmt


def extension_for(fmt: str) -> str:
    return {"JPEG": ".jpg", "TIFF": ".tif", "NPY": ".npy", "CSV": ".csv", "PPM": ".ppm"}.get(fmt, f".{fmt.lower()}")


# --------------------------------------------------------------------------- reading


def read(source: str | Path, data: bytes | None = None, limits: Limits = Limits()) -> Raster:
    """Read an image or array from a path, or from ``data`` bytes (stdin) named ``source``."""
    name = str(source)
    if data is None:
        path = Path(source)
        if path.suffix.lower() in _ARRAY_EXT:
            return _read_array(name, path, _ARRAY_EXT[path.suffix.lower()])
        try:
            with open(path, "rb") as fh:
                data = fh.read(limits.max_bytes + 1)
        except IsADirectoryError:
            raise ImageError(f"{name}: is a directory, not an image") from None
        except OSError as exc:
            raise ImageError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if not data:
        raise ImageError(f"{name}: empty file, not an image" if name != "-" else "no image data on stdin")
    if len(data) > limits.max_bytes:
        raise ImageError(f"{name}: more than {limits.max_bytes} bytes; refused")
    if data.startswith(_NPY_MAGIC):
        return _read_array(name, io.BytesIO(data), "NPY")
    return _read_image(name, data, limits)


def _read_array(name: str, src, fmt: str) -> Raster:
    try:
        if fmt == "NPY":
            arr = np.load(src, allow_pickle=False)
        else:
            with open(src, encoding="utf-8") as fh:
                text = fh.read()
            first = text.lstrip().split("\n", 1)[0]
            arr = np.loadtxt(io.StringIO(text), delimiter="," if "," in first else None, ndmin=2)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{name}: not a readable {fmt.lower()} array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise ImageError(f"{name}: array of {arr.dtype} is not numeric")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ImageError(f"{name}: array of shape {arr.shape}; expected H×W or C×H×W")
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
    Image.MAX_IMAGE_PIXELS = None  # kernelcli checks the header itself, below, with its own limits
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        width, height = img.size
        if width * height > limits.max_pixels or max(width, height) > limits.max_side:
            raise ImageError(
                f"{name}: refused, {width}x{height} is over the limit of {limits.max_pixels} pixels "
                f"or {limits.max_side} a side (--max-pixels raises it)"
            )
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
        exif.pop(0x0112, None)  # orientation is now applied
        raster = from_pil(img, name)
        exif_bytes = exif.tobytes() if len(exif) else None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image (allowed: {', '.join(IMAGE_FORMATS)})") from None
    except _DECODER_ERRORS as exc:  # truncated, corrupt or hostile data
        hint = "; --allow-truncated accepts it" if "truncated" in str(exc) else ""
        raise ImageError(f"{name}: cannot decode image: {exc or type(exc).__name__}{hint}") from None
    return replace(raster, format=fmt, icc_profile=icc, exif=exif_bytes, notes=notes)


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


def encode(raster: Raster, fmt: str, *, quality: int = 95, name: str = "output", background=None) -> bytes:
    """Encode a Raster whose pixels are already mapped to its bit depth (or raw for arrays).
    ``background`` (an RGB tuple) flattens transparency for formats without alpha."""
    buf = io.BytesIO()
    if raster.pixels.dtype.kind == "f" and not np.isfinite(raster.pixels).all():
        raise ImageError(f"{name}: the result holds NaN or infinite values (an overflow?); nothing written")
    if raster.alpha is not None and fmt == "JPEG" and background is not None:
        raster = flatten(raster, background)
    if fmt == "NPY":
        arr = raster.pixels[0] if raster.pixels.shape[0] == 1 else raster.pixels
        np.save(buf, arr, allow_pickle=False)
        return buf.getvalue()
    if fmt == "CSV":
        if raster.pixels.shape[0] != 1:
            raise UsageError(f"{name}: a .csv holds one 2-D table but the result has {raster.pixels.shape[0]} channels; use .npy")
        text = io.StringIO()
        np.savetxt(text, raster.pixels[0], fmt="%.10g", delimiter=",")
        return text.getvalue().encode()
    img = to_pil(raster, fmt, name)
    options = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    if fmt in ("PNG", "JPEG", "WEBP", "TIFF") and raster.icc_profile:
        options["icc_profile"] = raster.icc_profile
    if fmt in ("PNG", "JPEG", "WEBP") and raster.exif:
        options["exif"] = raster.exif
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


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
            raise UsageError(f"{name}: {fmt} cannot hold 16-bit gray; write .png or .tif")
        return Image.fromarray(raster.pixels[0].astype(np.uint16))
    arr = raster.pixels.transpose(1, 2, 0)  # (H, W, C): no copy when the pixels are such a view
    if raster.alpha is not None:
        if fmt == "JPEG":
            raise UsageError(f"{name}: JPEG cannot store transparency; pass --background COLOR to flatten it, "
                             "or write .png, .webp or .tif")
        arr = np.dstack([arr, raster.alpha])
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)  # L, LA, RGB or RGBA


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    The real name never holds a partial file; the temporary file is removed on any error.
    Without ``overwrite`` an existing file is never replaced, even one that appears meanwhile.
    """
    path = Path(path)
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise WriteError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: no clobbering, atomically
            except FileExistsError:
                raise ImageError(f"{path}: already exists; pass --overwrite to replace it") from None
            except OSError:  # file systems without hard links
                if path.exists():
                    raise ImageError(f"{path}: already exists; pass --overwrite to replace it") from None
                os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
