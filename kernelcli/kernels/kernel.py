"""The kernel value type and number parsing. Imports nothing else of kernelcli but its
errors, so every other module (generators, the library, the engines) can build on it.

Numbers are parsed by kernelcli, not by YAML's 1.1 rules, so ``yes``, ``010``, ``1:20`` and
empty cells are errors with a precise location instead of silently wrong weights.
No torch here, and numpy only when weights are asked for.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction

from ..errors import KernelFileError

MAP_MODES = ("clip", "abs", "offset", "normalize")  # mapping.map_values implements each
DEFAULT_MAP = "clip"  # a step's mapping when neither the options nor the kernel name one
MAX_KERNEL_SIZE = 63  # default largest side for kernels read from files, inline specs and generators
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")

_NUMBER_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_FRACTION_RE = re.compile(r"^[+-]?\d+/\d+$")
_BOOL_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false"}
_NULL_WORDS = {"", "~", "null"}


@dataclass(frozen=True)
class Kernel:
    """A named kernel. Three kinds:

    - plain: one 2-D ``matrix`` applied to every channel (``weights`` is what is applied);
    - combined: ``combine`` (magnitude, max or sum) of the responses to ``parts``;
    - multi-channel: ``full``, a C_out×C_in×kh×kw weight mixing channels (``mix`` is 1x1).
    """

    name: str
    matrix: tuple[tuple[float, ...], ...] = ()
    description: str = ""
    divisor: float = 1.0
    scale: float = 1.0
    bias: float = 0.0
    map: str | None = None
    origin: tuple[int, int] | None = None
    aliases: tuple[str, ...] = ()
    source: str = ""
    overrides: str | None = field(default=None, compare=False)
    combine: str | None = None
    parts: tuple["Kernel", ...] = ()
    part_names: tuple[str, ...] = field(default=(), compare=False)  # as written, resolved by the library
    full: tuple | None = None  # nested C_out x C_in x kh x kw

    @property
    def kind(self) -> str:
        return "combined" if self.combine else "multi-channel" if self.full is not None else "plain"

    @property
    def shape(self) -> tuple[int, int]:
        if self.combine:
            return self.parts[0].shape if self.parts else (1, 1)
        if self.full is not None:
            return len(self.full[0][0]), len(self.full[0][0][0])
        return len(self.matrix), len(self.matrix[0])

    @property
    def weights(self):
        """Effective float64 weights, shape (kh, kw): ``matrix * scale / divisor`` (plain kernels)."""
        import numpy as np

        if self.kind != "plain":
            raise KernelFileError(f"kernel {self.name!r} is {self.kind}: it has no single weight matrix")
        return np.array(self.matrix, dtype=np.float64) * (self.scale / self.divisor)

    @property
    def full_weights(self):
        """Multi-channel weight (C_out, C_in, kh, kw) as float64, after scale/divisor."""
        import numpy as np

        return np.array(self.full, dtype=np.float64) * (self.scale / self.divisor)

    @property
    def anchor(self) -> tuple[int, int]:
        """(row, col) of the weight that lands on the output pixel; centre, or up-left of it."""
        if self.origin is not None:
            return self.origin
        if self.combine and self.parts:
            return self.parts[0].anchor
        kh, kw = self.shape
        return (kh - 1) // 2, (kw - 1) // 2

    def flipped(self) -> "Kernel":
        """The kernel rotated by 180 degrees: correlation with it is true convolution."""
        kh, kw = self.shape
        ar, ac = self.anchor
        full = self.full
        if full is not None:
            full = tuple(tuple(tuple(tuple(reversed(r)) for r in reversed(m)) for m in row) for row in full)
        return replace(
            self,
            matrix=tuple(tuple(reversed(row)) for row in reversed(self.matrix)),
            origin=(kh - 1 - ar, kw - 1 - ac),
            parts=tuple(p.flipped() for p in self.parts),
            full=full,
        )


# --------------------------------------------------------------------------- numbers


def parse_number(text: str, where: str) -> float:
    """Parse one weight written as text: ``3``, ``-0.25``, ``1e-3``, ``1/16``.

    ``where`` names the place for the error message (file, kernel, row, column).
    """
    t = text.strip()
    low = t.lower()
    if low in _NULL_WORDS:
        raise KernelFileError(f"{where}: empty value; write a number such as 0")
    if low in _BOOL_WORDS:
        raise KernelFileError(f"{where}: {t!r} is a boolean in YAML, not a number; write 1 or 0")
    if re.match(r"^[+-]?\.?(nan|inf|infinity)$", low):
        raise KernelFileError(f"{where}: {t!r} is not a finite number")
    if re.match(r"^[+-]?\d+(:[0-5]?\d)+$", t):
        raise KernelFileError(
            f"{where}: {t!r} is a base-60 number in YAML 1.1; write the plain number you mean"
        )
    if re.match(r"^[+-]?0\d+$", t) or re.match(r"^[+-]?0[xob]", low):
        raise KernelFileError(
            f"{where}: {t!r} is ambiguous (YAML 1.1 reads a leading 0 as octal); "
            "write it without leading zeros"
        )
    if not (_NUMBER_RE.match(t) or _FRACTION_RE.match(t)):
        raise KernelFileError(f"{where}: {t!r} is not a number")
    try:  # huge fractions overflow a float; over 4300 digits, int() itself refuses
        value = float(Fraction(t)) if "/" in t else float(t)
    except ZeroDivisionError:
        raise KernelFileError(f"{where}: {t!r} divides by zero") from None
    except (OverflowError, ValueError):
        shown = t if len(t) <= 24 else f"{t[:12]}…{t[-8:]}"
        raise KernelFileError(f"{where}: {shown!r} ({len(t)} characters) is too large a number") from None
    if not math.isfinite(value):
        raise KernelFileError(f"{where}: {t!r} is not a finite number")
    return value


def check_matrix(rows: list[list[float]], where: str, *,
                 max_kernel: int = MAX_KERNEL_SIZE) -> tuple[tuple[float, ...], ...]:
    """Validate shape and size (at most ``max_kernel`` a side); return the matrix as a tuple of tuples."""
    if not rows or not rows[0]:
        raise KernelFileError(f"{where}: the kernel is empty")
    width = len(rows[0])
    for i, row in enumerate(rows, 1):
        if len(row) != width:
            raise KernelFileError(
                f"{where}: row {i} has {len(row)} values but row 1 has {width} (rows must be equal)"
            )
    if len(rows) > max_kernel or width > max_kernel:
        raise KernelFileError(
            f"{where}: the kernel is {len(rows)}x{width}; at most {max_kernel}x{max_kernel} is allowed",
            setting="max_kernel",
        )
    return tuple(tuple(row) for row in rows)
