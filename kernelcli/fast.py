"""The fast CPU path for the common case: 8- or 16-bit pixels, one plain kernel (or a
combined one such as sobel, part by part), stride 1, 'same' padding, a pointwise value
mapping, and a whole computation whose range is proven (:func:`reach`).

Instead of a grouped ``conv2d`` over a float copy of the whole image, the image is cut
into row strips (with a halo of the kernel's reach) that stay in cache; each strip is the
sum of the kernel's non-zero taps as shifted multiply-adds, in 16- or 32-bit integers when
the kernel has integer weights (exact, then divided by the divisor), in float32 otherwise;
mapping, rounding and the cast back to the pixel type are fused per strip. Strips run on
a few threads (torch releases the GIL). Memory: the input, the output and a strip per
thread. Results equal the reference engine bit for bit (tests/test_fast.py, and
tests/test_bounds.py up to the bounds); ``Stats.engine`` says which engine ran.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .convolve import Geometry, as_tensor, border_index, pad_amounts
from .kernel import Kernel
from .mapping import Stats

STRIP_BYTES = 1 << 20  # about 1 MiB of pixels per strip: stays in L2 cache
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool():  # a pool's threads do not survive fork: a forked worker starts its own
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


BAND_ROWS = 48  # output rows (and columns) per banded matrix product


def banded(kernel: Kernel) -> tuple[np.ndarray, np.ndarray] | None:
    """The 1-D factors of a large separable kernel, which runs as two banded matrix products
    (vertical, then horizontal) instead of kh·kw shifted adds; None for other kernels."""
    from .convolve import choose_method
    from .analysis import separable_factors

    if kernel.kind != "plain" or choose_method(kernel.weights) != "separable":
        return None
    return separable_factors(kernel.weights)


# The integers the reference engine's float type holds exactly (float32 for 8-bit, float64
# for 16-bit): the fast engine runs only where every sum stays inside, so both agree exactly.
EXACT = {255.0: 2.0**24, 65535.0: 2.0**53}


def eligible(kernel: Kernel, geo: Geometry, mode: str, maxval: float | None, channels: int,
             scale: float = 1.0, bias: float = 0.0) -> bool:
    """Whether :func:`filter_strips` computes this step (else the reference engine does):
    small kernels as shifted adds, large separable ones as banded products, combined kernels
    (sobel, compass) part by part within each strip, when the whole computation (sums,
    divisor, scale, bias, offset) is proven in range by :func:`reach`."""
    from .convolve import choose_method

    if not (maxval in EXACT and geo.padding == "same" and geo.stride == 1 and mode in ("clip", "abs", "offset")
            and channels in (1, 3)):
        return False
    if kernel.kind == "combined":
        return (
            len({(p.shape, p.anchor) for p in kernel.parts}) == 1
            and all(p.kind == "plain" and choose_method(p.weights) == "direct" and integer_form(p, 1.0) is not None
                    and reach(p, geo, maxval) <= EXACT[maxval] for p in kernel.parts)
            and float(geo.border_value).is_integer()
            and combined_reach(kernel, geo, maxval, scale, bias, mode) <= EXACT[maxval]
        )
    return (
        kernel.kind == "plain"
        and choose_method(kernel.weights) in ("direct", "separable")
        and reach(kernel, geo, maxval, scale, bias, mode) <= EXACT[maxval]
    )


def reach(kernel: Kernel, geo: Geometry, maxval: float, scale: float = 1.0, bias: float = 0.0,
          mode: str = "clip") -> float:
    """A bound on the magnitude of every value the step computes: each partial sum of the
    taps over inputs in [lo, hi] (0..maxval, widened by a constant border's value) lies in
    [pos·lo − neg·hi, pos·hi − neg·lo] for the positive and negative tap sums pos and neg;
    the bias and the offset are added after."""
    import math

    ints = integer_form(kernel, scale)
    taps = ints[0].astype(np.float64) if ints else kernel.weights * scale
    constant = geo.border in ("zeros", "constant")
    lo = min(0.0, geo.border_value) if constant else 0.0
    hi = max(maxval, geo.border_value) if constant else maxval
    pos, neg = float(taps[taps > 0].sum()), float(-taps[taps < 0].sum())
    sums = max(pos * hi - neg * lo, neg * hi - pos * lo)
    total = sums + abs(_offset(mode, maxval, bias))
    return total if math.isfinite(total) else math.inf


def combined_reach(kernel: Kernel, geo: Geometry, maxval: float, scale: float = 1.0, bias: float = 0.0,
                   mode: str = "clip") -> float:
    """A bound on a combined kernel's result: K parts of at most the largest part's reach
    (√Σr² ≤ Σ|r|), times its scale/divisor and ``scale``, plus bias and offset."""
    import math

    parts = max(reach(p, geo, maxval) / abs(p.divisor) for p in kernel.parts) * len(kernel.parts)
    total = parts * abs(kernel.scale / kernel.divisor * scale) + abs(_offset(mode, maxval, bias))
    return total if math.isfinite(total) else math.inf


def _offset(mode: str, maxval: float, bias: float) -> float:
    """What is added after the sum: the bias, and mid-gray for ``offset``."""
    return bias * maxval + ((maxval + 1) / 2 if mode == "offset" else 0.0)


def integer_form(kernel: Kernel, scale: float) -> tuple[np.ndarray, int] | None:
    """(integer taps, divisor) with weights == taps / divisor exactly, or None."""
    if scale != 1.0 or not float(kernel.divisor).is_integer() or kernel.scale != 1.0:
        return None
    m = np.array(kernel.matrix, dtype=np.float64)
    if not np.all(m == np.round(m)) or np.abs(m).max() > 2**15:
        return None
    return m.astype(np.int64), int(kernel.divisor)


def filter_strips(hwc: np.ndarray, kernel: Kernel, geo: Geometry, mode: str, maxval: float,
                  scale: float = 1.0, bias: float = 0.0, stats: bool = True,
                  workers: int | None = None) -> tuple[np.ndarray, Stats | None]:
    """Filter an (H, W, C) uint8/uint16 array; returns the mapped array of the same type and
    (if ``stats``) the Stats of the unmapped result (range and share clipped)."""
    h, w, c = hwc.shape
    src = as_tensor(hwc)
    out = np.empty_like(hwc)
    dst = torch.from_numpy(out)
    kh, kw = kernel.shape
    d = geo.dilation
    top, bottom, left, right = pad_amounts((kh, kw), kernel.anchor, geo)
    constant = geo.border in ("zeros", "constant")
    mode_idx = "replicate" if constant else geo.border
    rows_all = border_index(h, top, bottom, mode_idx)
    cols = border_index(w, left, right, mode_idx)
    col_idx = torch.from_numpy(cols)
    col_out = None
    if constant:  # positions outside the image take the constant value
        col_out = torch.from_numpy((np.arange(-left, w + right) < 0) | (np.arange(-left, w + right) >= w))
        row_outside = (np.arange(-top, h + bottom) < 0) | (np.arange(-top, h + bottom) >= h)

    float_type = torch.float32 if maxval <= 255 else torch.float64
    factors = None if kernel.combine else banded(kernel)
    # Integer taps (exact) unless the kernel is large and separable, has fractional weights,
    # or a fractional constant border would enter the sums.
    ints = None if factors or kernel.combine or not float(geo.border_value).is_integer() else integer_form(kernel, scale)
    parts = tap_list = None
    divisor = 1
    if kernel.combine:  # each part's sums in float: exact for integer taps inside EXACT
        parts = [(integer_form(p, 1.0), _tap_list(integer_form(p, 1.0)[0])) for p in kernel.parts]
        acc_type = float_type
    elif ints is not None:
        taps, divisor = ints
        tap_list = _tap_list(taps)
        # every partial sum, and the sum plus bias and offset, must fit the accumulator
        bound = reach(kernel, geo, maxval, scale, bias, mode)
        acc_type = torch.int16 if bound < 2**15 else torch.int32 if bound < 2**31 else torch.float64
    else:
        tap_list = _tap_list(kernel.weights * scale)
        acc_type = float_type
    offset, mid = _offset(mode, maxval, bias), (maxval + 1) / 2 if mode == "offset" else 0.0
    strip = max(1, STRIP_BYTES // max(1, w * c * hwc.itemsize))
    if factors:
        strip = BAND_ROWS
        column, row = factors[0] * scale, factors[1]

    def one(r0: int) -> tuple[float, float, int]:
        r1 = min(h, r0 + strip)
        rows = rows_all[r0: r1 + top + bottom]
        block = src.index_select(0, torch.from_numpy(rows)).index_select(1, col_idx).to(acc_type)
        if constant:
            fill = geo.border_value
            block[torch.from_numpy(row_outside[r0: r1 + top + bottom])] = fill
            block[:, col_out] = fill
        sh = r1 - r0
        if kernel.combine:
            acc = _combine(block, kernel, parts, d, sh, w)
            if scale != 1.0:
                acc.mul_(scale)
        elif factors:
            acc = _separable(block, column, row, d, sh, w, c)
        else:
            acc = _shifted_sum(block, tap_list, d, sh, w)
        lo = hi = clipped = 0
        whole = divisor == 1 and not acc_type.is_floating_point and float(offset).is_integer()
        y = acc if whole else acc.to(float_type)  # integers need no rounding: stay exact and fast
        if divisor != 1:
            y.div_(divisor)
        if stats:
            lo, hi = float(y.min()), float(y.max())
        if whole and offset:
            y.add_(int(offset))
        elif offset:  # bias, then mid-gray, in the order the reference engine adds them
            for term in (bias * maxval, mid):
                if term:
                    y.add_(term)
        if mode == "abs":
            y.abs_()
        if stats:
            clipped = int(((y < 0) | (y > maxval)).sum())
        if not whole:
            y.round_()
        dst[r0:r1] = y.clamp_(0, int(maxval) if whole else maxval).to(dst.dtype)
        return lo, hi, clipped

    starts = range(0, h, strip)
    results = list(_executor(workers).map(one, starts)) if len(starts) > 1 else [one(0)]
    if not stats:
        return out, None
    lo = min(r[0] for r in results)
    hi = max(r[1] for r in results)
    share = sum(r[2] for r in results) / max(1, h * w * c)
    return out, Stats(lo + bias * maxval, hi + bias * maxval, share, engine="fast")


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


def _band(n: int, taps: np.ndarray, dilation: int, dtype) -> torch.Tensor:
    """The (n, n + d·(k−1)) matrix whose product with a column of inputs correlates it."""
    k = len(taps)
    t = np.zeros((n, n + dilation * (k - 1)))
    for i in range(n):
        t[i, i: i + dilation * (k - 1) + 1: dilation] = taps
    return torch.from_numpy(t).to(dtype)


def _separable(block: torch.Tensor, column, row, dilation: int, sh: int, w: int, c: int) -> torch.Tensor:
    """Correlate a padded (sh + reach, w + reach, c) block with outer(column, row): one
    matrix product down the rows, then blocks of products along the columns."""
    rows_in = block.shape[0]
    vertical = _band(sh, column, dilation, block.dtype) @ block.reshape(rows_in, -1)
    across = vertical.reshape(sh, -1, c).transpose(0, 1).reshape(-1, sh * c)  # (w + reach, sh·c)
    result = torch.empty(w, sh * c, dtype=block.dtype)
    full = _band(BAND_ROWS, row, dilation, block.dtype)
    for c0 in range(0, w, BAND_ROWS):
        n = min(BAND_ROWS, w - c0)
        t = full if n == BAND_ROWS else _band(n, row, dilation, block.dtype)
        torch.matmul(t, across[c0: c0 + t.shape[1]], out=result[c0: c0 + n])
    return result.reshape(w, sh, c).transpose(0, 1)


def _executor(workers: int | None) -> ThreadPoolExecutor:
    """One shared pool for strips; its threads each run torch ops single-threaded."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1, thread_name_prefix="kernelcli-strip")
        return _pool
