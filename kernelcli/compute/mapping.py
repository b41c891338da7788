"""Float filter results → output values: clip, abs, offset, normalize; never wrap.

Results are in the image's own units (0–255 for 8-bit). Edge kernels sum to zero and give
negative values: ``clip`` drops them, ``abs`` folds them, ``offset`` adds mid-gray so both
signs show, ``normalize`` stretches min–max to the full range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ImageError
from .options import check_mode


@dataclass(frozen=True)
class Stats:
    """Pre-mapping range of a result and the share of values that clipping changed."""

    minimum: float
    maximum: float
    clipped: float  # fraction of values outside 0..maxval after mapping, before the clip
    engine: str = "reference"  # which engine computed the step: "reference" or "fast" (kernelcli.compute.engine.plan)
    method: str = ""  # how, as the plan said: strips, banded, combined; direct, separable, fft, parts, mix, bank


def check_finite(y: torch.Tensor, what: str = "the filter") -> torch.Tensor:
    """Refuse a result holding NaN or ±inf (an overflow): it would map to garbage pixels.
    Every engine's result passes here, mapped (:func:`map_values`) or raw."""
    if not all_finite(y):
        raise ImageError(f"{what} gave NaN or infinite values (an overflow?); nothing written")
    return y


def all_finite(y: torch.Tensor) -> bool:
    """Whether every value of ``y`` is finite, without a copy of ``y``: a finite sum proves it (a
    NaN or an infinity anywhere makes the sum NaN or infinite); a sum that overflowed is checked
    again in blocks of rows (``torch.isfinite`` of the whole would take six times its memory)."""
    if not y.is_floating_point() or bool(torch.isfinite(y.sum())):
        return True
    return y.dim() > 0 and all(bool(torch.isfinite(rows).all()) for rows in y.split(64, dim=-2 if y.dim() > 1 else 0))


def map_values(
    x: torch.Tensor, mode: str, maxval: float, *, scale: float = 1.0, bias: float = 0.0, what: str = "the filter",
    inplace: bool = False, stats: bool = True, proven: bool = False,
) -> tuple[torch.Tensor, Stats | None]:
    """Map ``x`` into 0..maxval, rounded half-to-even: ``mode(x * scale + bias * maxval)``.

    ``offset`` adds mid-gray (128 for 8-bit); ``normalize`` stretches the result's global
    min–max (over all channels) to 0..maxval, and leaves a flat result at mid-gray.
    ``inplace`` maps ``x`` itself (the engine's own result: no second copy of the image).
    Both engines map here: the reference engine a whole step, the fast engine each strip,
    whose sums may stay integers (exact: no rounding; the bias and offset are then whole).
    ``stats=False`` skips the Stats (None) and the passes that only they need; ``proven``:
    the caller proved the result finite (the fast engine's bounds), so no check for NaN/inf.
    """
    y, st = _mapped(x, mode, maxval, scale, bias, what, inplace, stats, proven)
    return _rounded(y, maxval), st


def map_near(x: torch.Tensor, mode: str, maxval: float, tolerance: float, *, bias: float = 0.0,
             stats: bool = True) -> tuple[torch.Tensor, Stats | None, torch.Tensor | None]:
    """:func:`map_values` of a float result the caller proved finite, in place, and the flat
    indices of the values that were within ``tolerance`` of a rounding boundary (k + ½)
    before rounding (None when ``tolerance`` is 0): where an engine that knows its rounding
    error is at most ``tolerance`` must settle the value exactly (:mod:`kernelcli.compute.bands`)."""
    y, st = _mapped(x, mode, maxval, 1.0, bias, "the filter", True, stats, True)
    if not tolerance > 0:
        return _rounded(y, maxval), st, None
    rounded = torch.round(y)
    near = _near_ties(y.sub_(rounded).abs_(), tolerance)  # |y − round(y)|: ½ at a boundary
    return rounded.clamp_(0, maxval), st, near


def _mapped(x, mode, maxval, scale, bias, what, inplace, stats, proven):
    """Everything of the mapping but the rounding: (unrounded values, Stats or None)."""
    check_mode(mode)
    y = x if inplace else x.clone()
    whole = not y.is_floating_point()
    if scale != 1.0:
        y.mul_(scale)
    if bias:
        y.add_(_term(bias * maxval, whole))
    if not (whole or proven):
        check_finite(y, what)
    lo = hi = 0.0
    if stats or mode == "normalize":
        lo, hi = float(y.min()), float(y.max())
    if mode == "abs":
        y.abs_()
    elif mode == "offset":
        y.add_(_term((maxval + 1) / 2, whole))
    elif mode == "normalize":
        if hi > lo:
            y.sub_(lo).mul_(maxval / (hi - lo))
        else:
            y.fill_((maxval + 1) / 2)
    if not stats:
        return y, None
    outside = int(torch.count_nonzero((y < 0) | (y > maxval))) / y.numel() if y.numel() else 0.0
    return y, Stats(lo, hi, outside)


def _rounded(y: torch.Tensor, maxval: float) -> torch.Tensor:
    if not y.is_floating_point():
        return y.clamp_(0, int(maxval))
    return y.round_().clamp_(0, maxval)


def _near_ties(distance: torch.Tensor, tolerance: float, run: int = 64) -> torch.Tensor:
    """Flat indices of the values whose ``distance`` |y − round(y)| (contiguous) is within
    ``tolerance`` of ½. Runs of ``run`` values are screened by their maximum first
    (candidates are rare), then searched."""
    flat = distance.view(-1)
    edge = 0.5 - tolerance
    runs = len(flat) // run
    head = flat[:runs * run].view(runs, run)
    rows = torch.nonzero(head.amax(1) >= edge).flatten()
    hits = torch.nonzero(head[rows] >= edge)
    tail = torch.nonzero(flat[runs * run:] >= edge).flatten() + runs * run
    return torch.cat([rows[hits[:, 0]] * run + hits[:, 1], tail])


def _term(value: float, whole: bool):
    """A term added to the result: an int for integer sums (it must then be whole)."""
    if whole:
        if not float(value).is_integer():
            raise ValueError(f"cannot add {value} to integer sums exactly")
        return int(value)
    return value
