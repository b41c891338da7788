"""Float filter results → output values: clip, abs, offset, normalize; never wrap.

Results are in the image's own units (0–255 for 8-bit). Edge kernels sum to zero and give
negative values: ``clip`` drops them, ``abs`` folds them, ``offset`` adds mid-gray so both
signs show, ``normalize`` stretches min–max to the full range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ImageError
from .options import check_mode


@dataclass(frozen=True)
class Stats:
    """Pre-mapping range of a result and the share of values that clipping changed."""

    minimum: float
    maximum: float
    clipped: float  # fraction of values outside 0..maxval after mapping, before the clip
    engine: str = "reference"  # which engine computed the step: "reference" or "fast" (kernelcli.fast)


def check_finite(y: torch.Tensor, what: str = "the filter") -> torch.Tensor:
    """Refuse a result holding NaN or ±inf (an overflow): it would map to garbage pixels.
    Every engine's result passes here, mapped (:func:`map_values`) or raw."""
    if not bool(torch.isfinite(y).all()):
        raise ImageError(f"{what} gave NaN or infinite values (an overflow?); nothing written")
    return y


def map_values(
    x: torch.Tensor, mode: str, maxval: float, *, scale: float = 1.0, bias: float = 0.0, what: str = "the filter",
    inplace: bool = False,
) -> tuple[torch.Tensor, Stats]:
    """Map ``x`` into 0..maxval, rounded half-to-even: ``mode(x * scale + bias * maxval)``.

    ``offset`` adds mid-gray (128 for 8-bit); ``normalize`` stretches the result's global
    min–max (over all channels) to 0..maxval, and leaves a flat result at mid-gray.
    ``inplace`` maps ``x`` itself (the engine's own result: no second copy of the image).
    """
    check_mode(mode)
    y = x if inplace else x.clone()
    if scale != 1.0 or bias:
        y.mul_(scale).add_(bias * maxval)
    check_finite(y, what)
    lo, hi = float(y.min()), float(y.max())
    if mode == "abs":
        y.abs_()
    elif mode == "offset":
        y.add_((maxval + 1) / 2)
    elif mode == "normalize":
        if hi > lo:
            y.sub_(lo).mul_(maxval / (hi - lo))
        else:
            y.fill_((maxval + 1) / 2)
    outside = int(torch.count_nonzero((y < 0) | (y > maxval))) / y.numel() if y.numel() else 0.0
    return y.round_().clamp_(0, maxval), Stats(lo, hi, outside)
