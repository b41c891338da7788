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
MAX_KERNEL_SIZE = 63  # per side, for kernels from files and the command line (--max-kernel)
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 16
ENTRY_KEYS = ("description", "matrix", "mix", "weight", "combine", "of", "divisor", "scale", "bias", "map",
              "origin", "aliases")
COMBINE_MODES = ("magnitude", "max", "sum")
SHAPE_KEYS = ("matrix", "mix", "weight", "combine")  # exactly one says what the kernel is
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
            f"{MAX_KERNEL_SIZE}x{MAX_KERNEL_SIZE} is allowed (--max-kernel raises it)"
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


class _StrictComposer(yaml.composer.Composer):
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


class _PyStrictLoader(_StrictComposer, yaml.SafeLoader):
    """Pure-Python scanner and parser."""


_StrictLoader = _PyStrictLoader
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CStrictLoader(_StrictComposer, CParser, yaml.resolver.Resolver):
        """libyaml's scanner and parser (about 10x faster), our composer on its events."""

        def __init__(self, stream):
            CParser.__init__(self, stream)
            _StrictComposer.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _StrictLoader = _CStrictLoader


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
        given = [k for k in SHAPE_KEYS if k in fields]
        if len(given) != 1:
            raise KernelFileError(
                f"{self.where(key_node)}: {here} needs exactly one of 'matrix', 'mix', 'weight' or 'combine'"
                + (f" (has {', '.join(given)})" if given else "")
            )
        if "description" not in fields:
            raise KernelFileError(f"{self.where(key_node)}: {here} has no 'description'")
        if ("of" in fields) != ("combine" in fields):
            raise KernelFileError(f"{self.where(key_node)}: {here}: 'combine' and 'of' go together")

        kwargs: dict = {"name": name, "source": self.path}
        kwargs["description"] = self.scalar(fields["description"][1], self.where(node, here))
        if "matrix" in fields:
            kwargs["matrix"] = self.matrix(fields["matrix"][1], here)
        elif "mix" in fields:
            mix = self.matrix(fields["mix"][1], f"{here}, mix")
            kwargs["full"] = tuple(tuple(((v,),) for v in row) for row in mix)
        elif "weight" in fields:
            kwargs["full"] = self.weight(fields["weight"][1], here)
        else:
            v_node = fields["combine"][1]
            mode = self.scalar(v_node, self.where(v_node, here))
            if mode not in COMBINE_MODES:
                raise KernelFileError(f"{self.where(v_node, here)}: combine {mode!r} is not one of {', '.join(COMBINE_MODES)}")
            kwargs["combine"] = mode
            of_node = fields["of"][1]
            if not isinstance(of_node, yaml.SequenceNode) or len(of_node.value) < 2:
                raise KernelFileError(f"{self.where(of_node, here)}: 'of' must list two or more kernel names")
            kwargs["part_names"] = tuple(self.scalar(n, self.where(n, here)) for n in of_node.value)
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
            if "matrix" not in kwargs:
                raise KernelFileError(f"{self.where(fields['origin'][1], here)}: origin is only for a 'matrix'")
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

    def weight(self, node, here: str) -> tuple:
        """C_out x C_in x kh x kw nested lists; every output channel a list of C_in matrices."""
        where = self.where(node, f"{here}, weight")
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise KernelFileError(f"{where}: weight must be a list (one entry per output channel)")
        out = []
        for o, out_node in enumerate(node.value, 1):
            if not isinstance(out_node, yaml.SequenceNode) or not out_node.value:
                raise KernelFileError(f"{self.where(out_node, here)}: output channel {o} must list one matrix per input channel")
            out.append(tuple(self.matrix(m, f"{here}, output {o}, input {i}") for i, m in enumerate(out_node.value, 1)))
        shapes = {(len(m), len(m[0])) for row in out for m in row}
        if len({len(row) for row in out}) != 1 or len(shapes) != 1:
            raise KernelFileError(f"{where}: every output channel needs the same number of equal-sized matrices")
        return tuple(out)

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


# --------------------------------------------------------------------------- writing


def entry_yaml(kernel: Kernel) -> str:
    """One ``kernels:`` entry as YAML text, indented to sit under ``kernels:``."""
    body: dict = {"description": kernel.description}
    if kernel.kind == "plain":
        body["matrix"] = [[_plain(v) for v in row] for row in kernel.matrix]
    elif kernel.kind == "combined":
        body["combine"] = kernel.combine
        body["of"] = list(kernel.part_names or [p.name for p in kernel.parts])
    else:
        body["weight"] = [[[[_plain(v) for v in r] for r in m] for m in row] for row in kernel.full]
    for key, default in (("divisor", 1.0), ("scale", 1.0), ("bias", 0.0)):
        if getattr(kernel, key) != default:
            body[key] = _plain(getattr(kernel, key))
    if kernel.map:
        body["map"] = kernel.map
    if kernel.origin is not None:
        body["origin"] = list(kernel.origin)
    if kernel.aliases:
        body["aliases"] = list(kernel.aliases)
    text = yaml.safe_dump({kernel.name: body}, default_flow_style=None, sort_keys=False, allow_unicode=True, width=1000)
    return "".join("  " + line + "\n" for line in text.splitlines())


def _plain(v: float):
    return int(v) if float(v).is_integer() else float(v)


def save_kernel(path: str | Path, name: str, weights, description: str, *, overwrite: bool = False) -> None:
    """Add a plain kernel to a library file (created if missing), validated before the file
    is replaced atomically. A kernel of the same name is replaced only with ``overwrite``;
    then, or when the file's own layout cannot take an appended entry, the file is written
    anew from its parsed kernels (its comments are not kept)."""
    from .images import write_atomic

    path = Path(path)
    kernel = Kernel(name=name, matrix=check_matrix([[float(v) for v in row] for row in weights], f"kernel {name!r}"),
                    description=description)
    header = "version: 1\nkernels:\n"
    existing = load_file(path) if path.exists() else []
    if any(k.name == name or name in k.aliases for k in existing):
        if not overwrite:
            raise KernelFileError(f"{path}: a kernel named {name!r} exists already; pass --overwrite to replace it")
        text = header + "".join(entry_yaml(k) for k in existing if k.name != name) + entry_yaml(kernel)
    else:
        old = path.read_text(encoding="utf-8") if path.exists() else header
        text = old.rstrip("\n") + "\n" + entry_yaml(kernel)
        try:
            _FileParser(str(path)).parse(text)
        except KernelFileError:
            text = header + "".join(entry_yaml(k) for k in existing) + entry_yaml(kernel)
    _FileParser(str(path)).parse(text)  # never write a file kernelcli cannot read back
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"), overwrite=True)


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
        lib.link()
        return lib

    def link(self) -> None:
        """Resolve the parts of combined kernels (names, rotations, generators) once all files
        are loaded; parts must be plain kernels of one shape and anchor."""
        for name, k in list(self._kernels.items()):
            if not k.combine:
                continue
            parts = []
            for part_name in k.part_names:
                try:
                    part = self.resolve(part_name)
                except KernelFileError as exc:
                    raise KernelFileError(f"{k.source}: kernel {name!r}, part {part_name!r}: {exc}") from None
                if part.kind != "plain":
                    raise KernelFileError(f"{k.source}: kernel {name!r}: part {part_name!r} must be a plain matrix")
                parts.append(part)
            if len({(p.shape, p.anchor) for p in parts}) > 1:
                raise KernelFileError(f"{k.source}: kernel {name!r}: parts must share one size and anchor")
            self._kernels[name] = replace(k, parts=tuple(parts))

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
        """A kernel by name, ``NAME@ANGLE`` (rotated), ``gaussian:2`` (generated), or an inline
        matrix such as ``"1 2 1; 2 4 2; 1 2 1"``."""
        from .generate import generate, is_generated, rotate

        base, at, angle = spec.rpartition("@")
        if at and base:
            return rotate(self.resolve(base), angle, spec)
        if is_generated(spec):
            return generate(spec)
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


def symmetry(weights) -> list[str]:
    """Names of the symmetries of a 2-D kernel (mirror, odd, rotations)."""
    import numpy as np

    w = np.asarray(weights, dtype=np.float64)
    tol = 1e-12 * max(1.0, float(np.abs(w).max()))
    same = lambda a, b: a.shape == b.shape and np.allclose(a, b, atol=tol, rtol=0)  # noqa: E731
    found = []
    for flip, axis in ((np.fliplr, "left-right"), (np.flipud, "top-bottom")):
        if same(w, flip(w)):
            found.append(f"mirror {axis}")
        elif same(w, -flip(w)):
            found.append(f"odd {axis} (mirror flips the sign)")
    if same(w, np.rot90(w)):
        found.append("unchanged by 90-degree turns")
    elif same(w, np.rot90(w, 2)):
        found.append("unchanged by a half turn")
    elif same(w, -np.rot90(w, 2)):
        found.append("a half turn flips the sign")
    if same(w, w.T) and "unchanged by 90-degree turns" not in found:
        found.append("mirror on the diagonal")
    return found


def frequency(weights, n: int = 64) -> dict:
    """Summary of |DFT| of the kernel: gain at DC, peak gain and where, and a class:
    all-pass, low-pass, high-pass, band-pass, high-boost (sharpens) or mixed."""
    import numpy as np

    w = np.asarray(weights, dtype=np.float64)
    n = max(n, *w.shape)
    gain = np.abs(np.fft.fft2(w, (n, n)))
    f = np.fft.fftfreq(n)
    radius = np.hypot(f[:, None], f[None, :])
    dc, peak, low = gain[0, 0], gain.max(), gain.min()
    nyquist = max(gain[n // 2, n // 2], gain[0, n // 2], gain[n // 2, 0])
    if peak - low <= 1e-9 * max(peak, 1e-300):
        kind = "all-pass"
    elif dc >= peak * (1 - 1e-9) and nyquist <= 0.5 * dc:
        kind = "low-pass"
    elif dc <= 1e-9 * peak:
        kind = "high-pass" if nyquist >= 0.5 * peak else "band-pass"
    elif nyquist > dc:
        kind = "high-boost"
    else:
        kind = "mixed"
    at = np.unravel_index(np.argmax(gain), gain.shape)
    return {"class": kind, "dc_gain": float(dc), "peak_gain": float(peak),
            "peak_cycles_per_pixel": round(float(radius[at]), 4), "nyquist_gain": float(nyquist)}


FREQUENCY_WORDS = {
    "all-pass": "passes every frequency alike",
    "low-pass": "keeps smooth areas, removes fine detail (blurs)",
    "high-pass": "removes flat areas, keeps the finest detail (edges, noise)",
    "band-pass": "removes flat areas and the finest noise, keeps edges of a middle scale",
    "high-boost": "keeps flat areas and amplifies fine detail (sharpens)",
    "mixed": "changes frequencies unevenly",
}


def describe(kernel: Kernel) -> dict:
    """A JSON-ready summary: the effective float weights and what can be said of them."""
    info = {
        "name": kernel.name,
        "description": kernel.description,
        "kind": kernel.kind,
        "size": list(kernel.shape),
        "map": kernel.map or "clip",
        "anchor": list(kernel.anchor),
        "divisor": kernel.divisor,
        "scale": kernel.scale,
        "bias": kernel.bias,
        "aliases": list(kernel.aliases),
        "source": kernel.source,
        "overrides": kernel.overrides,
    }
    if kernel.kind == "plain":
        w = kernel.weights
        factors = separable_factors(w)
        info.update({
            "matrix": w.tolist(),
            "written": [list(r) for r in kernel.matrix],
            "sum": float(w.sum()),
            "separable": factors is not None,
            "factors": None if factors is None else {"column": factors[0].tolist(), "row": factors[1].tolist()},
            "symmetry": symmetry(w),
            "frequency": frequency(w),
            "parameters": int(w.size),
        })
    elif kernel.kind == "combined":
        info.update({
            "combine": kernel.combine,
            "parts": [{"name": p.name, "matrix": p.weights.tolist()} for p in kernel.parts],
            "parameters": sum(int(p.weights.size) for p in kernel.parts),
        })
    else:
        full = kernel.full_weights
        info.update({
            "weight": full.tolist(),
            "channels_out": full.shape[0],
            "channels_in": full.shape[1],
            "parameters": int(full.size),
        })
    return info
