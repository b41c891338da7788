"""Output-size arithmetic (FACTS §4), without torch, for the engine and for ``explain``."""

from ..errors import UsageError
from .options import MAX_GEOMETRY


def output_size(n: int, k: int, pad_total: int, stride: int = 1, dilation: int = 1) -> int:
    """Convolution or pooling: floor((n + pad_total − dilation·(k−1) − 1) / stride) + 1,
    as torch.nn.Conv2d, with pad_total = 2p for p pixels on each side."""
    return (n + pad_total - dilation * (k - 1) - 1) // stride + 1


def transposed_size(n: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Transposed convolution: (n−1)·stride − 2·padding + dilation·(k−1) + 1."""
    return (n - 1) * stride - 2 * padding + dilation * (k - 1) + 1


def check_pool_padding(padding: int, size: int) -> None:
    """Pooling pads at most half the window on each side (as torch.nn.MaxPool2d), so every window
    holds input: refuse more."""
    if padding > size // 2:
        raise UsageError(f"pool padding {padding} must be at most half the window ({size // 2})")


def parse_shape(text: str, *, channels: bool = False, limit: int = MAX_GEOMETRY, what: str = "sizes") -> tuple[int, ...]:
    """The one reading of a size-like value: ``N`` (square, N×N) or ``HxW``, whole numbers from 1
    to ``limit``; with ``channels`` also ``HxWxC`` (C default 1). Returns (H, W) or (H, W, C).
    ``what`` names the values in the message for a fraction ("factors are whole numbers").
    Used by every size-like option (pool window, learned kernel, explain input, animate size,
    upsampling factor) and by explain's steps, so they all read the same words."""
    parts = str(text).strip().lower().split("x")
    most = 3 if channels else 2
    forms = "N, HxW or HxWxC" if channels else "N or HxW"
    if not 1 <= len(parts) <= most or not all(p.isascii() and p.isdigit() for p in parts):
        example = "e.g. 32, 32x48 or 32x48x3" if channels else "e.g. 3 or 3x5"
        hint = f"; {what} are whole numbers" if any(c in str(text) for c in ".,/") else ""
        raise UsageError(f"{text!r}: write {forms} ({example}){hint}")
    values = [int(p) for p in parts]
    if min(values) < 1:
        raise UsageError(f"{text!r}: every side must be at least 1")
    if max(values) > limit:
        raise UsageError(f"{text!r}: {max(values)} is over the limit of {limit}")
    h, w = values[0], values[1] if len(values) > 1 else values[0]
    return (h, w, values[2] if len(values) > 2 else 1) if channels else (h, w)


def pair(value) -> tuple[int, int]:
    """An int for both axes, or (height, width), as (height, width)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def shape_text(value) -> str:
    """(3, 3) → '3x3'; 3 → '3'; (2, 3) → '2x3'."""
    h, w = pair(value)
    return f"{h}" if not isinstance(value, (tuple, list)) else f"{h}x{w}"
