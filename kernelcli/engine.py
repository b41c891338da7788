"""Which engine computes each step: the one decision, made before any work.

:func:`plan` says, for every kernel of a job, which engine runs it and how: the fast strip
engine (:mod:`kernelcli.fast`: ``strips`` of shifted adds, ``banded`` matrix products for
large separable kernels, ``combined`` kernels part by part) or the reference engine
(:mod:`kernelcli.convolve`: ``direct`` conv2d, ``separable`` 1-D passes, ``fft``, ``parts``
of a combined kernel, ``mix`` for multi-channel kernels, ``bank`` for apply_each), and in
how many rows per tile the reference engine works on the CPU. The engine
(:mod:`kernelcli.filters`) runs what the plan says, the memory estimate
(:mod:`kernelcli.budget`) prices what it says, and each step's ``Stats`` reports it.
numpy only (no torch): the command line can plan before torch is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .kernel import Kernel
from .options import CONSTANT_BORDERS, Geometry, pad_amounts

STRIP_BYTES = 1 << 20  # the fast engine's strip of input pixels: about 1 MiB stays in L2 cache
TILE_BYTES = 64 << 20  # the reference engine's CPU working set per tile: conv2d's unfolded copy, FFT spectra
BAND_ROWS = 48  # the fast engine's output rows (and columns) per banded matrix product
DIRECT_MAX_TAPS = 49  # up to 7x7: one conv2d; larger: two 1-D passes if separable, else FFT
METHODS = ("auto", "direct", "separable", "fft")
FAST_MAPS = ("clip", "abs", "offset")  # pointwise mappings the fast engine fuses per strip
# The integers the reference engine's float type holds exactly (float32 for 8-bit, float64
# for 16-bit): the fast engine runs only where every sum stays inside, so both agree exactly.
EXACT = {255.0: 2.0**24, 65535.0: 2.0**53}


@dataclass(frozen=True)
class Step:
    """How one kernel is computed: ``engine`` "fast" or "reference"; ``method`` (see the
    module); ``tile_rows`` the reference engine's output rows per CPU tile (None: at once)."""

    engine: str
    method: str
    tile_rows: int | None = None


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

    from .analysis import separable_factors

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
            return tuple(Step("fast", m) for m in fast)
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
              scale: float = 1.0, bias: float = 0.0) -> str | None:
    """How the fast engine computes this step ("strips", "banded", "combined"), or None where
    it cannot: small kernels as shifted adds, large separable ones as banded products,
    combined kernels (sobel, compass) part by part within each strip, when the whole
    computation (sums, divisor, scale, bias, offset) is proven in range by :func:`reach`."""
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
        return "combined" if ok else None
    if kernel.kind != "plain" or reach(kernel, geo, maxval, scale, bias, mode) > EXACT[maxval]:
        return None
    return {"direct": "strips", "separable": "banded"}.get(choose_method(kernel.weights))


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
