"""Parametric kernels, usable wherever a kernel name is: ``gaussian:1.5``, ``box:5``,
``motion:9,30``, ``log:1.4``, ``dog:1,2``, ``unsharp:1,0.8``, and rotations ``NAME@ANGLE``.

Default sizes cover ±3σ (size = 2·ceil(3σ) + 1). Angles are degrees, counter-clockwise as
seen on screen. numpy only: no torch here.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from ..errors import KernelFileError
from .kernel import MAX_KERNEL_SIZE, Kernel, check_matrix, parse_number

GENERATORS = {
    "gaussian": "gaussian:SIGMA[,SIZE] — Gaussian blur, sum 1",
    "box": "box:N — N×N mean",
    "motion": "motion:LENGTH,ANGLE — motion blur along a line at ANGLE degrees",
    "log": "log:SIGMA[,SIZE] — Laplacian of Gaussian, sign as `laplacian` (bright spots bright), sum 0",
    "dog": "dog:SIGMA1,SIGMA2[,SIZE] — difference of Gaussians G(σ1) − G(σ2), a band-pass",
    "unsharp": "unsharp:SIGMA,AMOUNT[,SIZE] — (1+AMOUNT)·identity − AMOUNT·G(σ), sharpens",
}
ROTATION_HELP = "NAME@ANGLE — any kernel turned by a multiple of 90° (45° for 3x3, ring rotation)"


def is_generated(spec: str) -> bool:
    name, sep, _ = spec.partition(":")
    return bool(sep) and name in GENERATORS


def _args(spec: str, counts: tuple[int, ...]) -> list[float]:
    name, _, rest = spec.partition(":")
    values = [parse_number(t, f"kernel {spec!r}") for t in re.split(r"[,\s]+", rest.strip()) if t]
    if len(values) not in counts:
        raise KernelFileError(f"kernel {spec!r}: expected {GENERATORS[name].split(' — ')[0]}")
    return values


def _size(spec: str, sigma: float, given: list[float], max_kernel: int) -> int:
    if sigma <= 0:
        raise KernelFileError(f"kernel {spec!r}: sigma must be > 0")
    size = int(given[0]) if given else 2 * math.ceil(3 * sigma) + 1
    if given and (given[0] != size or size < 1 or size % 2 == 0):
        raise KernelFileError(f"kernel {spec!r}: size must be an odd whole number")
    if size > max_kernel:
        raise KernelFileError(f"kernel {spec!r}: size {size} is over the limit of {max_kernel}",
                              setting="max_kernel")
    return size


def gaussian_1d(sigma: float, size: int):
    import numpy as np

    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_2d(sigma: float, size: int):
    import numpy as np

    g = gaussian_1d(sigma, size)
    return np.outer(g, g)


def _identity(size: int):
    import numpy as np

    d = np.zeros((size, size))
    d[size // 2, size // 2] = 1.0
    return d


def generate(spec: str, *, max_kernel: int = MAX_KERNEL_SIZE) -> Kernel:
    """The kernel for a generator spec such as ``gaussian:2`` or ``motion:9,45``, at most
    ``max_kernel`` a side."""
    import numpy as np

    name = spec.partition(":")[0]
    divisor = 1
    if name == "gaussian":
        sigma, *rest = _args(spec, (1, 2))
        w = gaussian_2d(sigma, _size(spec, sigma, rest, max_kernel))
        what = f"Gaussian blur, sigma {sigma:g}"
    elif name == "box":
        (n,) = _args(spec, (1,))
        if n != int(n) or not 1 <= n <= max_kernel:
            raise KernelFileError(f"kernel {spec!r}: N must be a whole number from 1 to {max_kernel}",
                                  setting="max_kernel" if n == int(n) and n > max_kernel else None)
        w = np.ones((int(n), int(n)))  # the sum, divided by N² after: exact sums, as box-blur's
        divisor = int(n) ** 2
        what = f"{int(n)}x{int(n)} mean"
    elif name == "motion":
        length, angle = _args(spec, (2,))
        w = motion(spec, length, angle, max_kernel)
        what = f"motion blur, {length:g} px at {angle:g} degrees"
    elif name == "log":
        sigma, *rest = _args(spec, (1, 2))
        size = _size(spec, sigma, rest, max_kernel)
        x = np.arange(size) - (size - 1) / 2
        r2 = x[:, None] ** 2 + x[None, :] ** 2
        w = -(r2 - 2 * sigma**2) / sigma**4 * np.exp(-r2 / (2 * sigma**2))  # −∇²G
        w -= w.mean()  # exactly zero-sum: flat areas give 0
        w /= np.abs(w).sum() / 2
        what = f"Laplacian of Gaussian, sigma {sigma:g}"
    elif name == "dog":
        s1, s2, *rest = _args(spec, (2, 3))
        size = _size(spec, max(s1, s2), rest, max_kernel)
        w = gaussian_2d(s1, size) - gaussian_2d(s2, size)
        what = f"difference of Gaussians, sigma {s1:g} minus {s2:g}"
    elif name == "unsharp":
        sigma, amount, *rest = _args(spec, (2, 3))
        size = _size(spec, sigma, rest, max_kernel)
        w = (1 + amount) * _identity(size) - amount * gaussian_2d(sigma, size)
        what = f"unsharp mask, sigma {sigma:g}, amount {amount:g}"
    else:  # pragma: no cover - guarded by is_generated
        raise KernelFileError(f"unknown generator {name!r}")
    matrix = check_matrix([list(r) for r in w], f"kernel {spec!r}", max_kernel=max_kernel)
    return Kernel(name=_file_safe(spec), matrix=matrix, description=what, source="generated", divisor=divisor)


def motion(spec: str, length: float, angle: float, max_kernel: int = MAX_KERNEL_SIZE):
    """A line of ``length`` pixels through the centre at ``angle`` degrees; each pixel weighs
    the length of line inside it (so ``motion:5,0`` is exactly a 1x5 mean), sum 1."""
    import numpy as np

    if length < 1:
        raise KernelFileError(f"kernel {spec!r}: length must be at least 1")
    size = int(math.ceil(length)) | 1  # odd
    if size > max_kernel:
        raise KernelFileError(f"kernel {spec!r}: length {length:g} is over the limit of {max_kernel}",
                              setting="max_kernel")
    w = np.zeros((size, size))
    c = (size - 1) / 2
    theta = math.radians(angle)
    samples = 1000 * size
    t = -length / 2 + (np.arange(samples) + 0.5) * (length / samples)  # midpoints of equal pieces
    cols = np.clip(np.round(c + t * math.cos(theta)).astype(int), 0, size - 1)
    rows = np.clip(np.round(c - t * math.sin(theta)).astype(int), 0, size - 1)  # rows grow downwards
    np.add.at(w, (rows, cols), 1.0)
    return w / w.sum()


def _rot90(m: tuple, quarter_turns: int) -> tuple:
    """Turn a matrix (tuple of rows) counter-clockwise by quarter turns, as numpy.rot90."""
    for _ in range(quarter_turns % 4):
        m = tuple(zip(*m))[::-1]
    return tuple(tuple(row) for row in m)


def rotate(kernel: Kernel, angle_text: str, spec: str) -> Kernel:
    """``kernel`` turned counter-clockwise by a multiple of 90° (exact), or of 45° for 3x3
    kernels (the outer ring moves one place, as in compass edge kernels). No numpy: the
    shipped library turns kernels while loading, and listing it must stay fast."""
    try:
        angle = float(angle_text)
    except ValueError:
        raise KernelFileError(f"kernel {spec!r}: {angle_text!r} is not an angle in degrees") from None
    if angle % 45:
        raise KernelFileError(f"kernel {spec!r}: rotate by multiples of 45 degrees (90 for kernels over 3x3)")
    if kernel.full is not None:
        raise KernelFileError(f"kernel {spec!r}: multi-channel kernels cannot be rotated")
    steps = int(angle // 45) % 8
    parts = tuple(rotate(p, angle_text, spec) for p in kernel.parts)
    m = kernel.matrix
    if m and steps % 2:
        if (len(m), len(m[0])) != (3, 3):
            raise KernelFileError(f"kernel {spec!r}: 45-degree turns need a 3x3 kernel; use a multiple of 90")
        ring = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]  # clockwise
        turned = [list(row) for row in m]
        for i, (r, c) in enumerate(ring):  # counter-clockwise: each value moves one place back
            pr, pc = ring[(i - 1) % 8]
            turned[pr][pc] = m[r][c]
        m = tuple(tuple(row) for row in turned)
    if m:
        m = _rot90(m, steps // 2)
    return replace(
        kernel,
        name=_file_safe(spec),
        matrix=tuple(tuple(float(v) for v in row) for row in m),
        origin=None,
        description=f"{kernel.name} turned {angle:g} degrees counter-clockwise",
        aliases=(),
        parts=parts,
        overrides=None,
    )


def _file_safe(spec: str) -> str:
    """A name usable in output file names: ``gaussian:1.5,9`` → ``gaussian-1.5-9``."""
    return re.sub(r"[^a-z0-9.+-]+", "-", spec.lower().replace("@", "-r")).strip("-")
