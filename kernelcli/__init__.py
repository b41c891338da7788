"""kernelcli: named convolution kernels applied to images with torch.

The library behind the ``kernelcli`` command. Importing it imports nothing else (the thin
client ``kernelcli.server.client`` starts from here); the API lives in :mod:`kernelcli.api` and is
loaded on first use::

    import kernelcli
    lib = kernelcli.load_library()                  # shipped kernels.yaml (+ your files)
    out = kernelcli.apply(pil_image, "sharpen")     # PIL in → PIL out
    edges = kernelcli.apply(array, "sobel-right", raw=True, border="reflect")  # float array
"""

from .version import __version__

__all__ = [
    "apply",
    "apply_file",
    "apply_paths",
    "Batch",
    "Report",
    "load_library",
    "Kernel",
    "KernelLibrary",
    "parse_inline",
    "KernelcliError",
    "UsageError",
    "KernelFileError",
    "UnknownKernelError",
    "DeviceError",
    "ImageError",
    "__version__",
]


def __getattr__(name):  # PEP 562: the API on first use, so `import kernelcli.server.client` stays light
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'kernelcli' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
