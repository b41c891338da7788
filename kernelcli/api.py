"""The library API, re-exported by ``kernelcli`` on first use (it does not import torch)::

    import kernelcli
    lib = kernelcli.load_library()                  # shipped kernels.yaml (+ your files)
    out = kernelcli.apply(pil_image, "sharpen")     # PIL in → PIL out
    edges = kernelcli.apply(array, "sobel-right", raw=True, border="reflect")  # float array
"""

from __future__ import annotations

from .version import __version__  # noqa: F401  (re-exported by kernelcli)
from .errors import (  # noqa: F401  (re-exported by kernelcli)
    DeviceError,
    ImageError,
    KernelcliError,
    KernelFileError,
    UnknownKernelError,
    UsageError,
)
from .kernels.kernel import MAX_KERNEL_SIZE, Kernel
from .kernels.library import KernelLibrary, parse_inline  # noqa: F401  (re-exported by kernelcli)
from .run.batch import Report  # noqa: F401  (re-exported by kernelcli)
from .run.runner import Batch, apply_file, apply_paths  # noqa: F401  (re-exported by kernelcli)

# The public names are listed once, in kernelcli/__init__.py (__all__), which forwards them here.


def load_library(*paths, shipped: bool = True, max_kernel: int = MAX_KERNEL_SIZE) -> KernelLibrary:
    """The shipped kernels, then each YAML file in ``paths`` (later files override names).
    Kernels from files, inline specs and generators are at most ``max_kernel`` a side."""
    return KernelLibrary.load(paths, shipped=shipped, max_kernel=max_kernel)


def apply(image, *kernels, library: KernelLibrary | None = None, border: str = "replicate",
          padding="same", stride: int = 1, dilation: int = 1, **options):
    """Apply kernels (names, inline specs or :class:`Kernel`) in sequence to ``image``.

    ``image`` may be a PIL image (→ PIL image), a numpy array H×W or H×W×C (channels last, as
    in the .npy files the command reads and writes; uint8/uint16
    → same dtype, mapped; float → raw float result, H×W or H×W×C) or a torch tensor
    H×W or C×H×W (→ raw float tensor). Other keyword options are those of
    :class:`kernelcli.compute.filters.Options`: ``convolve``, ``color``, ``map``, ``scale``,
    ``bias``, ``raw``, ``device``.
    """
    import numpy as np

    from .compute.filters import apply_kernels
    from .compute.options import Geometry, Options, parse_border
    from .io.images import Raster, from_pil, to_pil

    library = library or load_library()
    ks = [k if isinstance(k, Kernel) else library.resolve(k) for k in kernels]
    mode, value = parse_border(border)
    geo = Geometry(mode, value, padding, stride, dilation)

    kind = type(image).__module__.split(".")[0]
    if kind == "PIL":
        result, _ = apply_kernels(from_pil(image), ks, Options(geometry=geo, **options))
        return to_pil(result)
    if kind == "torch":
        t = image.detach()
        arr = t.cpu().numpy()
        channels_first = arr if arr.ndim == 3 else arr[None]
        result, _ = apply_kernels(Raster(channels_first, maxval=None), ks, Options(geometry=geo, **{**options, "raw": True}))
        out = result.pixels if arr.ndim == 3 else result.pixels[0]
        import torch

        return torch.from_numpy(out).to(t.device)
    arr = np.asarray(image)
    channels_first = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]
    if arr.dtype in (np.uint8, np.uint16):
        maxval = 255.0 if arr.dtype == np.uint8 else 65535.0
        raster = Raster(channels_first, maxval=maxval)  # 8/16-bit as is: the fast engine takes it
        result, _ = apply_kernels(raster, ks, Options(geometry=geo, **options))
        pixels = result.pixels.astype(arr.dtype) if result.maxval else result.pixels
    else:
        raster = Raster(channels_first.astype(np.float64 if arr.dtype == np.float64 else np.float32), maxval=None)
        result, _ = apply_kernels(raster, ks, Options(geometry=geo, **{**options, "raw": True}))
        pixels = result.pixels
    return pixels.transpose(1, 2, 0) if pixels.shape[0] > 1 else pixels[0]
