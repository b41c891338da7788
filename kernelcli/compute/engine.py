"""Which engine computes each step: the one decision, made before any work.

:func:`plan` says, for every kernel of a job, which engine runs it and how: the fast strip
engine (:mod:`kernelcli.compute.fast`: ``strips`` of shifted adds, ``banded`` matrix products for
large kernels that are a sum of a few separable terms (:mod:`kernelcli.compute.bands`), ``combined``
kernels part by part) or the reference engine
(:mod:`kernelcli.compute.convolve`: ``direct`` conv2d, ``separable`` 1-D passes, ``fft``, ``parts``
of a combined kernel, ``mix`` for multi-channel kernels, ``bank`` for apply_each), and in
how many rows per tile the reference engine works on the CPU. The engine
(:mod:`kernelcli.compute.filters`) runs what the plan says, the memory estimate
(:mod:`kernelcli.compute.budget`) prices what it says, and each step's ``Stats`` reports it.
numpy only (no torch): the command line can plan before torch is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from ..kernels.kernel import Kernel
from .options import CONSTANT_BORDERS, Geometry, pad_amounts

STRIP_BYTES = 1 << 20  # the fast engine's strip of input pixels: about 1 MiB stays in L2 cache
TILE_BYTES = 64 << 20  # the reference engine's CPU working set per tile: conv2d's unfolded copy, FFT spectra
BAND_ROWS = 16  # the banded engine's output rows (and columns) per matrix product (kernelcli.compute.bands)
DIRECT_MAX_TAPS = 49  # up to 7x7: one conv2d; larger: two 1-D passes if separable, else FFT
MAX_TERMS = 3  # the banded engine's separable terms at most (log: 3, dog and unsharp: 2, gaussian and box: 1)
METHODS = ("auto", "direct", "separable", "fft")
FAST_MAPS = ("clip", "abs", "offset")  # pointwise mappings the fast engine fuses per strip
# The integers the reference engine's float type holds exactly (float32 for 8-bit, float64
# for 16-bit): the fast engine runs only where every sum stays inside, so both agree exactly.
EXACT = {255.0: 2.0**24, 65535.0: 2.0**53}


@dataclass(frozen=True)
class Bands:
    """A large kernel as the fast engine's banded method computes it: the sum over terms of
    outer(column, row) (float64 weights; the column runs down the rows), then divided by
    ``divisor``. ``integer``: the weights are the kernel's integer taps (box:N is ones / N²),
    so the sums are exact; else they are the kernel's weights times the scale, and
    ``residual`` bounds Σ|weights − Σ outer(column, row)| (what the terms leave out)."""

    columns: tuple[tuple[float, ...], ...]
    rows: tuple[tuple[float, ...], ...]
    divisor: int = 1
    integer: bool = False
    residual: float = 0.0


@dataclass(frozen=True)
class Step:
    """How one kernel is computed: ``engine`` "fast" or "reference"; ``method`` (see the
    module); ``tile_rows`` the reference engine's output rows per CPU tile (None: at once);
    ``bands`` the separable terms of a ``banded`` step."""

    engine: str
    method: str
    tile_rows: int | None = None
    bands: Bands | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Source:
    """What the plan needs to know of an image: channels, size, pixel type, range, device."""

    channels: int
    height: int
    width: int
    itemsize: int  # bytes per value: 1 (uint8), 2 (uint16), 4/8 (float)
    integer: bool  # uint8/uint16 pixels (the fast engine's input)
    maxval: float | None
    see_through: bool = False  # some alpha < 1: colour is filtered premultiplied
    device: str = "cpu"  # the resolved device type: cpu, cuda, mps


def choose_method(weights) -> str:
    """Pick the algorithm by kernel size and rank (measured on a 2-core CPU: for 9x9 and up,
    two 1-D passes beat conv2d; FFT beats both for large non-separable kernels). Small
    kernels stay direct, which is exact for integer weights on 8-bit data."""
    import numpy as np

    from ..kernels.analysis import separable_factors

    kh, kw = np.shape(weights)
    if kh * kw <= DIRECT_MAX_TAPS:
        return "direct"
    if kh > 1 and kw > 1 and separable_factors(weights) is not None:
        return "separable"
    return "fft"


def strip_rows(width: int, channels: int, itemsize: int) -> int:
    """The fast engine's rows per strip (about STRIP_BYTES of input pixels)."""
    return max(1, STRIP_BYTES // max(1, width * channels * itemsize))


def tile_rows(planes: int, padded_width: int, out_h: int, float_size: int, shape, method: str) -> int | None:
    """The reference engine's output rows per CPU tile so one tile's working set stays near
    TILE_BYTES (conv2d unfolds kh·kw copies of its input; an FFT holds a few complex
    spectra); None when the whole image fits in one tile."""
    kh, kw = shape
    per_row = planes * padded_width * float_size * (8 if method == "fft" else min(kh * kw, 16))
    rows = max(1, TILE_BYTES // max(1, per_row))
    return rows if rows < out_h else None


def plan(kernels: list[Kernel], options, src: Source) -> tuple[Step, ...]:
    """The step of each kernel (flipped first with ``options.convolve``). Every step runs on
    the fast engine or none does: 8/16-bit pixels on the CPU, no transparency, mapped
    output, and each step :func:`fast_step` (proven in range)."""
    from .shapes import output_size

    geo = options.geometry
    steps = [(k.flipped() if options.convolve else k, k) for k in kernels]
    if (not options.raw and src.integer and src.device == "cpu" and not src.see_through
            and (options.color == "channels" or src.channels == 1)):
        fast = [fast_step(k, geo, options.map_for(kernel), src.maxval, src.channels, options.scale,
                          options.bias_for(kernel)) for k, kernel in steps]
        if all(fast):
            return tuple(fast)
    float_size = 8 if src.itemsize == 8 or (src.maxval or 0) > 255 else 4  # the reference engine's float type
    out, h, w = [], src.height, src.width
    for k, _ in steps:
        top, bottom, left, right = _pad(k, geo)
        oh = max(1, output_size(h, k.shape[0], top + bottom, geo.stride, geo.dilation))
        method = "mix" if k.kind == "multi-channel" else "parts" if k.combine else choose_method(k.weights)
        tile = None
        if src.device == "cpu":
            tile = tile_rows(src.channels, w + left + right, oh, float_size, k.shape,
                             method if method in METHODS else "direct")
        out.append(Step("reference", method, tile))
        h, w = oh, max(1, output_size(w, k.shape[1], left + right, geo.stride, geo.dilation))
    return tuple(out)


def _pad(k: Kernel, geo: Geometry):
    return pad_amounts(k.shape, k.anchor, geo)


def plan_each(kernels: list[Kernel], options, src: Source) -> Step | None:
    """apply_each: the bank (one convolution, a kernel per output channel), or None where
    each kernel runs alone (:func:`plan` per kernel): one kernel, transparency, ``luma``
    colour, other than plain kernels, or differing frames without 'same' padding."""
    ks = [k.flipped() if options.convolve else k for k in kernels]
    same_frame = options.geometry.padding == "same" or len({(k.shape, k.anchor) for k in ks}) == 1
    if (len(ks) < 2 or src.see_through or options.color == "luma" or not same_frame
            or not all(k.kind == "plain" for k in ks)):
        return None
    return Step("reference", "bank")


def fast_step(kernel: Kernel, geo: Geometry, mode: str, maxval: float | None, channels: int,
              scale: float = 1.0, bias: float = 0.0) -> Step | None:
    """How the fast engine computes this step ("strips", "banded", "combined"), or None where
    it cannot: small kernels as shifted adds, when the whole computation (sums, divisor,
    scale, bias, offset) is proven in range by :func:`reach`; large kernels that are a sum of
    a few separable terms as banded products (:func:`banded_form`); combined kernels (sobel,
    compass) part by part within each strip."""
    if not (maxval in EXACT and geo.padding == "same" and geo.stride == 1 and mode in FAST_MAPS
            and channels in (1, 3)):
        return None
    if kernel.kind == "combined":
        ok = (
            len({(p.shape, p.anchor) for p in kernel.parts}) == 1
            and all(p.kind == "plain" and choose_method(p.weights) == "direct" and integer_form(p, 1.0) is not None
                    and reach(p, geo, maxval) <= EXACT[maxval] for p in kernel.parts)
            and float(geo.border_value).is_integer()
            and combined_reach(kernel, geo, maxval, scale, bias, mode) <= EXACT[maxval]
        )
        return Step("fast", "combined") if ok else None
    bound = reach(kernel, geo, maxval, scale, bias, mode) if kernel.kind == "plain" else math.inf
    if bound == math.inf:
        return None
    if math.prod(kernel.shape) <= DIRECT_MAX_TAPS:
        return Step("fast", "strips") if bound <= EXACT[maxval] else None
    if not float(geo.border_value).is_integer():
        return None
    bands = banded_form(kernel, scale, max(maxval, abs(geo.border_value)), EXACT[maxval])
    return Step("fast", "banded", bands=bands) if bands else None


@lru_cache(maxsize=64)
def banded_form(kernel: Kernel, scale: float, amax: float, exact: float) -> Bands | None:
    """The separable terms of a large plain kernel (at most MAX_TERMS), or None: integer taps
    of rank 1 whose sums stay below ``exact`` for inputs up to ``amax`` in magnitude (exact:
    box:N, binomials), else the float weights times ``scale`` by singular values (gaussian:
    1 term, dog and unsharp: 2, log: 3). Kernels whose weights are simple fractions with an
    even denominator (0.01, 1/36 written as decimals) are left to the reference engine: their
    sums sit on or next to a rounding tie for many pixels, which the banded engine would have
    to settle one by one (kernelcli.compute.bands)."""
    import numpy as np

    ints = integer_form(kernel, scale)
    if ints is not None:
        factors = integer_factors(ints[0])
        if factors is not None and np.abs(factors[0]).sum() * np.abs(factors[1]).sum() * amax < exact:
            return Bands((tuple(factors[0].tolist()),), (tuple(factors[1].tolist()),), ints[1], True)
    w = kernel.weights * scale
    if not (np.isfinite(w).all() and w.any()) or _simple_fractions(w):
        return None
    from ..kernels.analysis import separable_factors

    u, s, vt = np.linalg.svd(w)
    rank = int((s > s[0] * 1e-12).sum())
    if rank > MAX_TERMS:
        return None
    terms = [separable_factors(w)] if rank == 1 else [(u[:, t] * s[t], vt[t]) for t in range(rank)]
    residual = float(np.abs(w - sum(np.outer(c, r) for c, r in terms)).sum())
    return Bands(tuple(tuple(c.tolist()) for c, _ in terms), tuple(tuple(r.tolist()) for _, r in terms),
                 residual=residual)


def integer_factors(taps):
    """(column, row) integer vectors with outer(column, row) == taps, or None (rank > 1)."""
    import numpy as np

    i, j = np.unravel_index(np.argmax(np.abs(taps)), taps.shape)
    column = taps[:, j] // math.gcd(*taps[:, j].tolist())
    if column[np.argmax(np.abs(column))] < 0:
        column = -column
    if np.any(taps[i] % column[i]):
        return None
    row = taps[i] // column[i]
    return (column, row) if np.array_equal(np.outer(column, row), taps) else None


def _simple_fractions(w, limit: int = 4096) -> bool:
    """Whether every weight is p/q (to 1e-12) with one common even denominator up to ``limit``."""
    from fractions import Fraction

    import numpy as np

    common = 1
    for v in np.unique(np.abs(w[w != 0])).tolist():
        f = Fraction(v).limit_denominator(limit)
        if abs(float(f) - v) > 1e-12 * v:
            return False
        common = math.lcm(common, f.denominator)
        if common > limit:
            return False
    return common % 2 == 0


def reach(kernel: Kernel, geo: Geometry, maxval: float, scale: float = 1.0, bias: float = 0.0,
          mode: str = "clip") -> float:
    """A bound on the magnitude of every value the step computes: each partial sum of the
    taps over inputs in [lo, hi] (0..maxval, widened by a constant border's value) lies in
    [pos·lo − neg·hi, pos·hi − neg·lo] for the positive and negative tap sums pos and neg;
    the bias and the offset are added after."""
    import numpy as np

    ints = integer_form(kernel, scale)
    taps = ints[0].astype(np.float64) if ints else kernel.weights * scale
    constant = geo.border in CONSTANT_BORDERS
    lo = min(0.0, geo.border_value) if constant else 0.0
    hi = max(maxval, geo.border_value) if constant else maxval
    pos, neg = float(taps[taps > 0].sum()), float(-taps[taps < 0].sum())
    sums = max(pos * hi - neg * lo, neg * hi - pos * lo)
    total = sums + abs(offset_term(mode, maxval, bias))
    return total if math.isfinite(total) else math.inf


def combined_reach(kernel: Kernel, geo: Geometry, maxval: float, scale: float = 1.0, bias: float = 0.0,
                   mode: str = "clip") -> float:
    """A bound on a combined kernel's result: K parts of at most the largest part's reach
    (√Σr² ≤ Σ|r|), times its scale/divisor and ``scale``, plus bias and offset."""
    parts = max(reach(p, geo, maxval) / abs(p.divisor) for p in kernel.parts) * len(kernel.parts)
    total = parts * abs(kernel.scale / kernel.divisor * scale) + abs(offset_term(mode, maxval, bias))
    return total if math.isfinite(total) else math.inf


def offset_term(mode: str, maxval: float, bias: float) -> float:
    """What mapping adds after the sum: the bias, and mid-gray for ``offset``."""
    return bias * maxval + ((maxval + 1) / 2 if mode == "offset" else 0.0)


def integer_form(kernel: Kernel, scale: float):
    """(integer taps, divisor) with weights == taps / divisor exactly, or None."""
    import numpy as np

    if scale != 1.0 or not float(kernel.divisor).is_integer() or kernel.scale != 1.0:
        return None
    m = np.array(kernel.matrix, dtype=np.float64)
    if not np.all(m == np.round(m)) or np.abs(m).max() > 2**15:
        return None
    return m.astype(np.int64), int(kernel.divisor)
