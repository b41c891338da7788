"""The fast engine's banded method: a large kernel that is a sum of a few separable terms
(gaussian:σ, box:N, unsharp, dog, log: :class:`kernelcli.compute.engine.Bands`) on 8- or 16-bit
pixels, exactly.

Each strip of BAND_ROWS output rows is the padded input block in float32 (8-bit) or float64
(16-bit); one matrix product runs down its rows with every term's column weights (a band:
each output row takes K input rows) and is written transposed, (x, term, channel, row), so
that the second product, along the rows with all terms' row weights at once, reads
overlapping windows of it without a copy (a batched product of bands); mapping, rounding and
the cast follow per strip, on the fast engine's threads. Memory: the input, the output, and
a few strip buffers per thread.

Exactness: each 8/16-bit value is round-half-even of the exact value V of the step, the
kernel's float64 taps times the integer pixels summed in exact arithmetic, divided by the
divisor, times the scale, plus bias and offset (as :func:`kernelcli.compute.mapping.map_values`
adds them); the reference engine computes V in float (to about 1e-13 in float64).

- Integer taps (box:N): every product and partial sum is an integer below 2^24 (float32) or
  2^53 (float64), whatever the order of summation, so the sums are exact; the division is
  correctly rounded and k + ½ is representable, so it cannot move a value across a boundary.
- Float weights: each column weight is split into a part on a 2^-s grid, whose sums are exact
  like integers', and a small rest (2^-s smaller). ``tolerance`` bounds the error of all the
  rest in any order of summation (γ_n = n·u/(1 − n·u), u = 2^-24 or 2^-53, the standard bound
  of a sum of n products, and the terms' residual). A value within it of some k + ½ (about one
  in a thousand for gaussian:5 in float32: 82 thousand of a 24 MP photo's 72 million) is
  computed again in float64 from the two parts of the first product; one still within that
  computation's bound (about 1e-7: some 25 values of the 72 million) exactly, with Python
  integers over its input window.
- Where that would happen for many values (weights that are simple fractions with an even
  denominator, whose sums sit on a tie by construction), the plan does not choose this method
  (:func:`kernelcli.compute.engine.banded_form`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from . import engine
from .convolve import as_tensor
from .engine import EXACT, Bands
from ..kernels.kernel import Kernel
from .mapping import Stats, map_near
from .options import CONSTANT_BORDERS, Geometry, pad_amounts, padded_axis

_UNIT = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


@dataclass
class _Step:
    """What every strip of one step shares."""

    dtype: torch.dtype
    down: torch.Tensor  # (R + span_down − 1, terms·parts·R): the first product's bands
    along: torch.Tensor  # (R, (R + span_along − 1)·terms): the second product's bands, terms interleaved
    parts: int  # 2: column weights split into a grid part and a rest; 1: exact as they are
    terms: int
    rows: np.ndarray  # (terms, K2) float64 row weights, for settling values near a boundary
    tolerance: float  # bound on |value − V| before rounding; 0: the rounding is exact
    recheck: float  # bound of the float64 recomputation (float weights, float32 strips)
    divisor: int
    integer: bool
    shift: float  # bias·maxval + offset, added by the mapping
    exact: "_Exact"
    weights64: np.ndarray  # (K2·terms·parts,) float64: each row weight once per part

    def offsets(self, channels: int, d: int) -> np.ndarray:
        """(K2·terms·parts,) flat offsets into the first product (x, C, terms, parts, R) of a
        value's entries: column + j·d, every term and part (in the order of ``weights64``)."""
        n = engine.BAND_ROWS
        j = np.arange(self.rows.shape[1])[:, None] * (d * channels * self.terms * self.parts * n)
        tp = np.arange(self.terms * self.parts)[None, :] * n
        return (j + tp).reshape(-1)


def filter_bands(hwc: np.ndarray, kernel: Kernel, bands: Bands, geo: Geometry, mode: str, maxval: float,
                 scale: float, bias: float, stats: bool, executor) -> tuple[np.ndarray, Stats | None]:
    """Filter an (H, W, C) uint8/uint16 array with ``kernel`` as ``bands`` says; returns the
    mapped array of the same type and (if ``stats``) the Stats of the unmapped result."""
    h, w, c = hwc.shape
    src, out = as_tensor(hwc), np.empty_like(hwc)
    dst = torch.from_numpy(out)
    pads = pad_amounts(kernel.shape, kernel.anchor, geo)
    rows, cols = padded_axis(h, pads[0], pads[1], geo), padded_axis(w, pads[2], pads[3], geo)
    st = _setup(kernel, bands, geo, mode, maxval, scale, bias)
    n = engine.BAND_ROWS

    def one(r0: int) -> Stats | None:
        sh = min(n, h - r0)
        block = _block(src, r0, sh, pads, rows, cols, geo.border_value, st.dtype)
        first, y = _products(block, st, geo.dilation, w, c)
        if sh < n:
            y = y[:, :, :sh].contiguous()
        if st.divisor != 1:
            y.div_(st.divisor)
        y, strip_stats, near = map_near(y, mode, maxval, st.tolerance, bias=bias, stats=stats)
        if near is not None and len(near):
            _settle(y, near, first, block, st, geo.dilation, mode, maxval)
        dst[r0:r0 + sh].copy_(y.permute(2, 0, 1))  # rounded and clipped: the cast is exact
        return strip_stats

    starts = range(0, h, n)
    results = list(executor.map(one, starts)) if len(starts) > 1 else [one(0)]
    if not stats:
        return out, None
    share = sum(s.clipped * min(n, h - r0) for s, r0 in zip(results, starts)) / max(1, h)
    return out, Stats(min(s.minimum for s in results), max(s.maximum for s in results), share, engine="fast")


_local = threading.local()


def _buffer(name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """This thread's reusable buffer ``name`` (a strip's worth: no allocation per strip)."""
    cache = _local.__dict__.setdefault("buffers", {})
    buf = cache.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = cache[name] = torch.empty(shape, dtype=dtype)
    return buf


def _block(src: torch.Tensor, r0: int, sh: int, pads, rows, cols, value: float, dtype) -> torch.Tensor:
    """The padded input block of the strip of ``sh`` rows at ``r0`` in ``dtype``: (BAND_ROWS +
    reach, W + reach, C), its border by :func:`kernelcli.compute.convolve.padded_axis` (rows past the
    image's last strip are zeros: they feed only outputs that are dropped)."""
    top, bottom, left, right = pads
    h, w, c = src.shape
    n = engine.BAND_ROWS
    block = _buffer("block", (n + top + bottom, w + left + right, c), dtype)
    index, outside = rows[0][r0:r0 + sh + top + bottom], None if rows[1] is None else rows[1][r0:r0 + sh + top + bottom]
    span = len(index)
    if index[-1] - index[0] == span - 1 and (outside is None or not outside.any()):
        block[:span, left:left + w] = src[int(index[0]):int(index[-1]) + 1]
    else:
        block[:span, left:left + w] = src.index_select(0, torch.from_numpy(index))
    col_index, col_outside = cols
    for edge in (slice(0, left), slice(left + w, left + w + right)):
        if edge.stop > edge.start:
            block[:span, edge] = block[:span, left + torch.from_numpy(col_index[edge])]
            if col_outside is not None:
                block[:span, edge][:, torch.from_numpy(col_outside[edge])] = value
    if outside is not None and outside.any():
        block[:span][torch.from_numpy(outside)] = value
    block[span:] = 0
    return block


def _products(block: torch.Tensor, st: _Step, d: int, w: int, c: int):
    """The two banded products of one padded strip block (R + span_down − 1, W + span_along − 1, C):
    returns the first product (x, C, terms, parts, R) and the result (W, C, R)."""
    n = engine.BAND_ROWS
    rows_in, wide = block.shape[0], block.shape[1]
    first = torch.mm(block.view(rows_in, -1).t(), st.down).view(wide, c, st.terms, st.parts, n)
    reach = st.along.shape[1] // st.terms - n  # span_along − 1
    blocks = -(-w // n)
    v = torch.empty((blocks * n + reach, st.terms, c, n), dtype=st.dtype)
    v[wide:] = 0  # read by the last window with zero weight only: must not be NaN
    into = v[:wide].permute(0, 2, 1, 3)
    if st.parts == 2:
        torch.add(first[:, :, :, 0], first[:, :, :, 1], out=into)
    else:
        into.copy_(first[:, :, :, 0])
    windows = v.view(-1, c * n).as_strided((blocks, (n + reach) * st.terms, c * n), (n * st.terms * c * n, c * n, 1))
    y = torch.bmm(st.along.expand(blocks, -1, -1), windows)
    return first, y.view(blocks * n, c, n)[:w]


def _setup(kernel: Kernel, bands: Bands, geo: Geometry, mode: str, maxval: float, scale: float,
           bias: float) -> _Step:
    """The band matrices and the error bounds of one step."""
    dtype = torch.float32 if maxval <= 255 else torch.float64
    u, limit, n, d = _UNIT[dtype], EXACT[maxval], engine.BAND_ROWS, geo.dilation
    constant = geo.border in CONSTANT_BORDERS
    amax = max(maxval, abs(geo.border_value)) if constant else maxval
    columns, rows = np.array(bands.columns, dtype=np.float64), np.array(bands.rows, dtype=np.float64)
    terms, k1, k2 = columns.shape[0], columns.shape[1], rows.shape[1]
    grid = columns if bands.integer else np.stack([_on_grid(col, amax, limit) for col in columns])
    rest = columns - grid
    parts = 2 if rest.any() else 1
    down = np.zeros((n + d * (k1 - 1), terms, parts, n))
    along = np.zeros((n, n + d * (k2 - 1), terms))
    for i in range(n):
        down[i: i + d * (k1 - 1) + 1: d, :, 0, i] = grid.T
        if parts == 2:
            down[i: i + d * (k1 - 1) + 1: d, :, 1, i] = rest.T
        along[i, i: i + d * (k2 - 1) + 1: d] = rows.T
    shift = bias * maxval + ((maxval + 1) / 2 if mode == "offset" else 0.0)
    tolerance, recheck = _bounds(bands, columns, rest, rows, amax, u, limit, shift, bias * maxval)
    weights64 = np.repeat(rows.T[:, :, None], parts, axis=2).reshape(-1)
    return _Step(dtype, torch.from_numpy(down.reshape(down.shape[0], -1)).to(dtype),
                 torch.from_numpy(along.reshape(n, -1)).to(dtype), parts, terms, rows, tolerance, recheck,
                 bands.divisor, bands.integer, shift, _Exact(kernel, scale, bias * maxval, mode, maxval), weights64)


def _on_grid(column: np.ndarray, amax: float, limit: float) -> np.ndarray:
    """``column`` rounded to the finest grid 2^-s on which every sum of it over inputs of at
    most ``amax`` is an integer multiple of 2^-s below ``limit``: exact in any order."""
    total = np.abs(column).sum() * amax
    s = math.floor(math.log2((limit / 2) / (total + 1)))
    while s > -1074 and np.abs(np.round(np.ldexp(column, s))).sum() * amax >= limit:
        s -= 1
    return np.ldexp(np.round(np.ldexp(column, s)), -s)


def _bounds(bands: Bands, columns, rest, rows, amax: float, u: float, limit: float, shift: float,
            bias_term: float) -> tuple[float, float]:
    """(tolerance, recheck): bounds on the error of a value before rounding, as the strips
    compute it (0 where it is exact) and as :func:`_settle` recomputes it in float64."""
    u64 = 2.0**-53
    terms, k1 = columns.shape
    k2 = rows.shape[1]
    reach_c = np.abs(columns).sum(1) * amax  # |first product| ≤ this, per term
    rest_err = _gamma(k1 + 1, u) * np.abs(rest).sum(1) * amax  # the rest's products and sums
    first_err = np.where(rest.any(1), u * (reach_c + np.abs(rest).sum(1) * amax) + rest_err, 0.0)
    sum_r = np.abs(rows).sum(1)
    total = float((sum_r * reach_c).sum())  # |the sum of the terms| ≤ this
    y = total / bands.divisor
    if bands.integer:
        if (bands.divisor == 1 and float(shift).is_integer() and y + abs(shift) < limit) or shift == 0:
            return 0.0, 0.0
        mapping = u * (y + abs(bias_term)) + u * (y + abs(shift) + abs(bias_term))
        return (u * y if bands.divisor != 1 else 0.0) + mapping, 3 * u64 * (y + abs(shift) + abs(bias_term))
    definition = (bands.residual + 8 * u64 * float((np.abs(columns).sum(1) * np.abs(rows).sum(1)).sum())) * amax
    second = _gamma(k2 * terms + 1, u) * float((sum_r * (reach_c + first_err)).sum()) + float((sum_r * first_err).sum())
    mapping = u * (y + abs(bias_term)) + u * (y + abs(shift) + abs(bias_term))
    tolerance = (second + definition + mapping) * (1 + 1e-3)
    recheck = (float((sum_r * rest_err).sum()) + _gamma(k2 * terms + 3, u64) * total + definition
               + 3 * u64 * (y + abs(shift) + abs(bias_term))) * (1 + 1e-3)
    return tolerance, recheck


def _settle(y: torch.Tensor, near: torch.Tensor, first: torch.Tensor, block: torch.Tensor, st: _Step, d: int,
            mode: str, maxval: float) -> None:
    """Set the values of ``y`` (W, C, R') at the flat indices ``near`` exactly: from the first
    product's exact parts in float64 (integer taps: in integers), and the few that remain from
    their input windows in exact arithmetic. In numpy: a few hundred values a strip."""
    c, r_len = y.shape[1], y.shape[2]
    near = near.numpy()
    x, ch, r = near // (c * r_len), near // r_len % c, near % r_len
    values, left = np.full(len(near), -1, dtype=np.int64), np.ones(len(near), dtype=bool)
    if st.integer or st.dtype == torch.float32:
        n = first.shape[-1]
        # each value's first-product entries: columns x + j·d, its channel and row, every term and part
        where = ((x * c + ch) * (st.terms * st.parts * n) + r)[:, None] + st.offsets(c, d)
        total = first.reshape(-1).numpy()[where].astype(np.float64) @ st.weights64  # Σ over taps, terms, parts
        if st.integer:  # integer sums, exact in float64
            values, left = _integer_rounding(total, st, mode, maxval)
        else:  # float64 from the exact grid part and the small rest
            value = np.abs(total + st.exact.bias_term) if mode == "abs" else total + st.shift
            values, left = _float_rounding(value, st.recheck, maxval)
    flat = y.view(-1).numpy()
    flat[near[~left]] = values[~left]
    for i in np.flatnonzero(left).tolist():
        window = block[r[i]: r[i] + d * (st.exact.kh - 1) + 1: d, x[i]: x[i] + d * (st.exact.kw - 1) + 1: d, ch[i]]
        flat[near[i]] = st.exact.value(window)


def _integer_rounding(total: np.ndarray, st: _Step, mode: str, maxval: float):
    """Integer sums S: the rounding of S / divisor + shift (abs: |S / divisor + bias|), exact
    in int64 where 2·shift·divisor is whole, else in float64 with its bound."""
    sums = np.round(total).astype(np.int64)  # exact: integers below 2^53
    twice = 2 * st.shift * st.divisor
    if not float(twice).is_integer():
        value = sums / st.divisor + (st.exact.bias_term if mode == "abs" else st.shift)
        return _float_rounding(np.abs(value) if mode == "abs" else value, st.recheck, maxval)
    num = 2 * sums + int(twice)  # 2·divisor·V (abs: the shift is the bias alone)
    if mode == "abs":
        num = np.abs(num)
    q, rem = np.divmod(num, 2 * st.divisor)
    up = (rem > st.divisor) | ((rem == st.divisor) & (q % 2 == 1))  # half to even
    return np.clip(q + up, 0, int(maxval)), np.zeros(len(num), dtype=bool)


def _float_rounding(value: np.ndarray, bound: float, maxval: float):
    """Values known to within ``bound``: their rounding where they are farther than that from
    k + ½, and which are not (to be settled exactly)."""
    floor = np.floor(value)
    frac = value - floor
    rounded = np.clip(floor + (frac > 0.5), 0, maxval).astype(np.int64)
    return rounded, np.abs(frac - 0.5) <= bound


class _Exact:
    """A value of the step in exact arithmetic from its input window: the kernel's float64 taps
    (its matrix times its scale, as the reference engine applies them) over the integer pixels,
    divided by the divisor, times the scale, plus the bias term; abs or offset; rounded half to
    even and clipped."""

    def __init__(self, kernel: Kernel, scale: float, bias_term: float, mode: str, maxval: float):
        taps = np.array(kernel.matrix, dtype=np.float64) * kernel.scale
        self.kh, self.kw = taps.shape
        fractions = [Fraction(t) for t in taps.ravel().tolist()]
        self.power = max(f.denominator for f in fractions)  # a power of two: floats are dyadic
        self.numerators = [int(f * self.power) for f in fractions]
        self.factor = Fraction(scale) / Fraction(kernel.divisor) / self.power
        self.bias_term, self.mode, self.maxval = bias_term, mode, maxval

    def value(self, window: torch.Tensor) -> int:
        pixels = [int(v) for v in window.reshape(-1).tolist()]
        v = sum(a * b for a, b in zip(self.numerators, pixels)) * self.factor + Fraction(self.bias_term)
        if self.mode == "abs":
            v = abs(v)
        elif self.mode == "offset":
            v += Fraction(int(self.maxval) + 1, 2)
        k = math.floor(v)
        rest = v - k
        k += 1 if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and k % 2) else 0
        return min(max(k, 0), int(self.maxval))
