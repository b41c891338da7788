"""Shapes, receptive fields and costs of a chain of convolutions, pools and upsamplings.

Kernels (``-k``) take apply's geometry (``kernel_step``); a step (``-s``) is written as words: ``KERNEL [stride=S] [padding=P] [dilation=D]``,
``conv HxW [...]`` (any kernel of that size), ``pool K [stride=S] [padding=P]``,
``transpose KERNEL|HxW [stride=S] [padding=P]`` and ``upsample F``.
No torch here; the tests check every size against torch's own layers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import UsageError
from .shapes import transposed_size

@dataclass(frozen=True)
class Step:
    kind: str
    label: str
    kh: int
    kw: int
    stride: int = 1
    padding: str | int = "same"
    dilation: int = 1
    channels_out: int | None = None  # multi-channel kernels change the channel count
    channels_in: int | None = None
    parts: int = 1  # combined kernels run several matrices


def _size(text: str, spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not m:
        raise UsageError(f"step {spec!r}: {text!r} is not a size such as 3 or 3x3")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def parse_step(spec: str, library) -> Step:
    words = spec.split()
    if not words:
        raise UsageError("empty step")
    opts, rest = {}, []
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if eq:
            if key not in ("stride", "padding", "dilation"):
                raise UsageError(f"step {spec!r}: unknown option {key!r} (stride, padding, dilation)")
            opts[key] = value
        else:
            rest.append(word)
    head = words[0]
    try:
        stride = int(opts.get("stride", 0)) or None
        dilation = int(opts.get("dilation", 1))
        padding = opts.get("padding")
        if padding not in (None, "same", "valid"):
            padding = int(padding)
    except ValueError:
        raise UsageError(f"step {spec!r}: stride, padding and dilation take whole numbers") from None
    if head == "upsample":
        (f,) = rest or ["2"]
        f = int(f)
        k = 2 * f - f % 2
        return Step("upsample", f"upsample x{f}", k, k, f, (f - f % 2) // 2)
    if head == "pool":
        kh, kw = _size(rest[0] if rest else "2", spec)
        return Step("pool", f"pool {kh}x{kw}", kh, kw, stride or kh, padding if isinstance(padding, int) else 0)
    if head in ("conv", "transpose"):
        if not rest:
            raise UsageError(f"step {spec!r}: give a kernel name or a size after {head!r}")
        target = rest[0]
    else:
        target, head = head, "conv"
    if re.fullmatch(r"\d+(x\d+)?", target):
        kh, kw = _size(target, spec)
        kernel = None
        label = f"{head} {kh}x{kw}"
    else:
        kernel = library.resolve(target)
        kh, kw = kernel.shape
        label = f"{head} {kernel.name}" if head == "transpose" else kernel.name
    return _step(head, label, kernel, kh, kw, stride, padding, dilation)


def kernel_step(spec: str, library, padding: str | int = "same", stride: int = 1, dilation: int = 1) -> Step:
    """The step of ``-k SPEC`` under apply's geometry options (--padding, --stride, --dilation)."""
    kernel = library.resolve(spec)
    return _step("conv", kernel.name, kernel, *kernel.shape, stride, padding, dilation)


def _step(head, label, kernel, kh, kw, stride, padding, dilation) -> Step:
    c_out = c_in = None
    parts = 1
    if kernel is not None and kernel.kind == "multi-channel":
        c_out, c_in = len(kernel.full), len(kernel.full[0])
    if kernel is not None and kernel.kind == "combined":
        parts = len(kernel.parts)
    if head == "transpose":
        return Step("transpose", label, kh, kw, stride or 1, padding if isinstance(padding, int) else 0, dilation,
                    parts=parts)
    return Step("conv", label, kh, kw, stride or 1, "same" if padding is None else padding, dilation,
                c_out, c_in, parts)


def _axis(n: int, k: int, step: Step) -> tuple[int, str]:
    """Output length along one axis and the formula with the numbers filled in."""
    s, d = step.stride, step.dilation
    if step.kind in ("transpose", "upsample"):
        p = step.padding
        out = transposed_size(n, k, s, p, d)
        if step.kind == "upsample":
            return out, f"{n}·{s} = {out}"
        return out, f"({n}−1)·{s} − 2·{p} + {d}·({k}−1) + 1 = {out}"
    if step.padding == "same":
        total = d * (k - 1)
        pad_text = f"{total}"
    else:
        p = 0 if step.padding == "valid" else step.padding
        total = 2 * p
        pad_text = f"2·{p}"
    out = (n + total - d * (k - 1) - 1) // s + 1
    return out, f"⌊({n} + {pad_text} − {d}·({k}−1) − 1) / {s}⌋ + 1 = {out}"


def explain(steps: list[Step], height: int, width: int, channels: int = 1) -> list[dict]:
    """For each step: sizes with the formula filled in, receptive field, jump, and cost."""
    rows = []
    h, w, c = height, width, channels
    rf_h = rf_w = 1.0  # receptive field in input pixels
    jump = 1.0  # input pixels between neighbouring outputs
    for step in steps:
        if step.channels_in is not None and step.channels_in != c:
            raise UsageError(f"step {step.label!r} needs {step.channels_in} input channel(s) but gets {c}")
        oh, fh = _axis(h, step.kh, step)
        ow, fw = _axis(w, step.kw, step)
        if oh < 1 or ow < 1:
            raise UsageError(f"step {step.label!r} leaves nothing of a {h}x{w} input")
        c_out = step.channels_out or c
        if step.kind in ("transpose", "upsample"):
            jump_out = jump / step.stride
            reach_h = math.ceil(step.kh / step.stride) - 1
            reach_w = math.ceil(step.kw / step.stride) - 1
            rf_h += reach_h * jump
            rf_w += reach_w * jump
            macs = h * w * c * step.kh * step.kw
        else:
            rf_h += step.dilation * (step.kh - 1) * jump
            rf_w += step.dilation * (step.kw - 1) * jump
            jump_out = jump * step.stride
            per_out = step.kh * step.kw * (step.channels_in or 1) * step.parts
            macs = oh * ow * c_out * per_out
        params = step.kh * step.kw * (step.channels_in or 1) * (step.channels_out or 1) * step.parts
        rows.append({
            "step": step.label,
            "kind": step.kind,
            "input": [h, w, c],
            "output": [oh, ow, c_out],
            "formula": {"height": fh, "width": fw},
            "receptive_field": [_num(rf_h), _num(rf_w)],
            "jump": _num(jump_out),
            "multiply_adds" if step.kind != "pool" else "operations": macs,
            "parameters": 0 if step.kind == "pool" else params,
        })
        h, w, c, jump = oh, ow, c_out, jump_out
    return rows


def _num(v: float):
    return int(v) if float(v).is_integer() else round(v, 4)


def render(rows: list[dict], table: bool) -> str:
    """The rows as text: a table that fits 80 columns, each step's height and width formulas
    under it and the chain's result at the end (``table``, for a terminal); else one
    tab-separated line per step: step, in, out, receptive field, jump, cost, height formula,
    width formula (sizes as HxWxC, fields as HxW)."""

    def x(values):
        return "x".join(map(str, values))

    cells = [(r["step"], x(r["input"]), x(r["output"]), x(r["receptive_field"]), str(r["jump"]),
              f"{r.get('multiply_adds', r.get('operations'))}") for r in rows]
    if not table:
        return "".join("\t".join([*c, r["formula"]["height"], r["formula"]["width"]]) + "\n"
                       for c, r in zip(cells, rows))
    cells = [(_short(c[0], 22), *c[1:5], f"{int(c[5]):,}") for c in cells]
    head = ("step", "in", "out", "receptive field", "jump", "cost")
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]

    def line(c):
        return "  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip()

    out = [line(head)]
    for c, r in zip(cells, rows):
        out += [line(c), f"  height {r['formula']['height']}", f"  width  {r['formula']['width']}"]
    last = rows[-1]
    out.append(f"chain: {x(rows[0]['input'])} → {x(last['output'])}, receptive field "
               f"{x(last['receptive_field'])}, jump {last['jump']}")
    return "\n".join(out) + "\n"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
