"""Kernel files and the kernel library: the strict YAML loader and saver, inline specs,
and :class:`KernelLibrary` (names, aliases, overrides, rotations and generators).
The value type and number parsing are in :mod:`kernelcli.kernels.kernel`, facts about a kernel in
:mod:`kernelcli.kernels.analysis`.

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
import os
import re
from dataclasses import replace
from pathlib import Path

import yaml

from ..errors import KernelFileError, UnknownKernelError
from .kernel import MAP_MODES, MAX_KERNEL_SIZE, NAME_RE, Kernel, check_matrix, parse_number

# Re-exported so that ``from kernelcli.kernels.library import ...`` keeps working while callers move to
# kernelcli.kernels.kernel (the value type, numbers) and kernelcli.kernels.analysis (facts about a kernel).
from .analysis import FREQUENCY_WORDS, describe, frequency, separable_factors, symmetry  # noqa: F401

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 16
ENTRY_KEYS = ("description", "matrix", "mix", "weight", "combine", "of", "divisor", "scale", "bias", "map",
              "origin", "aliases")
COMBINE_MODES = ("magnitude", "max", "sum")
SHAPE_KEYS = ("matrix", "mix", "weight", "combine")  # exactly one says what the kernel is


def _split_row(text: str) -> list[str]:
    return [tok for tok in re.split(r"[,\s]+", text.strip()) if tok]


# --------------------------------------------------------------------------- inline specs


_WORD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_GENERATOR_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):")
_DIVISOR_RE = re.compile(r"^(.*?)(?:\s+|(?<=\]))/\s*(\S+)\s*$", re.S)  # "… / 16", "[[…]]/16"


def is_inline_spec(spec: str) -> bool:
    """A kernel given as numbers on the command line rather than by name. A spec without any
    digit, or shaped like a word (``Sharpen``, ``sobel_right``), is a name."""
    return re.search(r"\d", spec) is not None and _WORD_RE.match(spec.strip()) is None


def fold_name(name: str) -> str:
    """The form names are compared in for suggestions: case and ``_``/``-`` do not matter."""
    return name.strip().lower().replace("_", "-")


def suggest(name: str, known) -> str | None:
    """The known name closest to ``name`` (same folded form first, then difflib), or None."""
    folded = {fold_name(k): k for k in known}
    if fold_name(name) in folded:
        return folded[fold_name(name)]
    close = difflib.get_close_matches(fold_name(name), folded, n=1, cutoff=0.6)
    return folded[close[0]] if close else None


def parse_inline(spec: str, *, max_kernel: int = MAX_KERNEL_SIZE) -> Kernel:
    """Parse ``"0,-1,0; -1,5,-1; 0,-1,0"`` or ``"[[0,-1,0],[-1,5,-1],[0,-1,0]]"``, optionally
    followed by a divisor: ``"1 2 1; 2 4 2; 1 2 1 / 16"``, or ``/ sum`` to divide by the sum."""
    text = spec.strip()
    where = f"kernel {spec!r}"
    divisor_text = None
    m = _DIVISOR_RE.match(text)
    if m:
        text, divisor_text = m.group(1), m.group(2)
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
    matrix = check_matrix(rows, where, max_kernel=max_kernel)
    divisor = 1.0
    if divisor_text is not None:
        if divisor_text.lower() == "sum":
            divisor = math.fsum(v for row in matrix for v in row)
            if divisor == 0:
                raise KernelFileError(f"{where}: the weights sum to 0; '/ sum' cannot normalise them")
        else:
            divisor = parse_number(divisor_text, f"{where}, divisor")
            if divisor == 0:
                raise KernelFileError(f"{where}: the divisor is 0")
    digest = hashlib.sha1(repr((matrix, divisor)).encode()).hexdigest()[:6]
    written = " ; ".join(" ".join(f"{v:g}" for v in row) for row in matrix)
    return Kernel(
        name=f"inline-{digest}",
        matrix=matrix,
        divisor=divisor,
        description=f"inline kernel {written}" + (f" / {divisor:g}" if divisor != 1 else ""),
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

    def __init__(self, path: str, max_kernel: int = MAX_KERNEL_SIZE):
        self.path = path
        self.max_kernel = max_kernel

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
        return check_matrix(rows, self.where(node, here), max_kernel=self.max_kernel)

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


_parsed: dict = {}  # (path, content, size limit) → kernels: the resident server parses kernels.yaml once


def load_file(path: str | Path, *, max_kernel: int = MAX_KERNEL_SIZE) -> list[Kernel]:
    """Read and validate one kernel file (matrices at most ``max_kernel`` a side); raise
    KernelFileError naming file and line. The file is read every time; the same content is
    parsed once."""
    from ..io.storage import read_config  # local (regular files only, never a blocking open) or a URL

    if "://" not in str(path):
        path = Path(path)
    data = read_config(path, MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise KernelFileError(f"{path}: kernel file is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KernelFileError(f"{path}: kernel file is not UTF-8 text") from None
    key = (str(path), data, max_kernel)
    if key not in _parsed:
        kernels = _FileParser(str(path), max_kernel).parse(text)
        if len(_parsed) >= 8:
            _parsed.clear()
        _parsed[key] = kernels
    return list(_parsed[key])


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


def save_kernel(path: str | Path, name: str, weights, description: str, *, overwrite: bool = False,
                max_kernel: int = MAX_KERNEL_SIZE) -> None:
    """Add a plain kernel to a library file (created if missing), validated before the file
    is replaced atomically. A kernel of the same name is replaced only with ``overwrite``;
    then, or when the file's own layout cannot take an appended entry, the file is written
    anew from its parsed kernels (its comments are not kept)."""
    from ..io.images import write_atomic

    path = Path(os.path.realpath(path))  # a link to a library file: write through to its target
    kernel = Kernel(name=name, matrix=check_matrix([[float(v) for v in row] for row in weights], f"kernel {name!r}",
                                                   max_kernel=max_kernel),
                    description=description)
    header = "version: 1\nkernels:\n"
    existing = load_file(path, max_kernel=max_kernel) if path.exists() else []
    if any(k.name == name or name in k.aliases for k in existing):
        if not overwrite:
            raise KernelFileError(f"{path}: a kernel named {name!r} exists already", setting="overwrite")
        text = header + "".join(entry_yaml(k) for k in existing if k.name != name) + entry_yaml(kernel)
    else:
        old = path.read_text(encoding="utf-8") if path.exists() else header
        text = old.rstrip("\n") + "\n" + entry_yaml(kernel)
        try:
            _FileParser(str(path), max_kernel).parse(text)
        except KernelFileError:
            text = header + "".join(entry_yaml(k) for k in existing) + entry_yaml(kernel)
    _FileParser(str(path), max_kernel).parse(text)  # never write a file kernelcli cannot read back
    write_atomic(path, text.encode("utf-8"), overwrite=True)


# --------------------------------------------------------------------------- the library


def shipped_path() -> Path:
    """The kernels.yaml installed inside the package (a link to the repository's copy)."""
    return Path(__file__).with_name("kernels.yaml")


class KernelLibrary:
    """Kernels by name, built from files in order: later files add kernels or override names.
    ``max_kernel`` is the largest side accepted from its files, inline specs and generators."""

    def __init__(self, kernels: list[Kernel] = (), *, max_kernel: int = MAX_KERNEL_SIZE):
        self.max_kernel = max_kernel
        self._kernels: dict[str, Kernel] = {}
        self._aliases: dict[str, str] = {}
        self.add(kernels)

    @classmethod
    def load(cls, paths=(), *, shipped: bool = True, max_kernel: int = MAX_KERNEL_SIZE) -> "KernelLibrary":
        lib = cls(max_kernel=max_kernel)
        for path in ([shipped_path()] if shipped else []) + [p if "://" in str(p) else Path(p) for p in paths]:
            lib.add(load_file(path, max_kernel=max_kernel))
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
                    raise KernelFileError(f"{k.source}: kernel {name!r}, part {part_name!r}: {exc}",
                                          setting=exc.setting) from None
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
            # A name or alias equal to a kernel's name replaces that kernel; equal to an alias,
            # it takes over that alias only. Either way ``overrides`` says what and from where.
            overridden = []
            for name in (k.name, *k.aliases):
                if name in self._kernels:
                    overridden.append(f"{name!r} from {self._kernels[name].source}")
                    self._forget(name)
                elif name in self._aliases:
                    owner = self._kernels[self._aliases.pop(name)]
                    overridden.append(f"alias {name!r} of {owner.name!r} from {owner.source}")
                    self._kernels[owner.name] = replace(owner, aliases=tuple(a for a in owner.aliases if a != name))
            if overridden:
                k = replace(k, overrides="; ".join(overridden))
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
        close = suggest(name, [*self._kernels, *self._aliases])
        hint = f"; did you mean {close!r}?" if close else "; see 'kernelcli kernels list'"
        raise UnknownKernelError(f"unknown kernel {name!r}{hint}")

    def resolve(self, spec: str) -> Kernel:
        """A kernel by name, ``NAME@ANGLE`` (rotated), ``gaussian:2`` (generated), or an inline
        matrix such as ``"1 2 1; 2 4 2; 1 2 1"``."""
        from .generate import generate, is_generated, rotate

        base, at, angle = spec.rpartition("@")
        if at and base:
            return rotate(self.resolve(base), angle, spec)
        if is_generated(spec):
            return generate(spec, max_kernel=self.max_kernel)
        generator = _GENERATOR_RE.match(spec.strip())
        if generator:
            from .generate import GENERATORS

            close = suggest(generator.group(1), GENERATORS)
            hint = f"did you mean {close!r}? " if close else ""
            raise UnknownKernelError(f"unknown kernel generator {generator.group(1)!r} in {spec!r}; {hint}"
                                     f"known generators: {', '.join(GENERATORS)}")
        return parse_inline(spec, max_kernel=self.max_kernel) if is_inline_spec(spec) else self.get(spec)

