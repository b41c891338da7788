"""Kernels as data: the value type, the strict YAML library loader, inline specs.

A kernel file looks like this::

    version: 1
    kernels:
      sharpen:
        description: Boosts the difference between a pixel and its 4 neighbours.
        matrix:
          - [ 0, -1,  0]
          - [-1,  5, -1]
          - [ 0, -1,  0]

Optional keys per kernel: ``divisor`` and ``scale`` (effective weights are
``matrix * scale / divisor``), ``bias`` (a fraction of full scale added after filtering),
``map`` (the default value mapping: clip, abs, offset, normalize), ``origin`` ([row, col]
of the anchor, for even sizes) and ``aliases``.

Numbers are parsed by kernelcli, not by YAML's 1.1 rules, so ``yes``, ``010``, ``1:20`` and
empty cells are errors with a precise location instead of silently wrong weights.
No torch here: listing and showing kernels must stay fast.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import yaml

from .errors import KernelFileError, UnknownKernelError

MAP_MODES = ("clip", "abs", "offset", "normalize")
MAX_KERNEL_SIZE = 63  # per side, for kernels from files and the command line
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 16
ENTRY_KEYS = ("description", "matrix", "divisor", "scale", "bias", "map", "origin", "aliases")
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")

_NUMBER_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_FRACTION_RE = re.compile(r"^[+-]?\d+/\d+$")
_BOOL_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false"}
_NULL_WORDS = {"", "~", "null"}


@dataclass(frozen=True)
class Kernel:
    """A named 2-D kernel. ``matrix`` is as written; ``weights`` is what gets applied."""

    name: str
    matrix: tuple[tuple[float, ...], ...]
    description: str = ""
    divisor: float = 1.0
    scale: float = 1.0
    bias: float = 0.0
    map: str | None = None
    origin: tuple[int, int] | None = None
    aliases: tuple[str, ...] = ()
    source: str = ""
    overrides: str | None = field(default=None, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.matrix), len(self.matrix[0])

    @property
    def weights(self):
        """Effective float64 weights, shape (kh, kw): ``matrix * scale / divisor``."""
        import numpy as np

        return np.array(self.matrix, dtype=np.float64) * (self.scale / self.divisor)

    @property
    def anchor(self) -> tuple[int, int]:
        """(row, col) of the weight that lands on the output pixel; centre, or up-left of it."""
        if self.origin is not None:
            return self.origin
        kh, kw = self.shape
        return (kh - 1) // 2, (kw - 1) // 2

    def flipped(self) -> "Kernel":
        """The kernel rotated by 180 degrees: correlation with it is true convolution."""
        kh, kw = self.shape
        ar, ac = self.anchor
        return replace(
            self,
            matrix=tuple(tuple(reversed(row)) for row in reversed(self.matrix)),
            origin=(kh - 1 - ar, kw - 1 - ac),
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
    if _NUMBER_RE.match(t):
        value = float(t)
    elif _FRACTION_RE.match(t):
        num, den = t.split("/")
        if int(den) == 0:
            raise KernelFileError(f"{where}: {t!r} divides by zero")
        value = float(Fraction(int(num), int(den)))
    else:
        raise KernelFileError(f"{where}: {t!r} is not a number")
    if not math.isfinite(value):
        raise KernelFileError(f"{where}: {t!r} is not a finite number")
    return value


def _split_row(text: str) -> list[str]:
    return [tok for tok in re.split(r"[,\s]+", text.strip()) if tok]


def check_matrix(rows: list[list[float]], where: str) -> tuple[tuple[float, ...], ...]:
    """Validate shape and size; return the matrix as a tuple of tuples."""
    if not rows or not rows[0]:
        raise KernelFileError(f"{where}: the kernel is empty")
    width = len(rows[0])
    for i, row in enumerate(rows, 1):
        if len(row) != width:
            raise KernelFileError(
                f"{where}: row {i} has {len(row)} values but row 1 has {width} (rows must be equal)"
            )
    if len(rows) > MAX_KERNEL_SIZE or width > MAX_KERNEL_SIZE:
        raise KernelFileError(
            f"{where}: the kernel is {len(rows)}x{width}; at most "
            f"{MAX_KERNEL_SIZE}x{MAX_KERNEL_SIZE} is allowed"
        )
    return tuple(tuple(row) for row in rows)


# --------------------------------------------------------------------------- inline specs


def is_inline_spec(spec: str) -> bool:
    """A kernel given as numbers on the command line rather than by name."""
    return NAME_RE.match(spec) is None


def parse_inline(spec: str) -> Kernel:
    """Parse ``"0,-1,0; -1,5,-1; 0,-1,0"`` or ``"[[0,-1,0],[-1,5,-1],[0,-1,0]]"``."""
    text = spec.strip()
    where = f"kernel {spec!r}"
    if text.startswith("["):
        inner = text[1:-1] if text.endswith("]") else None
        if inner is None or text.count("[") != text.count("]"):
            raise KernelFileError(f"{where}: unbalanced brackets")
        row_texts = re.findall(r"\[([^\[\]]*)\]", inner) if "[" in inner else [inner]
    else:
        row_texts = [r for r in re.split(r"[;\n]", text)]
    rows = []
    for r, row_text in enumerate(row_texts, 1):
        tokens = _split_row(row_text)
        rows.append(
            [parse_number(tok, f"{where}, row {r}, column {c}") for c, tok in enumerate(tokens, 1)]
        )
    matrix = check_matrix(rows, where)
    digest = hashlib.sha1(repr(matrix).encode()).hexdigest()[:6]
    return Kernel(
        name=f"inline-{digest}",
        matrix=matrix,
        description=f"inline kernel {' ; '.join(' '.join(f'{v:g}' for v in row) for row in matrix)}",
        source="command line",
    )


# --------------------------------------------------------------------------- YAML files


class _StrictLoader(yaml.SafeLoader):
    """Composes nodes only (never constructs objects); refuses anchors, aliases, deep nesting."""

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(
                problem="anchors and aliases (&, *) are not allowed in kernel files",
                problem_mark=event.start_mark,
            )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise yaml.MarkedYAMLError(
                problem=f"nesting deeper than {MAX_DEPTH} levels", problem_mark=event.start_mark
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_STD_TAGS = {
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")
}


class _FileParser:
    """Walks the composed YAML node tree of one kernel file, with line numbers for errors."""

    def __init__(self, path: str):
        self.path = path

    def where(self, node, detail: str = "") -> str:
        line = node.start_mark.line + 1
        return f"{self.path}:{line}" + (f": {detail}" if detail else "")

    def check_tag(self, node):
        if node.tag not in _STD_TAGS:
            raise KernelFileError(f"{self.where(node)}: tag {node.tag!r} is not allowed")

    def mapping(self, node, what: str) -> dict[str, tuple]:
        """Return {key: (key_node, value_node)}, rejecting duplicate and non-string keys."""
        self.check_tag(node)
        if not isinstance(node, yaml.MappingNode):
            raise KernelFileError(f"{self.where(node)}: {what} must be a mapping (key: value)")
        out: dict[str, tuple] = {}
        for key_node, value_node in node.value:
            self.check_tag(key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                raise KernelFileError(f"{self.where(key_node)}: keys must be plain names")
            key = key_node.value
            if key in out:
                first = out[key][0].start_mark.line + 1
                raise KernelFileError(
                    f"{self.where(key_node)}: duplicate key {key!r} in {what} "
                    f"(first defined on line {first})"
                )
            out[key] = (key_node, value_node)
        return out

    def scalar(self, node, where: str) -> str:
        self.check_tag(node)
        if not isinstance(node, yaml.ScalarNode):
            raise KernelFileError(f"{where}: expected a single value")
        return node.value

    def number(self, node, where: str) -> float:
        return parse_number(self.scalar(node, where), where)

    def parse(self, text: str) -> list[Kernel]:
        try:
            root = yaml.compose(text, Loader=_StrictLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f":{mark.line + 1}" if mark else ""
            raise KernelFileError(f"{self.path}{line}: invalid YAML: {exc.problem}") from None
        except yaml.YAMLError as exc:
            raise KernelFileError(f"{self.path}: invalid YAML: {exc}") from None
        if root is None:
            raise KernelFileError(f"{self.path}: the file is empty; expected a 'kernels:' mapping")
        top = self.mapping(root, "the file")
        for key, (key_node, value_node) in top.items():
            if key == "version":
                if self.scalar(value_node, self.where(value_node)) != "1":
                    raise KernelFileError(f"{self.where(value_node)}: only version 1 is known")
            elif key != "kernels":
                raise KernelFileError(
                    f"{self.where(key_node)}: unknown top-level key {key!r} "
                    "(expected 'kernels' and optionally 'version')"
                )
        if "kernels" not in top:
            raise KernelFileError(f"{self.path}: no 'kernels:' mapping found")
        entries = self.mapping(top["kernels"][1], "'kernels'")
        return [self.entry(name, key_node, node) for name, (key_node, node) in entries.items()]

    def entry(self, name: str, key_node, node) -> Kernel:
        if not NAME_RE.match(name):
            raise KernelFileError(
                f"{self.where(key_node)}: kernel name {name!r} must be lowercase words "
                "joined by hyphens, starting with a letter (e.g. 'my-edge')"
            )
        here = f"kernel {name!r}"
        fields = self.mapping(node, here)
        for key, (k_node, _) in fields.items():
            if key not in ENTRY_KEYS:
                close = difflib.get_close_matches(key, ENTRY_KEYS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(ENTRY_KEYS)})"
                raise KernelFileError(f"{self.where(k_node)}: {here}: unknown key {key!r}{hint}")
        if "matrix" not in fields:
            raise KernelFileError(f"{self.where(key_node)}: {here} has no 'matrix'")
        if "description" not in fields:
            raise KernelFileError(f"{self.where(key_node)}: {here} has no 'description'")

        kwargs: dict = {"name": name, "source": self.path}
        kwargs["description"] = self.scalar(fields["description"][1], self.where(node, here))
        kwargs["matrix"] = self.matrix(fields["matrix"][1], here)
        for key in ("divisor", "scale", "bias"):
            if key in fields:
                v_node = fields[key][1]
                kwargs[key] = self.number(v_node, self.where(v_node, f"{here}, {key}"))
        for key in ("divisor", "scale"):
            if kwargs.get(key) == 0:
                raise KernelFileError(f"{self.where(fields[key][1], here)}: {key} must not be 0")
        if "map" in fields:
            v_node = fields["map"][1]
            value = self.scalar(v_node, self.where(v_node, here))
            if value not in MAP_MODES:
                raise KernelFileError(
                    f"{self.where(v_node, here)}: map {value!r} is not one of {', '.join(MAP_MODES)}"
                )
            kwargs["map"] = value
        if "origin" in fields:
            kwargs["origin"] = self.origin(fields["origin"][1], here, kwargs["matrix"])
        if "aliases" in fields:
            kwargs["aliases"] = self.aliases(fields["aliases"][1], here)
        return Kernel(**kwargs)

    def matrix(self, node, here: str):
        self.check_tag(node)
        if isinstance(node, yaml.ScalarNode):  # a block of text, one row a line
            lines = [ln for ln in re.split(r"[;\n]", node.value) if ln.strip()]
            row_items = [(node, _split_row(ln)) for ln in lines]
        elif isinstance(node, yaml.SequenceNode):
            row_items = []
            for row_node in node.value:
                self.check_tag(row_node)
                if isinstance(row_node, yaml.SequenceNode):
                    cells = []
                    for cell in row_node.value:
                        if not isinstance(cell, yaml.ScalarNode):
                            raise KernelFileError(f"{self.where(cell, here)}: a cell must be a number")
                        self.check_tag(cell)
                        cells.append(cell.value)
                    row_items.append((row_node, cells))
                elif isinstance(row_node, yaml.ScalarNode):
                    row_items.append((row_node, _split_row(row_node.value)))
                else:
                    raise KernelFileError(f"{self.where(row_node, here)}: a row must be a list of numbers")
        else:
            raise KernelFileError(f"{self.where(node, here)}: matrix must be a list of rows")
        rows = [
            [
                parse_number(cell, self.where(row_node, f"{here}, row {r}, column {c}"))
                for c, cell in enumerate(cells, 1)
            ]
            for r, (row_node, cells) in enumerate(row_items, 1)
        ]
        return check_matrix(rows, self.where(node, here))

    def origin(self, node, here: str, matrix) -> tuple[int, int]:
        where = self.where(node, f"{here}, origin")
        if not isinstance(node, yaml.SequenceNode) or len(node.value) != 2:
            raise KernelFileError(f"{where}: origin must be [row, column]")
        values = [self.number(n, where) for n in node.value]
        kh, kw = len(matrix), len(matrix[0])
        if not all(v.is_integer() for v in values) or not (0 <= values[0] < kh and 0 <= values[1] < kw):
            raise KernelFileError(f"{where}: origin must be whole numbers inside the {kh}x{kw} kernel")
        return int(values[0]), int(values[1])

    def aliases(self, node, here: str) -> tuple[str, ...]:
        where = self.where(node, f"{here}, aliases")
        if not isinstance(node, yaml.SequenceNode):
            raise KernelFileError(f"{where}: aliases must be a list of names")
        names = tuple(self.scalar(n, where) for n in node.value)
        for alias in names:
            if not NAME_RE.match(alias):
                raise KernelFileError(f"{where}: alias {alias!r} is not a valid kernel name")
        return names


def load_file(path: str | Path) -> list[Kernel]:
    """Read and validate one kernel file; raise KernelFileError naming file and line."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KernelFileError(f"{path}: cannot read kernel file: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise KernelFileError(f"{path}: kernel file is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KernelFileError(f"{path}: kernel file is not UTF-8 text") from None
    return _FileParser(str(path)).parse(text)


# --------------------------------------------------------------------------- the library


def shipped_path() -> Path:
    """The kernels.yaml installed inside the package (a link to the repository's copy)."""
    return Path(__file__).with_name("kernels.yaml")


class KernelLibrary:
    """Kernels by name, built from files in order: later files add kernels or override names."""

    def __init__(self, kernels: list[Kernel] = ()):
        self._kernels: dict[str, Kernel] = {}
        self._aliases: dict[str, str] = {}
        self.add(kernels)

    @classmethod
    def load(cls, paths=(), *, shipped: bool = True) -> "KernelLibrary":
        lib = cls()
        for path in ([shipped_path()] if shipped else []) + [Path(p) for p in paths]:
            lib.add(load_file(path))
        return lib

    def add(self, kernels: list[Kernel]) -> None:
        """Add the kernels of one file; a name already known is overridden and remembered."""
        seen: dict[str, str] = {}
        for k in kernels:
            for name in (k.name, *k.aliases):
                if name in seen:
                    raise KernelFileError(
                        f"{k.source}: name {name!r} is used by both {seen[name]!r} and {k.name!r}"
                    )
                seen[name] = k.name
        for k in kernels:
            previous = self.get(k.name) if k.name in self else None
            if previous is not None:
                k = replace(k, overrides=previous.source)
                self._forget(previous.name)
            for alias in k.aliases:
                if alias in self:
                    self._forget(self.get(alias).name)
            self._kernels[k.name] = k
            for alias in k.aliases:
                self._aliases[alias] = k.name

    def _forget(self, name: str) -> None:
        del self._kernels[name]
        self._aliases = {a: n for a, n in self._aliases.items() if n != name}

    def __contains__(self, name: str) -> bool:
        return name in self._kernels or name in self._aliases

    def __iter__(self):
        return iter(self._kernels.values())

    def __len__(self) -> int:
        return len(self._kernels)

    def get(self, name: str) -> Kernel:
        """The kernel called ``name`` (or an alias of it); UnknownKernelError with a suggestion."""
        name = self._aliases.get(name, name)
        try:
            return self._kernels[name]
        except KeyError:
            pass
        close = difflib.get_close_matches(name, [*self._kernels, *self._aliases], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else "; see 'kernelcli kernels list'"
        raise UnknownKernelError(f"unknown kernel {name!r}{hint}")

    def resolve(self, spec: str) -> Kernel:
        """A kernel name from the library, or an inline matrix such as ``"1 2 1; 2 4 2; 1 2 1"``."""
        return parse_inline(spec) if is_inline_spec(spec) else self.get(spec)


# --------------------------------------------------------------------------- facts about a kernel


def separable_factors(weights):
    """(column, row) 1-D factors with ``outer(column, row) == weights``, or None if rank > 1."""
    import numpy as np

    w = np.asarray(weights, dtype=np.float64)
    if not w.any():
        return None
    s = np.linalg.svd(w, compute_uv=False)
    if len(s) > 1 and s[1] > 1e-9 * s[0]:
        return None
    i, j = np.unravel_index(np.argmax(np.abs(w)), w.shape)
    column, row = w[:, j], w[i, :] / w[i, j]
    sign = 1.0 if column[np.argmax(np.abs(column))] > 0 else -1.0  # prefer [1 2 1] to [-1 -2 -1]
    return column * sign + 0.0, row * sign + 0.0


def describe(kernel: Kernel) -> dict:
    """A JSON-ready summary: the effective float weights and what can be said of them."""
    w = kernel.weights
    factors = separable_factors(w)
    return {
        "name": kernel.name,
        "description": kernel.description,
        "size": list(kernel.shape),
        "matrix": w.tolist(),
        "written": [list(r) for r in kernel.matrix],
        "divisor": kernel.divisor,
        "scale": kernel.scale,
        "bias": kernel.bias,
        "map": kernel.map or "clip",
        "anchor": list(kernel.anchor),
        "sum": float(w.sum()),
        "separable": factors is not None,
        "factors": None if factors is None else {"column": factors[0].tolist(), "row": factors[1].tolist()},
        "aliases": list(kernel.aliases),
        "source": kernel.source,
        "overrides": kernel.overrides,
    }
