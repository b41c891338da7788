"""The fast CPU path for the common case: 8- or 16-bit pixels, one plain kernel, stride 1,
'same' padding, a pointwise value mapping.

Instead of a grouped ``conv2d`` over a float copy of the whole image, the image is cut
into row strips (with a halo of the kernel's reach) that stay in cache; each strip is the
sum of the kernel's non-zero taps as shifted multiply-adds, in 16- or 32-bit integers when
the kernel has integer weights (exact, then divided by the divisor), in float32 otherwise;
mapping, rounding and the cast back to the pixel type are fused per strip. Strips run on
a few threads (torch releases the GIL). Results equal the reference engine bit for bit
(tests/test_fast.py).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .convolve import Geometry, as_tensor, border_index, pad_amounts
from .kernels import Kernel
from .mapping import Stats

STRIP_BYTES = 1 << 20  # about 1 MiB of pixels per strip: stays in L2 cache
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


BAND_ROWS = 48  # output rows (and columns) per banded matrix product


def banded(kernel: Kernel) -> tuple[np.ndarray, np.ndarray] | None:
    """The 1-D factors of a large separable kernel, which runs as two banded matrix products
    (vertical, then horizontal) instead of kh·kw shifted adds; None for other kernels."""
    from .convolve import choose_method
    from .kernels import separable_factors

    if kernel.kind != "plain" or choose_method(kernel.weights) != "separable":
        return None
    return separable_factors(kernel.weights)


# The integers the reference engine's float type holds exactly (float32 for 8-bit, float64
# for 16-bit): the fast engine runs only where every sum stays inside, so both agree exactly.
EXACT = {255.0: 2.0**24, 65535.0: 2.0**53}


def eligible(kernel: Kernel, geo: Geometry, mode: str, maxval: float | None, channels: int,
             scale: float = 1.0, bias: float = 0.0) -> bool:
    """Whether :func:`filter_strips` computes this step (else the reference engine does):
    small kernels as shifted adds, large separable ones as banded products, when the whole
    computation (sums, divisor, scale, bias, offset) is proven in range by :func:`reach`."""
    from .convolve import choose_method

    return (
        kernel.kind == "plain"
        and choose_method(kernel.weights) in ("direct", "separable")
        and maxval in EXACT
        and geo.padding == "same"
        and geo.stride == 1
        and mode in ("clip", "abs", "offset")
        and channels in (1, 3)
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

    factors = banded(kernel)
    float_type = torch.float32 if maxval <= 255 else torch.float64
    # Integer taps (exact) unless the kernel is large and separable, has fractional weights,
    # or a fractional constant border would enter the sums.
    ints = None if factors or not float(geo.border_value).is_integer() else integer_form(kernel, scale)
    if ints is not None:
        taps, divisor = ints
        # every partial sum, and the sum plus bias and offset, must fit the accumulator
        bound = reach(kernel, geo, maxval, scale, bias, mode)
        acc_type = torch.int16 if bound < 2**15 else torch.int32 if bound < 2**31 else torch.float64
    else:
        taps, divisor = kernel.weights * scale, 1
        acc_type = float_type
    tap_list = [(a, b, taps[a, b].item()) for a in range(kh) for b in range(kw) if taps[a, b] != 0]
    offset = _offset(mode, maxval, bias)
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
        acc = None
        if factors:
            acc = _separable(block, column, row, d, sh, w, c)
        for a, b, v in (tap_list if not factors else ()):
            part = block[a * d: a * d + sh, b * d: b * d + w]
            if acc is None:
                acc = part * v
            else:
                acc.add_(part, alpha=v)
        if acc is None:
            acc = torch.zeros((sh, w, c), dtype=acc_type)
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
            for term in (bias * maxval, offset - bias * maxval):
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
    parts = list(_executor(workers).map(one, starts)) if len(starts) > 1 else [one(0)]
    if not stats:
        return out, None
    lo = min(p[0] for p in parts)
    hi = max(p[1] for p in parts)
    share = sum(p[2] for p in parts) / max(1, h * w * c)
    return out, Stats(lo + bias * maxval, hi + bias * maxval, share, engine="fast")


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
