"""Shapes, receptive fields and costs of a chain of convolutions, pools and upsamplings.

Kernels (``-k``) take apply's geometry (``kernel_step``); a step (``-s``) is written as words: ``KERNEL [stride=S] [padding=P] [dilation=D]``,
``conv N|HxW [...]`` (any kernel of that size), ``pool N|HxW [stride=S] [padding=P]``,
``transpose KERNEL|N|HxW [stride=S] [padding=P]`` and ``upsample N|HxW``; sizes are read by
``shapes.parse_shape``, as every size-like option of the command line.
No torch here; the tests check every size against torch's own layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError
from ..compute.shapes import pair, parse_shape, shape_text, transposed_size


@dataclass(frozen=True)
class Step:
    kind: str
    label: str
    kh: int
    kw: int
    stride: int | tuple[int, int] = 1  # one for both axes, or (height, width): a pooling window's, an upsampling's
    padding: str | int = "same"
    dilation: int = 1
    channels_out: int | None = None  # multi-channel kernels change the channel count
    channels_in: int | None = None
    parts: int = 1  # combined kernels run several matrices


def _size(text: str, spec: str) -> tuple[int, int]:
    try:
        return parse_shape(text)
    except UsageError as exc:
        raise UsageError(f"step {spec!r}: {exc}") from None


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
        fh, fw = _size(rest[0] if rest else "2", spec)
        factor = fh if fh == fw else (fh, fw)
        return Step("upsample", f"upsample x{shape_text(factor)}", 2 * fh - fh % 2, 2 * fw - fw % 2, factor, 0)
    if head == "pool":
        kh, kw = _size(rest[0] if rest else "2", spec)
        return Step("pool", f"pool {kh}x{kw}", kh, kw, stride or ((kh, kw) if kh != kw else kh),
                    padding if isinstance(padding, int) else 0)
    if head in ("conv", "transpose"):
        if not rest:
            raise UsageError(f"step {spec!r}: give a kernel name or a size after {head!r}")
        target = rest[0]
    else:
        target, head = head, "conv"
    if target[:1].isdigit():  # a size (conv 3x3); kernel names start with a letter
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


def _axis(n: int, k: int, s: int, step: Step) -> tuple[int, str]:
    """Output length along one axis (kernel side k, stride s) and the formula with the numbers filled in."""
    d = step.dilation
    if step.kind in ("transpose", "upsample"):
        p = (s - s % 2) // 2 if step.kind == "upsample" else step.padding  # the bilinear kernel's own padding
        out = transposed_size(n, k, s, p, d)
        if step.kind == "upsample":
            return out, f"{n}·{s} = {out}"
        return out, f"({n}−1)·{s} − 2·{p} + {d}·({k}−1) + 1 = {out}"
    if step.padding == "same":  # d·(k−1) in all, up-left of the centre for even kernels (as apply)
        before, after = d * ((k - 1) // 2), d * (k - 1 - (k - 1) // 2)
        pad_text = f"2·{before}" if before == after else f"({before}+{after})"
        total = before + after
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
    jump_h = jump_w = 1.0  # input pixels between neighbouring outputs
    for step in steps:
        if step.channels_in is not None and step.channels_in != c:
            raise UsageError(f"step {step.label!r} needs {step.channels_in} input channel(s) but gets {c}")
        sh, sw = pair(step.stride)
        oh, fh = _axis(h, step.kh, sh, step)
        ow, fw = _axis(w, step.kw, sw, step)
        if oh < 1 or ow < 1:
            raise UsageError(f"step {step.label!r} leaves nothing of a {h}x{w} input")
        c_out = step.channels_out or c
        if step.kind in ("transpose", "upsample"):
            rf_h += (math.ceil(step.kh / sh) - 1) * jump_h
            rf_w += (math.ceil(step.kw / sw) - 1) * jump_w
            jump_h, jump_w = jump_h / sh, jump_w / sw
            macs = h * w * c * step.kh * step.kw
        else:
            rf_h += step.dilation * (step.kh - 1) * jump_h
            rf_w += step.dilation * (step.kw - 1) * jump_w
            jump_h, jump_w = jump_h * sh, jump_w * sw
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
            "jump": _num(jump_h) if jump_h == jump_w else [_num(jump_h), _num(jump_w)],
            "multiply_adds" if step.kind != "pool" else "operations": macs,
            "parameters": 0 if step.kind == "pool" else params,
        })
        h, w, c = oh, ow, c_out
    return rows


def _num(v: float):
    return int(v) if float(v).is_integer() else round(v, 4)


WIDTH = 80  # the terminal table's width, whatever the sizes


def render(rows: list[dict], table: bool) -> str:
    """The rows as text: a table that fits 80 columns, each step's height and width formulas
    under it and the chain's result at the end (``table``, for a terminal); else one
    tab-separated line per step: step, in, out, receptive field, jump, cost, height formula,
    width formula (sizes as HxWxC, fields as HxW).

    The table keeps 80 columns for any size: costs are written short (``1.2e15``) when the
    exact numbers do not fit, and then, if still too wide, each step's in → out goes on a line
    of its own under the step."""

    def x(values):
        return "x".join(map(str, values)) if isinstance(values, list) else str(values)

    cells = [(r["step"], x(r["input"]), x(r["output"]), x(r["receptive_field"]), x(r["jump"]),
              f"{r.get('multiply_adds', r.get('operations'))}") for r in rows]
    if not table:
        return "".join("\t".join([*c, r["formula"]["height"], r["formula"]["width"]]) + "\n"
                       for c, r in zip(cells, rows))
    last = rows[-1]
    chain = [f"chain: {x(rows[0]['input'])} → {x(last['output'])}, receptive field {x(last['receptive_field'])}, "
             f"jump {x(last['jump'])}"]
    if len(chain[0]) > WIDTH:
        chain = [f"chain: {x(rows[0]['input'])} → {x(last['output'])}",
                 f"  receptive field {x(last['receptive_field'])}, jump {x(last['jump'])}"]
    for layout in ("exact", "short", "sizes apart"):
        text = _table(cells, rows, layout) + chain
        if max(map(len, text)) <= WIDTH:
            break
    return "\n".join(text) + "\n"


def _table(cells, rows, layout: str) -> list[str]:
    def cost(text):
        return f"{int(text):,}" if layout == "exact" else _short_number(int(text))

    apart = layout == "sizes apart"
    head = ("step", "receptive field", "jump", "cost") if apart else ("step", "in", "out", "receptive field", "jump",
                                                                        "cost")
    body = [(_short(c[0], 22), *((c[3], c[4]) if apart else c[1:5]), cost(c[5])) for c in cells]
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(len(head))]

    def line(c):
        return "  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip()

    out = [line(head)]
    for b, c, r in zip(body, cells, rows):
        out += [line(b), *([f"  size   {c[1]} → {c[2]}"] if apart else []),
                f"  height {r['formula']['height']}", f"  width  {r['formula']['width']}"]
    return out


def _short_number(n: int) -> str:
    """1354752 → '1354752'; 7599824371187712 → '7.6e15': at most 7 characters."""
    if n < 10_000_000:
        return str(n)
    mantissa, exponent = f"{n:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
