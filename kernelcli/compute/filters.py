"""Filtering a Raster with kernels: colour handling, alpha, value mapping.

read → tensor → (per kernel: correlate → map to the output depth) → Raster
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from .convolve import (
    Geometry,
    as_tensor,
    correlate,
    correlate_bank,
    pad,
    pad_amounts,
    resolve_device,
    sample_at_anchor,
)
from . import engine
from .engine import Source, Step
from ..errors import UsageError
from ..io.images import Raster
from ..kernels.kernel import Kernel
from .mapping import Stats, check_finite, map_values
from .options import Options

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's "L" conversion


@dataclass
class _Work:
    """A raster moved to the device: colour (1, C, H, W), alpha (1, 1, H, W) in 0..1."""

    x: torch.Tensor
    alpha: torch.Tensor | None
    see_through: bool  # some alpha < 1: colour is filtered premultiplied
    maxval: float


def _see_through(raster: Raster) -> bool:
    """Some pixel is not fully opaque: colour must be filtered premultiplied."""
    return raster.alpha is not None and bool((raster.alpha < (raster.maxval or 255.0)).any())


def _load(raster: Raster, options: Options) -> _Work:
    device = resolve_device(options.device)
    wide = raster.pixels.dtype == np.float64 or (raster.maxval or 0) > 255
    dtype = torch.float64 if wide else torch.float32
    maxval = raster.maxval or 255.0
    x = as_tensor(np.ascontiguousarray(raster.pixels)).to(device, dtype)[None]
    if options.color == "gray" and x.shape[1] == 3:
        x = _luma(x)
    alpha = None
    if raster.alpha is not None:
        alpha = as_tensor(raster.alpha).to(device, dtype)[None, None] / maxval
    # Fully opaque: filter like plain colour (exactly), but still carry alpha to the output.
    return _Work(x, alpha, _see_through(raster), maxval)


def _finish(y: torch.Tensor, kernel: Kernel, options: Options, maxval: float,
            full_scale: float) -> tuple[torch.Tensor, Stats]:
    """Map one step's float result to the output depth, or keep it raw: then only scaled and
    biased (``result * scale + bias * full_scale``; the input's full scale, 1 for arrays)."""
    what = f"kernel {kernel.name!r}"
    if options.raw:
        if options.scale != 1.0:
            y.mul_(options.scale)
        if options.bias_for(kernel):
            y.add_(options.bias_for(kernel) * full_scale)
        check_finite(y, what)
        return y, Stats(float(y.min()), float(y.max()), 0.0)
    return map_values(y, options.map_for(kernel), maxval, scale=options.scale, bias=options.bias_for(kernel), what=what,
                      inplace=True)  # y is this step's own result


def _raster(y: torch.Tensor, alpha: torch.Tensor | None, options: Options, maxval: float, like: Raster) -> Raster:
    out_alpha = None if alpha is None else torch.round(alpha[0, 0] * maxval).cpu().numpy()
    return Raster(y[0].cpu().numpy(), out_alpha, None if options.raw else maxval, like.format,
                  like.icc_profile, like.exif)


def source(raster: Raster, options: Options) -> Source:
    """What :func:`kernelcli.compute.engine.plan` needs to know of ``raster`` under ``options``."""
    c, h, w = raster.pixels.shape
    return Source(c, h, w, raster.pixels.itemsize, raster.pixels.dtype in (np.uint8, np.uint16), raster.maxval,
                  _see_through(raster), resolve_device(options.device).type)


def plan(raster: Raster, kernels: list[Kernel], options: Options = Options()) -> tuple[Step, ...]:
    """How each of ``kernels`` will be computed on ``raster`` (:func:`kernelcli.compute.engine.plan`)."""
    return _planned(tuple(kernels), options, source(raster, options))


@lru_cache(maxsize=64)
def _planned(kernels: tuple[Kernel, ...], options: Options, src: Source) -> tuple[Step, ...]:
    """engine.plan, once per (kernels, options, source): a file whose header was checked
    before it was read (kernelcli.run.runner) is not planned again when its pixels arrive, unless
    they differ from what the header said (transparency)."""
    return engine.plan(list(kernels), options, src)


def apply_kernels(raster: Raster, kernels: list[Kernel], options: Options = Options()) -> tuple[Raster, list[Stats]]:
    """Apply ``kernels`` in sequence. Unless ``options.raw``, each step's result is mapped
    and rounded to the output bit depth before the next, so a chain of separate runs gives
    the same pixels as one run. Returns the new Raster and each step's Stats (None where
    the fast engine ran with ``options.stats`` off); their ``engine`` and ``method`` are the
    plan's (:func:`plan`), which the memory check priced and the engines run as given."""
    steps = plan(raster, kernels, options)
    check_memory(raster, kernels, options, steps=steps)
    if steps[0].engine == "fast":
        return _fast(raster, kernels, options, steps)
    work = _load(raster, options)
    geo, x, alpha = options.geometry, work.x, work.alpha
    stats = []
    for kernel, step in zip(kernels, steps):
        k = kernel.flipped() if options.convolve else kernel
        y = _filter(x, alpha if work.see_through else None, k, geo, options.color, step)
        if alpha is not None:
            alpha = sample_at_anchor(alpha, k.shape, k.anchor, geo)
        x, st = _finish(y, kernel, options, work.maxval, raster.maxval or 1.0)
        stats.append(replace(st, engine=step.engine, method=step.method))
    return _raster(x, alpha, options, work.maxval, raster), stats


def check_memory(raster: Raster, kernels: list[Kernel], options: Options, name: str | None = None,
                 results: int = 1, steps: tuple[Step, ...] | None = None) -> None:
    """Refuse (MemoryBudgetError) a job whose estimated peak exceeds ``options.max_memory``;
    ``results``: each kernel applied alone, all results held at once (apply_each). The
    estimate prices the plan's steps (:func:`plan`, computed here unless given)."""
    from . import budget

    c, h, w = raster.pixels.shape
    if results == 1:
        chains = [(tuple(kernels), steps or plan(raster, kernels, options))]
    else:  # the bank: every kernel on the reference engine, a result each
        bank = engine.Step("reference", "bank")
        chains = [((k,), (bank,)) for k in kernels]
    need = max(_priced(c, h, w, raster.pixels.itemsize, ks, options, raster.alpha is not None, st)
               for ks, st in chains) * results
    budget.check(need, options.max_memory, f"{name + ': ' if name else ''}filtering {w}x{h} pixels with {' → '.join(k.name for k in kernels)}")


@lru_cache(maxsize=64)
def _priced(c: int, h: int, w: int, itemsize: int, kernels: tuple[Kernel, ...], options: Options, alpha: bool,
            steps: tuple[Step, ...]) -> int:
    """budget.apply_estimate, once per job shape (see :func:`_planned`)."""
    from . import budget

    return budget.apply_estimate(c, h, w, itemsize, kernels, options, alpha=alpha, steps=steps)


def _fast(raster: Raster, kernels: list[Kernel], options: Options, steps: tuple[Step, ...]):
    """Every step on the fast engine of :mod:`kernelcli.compute.fast`, as the plan said."""
    from . import fast

    maxval = raster.maxval
    hwc = np.ascontiguousarray(raster.pixels.transpose(1, 2, 0))
    stats = []
    for kernel, step in zip(kernels, steps):
        k = kernel.flipped() if options.convolve else kernel
        hwc, st = fast.filter_strips(hwc, k, step, options.geometry, options.map_for(kernel), maxval, options.scale,
                                     options.bias_for(kernel), options.stats)
        stats.append(None if st is None else replace(st, engine=step.engine, method=step.method))
    result = Raster(hwc.transpose(2, 0, 1), raster.alpha, maxval, raster.format, raster.icc_profile, raster.exif)
    return result, stats


def apply_each(raster: Raster, kernels: list[Kernel], options: Options = Options()) -> list[tuple[Raster, Stats]]:
    """Each kernel alone on the same raster, equal to ``apply_kernels(raster, [k])`` for every
    k. Computed as one convolution with a kernel per output channel (2–5x faster than one by
    one on the CPU) where :func:`kernelcli.compute.engine.plan_each` says so."""
    step = engine.plan_each(kernels, options, source(raster, options))
    if step is None:
        return [(r, st[0]) for r, st in (apply_kernels(raster, [k], options) for k in kernels)]
    ks = [k.flipped() if options.convolve else k for k in kernels]
    check_memory(raster, ks, options, results=len(ks))  # the bank holds a result per kernel
    work = _load(raster, options)
    bank = correlate_bank(work.x, [(_taps(k), k.anchor) for k in ks], options.geometry)
    results = []
    for i, (kernel, k) in enumerate(zip(kernels, ks)):
        y = bank[:, :, i] / k.divisor if k.divisor != 1 else bank[:, :, i]
        y = y.sum(1, keepdim=True) if options.color == "sum" else y
        alpha = None if work.alpha is None else sample_at_anchor(work.alpha, k.shape, k.anchor, options.geometry)
        y, st = _finish(y, kernel, options, work.maxval, raster.maxval or 1.0)
        results.append((_raster(y, alpha, options, work.maxval, raster), replace(st, engine=step.engine,
                                                                                method=step.method)))
    return results


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _filter(x, alpha, k: Kernel, geo: Geometry, color: str, step: Step) -> torch.Tensor:
    """One step on the reference engine, as the plan's ``step`` says (method, tile rows)."""
    if k.kind == "multi-channel":
        return _mix(x, alpha, k, geo)
    if color == "luma" and x.shape[1] == 3:
        # Filter luminance only; adding the change of Y to R, G and B keeps Cb and Cr.
        y = _luma(x)
        delta = _respond(y, alpha, k, geo, step) - sample_at_anchor(y, k.shape, k.anchor, geo)
        return sample_at_anchor(x, k.shape, k.anchor, geo) + delta
    out = _respond(x, alpha, k, geo, step)
    return out.sum(1, keepdim=True) if color == "sum" else out


def _respond(x, alpha, k: Kernel, geo: Geometry, step: Step) -> torch.Tensor:
    """A plain kernel's response, or a combined kernel's: magnitude √Σgᵢ², max |gᵢ|, or Σgᵢ
    (each part by the method its size asks for, in the step's tiles)."""
    if not k.combine:
        return _correlate_alpha(x, alpha, k, geo, step.method, step.tile_rows)
    from .fast import accumulate_part, fold_part

    acc = None
    for p in k.parts:  # one part at a time: memory for two responses, not one per part
        r = fold_part(k.combine, _correlate_alpha(x, alpha, p, geo, "auto", step.tile_rows))
        acc = r if acc is None else accumulate_part(k.combine, acc, r)
    if k.combine == "magnitude":
        acc.sqrt_()
    return acc * (k.scale / k.divisor)


def _mix(x, alpha, k: Kernel, geo: Geometry) -> torch.Tensor:
    """A multi-channel kernel: every output channel sums its own kernels over the inputs."""
    w = torch.as_tensor(k.full_weights, dtype=x.dtype, device=x.device)
    if w.shape[1] != x.shape[1]:
        raise UsageError(f"kernel {k.name!r} expects {w.shape[1]} input channel(s); the image has {x.shape[1]}")
    if alpha is not None:
        x = x * alpha  # premultiplied, renormalised by the pixel's own alpha
    padded = pad(x, pad_amounts(k.shape, k.anchor, geo), geo.border, geo.border_value)
    out = torch.nn.functional.conv2d(padded, w, stride=geo.stride, dilation=geo.dilation)
    if alpha is not None:
        own = sample_at_anchor(alpha, k.shape, k.anchor, geo)
        out = torch.where(own > 0, out / own.clamp_min(1e-6), torch.zeros_like(out))
    return out


def _correlate_alpha(x, alpha, k: Kernel, geo: Geometry, method: str, tile_rows: int | None) -> torch.Tensor:
    """Correlate colour; with transparency, filter premultiplied colour and renormalise so
    transparent pixels (whatever colour they store) do not bleed in as dark halos.

    colour = corr(c·a) / (corr(a) / sum(w)) for kernels with a non-zero sum (a weighted
    average over visible pixels); zero-sum kernels divide by the pixel's own alpha.
    """
    taps = _taps(k)
    if alpha is None:
        out = correlate(x, taps, k.anchor, geo, method, tile_rows)
        return out / k.divisor if k.divisor != 1 else out
    num = correlate(x * alpha, taps, k.anchor, geo, method, tile_rows) / k.divisor
    own = sample_at_anchor(alpha, k.shape, k.anchor, geo)
    total = float(taps.sum())
    den = correlate(alpha, taps, k.anchor, geo, method, tile_rows) / total if abs(total) > 1e-9 else own
    den = torch.where(den > 1e-6, den, own)
    return torch.where(own > 0, num / den.clamp_min(1e-6), torch.zeros_like(num))


def _taps(k: Kernel) -> np.ndarray:
    """The matrix as written times its scale; the divisor is applied after summing, so
    integer kernels on 8-bit data are exact, as in the fast engine."""
    return np.array(k.matrix, dtype=np.float64) * k.scale
