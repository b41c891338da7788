"""The fast CPU path for the common case: 8- or 16-bit pixels, one plain kernel (or a
combined one such as sobel, part by part), stride 1, 'same' padding, a pointwise value
mapping, and a whole computation whose range is proven (:func:`reach`).

Instead of a grouped ``conv2d`` over a float copy of the whole image, the image is cut
into row strips (with a halo of the kernel's reach) that stay in cache; each strip is the
sum of the kernel's non-zero taps as shifted multiply-adds, in 16- or 32-bit integers when
the kernel has integer weights (exact, then divided by the divisor), in float32 otherwise;
mapping, rounding and the cast back to the pixel type are fused per strip. Large kernels
that are a sum of a few separable terms run as banded matrix products (:mod:`kernelcli.compute.bands`).
Strips run on a few threads (torch releases the GIL). Memory: the input, the output and a
strip per thread. Results equal the reference engine bit for bit (tests/test_fast.py, and
tests/test_bounds.py up to the bounds). Whether and how it runs is decided by
:func:`kernelcli.compute.engine.plan` alone (the Step it is given); values are mapped by
:func:`kernelcli.compute.mapping.map_values`.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import engine
from .convolve import as_tensor, gather
from .options import Geometry, pad_amounts, padded_axis
from .engine import Step, integer_form, reach
from ..kernels.kernel import Kernel
from .mapping import Stats, map_values

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool():  # a pool's threads do not survive fork: a forked worker starts its own
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def eligible(kernel: Kernel, geo: Geometry, mode: str, maxval: float | None, channels: int,
             scale: float = 1.0, bias: float = 0.0) -> bool:
    """Whether this step alone could run here (:func:`kernelcli.compute.engine.fast_step`)."""
    return engine.fast_step(kernel, geo, mode, maxval, channels, scale, bias) is not None


def filter_strips(hwc: np.ndarray, kernel: Kernel, step: Step, geo: Geometry, mode: str, maxval: float,
                  scale: float = 1.0, bias: float = 0.0, stats: bool = True,
                  workers: int | None = None) -> tuple[np.ndarray, Stats | None]:
    """Filter an (H, W, C) uint8/uint16 array as ``step`` (of :func:`kernelcli.compute.engine.plan`,
    on the fast engine) says; returns the mapped array of the same type and (if ``stats``) the
    Stats of the unmapped result (range and share clipped)."""
    if step.method == "banded":
        from .bands import filter_bands

        return filter_bands(hwc, kernel, step.bands, geo, mode, maxval, scale, bias, stats, _executor(workers))
    h, w, c = hwc.shape
    src, out = as_tensor(hwc), np.empty_like(hwc)
    dst = torch.from_numpy(out)
    top, bottom, left, right = pad_amounts(kernel.shape, kernel.anchor, geo)
    rows_all, rows_outside = padded_axis(h, top, bottom, geo)
    cols = padded_axis(w, left, right, geo)
    acc_type, float_type, taps, divisor = _sums(kernel, step, geo, mode, maxval, scale, bias)
    # Integer sums need no rounding: they stay exact (and fast) through the mapping, when
    # each term it adds is whole (the bias in pixel units; mid-gray is: 128, 32768).
    whole = divisor == 1 and not acc_type.is_floating_point and float(bias * maxval).is_integer()
    map_scale = scale if kernel.combine else 1.0  # other kernels carry the scale in their taps
    strip = engine.strip_rows(w, c, hwc.itemsize)

    def one(r0: int) -> Stats | None:
        r1 = min(h, r0 + strip)
        span = slice(r0, r1 + top + bottom)
        block = gather(src, (rows_all[span], None if rows_outside is None else rows_outside[span]), cols,
                       geo.border_value, axes=(0, 1), dtype=acc_type)
        if kernel.combine:
            acc = _combine(block, kernel, taps, geo.dilation, r1 - r0, w)
        else:
            acc = _shifted_sum(block, taps, geo.dilation, r1 - r0, w)
        y = acc if whole else acc.to(float_type)
        if divisor != 1:
            y.div_(divisor)
        y, st = map_values(y, mode, maxval, scale=map_scale, bias=bias, inplace=True, stats=stats, proven=True)
        dst[r0:r1] = y.to(dst.dtype)
        return st

    starts = range(0, h, strip)
    results = list(_executor(workers).map(one, starts)) if len(starts) > 1 else [one(0)]
    if not stats:
        return out, None
    rows = [min(strip, h - r0) for r0 in starts]  # each strip's share of the values
    clipped = sum(st.clipped * n for st, n in zip(results, rows)) / max(1, h)
    return out, Stats(min(st.minimum for st in results), max(st.maximum for st in results), clipped, engine="fast")


def _sums(kernel: Kernel, step: Step, geo: Geometry, mode: str, maxval: float, scale: float, bias: float):
    """(accumulator type, float type, taps, divisor) of a strips or combined step: integer
    taps (exact) in 16- or 32-bit integers where every partial sum fits, else float; the
    taps of a combined kernel are its parts' ((taps, divisor), tap list) pairs."""
    float_type = torch.float32 if maxval <= 255 else torch.float64
    if step.method == "combined":  # each part's sums in float: exact for integer taps inside EXACT
        return float_type, float_type, [(integer_form(p, 1.0), _tap_list(integer_form(p, 1.0)[0]))
                                        for p in kernel.parts], 1
    # Integer taps (exact) unless the weights are fractional or a fractional constant border
    # would enter the sums.
    ints = integer_form(kernel, scale) if float(geo.border_value).is_integer() else None
    if ints is None:
        return float_type, float_type, _tap_list(kernel.weights * scale), 1
    bound = reach(kernel, geo, maxval, scale, bias, mode)  # every partial sum, plus bias and offset
    acc_type = torch.int16 if bound < 2**15 else torch.int32 if bound < 2**31 else torch.float64
    return acc_type, float_type, _tap_list(ints[0]), ints[1]


def _tap_list(taps: np.ndarray) -> list[tuple[int, int, float]]:
    """(row, column, weight) of every non-zero tap."""
    kh, kw = taps.shape
    return [(a, b, taps[a, b].item()) for a in range(kh) for b in range(kw) if taps[a, b] != 0]


def _shifted_sum(block: torch.Tensor, tap_list, d: int, sh: int, w: int) -> torch.Tensor:
    """Σ weight × the block shifted by the tap's offset: a (sh, w, c) correlation."""
    acc = None
    for a, b, v in tap_list:
        part = block[a * d: a * d + sh, b * d: b * d + w]
        if acc is None:
            acc = part * v
        else:
            acc.add_(part, alpha=v)
    return acc if acc is not None else torch.zeros((sh, w, block.shape[2]), dtype=block.dtype)


def _combine(block: torch.Tensor, kernel: Kernel, parts, d: int, sh: int, w: int) -> torch.Tensor:
    """A combined kernel's response on one strip, with the operations of the reference
    engine (filters._respond) in the same order: each part's sum divided by its divisor,
    then squared (magnitude), folded (max) or kept (sum), accumulated part by part."""
    acc = None
    for (_, divisor), tap_list in parts:
        r = _shifted_sum(block, tap_list, d, sh, w)
        if divisor != 1:
            r.div_(divisor)
        r = fold_part(kernel.combine, r)
        acc = r if acc is None else accumulate_part(kernel.combine, acc, r)
    if kernel.combine == "magnitude":
        acc.sqrt_()
    return acc.mul_(kernel.scale / kernel.divisor)


def fold_part(combine: str, r: torch.Tensor) -> torch.Tensor:
    """One part's contribution: r² for magnitude, |r| for max, r for sum (in place)."""
    return r.square_() if combine == "magnitude" else r.abs_() if combine == "max" else r


def accumulate_part(combine: str, acc: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Fold one more part into the running result (in place)."""
    return torch.maximum(acc, r, out=acc) if combine == "max" else acc.add_(r)


def _executor(workers: int | None) -> ThreadPoolExecutor:
    """One shared pool for strips; its threads each run torch ops single-threaded."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1, thread_name_prefix="kernelcli-strip")
        return _pool
