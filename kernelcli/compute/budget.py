"""Memory budgets: each job's peak memory is estimated from the image size and the options
before any work, and refused beyond ``--max-memory``.

The default budget is half of the memory available when a job starts: the smallest of the
kernel's MemAvailable, what the process's cgroup (container) still allows, and what its own
limits still allow (``ulimit -v``, RLIMIT_AS, against its address space; ``ulimit -d``,
RLIMIT_DATA, against its data). The estimates count the data a job holds at its peak (the
decoded input, float copies, padded frames, the engine's working set, the output and its
encoded bytes), not the ~0.3 GB that Python and torch themselves take. No torch here: the
command line checks before importing it.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

try:
    import resource  # process limits (loaded here, with the module: a server worker imports nothing per call)
except ImportError:  # not on this system
    resource = None

from ..errors import ImageError, UsageError

DEFAULT_SHARE = 0.5  # of the available memory
TORCH_ADDRESS_SPACE = 1 << 30  # address space torch's libraries and its threads' arenas take, before it is loaded
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class MemoryBudgetError(UsageError):
    """A job would need more memory than ``--max-memory`` allows (exit 2 before any work;
    in a batch, that input fails and the others go on)."""


def available() -> int:
    """Bytes this process may still use (see :func:`limits`)."""
    return min(size for size, _ in limits())


def limits() -> list[tuple[int, str]]:
    """What bounds the memory this process may still use, as (bytes, what) pairs: the kernel's
    MemAvailable, the cgroup's limit less its usage, and the process's address-space and data
    limits less what it holds (with torch's share where it is not loaded yet)."""
    sizes = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                sizes.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            cap = Path("/sys/fs/cgroup", limit).read_text().strip()
            used = int(Path("/sys/fs/cgroup", usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 1 << 60:
            sizes.append((max(0, int(cap) - used), "the cgroup (container) limit"))
    sizes += _process_limits()
    if not sizes:
        try:
            sizes.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the physical memory"))
        except (ValueError, OSError, AttributeError):
            sizes.append((4 << 30, "an assumed 4 GiB"))
    return sizes


def _process_limits() -> list[tuple[int, str]]:
    """RLIMIT_AS against VmSize and RLIMIT_DATA against VmData (/proc/self/status), where set."""
    if resource is None:
        return []
    try:
        status = {line.split(":")[0]: int(line.split()[1]) * 1024
                  for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(("VmSize", "VmData"))}
    except (OSError, ValueError, IndexError):
        return []
    torch_to_come = 0 if "torch._C" in sys.modules else TORCH_ADDRESS_SPACE
    out = []
    for name, field, what in (("RLIMIT_AS", "VmSize", "the address-space limit (ulimit -v)"),
                              ("RLIMIT_DATA", "VmData", "the data limit (ulimit -d)")):
        if not hasattr(resource, name) or field not in status:
            continue
        soft = resource.getrlimit(getattr(resource, name))[0]
        if soft != resource.RLIM_INFINITY:
            out.append((max(0, soft - status[field] - torch_to_come), what))
    return out


def default_budget() -> int:
    """Half of :func:`available` memory."""
    return int(available() * DEFAULT_SHARE)


def parse_size(text: str) -> int:
    """``512M``, ``8G``, ``1.5GB``, ``1000000`` (bytes) → bytes; units are powers of 1024."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageError(f"--max-memory {text!r}: write a size such as 4G, 512M or 1.5G")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if not math.isfinite(value) or value < 1:
        raise UsageError(f"--max-memory {text!r}: give a size of at least 1 byte")
    return int(value)


def human(n: float) -> str:
    """1536 → '1.5 KiB'; 3.2e9 → '3.0 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def check(need: float, budget: int | None, what: str) -> None:
    """Refuse a job whose estimate ``need`` exceeds ``budget`` (None: the default budget)."""
    bound = ""
    if budget is None:
        size, bound = min(limits())
        budget = int(size * DEFAULT_SHARE)
    if need > budget:
        where = f", here bounded by {bound}" if bound.startswith("the ") else ""
        raise MemoryBudgetError(
            f"{what} would need about {human(need)} of memory, over the budget of {human(budget)} "
            f"(--max-memory raises it; the default is half of the available memory{where})"
        )


MEMORY_ERRORS = (MemoryError, RuntimeError, UsageError)  # what job_failure looks at


def job_failure(name, exc: BaseException):
    """The failure of input ``name`` (a KernelcliError naming it) when ``exc`` is about memory:
    a job over the budget (MemoryBudgetError, named by the input here), or an allocation that
    failed mid-job (the estimate fitted the budget, the memory was not there). That input fails,
    the batch goes on. None for any other exception (it is raised as it is)."""
    if isinstance(exc, MemoryBudgetError):
        return exc if str(exc).startswith(f"{name}: ") else MemoryBudgetError(f"{name}: {exc}")
    reason = out_of_memory(exc)
    if reason is None:
        return None
    return ImageError(f"{name}: not enough memory ({reason}); --max-memory sets the budget it was checked "
                      "against, -j 1 runs one file at a time")


def out_of_memory(exc: BaseException) -> str | None:
    """What an allocation failure says, or None when ``exc`` is none: MemoryError (numpy,
    Pillow), torch's failed CPU allocation and CUDA's out of memory (RuntimeErrors)."""
    if isinstance(exc, MemoryError):
        return str(exc) or "out of memory"
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()):
        tried = re.search(r"tried to allocate (\d+) bytes", text)
        return f"could not allocate {human(int(tried.group(1)))}" if tried else text.strip().splitlines()[0][:200]
    return None


# --------------------------------------------------------------------------- estimates


def apply_estimate(channels: int, height: int, width: int, itemsize: int, kernels, options, *,
                   alpha: bool = False, steps=None, out_bytes_per_value: int | None = None) -> int:
    """Peak bytes of ``apply_kernels`` on a (channels, height, width) raster of ``itemsize``
    bytes a value, with the encoded output, for the ``steps`` of :func:`kernelcli.compute.engine.plan`
    (one per kernel; the engine runs the same plan, so the two cannot disagree).

    Fast engine: the input and the output of one step (two in a chain), plus one strip
    (and its halo of the kernel's reach) per worker. Reference engine: the float input,
    each step's float result and the temporaries of mapping it (3 more), the padded frame
    of one tile (the plan's tile rows), and for combined kernels two more responses.
    """
    from .engine import BAND_ROWS, strip_rows
    from .shapes import output_size

    geo = options.geometry
    workers = os.cpu_count() or 1
    pixels = channels * height * width
    need = pixels * itemsize + (height * width * itemsize if alpha else 0)
    h, w, peak = height, width, 0
    float_size = 8 if itemsize > 1 else 4
    for kernel, step in zip(kernels, steps):
        kh, kw = kernel.shape
        d = geo.dilation
        if geo.padding == "same":
            ph, pw = d * (kh - 1), d * (kw - 1)
        else:
            p = 0 if geo.padding == "valid" else geo.padding
            ph = pw = 2 * p
        oh = max(1, output_size(h, kh, ph, geo.stride, d))
        ow = max(1, output_size(w, kw, pw, geo.stride, d))
        parts = len(kernel.parts) if kernel.combine else 1
        if step.engine == "fast":
            strip = min(h, BAND_ROWS if step.method == "banded" else strip_rows(w, channels, itemsize))
            block = (strip + ph) * (w + pw) * channels * float_size * (3 + parts)
            if step.method == "banded":  # the padded block, each term's first product (two parts), the result
                terms = len(step.bands.columns) if step.bands else 1
                block = ((strip + ph) + BAND_ROWS * (4 * terms + 3)) * (w + pw + BAND_ROWS) * channels * float_size
            workers = min(workers, -(-h // strip))
            # the step's output, and the previous step's when chained (a decoded image is
            # already (H, W, C): the first step reads it without a copy)
            step_bytes = (1 if kernel is kernels[0] else 2) * channels * h * w * itemsize + workers * block
        else:
            result = channels * oh * ow * float_size
            tile = channels * ((step.tile_rows or oh) + ph) * (w + pw) * float_size * min(kh * kw + 2, 18)
            step_bytes = channels * h * w * float_size + result * (4 + (2 if parts > 1 else 0)) + tile
        peak = max(peak, step_bytes)
        h, w = oh, ow
    out_values = channels * h * w
    encoded = 2 * out_values * (out_bytes_per_value or itemsize)  # the encoder's copy and the bytes
    return int(need + peak + encoded)


def image_estimate(width: int, height: int, channels: int = 3, itemsize: int = 1) -> int:
    """A picture built in memory (a contact sheet): the pixels, Pillow's copy, the bytes."""
    return 3 * width * height * channels * itemsize


def toolkit_estimate(channels: int, height: int, width: int, out_height: int, out_width: int,
                     float_size: int = 4, *, columns: int = 0, kept=None, value_bytes: int = 1) -> int:
    """pool / transpose / upsample on ``channels`` planes of height × width (alpha counted as
    a plane): the float input and its padded copy, then the larger of two moments —

    - computing: the float result (out_height × out_width a plane) and ``columns`` floats of
      the operation's work buffer (a transposed convolution's columns: the kernel's taps times
      the input's pixels, for each plane torch works on at once) with one plane more (torch's
      own scratch; measured: ``tests/test_memory.py``);
    - encoding: the result mapped in place, and ``kept`` × ``value_bytes`` a value for the
      encoder's array, Pillow's copy, the encoded bytes and their copy (``kept``: the pixels
      written, where the result is cropped; default all of it)."""
    result = channels * out_height * out_width
    kept = result if kept is None else channels * kept
    computing = float_size * (result + columns + (out_height * out_width if columns else 0))
    encoding = float_size * result + 4 * kept * value_bytes
    return float_size * channels * height * width * 2 + max(computing, encoding)


def probe(path: str, limits=None):
    """A stand-in Raster with the size, type and channels an input will decode to, read
    from the header only (no pixel memory: the arrays are broadcast views); None when the
    header says nothing (CSV, unreadable) or is over ``limits`` (images.Limits): reading
    reports that. Any size is probed (Pillow's own pixel limit is off: kernelcli.io.images)."""
    import numpy as np
    from PIL import Image

    from ..io.images import IMAGE_FORMATS, Raster

    def view(shape, dtype, value=0):
        return np.broadcast_to(np.array(value, dtype=dtype), shape)

    try:
        if str(path).lower().endswith(".npy"):
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim not in (2, 3):
                return None  # the reader names the shape it refuses
            h, w, c = arr.shape if arr.ndim == 3 else (*arr.shape, 1)  # arrays are H×W×C (images.py)
            shape = (c, h, w)
            return Raster(view(shape, np.float64 if arr.dtype.itemsize > 4 else np.float32), maxval=None)
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            w, h = img.size
            mode, info = img.mode, img.info
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if limits is not None and (w * h > limits.max_pixels or max(w, h) > limits.max_side):
        return None  # the reader refuses it, naming the limit
    if mode.startswith("I;16") or mode == "I":
        return Raster(view((1, h, w), np.uint16), maxval=65535.0)
    if mode == "F":
        return Raster(view((1, h, w), np.float32), maxval=None)
    colours = 1 if mode in ("1", "L", "LA", "La") else 3
    alpha = mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in info)
    return Raster(view((colours, h, w), np.uint8), view((h, w), np.uint8, 255) if alpha else None, maxval=255.0)
