"""The convolution toolkit of the teaching material: pooling, transposed convolution,
bilinear upsampling, and learning a kernel from an input/target pair.

All functions take and return Rasters; images come back mapped to their bit depth (clip,
rounded), arrays raw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..compute import budget
from ..compute.convolve import Geometry, as_tensor, pad, pad_amounts, resolve_device
from ..compute.shapes import check_pool_padding, output_size, pair, shape_text, transposed_size
from ..errors import UsageError
from ..io.images import Raster
from ..kernels.kernel import DEFAULT_MAP
from ..compute.options import MAX_GEOMETRY, check_geometry
from ..compute.mapping import map_values

POOL_OPS = ("max", "avg")


def _planes(raster: Raster, device, dtype=None) -> tuple[torch.Tensor, int]:
    """Colour and alpha stacked as (1, C[+1], H, W); returns the tensor and the colour count."""
    planes = raster.pixels if raster.alpha is None else np.concatenate([raster.pixels, raster.alpha[None]])
    if dtype is None:
        wide = raster.pixels.dtype == np.float64 or (raster.maxval or 0) > 255
        dtype = torch.float64 if wide else torch.float32
    return as_tensor(np.ascontiguousarray(planes)).to(device, dtype)[None], raster.pixels.shape[0]


def _back(y: torch.Tensor, colours: int, raster: Raster, mode: str = DEFAULT_MAP) -> Raster:
    """Split colour and alpha again; map images to their depth, keep arrays raw."""
    if raster.maxval is not None:  # in place and without stats: no second copy of a large result
        y, _ = map_values(y, mode, raster.maxval, inplace=True, stats=False)
    arr = y[0].cpu().numpy()
    alpha = arr[colours] if raster.alpha is not None else None
    return Raster(arr[:colours], alpha, raster.maxval, raster.format, raster.icc_profile, raster.exif)


def pool(raster: Raster, op: str, size: int | tuple[int, int], stride: int | None = None, padding: int = 0,
         device: str | None = None, *, max_memory: int | None = None) -> Raster:
    """Max or average pooling over size×size (or (height, width)) windows, stride default the
    window, as ``torch.nn.MaxPool2d`` / ``AvgPool2d``: max ignores padding, avg counts it as zeros."""
    if op not in POOL_OPS:
        raise UsageError(f"unknown pooling {op!r}; use max or avg")
    (kh, kw) = window = pair(size)
    for name, value in (("pool size", kh), ("pool size", kw), ("stride", stride), ("padding", padding)):
        check_geometry(name, value)
    sh, sw = pair(stride) if stride else window
    check_pool_padding(padding, min(window))
    h, w = raster.size
    oh, ow = output_size(h, kh, 2 * padding, sh), output_size(w, kw, 2 * padding, sw)
    if oh < 1 or ow < 1:
        raise UsageError(f"a {kh}x{kw} window does not fit a {h}x{w} image")
    _check_memory(raster, oh, ow, max_memory, f"pooling {w}x{h} pixels")
    x, colours = _planes(raster, resolve_device(device))
    fn = F.max_pool2d if op == "max" else F.avg_pool2d
    return _back(fn(x, window, (sh, sw), padding), colours, raster)


def _bilinear_1d(factor: int) -> np.ndarray:
    """One axis of the bilinear kernel: 2f − f mod 2 taps, a triangle of half-width ``factor``."""
    size = 2 * factor - factor % 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    return 1 - np.abs(np.arange(size) - centre) / factor


def bilinear_kernel(factor: int) -> np.ndarray:
    """The (2f − f mod 2)-square bilinear interpolation kernel used to initialise transposed
    convolutions for upsampling by ``factor`` (Long et al., FCN)."""
    filt = _bilinear_1d(factor)
    return np.outer(filt, filt)


def transpose_conv(x: torch.Tensor, weights, stride: int = 1, padding: int = 0, dilation: int = 1) -> torch.Tensor:
    """Transposed convolution of every channel of (N, C, H, W) with one 2-D kernel:
    each input pixel scatters ``value × kernel`` into the output, as
    ``torch.nn.ConvTranspose2d``; size (n−1)·s − 2p + d·(k−1) + 1."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=x.dtype, device=x.device)
    n, c, h, wd = x.shape
    kh, kw = w.shape
    if min(transposed_size(h, kh, stride, padding, dilation), transposed_size(wd, kw, stride, padding, dilation)) < 1:
        raise UsageError(f"padding {padding} leaves nothing of the transposed convolution")
    out = F.conv_transpose2d(x.reshape(n * c, 1, h, wd), w[None, None], stride=stride, padding=padding, dilation=dilation)
    return out.reshape(n, c, *out.shape[-2:])


def transpose(raster: Raster, weights, stride: int = 1, padding: int = 0, dilation: int = 1,
              device: str | None = None, mode: str = DEFAULT_MAP, *, max_memory: int | None = None) -> Raster:
    for name, value in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        check_geometry(name, value)
    kh, kw = np.shape(weights)
    h, w = raster.size
    oh, ow = transposed_size(h, kh, stride, padding, dilation), transposed_size(w, kw, stride, padding, dilation)
    # conv_transpose2d computes the full frame (the padding is cropped afterwards)
    _check_memory(raster, oh + 2 * padding, ow + 2 * padding, max_memory,
                  f"a transposed convolution of {w}x{h} pixels to {max(ow, 0)}x{max(oh, 0)}",
                  columns=kh * kw * h * w, kept=max(oh, 1) * max(ow, 1))
    x, colours = _planes(raster, resolve_device(device))
    return _back(transpose_conv(x, weights, stride, padding, dilation), colours, raster, mode)


def upsample(raster: Raster, factor: int | tuple[int, int], device: str | None = None, *,
             max_memory: int | None = None) -> Raster:
    """Enlarge by ``factor`` (one for both axes, or (height, width)) with a transposed convolution
    initialised as a bilinear kernel (the outer product of the two axes' bilinear filters).

    The image is first extended by one replicated pixel on each side and the result cropped,
    so the edges are interpolated like the middle (no dark frame); the result equals
    bilinear interpolation with half-pixel centres (``align_corners=False``)."""
    fh, fw = pair(factor)
    if min(fh, fw) < 1:
        raise UsageError("the upsampling factor must be at least 1")
    if (fh, fw) == (1, 1):
        return raster
    check_geometry("factor", max(fh, fw))
    h, w = raster.size
    k = np.outer(_bilinear_1d(fh), _bilinear_1d(fw))
    _check_memory(raster, (h + 2) * fh, (w + 2) * fw, max_memory, f"upsampling {w}x{h} pixels by {shape_text(factor)}",
                  columns=k.size * (h + 2) * (w + 2), kept=h * fh * w * fw)
    x, colours = _planes(raster, resolve_device(device))
    n, c = x.shape[:2]
    extended = pad(x, (1, 1, 1, 1), "replicate")
    weights = torch.as_tensor(k, dtype=x.dtype, device=x.device)[None, None]
    y = F.conv_transpose2d(extended.reshape(n * c, 1, h + 2, w + 2), weights, stride=(fh, fw),
                           padding=((fh - fh % 2) // 2, (fw - fw % 2) // 2))
    y = y.reshape(n, c, *y.shape[-2:])[..., fh:-fh, fw:-fw]
    return _back(y, colours, raster)


def _check_memory(raster: Raster, out_h: int, out_w: int, max_memory: int | None, what: str, *,
                  columns: int = 0, kept: int | None = None) -> None:
    """Refuse a toolkit job whose estimated peak exceeds ``max_memory`` (kernelcli.compute.budget)."""
    if max(out_h, out_w) > MAX_GEOMETRY ** 2:
        raise UsageError(f"{what}: the result would be {out_w}x{out_h} pixels; refused")
    c = raster.pixels.shape[0] + (raster.alpha is not None)
    float_size = 8 if raster.pixels.dtype == np.float64 or (raster.maxval or 0) > 255 else 4
    h, w = raster.size
    value_bytes = float_size if raster.maxval is None else 2 if raster.maxval > 255 else 1  # as written: raw floats
    columns *= min(c, torch.get_num_threads())  # torch may work on several planes at once, a buffer each
    need = budget.toolkit_estimate(c, h, w, max(out_h, 1), max(out_w, 1), float_size, columns=columns, kept=kept,
                                   value_bytes=value_bytes)
    budget.check(need, max_memory, what)


# --------------------------------------------------------------------------- learning


@dataclass
class Fit:
    """A learned kernel (one, or one per channel) and how well it explains the target."""

    kernels: list[np.ndarray]
    rms: float
    relative_error: float  # ||A·w − b|| / ||b||
    pixels_used: int
    pixels_total: int

    @property
    def explained(self) -> bool:
        return self.relative_error <= LEARN_TOLERANCE


LEARN_TOLERANCE = 0.02


def learn(source: Raster, target: Raster, shape: tuple[int, int], geo: Geometry = Geometry(),
          per_channel: bool = False, anchor: tuple[int, int] | None = None, *, max_memory: int | None = None) -> Fit:
    """The kernel of ``shape`` whose correlation with ``source`` best matches ``target``, by
    linear least squares (exact for exact data). Target pixels at 0 or full scale of an image
    are left out: they may have been clipped. One kernel for all channels, or one per channel."""
    kh, kw = shape
    if anchor is None:
        anchor = ((kh - 1) // 2, (kw - 1) // 2)
    if source.pixels.shape[0] != target.pixels.shape[0]:
        raise UsageError(f"INPUT has {source.pixels.shape[0]} channel(s), TARGET {target.pixels.shape[0]}")
    x = as_tensor(np.ascontiguousarray(source.pixels)).to(torch.float64)[None]
    top, bottom, left, right = pad_amounts(shape, anchor, geo)
    h, w = source.size
    out_h = output_size(h, kh, top + bottom, geo.stride, geo.dilation)
    out_w = output_size(w, kw, left + right, geo.stride, geo.dilation)
    if (out_h, out_w) != target.size:
        raise UsageError(
            f"TARGET is {target.size[0]}x{target.size[1]}, but a {kh}x{kw} kernel with padding "
            f"{geo.padding!r}, stride {geo.stride}, dilation {geo.dilation} gives {out_h}x{out_w} from INPUT"
        )
    # the unfolded columns (C, kh·kw, H'·W') in float64, their copy for numpy, the least-squares copies
    need = 8 * source.pixels.shape[0] * (kh * kw * out_h * out_w * 4 + (h + top + bottom) * (w + left + right))
    budget.check(need, max_memory, f"learning a {kh}x{kw} kernel from {w}x{h} pixels")
    padded = pad(x, (top, bottom, left, right), geo.border, geo.border_value)
    cols = F.unfold(padded[0][:, None], (kh, kw), dilation=geo.dilation, stride=geo.stride)  # (C, kh*kw, L)
    a = cols.permute(0, 2, 1).numpy()  # (C, L, taps)
    b = target.pixels.reshape(target.pixels.shape[0], -1).astype(np.float64)  # (C, L)
    keep = np.ones_like(b, dtype=bool)
    if target.maxval is not None:
        keep = (b > 0) & (b < target.maxval)
    groups = [[c] for c in range(b.shape[0])] if per_channel else [list(range(b.shape[0]))]
    kernels, residual, norm, used = [], 0.0, 0.0, 0
    for chans in groups:
        aa = np.concatenate([a[c][keep[c]] for c in chans])
        bb = np.concatenate([b[c][keep[c]] for c in chans])
        if len(bb) < kh * kw:
            raise UsageError(f"too few usable target pixels ({len(bb)}) to learn {kh * kw} weights")
        sol, *_ = np.linalg.lstsq(aa, bb, rcond=None)
        kernels.append(sol.reshape(kh, kw))
        residual += float(np.sum((aa @ sol - bb) ** 2))
        norm += float(np.sum(bb**2))
        used += len(bb)
    rms = math.sqrt(residual / used)
    return Fit(kernels, rms, math.sqrt(residual / norm) if norm else math.sqrt(residual), used, b.size)
