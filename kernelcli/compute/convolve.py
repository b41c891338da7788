"""The torch engine: borders, padding, stride, dilation, devices.

Everything here works on float tensors of shape (N, C, H, W) and a 2-D weight matrix, and
applies the weights as correlation (as written), like ``torch.nn.functional.conv2d``.
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DeviceError, ImageError, UsageError
from . import engine
from .engine import METHODS, choose_method
from .options import CONSTANT_BORDERS, Geometry, pad_amounts, padded_axis
from .shapes import output_size

DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing ``array``'s memory. Decoded images are read-only numpy arrays;
    kernelcli never writes to its inputs, so torch's warning about that is silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def gather(x: torch.Tensor, rows, cols, value: float, *, axes: tuple[int, int] = (-2, -1),
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """The padded block of ``x``: its ``rows`` and ``cols`` (each an (index, outside) pair of
    :func:`padded_axis`, or a slice of one) along ``axes``, converted to ``dtype``, with the
    positions outside the image set to the constant border's ``value``. The one place
    borders are applied: the reference engine (:func:`pad`, tiles) and the fast strips."""
    block = x
    for axis, (index, _) in zip(axes, (rows, cols)):
        block = block.index_select(axis, torch.from_numpy(np.ascontiguousarray(index)).to(x.device))
    if dtype is not None:
        block = block.to(dtype)
    for axis, (_, outside) in zip(axes, (rows, cols)):
        if outside is not None and outside.any():
            where = [slice(None)] * block.dim()
            where[axis] = torch.from_numpy(np.ascontiguousarray(outside)).to(x.device)
            block[tuple(where)] = value
    return block


def pad(x: torch.Tensor, amounts: tuple[int, int, int, int], border: str, value: float = 0.0) -> torch.Tensor:
    """Pad the last two axes of ``x`` by (top, bottom, left, right) with a border mode."""
    top, bottom, left, right = amounts
    if not any(amounts):
        return x
    h, w = x.shape[-2:]
    geo = Geometry(border, value)
    return gather(x, padded_axis(h, top, bottom, geo), padded_axis(w, left, right, geo), value)


def cpu_tile_rows(x: torch.Tensor, shape, pad_columns: int, out_h: int, method: str) -> int | None:
    """Output rows per CPU tile of ``x`` (engine.tile_rows): bounds the engine's memory on
    large images and padding."""
    n, c, _, w = x.shape
    return engine.tile_rows(n * c, w + pad_columns, out_h, x.element_size(), shape, method)


def correlate(
    x: torch.Tensor, weights, anchor: tuple[int, int] | None = None, geo: Geometry = Geometry(),
    method: str = "auto", tile_rows: int | None | str = "auto",
) -> torch.Tensor:
    """Correlate every channel of ``x`` (N, C, H, W) with one 2-D kernel; returns (N, C, H', W').

    ``weights`` is a (kh, kw) array; ``anchor`` the (row, col) of the weight that lands on
    the output pixel with ``padding='same'`` (default: the centre, or up-left of it).
    ``method``: direct (conv2d), separable (two 1-D passes), fft, or auto (by size and rank).
    ``tile_rows`` computes that many output rows at a time (each tile reads its input rows
    with the kernel's reach), equal to the untiled result; None: all at once; "auto": on the
    CPU, tiles of about TILE_BYTES of working set (:func:`kernelcli.compute.engine.tile_rows`; the
    filters pass their plan's). On a GPU that runs out of memory, kernelcli retries in ever
    smaller tiles by itself.
    """
    weights = np.asarray(weights, dtype=np.float64)
    kh, kw = weights.shape
    if anchor is None:
        anchor = ((kh - 1) // 2, (kw - 1) // 2)
    top, bottom, left, right = pad_amounts((kh, kw), anchor, geo)
    n, c, h, wd = x.shape
    out_h = output_size(h, kh, top + bottom, geo.stride, geo.dilation)
    out_w = output_size(wd, kw, left + right, geo.stride, geo.dilation)
    if out_h < 1 or out_w < 1:
        raise UsageError(
            f"a {kh}x{kw} kernel (dilation {geo.dilation}) does not fit a {h}x{wd} image "
            f"with padding {geo.padding!r}; use more padding or a smaller kernel"
        )
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    method = choose_method(weights) if method == "auto" else method
    if tile_rows == "auto":
        tile_rows = cpu_tile_rows(x, (kh, kw), left + right, out_h, method) if x.device.type == "cpu" else None
    if tile_rows is None:
        try:
            padded = pad(x, (top, bottom, left, right), geo.border, geo.border_value)
            return _valid(padded, weights, geo, method).reshape(n, c, out_h, out_w)
        except torch.OutOfMemoryError:
            if x.device.type == "cpu":
                raise
            torch.cuda.empty_cache()
            tile_rows = max(1, out_h // 4)
    while True:
        try:
            return _tiled(x, weights, (top, bottom, left, right), geo, method, out_h, tile_rows)
        except torch.OutOfMemoryError:
            if x.device.type == "cpu" or tile_rows == 1:
                raise ImageError(f"out of {x.device.type} memory even one output row at a time") from None
            torch.cuda.empty_cache()
            tile_rows = max(1, tile_rows // 2)


def _valid(padded: torch.Tensor, weights: np.ndarray, geo: Geometry, method: str) -> torch.Tensor:
    """Valid correlation of an already padded (N, C, Hp, Wp) block; returns (N*C, 1, H', W')."""
    kh, kw = weights.shape
    flat = padded.reshape(-1, 1, *padded.shape[-2:])
    s, d = geo.stride, geo.dilation
    if method == "separable":
        from ..kernels.analysis import separable_factors

        column, row = separable_factors(weights)
        col_w = torch.as_tensor(column, dtype=flat.dtype, device=flat.device).view(1, 1, kh, 1)
        row_w = torch.as_tensor(row, dtype=flat.dtype, device=flat.device).view(1, 1, 1, kw)
        return F.conv2d(F.conv2d(flat, col_w, stride=(s, 1), dilation=(d, 1)), row_w, stride=(1, s), dilation=(1, d))
    if method == "fft":
        return _fft_correlate(flat, weights, s, d)
    w = torch.as_tensor(weights, dtype=flat.dtype, device=flat.device)
    return F.conv2d(flat, w[None, None], stride=s, dilation=d)


def _tiled(x, weights, amounts, geo: Geometry, method: str, out_h: int, tile_rows: int) -> torch.Tensor:
    """Output rows in tiles: each tile gathers its input rows (borders by index), pads the
    columns, and correlates; the tiles are stacked."""
    top, bottom, left, right = amounts
    kh = weights.shape[0]
    n, c, h, _ = x.shape
    s, d = geo.stride, geo.dilation
    rows, outside = padded_axis(h, top, bottom, geo)
    cols = padded_axis(x.shape[-1], left, right, geo)
    out = None
    for o0 in range(0, out_h, tile_rows):
        o1 = min(out_h, o0 + tile_rows)
        p0, p1 = o0 * s, (o1 - 1) * s + d * (kh - 1) + 1
        block = gather(x, (rows[p0:p1], None if outside is None else outside[p0:p1]), cols, geo.border_value)
        piece = _valid(block, weights, geo, method).reshape(n, c, o1 - o0, -1)
        if out is None:  # filled tile by tile: no second copy of the result
            out = torch.empty((n, c, out_h, piece.shape[-1]), dtype=piece.dtype, device=piece.device)
        out[:, :, o0:o1] = piece
    return out


def _fft_length(n: int) -> int:
    """The smallest 2^a·3^b·5^c ≥ n: FFTs of such lengths are several times faster (a width
    with a large prime factor, such as 12265 = 5·11·223, is ~3.5x slower than 12288)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _fft_correlate(flat: torch.Tensor, weights: np.ndarray, stride: int, dilation: int) -> torch.Tensor:
    """Valid correlation of (M, 1, Hp, Wp) through the FFT: exact up to float rounding."""
    kh, kw = weights.shape
    dil = np.zeros((dilation * (kh - 1) + 1, dilation * (kw - 1) + 1))
    dil[::dilation, ::dilation] = weights
    hp, wp = flat.shape[-2:]
    size = (_fft_length(hp), _fft_length(wp))  # zeros past the frame never reach the valid part
    spectrum = torch.fft.rfft2(flat, s=size)
    kernel = torch.fft.rfft2(torch.as_tensor(dil, dtype=flat.dtype, device=flat.device), s=size)
    full = torch.fft.irfft2(spectrum * kernel.conj(), s=size)
    valid = full[..., : hp - dil.shape[0] + 1, : wp - dil.shape[1] + 1]
    return valid[..., ::stride, ::stride].contiguous()


def correlate_bank(x: torch.Tensor, kernels, geo: Geometry = Geometry()) -> torch.Tensor:
    """Correlate ``x`` (N, C, H, W) with several kernels in one convolution: (N, C, K, H', W').

    ``kernels`` is a list of (weights, anchor). Each kernel is embedded, zero-filled, in a
    common frame with the anchors aligned, so the image is padded once and every kernel
    becomes an output channel. With ``padding='same'`` sizes may differ; otherwise all
    kernels must share one shape and anchor (their outputs must have one size).
    """
    shapes = {(np.shape(w), tuple(a)) for w, a in kernels}
    if geo.padding != "same" and len(shapes) > 1:
        raise UsageError("kernels of different shapes give different output sizes unless padding is 'same'")
    up = max(a[0] for _, a in kernels)
    left = max(a[1] for _, a in kernels)
    down = max(np.shape(w)[0] - 1 - a[0] for w, a in kernels)
    right = max(np.shape(w)[1] - 1 - a[1] for w, a in kernels)
    frame = np.zeros((len(kernels), up + down + 1, left + right + 1))
    for i, (w, (ar, ac)) in enumerate(kernels):
        kh, kw = np.shape(w)
        frame[i, up - ar:up - ar + kh, left - ac:left - ac + kw] = w
    n, c, h, wd = x.shape
    top, bottom, lft, rgt = pad_amounts(frame.shape[1:], (up, left), geo)
    out_h = output_size(h, frame.shape[1], top + bottom, geo.stride, geo.dilation)
    out_w = output_size(wd, frame.shape[2], lft + rgt, geo.stride, geo.dilation)
    if out_h < 1 or out_w < 1:
        raise UsageError(f"the kernels do not fit a {h}x{wd} image with padding {geo.padding!r}")
    padded = pad(x, (top, bottom, lft, rgt), geo.border, geo.border_value)
    weight = torch.as_tensor(frame, dtype=x.dtype, device=x.device)[:, None]
    out = F.conv2d(padded.reshape(n * c, 1, *padded.shape[-2:]), weight, stride=geo.stride, dilation=geo.dilation)
    return out.reshape(n, c, len(kernels), out_h, out_w)


def sample_at_anchor(x: torch.Tensor, shape, anchor, geo: Geometry) -> torch.Tensor:
    """The input value under each output pixel's anchor: the geometry without the weights.

    Used to carry alpha and colour through stride/valid/padding unchanged. Borders replicate.
    """
    delta = np.zeros(shape)
    delta[anchor] = 1.0
    replicate = Geometry("replicate", 0.0, geo.padding, geo.stride, geo.dilation)
    return correlate(x, delta, anchor, replicate)


# --------------------------------------------------------------------------- devices


def resolve_device(name: str | None = None) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` (default: $KERNELCLI_DEVICE or auto) into a device.

    Only ``auto`` falls back; an explicit device that is not available raises DeviceError.
    """
    name = (name or os.environ.get("KERNELCLI_DEVICE") or "auto").strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return _cuda(0)
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not mps_ok:
            raise DeviceError("device 'mps' is not available: this torch build or machine has no Apple GPU")
        return torch.device("mps")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m:
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"device {name!r} is not available: {why}")
        index = int(m.group(1) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device {name!r} is not available: only {count} CUDA device(s) (cuda:0…cuda:{count - 1})")
        return _cuda(index)
    raise DeviceError(f"unknown device {name!r}; use {DEVICES_HELP}")


def _cuda(index: int) -> torch.device:
    # Exact float32 results, not TF32 approximations (cuDNN allows TF32 by default).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch.device("cuda", index)
