"""Convolution as a moving picture: a kernel sliding over a small grid of numbers, one frame
per output cell and a hold at the end (``kernelcli animate``).

:func:`plan` decides what is shown, as values (a :class:`Scene`); :func:`render` draws its
frames with Pillow, :func:`encode` writes them as GIF or APNG, and :func:`trace` gives the
same numbers as text. numpy and Pillow only, no torch: each output cell is a plain sum over
its window here, and the tests check every one against torch.

- convolution (``conv``): the input padded as ``--border`` says (the engine's own border
  arithmetic, :func:`kernelcli.compute.options.padded_axis`), the kernel laid over it as written
  (correlation), stride and dilation as ``torch.nn.Conv2d``;
- transposed convolution (``transposed``), drawn as Dumoulin & Visin draw it: the equivalent
  direct convolution over the input with stride−1 zeros inserted between its cells and
  dilation·(k−1)−padding zeros around it, the kernel rotated by 180°, stride 1; the numbers
  are those of ``torch.nn.ConvTranspose2d``;
- pooling (``max``, ``avg``), as ``torch.nn.MaxPool2d`` / ``AvgPool2d``: max ignores the
  padding, avg counts it as zeros.

Without numbers (``source`` an (H, W) size), the same frames show the shapes only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import UsageError
from .explain import Step, explain
from ..compute.options import CONSTANT_BORDERS, Geometry, check_geometry, pad_amounts, padded_axis
from ..compute.shapes import check_pool_padding, pair, shape_text

OPS = ("conv", "transposed", "max", "avg")
MAX_SIDE = 16  # rows and columns of the input and of the output: beyond it the numbers are too small to read
MAX_DRAWN = 32  # cells a side of the drawn input, its padding and inserted zeros included
DELAY_MS = 800  # each output cell's frame
HOLD = 3  # the last frame (the whole output) stays HOLD times as long
FORMATS = ("GIF", "PNG")  # PNG: animated (APNG)

PAD, DATA, ZERO = 0, 1, 2  # what a drawn input cell is: padding, the input, a zero inserted between inputs
BORDER_WORDS = {
    "replicate": "replicate: copies of the edge",
    "reflect": "reflect: mirrored, edge not repeated",
    "symmetric": "symmetric: mirrored, edge repeated",
    "circular": "circular: wrapped around",
    "zeros": "zeros",
}


@dataclass(frozen=True)
class Scene:
    """What the frames show.

    ``grid`` is the input as drawn, (Hp, Wp): padding and inserted zeros included (the values a
    border gives its padding cells; NaN where max pooling ignores the padding), and ``kinds``
    says which cell is which (PAD, DATA, ZERO). ``weights`` (kh, kw) are laid over ``grid`` as
    written, at ``stride`` and ``dilation`` (None for pooling); ``out`` holds each output cell's
    value. ``numbers`` False: a diagram of shapes (``grid`` and ``out`` are zeros, not shown).
    """

    op: str
    grid: np.ndarray
    kinds: np.ndarray
    weights: np.ndarray | None
    window: tuple[int, int]
    stride: int | tuple[int, int]  # (height, width) for a pooling window of two strides
    dilation: int
    out: np.ndarray
    numbers: bool
    title: tuple[str, ...]  # what is animated, then its parameters
    captions: tuple[str, str]  # above the input and the output
    formula: tuple[str, ...]  # the output size, as ``kernelcli explain`` writes it
    key: tuple[tuple[str, str], ...]  # (colour name, meaning) for the legend

    @property
    def cells(self) -> list[tuple[int, int]]:
        """The output cells in the order of the frames: row by row."""
        oh, ow = self.out.shape
        return [(i, j) for i in range(oh) for j in range(ow)]

    def corner(self, i: int, j: int) -> tuple[int, int]:
        """Top-left (row, column) of output cell (i, j)'s window in the drawn input."""
        sh, sw = pair(self.stride)
        return i * sh, j * sw

    def taps(self, i: int, j: int) -> list[tuple[int, int]]:
        """The drawn-input cells under output cell (i, j)'s window, row by row (kernel order)."""
        top, left = self.corner(i, j)
        kh, kw = self.window
        d = self.dilation
        return [(top + a * d, left + b * d) for a in range(kh) for b in range(kw)]

    def working(self, i: int, j: int) -> str:
        """How output cell (i, j) comes about: ``0·1 + 1·2 + 2·4 + 3·5 = 25`` (weight·value),
        ``max(0, 1, 5, 6) = 6``, ``(0 + 1 + 5 + 6) / 4 = 3``; its place without numbers."""
        taps = self.taps(i, j)
        if not self.numbers:
            (r0, c0), (r1, c1) = taps[0], taps[-1]
            return f"output ({i}, {j}): window over rows {r0}-{r1}, columns {c0}-{c1} of the drawn input"
        value = number(self.out[i, j])
        if self.op == "max":
            return f"max({', '.join(_shorten([number(self.grid[t]) for t in taps if self.kinds[t] != PAD]))}) = {value}"
        if self.op == "avg":
            return f"({' + '.join(_shorten([number(self.grid[t]) for t in taps]))}) / {len(taps)} = {value}"
        terms = []
        for (a, b), t in zip(np.ndindex(*self.window), taps):
            w, x = self.weights[a, b] + 0.0, self.grid[t] + 0.0
            sign = "-" if w < 0 else "+"
            factor = f"({number(x)})" if x < 0 else number(x)
            terms.append((sign, f"{number(abs(w) if terms else w)}·{factor}"))
        text = terms[0][1] + "".join(f" {s} {t}" for s, t in _shorten(terms[1:], filler=("+", "…")))
        return f"{text} = {value}"


def _shorten(items: list, filler="…", most: int = 49, head: int = 8, tail: int = 2) -> list:
    """Up to ``most`` items; more become the first ``head``, ``filler`` and the last ``tail``."""
    return items if len(items) <= most else [*items[:head], filler, *items[-tail:]]


def number(v: float) -> str:
    """A value as the frames show it: whole numbers whole, others to 4 significant digits."""
    v = float(v) + 0.0  # no -0
    if v.is_integer() and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.4g}"


def exact(v: float) -> str:
    """A value as --trace prints it: enough digits to compare with another computation."""
    return f"{float(v) + 0.0:.15g}"


# --------------------------------------------------------------------------- what is shown


def plan(source, op: str = "conv", *, weights=None, window: tuple[int, int] | None = None,
         geometry: Geometry = Geometry(), anchor: tuple[int, int] | None = None, flipped: bool = False,
         name: str = "input", kernel_label: str | None = None, pool_stride=None) -> Scene:
    """The scene of ``op`` over ``source``: an (H, W) array of numbers, or an (H, W) size for
    a diagram without numbers.

    ``conv`` and ``transposed`` take ``weights`` (kh, kw); ``max`` and ``avg`` a ``window``
    (kh, kw). ``geometry`` gives padding, stride and dilation (and for ``conv`` the border);
    transposed convolution and pooling take a whole-number padding (``valid`` is 0), as
    ``kernelcli transpose`` and ``kernelcli pool`` do. ``anchor``: the weight on the output
    cell under ``padding='same'`` (default the centre, or up-left of it); ``flipped``: the weights
    are a kernel rotated for true convolution (the title says so). ``name`` names the input in
    messages; ``kernel_label`` names the kernel in the title. ``pool_stride`` (one, or (height,
    width)) is pooling's stride: default the window, as torch (a convolution's is the geometry's).
    """
    if op not in OPS:
        raise UsageError(f"unknown operation {op!r}; choose one of {', '.join(OPS)}")
    numbers = not isinstance(source, tuple)
    x = np.asarray(source, dtype=np.float64) if numbers else None
    h, w = x.shape if numbers else source
    if numbers and x.ndim != 2:
        raise UsageError(f"{name}: animate draws one grid of numbers, not an array of shape {x.shape}")
    if max(h, w) > MAX_SIDE or min(h, w) < 1:
        raise UsageError(f"{name}: {h}x{w} is {'larger' if min(h, w) >= 1 else 'smaller'} than animate draws "
                         f"(1x1 to {MAX_SIDE}x{MAX_SIDE}, so that every number stays readable)")
    if numbers and not np.isfinite(x).all():
        raise UsageError(f"{name}: holds NaN or infinite values")
    if x is None:
        x = np.zeros((h, w))
    if op in ("conv", "transposed"):
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 2 or not np.isfinite(weights).all():
            raise UsageError("the kernel must be a matrix of finite numbers")
        kh, kw = weights.shape
    else:
        kh, kw = window or (2, 2)
    label = kernel_label or f"{kh}x{kw}"
    if op == "conv":
        return _conv(x, weights, anchor, geometry, numbers, label, flipped)
    padding = _whole_padding(geometry.padding, "a transposed convolution" if op == "transposed" else "pooling")
    if op == "transposed":
        return _transposed(x, weights, padding, geometry, numbers, label)
    return _pool(x, op, (kh, kw), padding, pool_stride or (kh, kw), geometry, numbers)


def _whole_padding(padding, what: str) -> int:
    """The padding of a transposed convolution or a pooling: cells a side (``valid``: 0)."""
    if padding == "same":
        raise UsageError(f"padding 'same' has no meaning for {what}: give a number of cells (valid is 0)")
    return 0 if padding == "valid" else padding


def _conv(x, weights, anchor, geo: Geometry, numbers, label, flipped) -> Scene:
    (h, w), (kh, kw) = x.shape, weights.shape
    anchor = ((kh - 1) // 2, (kw - 1) // 2) if anchor is None else anchor
    top, bottom, left, right = pad_amounts((kh, kw), anchor, geo)
    _check_drawn(h + top + bottom, w + left + right, "the padded input")
    (oh, ow), formula = _sizes(Step("conv", f"conv {label}", kh, kw, geo.stride, geo.padding, geo.dilation), h, w)
    rows, rows_out = padded_axis(h, top, bottom, geo)
    cols, cols_out = padded_axis(w, left, right, geo)
    grid = x[np.ix_(rows, cols)]
    if geo.border in CONSTANT_BORDERS:
        grid[rows_out, :] = geo.border_value
        grid[:, cols_out] = geo.border_value
    kinds = np.full(grid.shape, PAD, np.int8)
    kinds[top:top + h, left:left + w] = DATA
    border = BORDER_WORDS.get(geo.border, f"constant {number(geo.border_value)}")
    if geo.padding == "same":
        sides = f"{top}" if len({top, bottom, left, right}) == 1 else f"top {top}, bottom {bottom}, left {left}, right {right}"
        pad_text = f"padding same ({sides})"
    else:
        pad_text = f"padding {geo.padding}"
    pad_text += f", border {border}" if any((top, bottom, left, right)) and numbers else ""
    how = "true convolution, the kernel flipped" if flipped else "correlation"
    title = (f"conv2d ({how}): {h}x{w} input, {label} kernel, {oh}x{ow} output",
             f"{pad_text}, stride {geo.stride}, dilation {geo.dilation}")
    padded = top + bottom + left + right > 0
    return _scene("conv", x, grid, kinds, weights, (kh, kw), geo.stride, geo.dilation, (oh, ow), numbers, title,
                  (f"input {h}x{w}" + (f", padded to {grid.shape[0]}x{grid.shape[1]}" if padded else ""),
                   f"output {oh}x{ow}"), formula,
                  (("pad", f"padding ({border})" if numbers else "padding"),) if padded else ())


def _transposed(x, weights, padding, geo: Geometry, numbers, label) -> Scene:
    (h, w), (kh, kw) = x.shape, weights.shape
    s, d = geo.stride, geo.dilation
    for what, value in (("stride", s), ("padding", padding), ("dilation", d)):
        check_geometry(what, value)
    around = (d * (kh - 1) - padding, d * (kw - 1) - padding)  # the implied padding (negative: cropped)
    spread = ((h - 1) * s + 1, (w - 1) * s + 1)  # the input with stride−1 zeros between its cells
    _check_drawn(spread[0] + 2 * around[0], spread[1] + 2 * around[1], "the input with zeros inserted and padded")
    (oh, ow), formula = _sizes(Step("transpose", f"transpose {label}", kh, kw, s, padding, d), h, w)
    grid = np.zeros((spread[0] + 2 * max(around[0], 0), spread[1] + 2 * max(around[1], 0)))
    kinds = np.full(grid.shape, PAD, np.int8)
    r0, c0 = max(around[0], 0), max(around[1], 0)
    kinds[r0:r0 + spread[0], c0:c0 + spread[1]] = ZERO
    kinds[r0:r0 + spread[0]:s, c0:c0 + spread[1]:s] = DATA
    grid[r0:r0 + spread[0]:s, c0:c0 + spread[1]:s] = x
    crop_r, crop_c = max(-around[0], 0), max(-around[1], 0)
    grid = grid[crop_r:grid.shape[0] - crop_r, crop_c:grid.shape[1] - crop_c]
    kinds = kinds[crop_r:kinds.shape[0] - crop_r, crop_c:kinds.shape[1] - crop_c]
    implied = " and ".join(dict.fromkeys(f"{d}·({k}-1) - {padding} = {a}" for k, a in zip((kh, kw), around)))
    zeros = f"{s - 1} zero{'s' if s != 2 else ''} inserted between input cells (stride - 1)"
    title = (f"conv_transpose2d: {h}x{w} input, {label} kernel, {oh}x{ow} output",
             f"stride {s}, padding {padding}, dilation {d}",
             f"drawn as the equivalent direct convolution (Dumoulin & Visin): {zeros}, implied padding "
             f"dilation·(k-1) - padding = {implied}{' (negative: cropped)' if min(around) < 0 else ''}, "
             "the kernel rotated by 180°, stride 1")
    key = (("zero", "inserted zeros"),) if s > 1 else ()
    key += (("pad", "implied padding (zeros)"),) if max(around) > 0 else ()
    return _scene("transposed", x, grid, kinds, weights[::-1, ::-1], (kh, kw), 1, d, (oh, ow), numbers, title,
                  (f"input {h}x{w}, zeros inserted and padded: {grid.shape[0]}x{grid.shape[1]}", f"output {oh}x{ow}"),
                  formula, key)


def _pool(x, op, window, padding, stride, geo: Geometry, numbers) -> Scene:
    (h, w), (kh, kw) = x.shape, window
    sh, sw = pair(stride)
    for value in (sh, sw):
        check_geometry("stride", value)
    s = sh if sh == sw else (sh, sw)
    if geo.dilation != 1:
        raise UsageError("pooling takes no dilation (as kernelcli pool)")
    check_pool_padding(padding, min(kh, kw))
    if not numbers:
        raise UsageError("a pooling animation needs numbers: give an INPUT (without numbers a pooling window "
                         "is a kernel's footprint: -k box:K --stride K --padding valid)")
    _check_drawn(h + 2 * padding, w + 2 * padding, "the padded input")
    (oh, ow), formula = _sizes(Step("pool", f"pool {kh}x{kw}", kh, kw, s, padding), h, w)
    grid = np.pad(x, padding, constant_values=np.nan if op == "max" else 0.0)
    kinds = np.full(grid.shape, PAD, np.int8)
    kinds[padding:padding + h, padding:padding + w] = DATA
    fn = "max_pool2d" if op == "max" else "avg_pool2d"
    pad_text = f"padding {padding} ({'ignored by max' if op == 'max' else 'counted as zeros'})" if padding else "padding 0"
    title = (f"{fn}: {h}x{w} input, {kh}x{kw} window, {oh}x{ow} output", f"stride {shape_text(s)}, {pad_text}")
    key = (("pad", "padding (ignored)" if op == "max" else "padding (zeros, counted)"),) if padding else ()
    return _scene(op, x, grid, kinds, None, (kh, kw), s, 1, (oh, ow), numbers, title,
                  (f"input {h}x{w}" + (f", padded to {grid.shape[0]}x{grid.shape[1]}" if padding else ""),
                   f"output {oh}x{ow}"), formula, key)


def _check_drawn(height: int, width: int, what: str, limit: int = MAX_DRAWN) -> None:
    """Refuse a grid too large to draw readably (and the frames' memory with it)."""
    if max(height, width) > limit:
        raise UsageError(f"{what} would be {height}x{width} cells; animate draws at most {limit} a side "
                         "(use less padding, a smaller stride or dilation, or a smaller input)")


def _sizes(step: Step, h: int, w: int) -> tuple[tuple[int, int], tuple[str, ...]]:
    """The output size and its formula, from ``kernelcli explain`` (one formula for both)."""
    row = explain([step], h, w)[0]
    oh, ow, _ = row["output"]
    _check_drawn(oh, ow, "the output", MAX_SIDE)
    fh, fw = row["formula"]["height"], row["formula"]["width"]
    return (oh, ow), ((f"output side: {fh}",) if fh == fw else (f"output height: {fh}", f"output width: {fw}"))


def _scene(op, x, grid, kinds, weights, window, stride, dilation, out_shape, numbers, title, captions, formula,
           key) -> Scene:
    """The scene, each output cell computed as the plain sum (max, mean) over its window."""
    tap = "window" if weights is None else "kernel (weights small)" if numbers else "kernel"
    scene = Scene(op, grid, kinds, weights, window, stride, dilation, np.zeros(out_shape), numbers, title, captions,
                  formula, (("data", "input"), *key, ("tap", tap), ("out", "output")))
    for i, j in scene.cells:
        taps = tuple(np.array(scene.taps(i, j)).T)
        values = grid[taps]
        if op == "max":
            scene.out[i, j] = np.nanmax(values)
        elif op == "avg":
            scene.out[i, j] = values.sum() / values.size
        else:
            scene.out[i, j] = (weights.ravel() * values).sum()
    if not numbers:
        scene.out[:] = 0.0
    return scene


# --------------------------------------------------------------------------- text


def trace(scene: Scene) -> str:
    """One tab-separated line per output cell, in the order of the frames: output row, output
    column, the window's top row and left column in the drawn (padded) input, and the value
    (empty without numbers)."""
    return "".join(f"{i}\t{j}\t{r}\t{c}\t{exact(scene.out[i, j]) if scene.numbers else ''}\n"
                   for i, j in scene.cells for r, c in [scene.corner(i, j)])


# --------------------------------------------------------------------------- drawing

# Okabe & Ito's colour-blind-safe colours, as pale fills under dark text; an opaque light card
# with a grey edge, so a frame reads the same on light and dark pages.
COLOURS = {
    "card": (255, 255, 255),
    "edge": (150, 150, 150),
    "line": (185, 185, 185),
    "ink": (30, 30, 30),
    "muted": (105, 105, 105),
    "data": (206, 231, 248),  # sky blue
    "pad": (226, 226, 226),
    "zero": (255, 255, 255),
    "tap": (247, 203, 120),  # orange
    "weight": (125, 50, 0),
    "window": (213, 94, 0),  # vermillion
    "out": (196, 234, 218),  # bluish green
    "input": (0, 114, 178),  # blue: the edge of the input inside its padding
    "empty": (255, 255, 255),
}
FILLS = ("card", "data", "pad", "tap", "out")
INKS = ("ink", "muted", "weight")
KIND_FILL = {PAD: "pad", DATA: "data", ZERO: "zero"}
MARGIN, GAP, LINE_GAP = 14, 36, 4
FONT_PX = {"title": 14, "text": 14, "small": 12, "cell": 12, "weight": 10}
MIN_TEXT_WIDTH = 520
# the explain formula's signs that the built-in font lacks, and what the frames write instead
_DRAWABLE = str.maketrans({"−": "-", "⌊": "floor(", "⌋": ")"})


def _palette() -> Image.Image:
    """One palette for every frame: the colours and the blends antialiased text makes between
    each ink and each fill (frames quantized to it stay exact, and GIFs stay small)."""
    colours = list(dict.fromkeys(COLOURS.values()))
    for ink in INKS:
        for fill in FILLS:
            a, b = np.array(COLOURS[ink]), np.array(COLOURS[fill])
            colours += [tuple(int(v) for v in np.round(b + (a - b) * t / 7)) for t in range(1, 7)]
    colours = list(dict.fromkeys(colours))
    flat = [v for c in colours for v in c] + [0] * (768 - 3 * len(colours))
    pal = Image.new("P", (1, 1))
    pal.putpalette(flat)
    return pal


@dataclass(frozen=True)
class _Layout:
    """Where everything of a frame goes, in pixels, and its text already wrapped."""

    fonts: dict
    cell: int  # side of a grid cell
    left: tuple[int, int]  # top-left (x, y) of the input grid
    right: tuple[int, int]  # of the output grid
    size: tuple[int, int]  # (width, height) of a frame
    text: tuple  # (lines, x, y, font role, ink) of the text every frame shows
    key: tuple  # the colour key's lines (:func:`_key_lines`) and their y
    working: tuple  # each output cell's working, as lines
    working_y: int

    def box(self, origin, r, c):
        x, y = origin[0] + c * self.cell, origin[1] + r * self.cell
        return x, y, x + self.cell, y + self.cell


def _font(role: str):
    return ImageFont.load_default(size=FONT_PX[role])


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels."""
    lines, line = [], ""
    for word in text.translate(_DRAWABLE).split(" "):
        candidate = f"{line} {word}" if line else word
        if line and font.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line]


def layout(scene: Scene) -> _Layout:
    """Cells as wide as the widest number; the input grid, then the output grid, under the
    title and their captions; each cell's working, the formula and the key below."""
    fonts = {role: _font(role) for role in FONT_PX}
    step = {role: px + LINE_GAP for role, px in FONT_PX.items()}
    cell = 22
    if scene.numbers:
        texts = [number(v) for v in (*scene.grid[np.isfinite(scene.grid)].ravel(), *scene.out.ravel())]
        wide = max(fonts["cell"].getlength(t) for t in texts)
        if scene.weights is not None:
            wide = max(wide, max(fonts["weight"].getlength(number(v)) for v in scene.weights.ravel()))
        cell = max(32, int(wide) + 10)
    (hp, wp), (oh, ow) = scene.grid.shape, scene.out.shape
    left_w = max(wp * cell, int(fonts["small"].getlength(scene.captions[0])))
    right_w = max(ow * cell, int(fonts["small"].getlength(scene.captions[1])))
    width = max(left_w + GAP + right_w, MIN_TEXT_WIDTH)
    title = _wrap(scene.title[0], fonts["title"], width)
    details = [line for t in scene.title[1:] for line in _wrap(t, fonts["small"], width)]
    y = MARGIN + len(title) * step["title"] + len(details) * step["small"] + 10
    captions = [([scene.captions[0]], MARGIN, y, "small", "muted"),
                ([scene.captions[1]], MARGIN + left_w + GAP, y, "small", "muted")]
    y += step["small"] + 2
    left, right = (MARGIN, y), (MARGIN + left_w + GAP, y)
    y += max(hp, oh) * cell + 12
    working = tuple(_wrap(scene.working(i, j), fonts["text"], width) for i, j in scene.cells)
    working_y = y
    y += max(len(w) for w in working) * step["text"] + 8
    formula = [line for t in scene.formula for line in _wrap(t, fonts["small"], width)]
    text = ((title, MARGIN, MARGIN, "title", "ink"),
            (details, MARGIN, MARGIN + len(title) * step["title"], "small", "ink"), *captions,
            (formula, MARGIN, y, "small", "muted"))
    y += len(formula) * step["small"] + 4
    key = _key_lines(scene.key, fonts["small"], width)
    return _Layout(fonts, cell, left, right, (width + 2 * MARGIN, y + len(key) * step["small"] + MARGIN), text,
                   (key, y), working, working_y)


def memory_estimate(scene: Scene, lay: _Layout) -> int:
    """Bytes an animation holds at its peak: every frame (a byte a pixel) and the GIF or APNG
    writer's copy of each until it writes; drawing takes a few RGB images more."""
    width, height = lay.size
    return width * height * (2 * (len(scene.cells) + 1) + 12)


def durations(scene: Scene, delay: int = DELAY_MS) -> list[int]:
    """Each frame's time in ms: ``delay`` for each output cell, HOLD times that for the last."""
    return [delay] * len(scene.cells) + [delay * HOLD]


def frames(scene: Scene, lay: _Layout):
    """The pictures, drawn one at a time: one for each output cell, row by row, then the whole
    output. Palette images, all with one palette."""
    fonts = lay.fonts
    done = Image.new("RGB", lay.size, COLOURS["card"])
    draw = ImageDraw.Draw(done)
    draw.rectangle((0, 0, lay.size[0] - 1, lay.size[1] - 1), outline=COLOURS["edge"])
    for lines, x, y, role, ink in lay.text:
        _lines(draw, lines, x, y, fonts[role], FONT_PX[role] + LINE_GAP, ink)
    _key(draw, *lay.key, fonts["small"], FONT_PX["small"] + LINE_GAP)
    for (r, c), kind in np.ndenumerate(scene.kinds):
        _input_cell(draw, scene, lay, r, c, KIND_FILL[kind])
    _input_edge(draw, scene, lay)
    for i, j in scene.cells:
        draw.rectangle(lay.box(lay.right, i, j), fill=COLOURS["empty"], outline=COLOURS["line"])
    palette = _palette()
    for k, (i, j) in enumerate(scene.cells):
        if k:  # the previous cell, done
            _output_cell(draw, scene, lay, *scene.cells[k - 1], "out")
        picture = done.copy()
        on = ImageDraw.Draw(picture)
        _window(on, scene, lay, i, j)
        _output_cell(on, scene, lay, i, j, "tap", outline="window")
        _lines(on, lay.working[k], MARGIN, lay.working_y, fonts["text"], FONT_PX["text"] + LINE_GAP, "ink")
        yield picture.quantize(palette=palette, dither=Image.Dither.NONE)
    _output_cell(draw, scene, lay, *scene.cells[-1], "out")
    yield done.quantize(palette=palette, dither=Image.Dither.NONE)


def render(scene: Scene, delay: int = DELAY_MS) -> tuple[list[Image.Image], list[int]]:
    """All the pictures of :func:`frames` and their :func:`durations`."""
    return list(frames(scene, layout(scene))), durations(scene, delay)


def _lines(draw, lines, x, y, font, step, ink) -> None:
    for n, line in enumerate(lines):
        draw.text((x, y + n * step), line, fill=COLOURS[ink], font=font)


SWATCH = 16  # a key entry: a square, then its meaning


def _key_lines(key, font, width: int) -> list[list[tuple[str, str, int]]]:
    """The key's entries as lines of (colour, meaning, x) that fit ``width``."""
    lines, x = [[]], 0
    for colour, meaning in key:
        span = SWATCH + int(font.getlength(meaning))
        if x and x + span > width:
            lines.append([])
            x = 0
        lines[-1].append((colour, meaning, MARGIN + x))
        x += span + 14
    return lines


def _key(draw, lines, y, font, step) -> None:
    for n, line in enumerate(lines):
        for colour, meaning, x in line:
            top = y + n * step
            draw.rectangle((x, top + 1, x + 11, top + 12), fill=COLOURS[colour], outline=COLOURS["edge"])
            draw.text((x + SWATCH, top), meaning, fill=COLOURS["muted"], font=font)


def _input_cell(draw, scene, lay, r, c, fill, weight=None) -> None:
    fonts = lay.fonts
    box = lay.box(lay.left, r, c)
    draw.rectangle(box, fill=COLOURS[fill], outline=COLOURS["line"])
    value = scene.grid[r, c]
    if not scene.numbers or not np.isfinite(value):
        return
    ink = "ink" if scene.kinds[r, c] == DATA else "muted"
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    draw.text((cx, cy - (4 if weight is not None else 0)), number(value), fill=COLOURS[ink], font=fonts["cell"],
              anchor="mm")
    if weight is not None:
        draw.text((box[2] - 3, box[3] - 2), number(weight), fill=COLOURS["weight"], font=fonts["weight"], anchor="rd")


def _input_edge(draw, scene, lay) -> None:
    """A line around the input (with its inserted zeros), apart from the padding."""
    rows, cols = np.nonzero(scene.kinds != PAD)
    if rows.size and (scene.kinds == PAD).any():
        x0, y0, _, _ = lay.box(lay.left, rows.min(), cols.min())
        _, _, x1, y1 = lay.box(lay.left, rows.max(), cols.max())
        draw.rectangle((x0, y0, x1, y1), outline=COLOURS["input"], width=2)


def _window(draw, scene, lay, i, j) -> None:
    """The window of output cell (i, j): its cells (with the weights), its outline, and the max."""
    taps = scene.taps(i, j)
    weights = scene.weights.ravel() if scene.weights is not None else [None] * len(taps)
    for (r, c), w in zip(taps, weights):
        _input_cell(draw, scene, lay, r, c, "tap", w if scene.numbers else None)
    if scene.op == "max":
        best = max((t for t in taps if scene.kinds[t] != PAD), key=lambda t: scene.grid[t])
        draw.rectangle(lay.box(lay.left, *best), outline=COLOURS["ink"], width=2)
    (r0, c0), (r1, c1) = taps[0], taps[-1]
    x0, y0, _, _ = lay.box(lay.left, r0, c0)
    _, _, x1, y1 = lay.box(lay.left, r1, c1)
    draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=COLOURS["window"], width=3)


def _output_cell(draw, scene, lay, i, j, fill, outline="line") -> None:
    box = lay.box(lay.right, i, j)
    if outline == "line":
        draw.rectangle(box, fill=COLOURS[fill], outline=COLOURS["line"])
    else:
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=COLOURS[fill],
                       outline=COLOURS[outline], width=3)
    if scene.numbers:
        draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), number(scene.out[i, j]), fill=COLOURS["ink"],
                  font=lay.fonts["cell"], anchor="mm")


def encode(scene: Scene, fmt: str = "GIF", delay: int = DELAY_MS, *, max_memory: int | None = None) -> bytes:
    """The animation as GIF or APNG (``fmt`` "PNG") bytes, looping; the same bytes on every run.
    Refused beyond ``max_memory`` (None: half of the available memory; kernelcli.compute.budget)."""
    from ..compute import budget

    if fmt not in FORMATS:
        raise UsageError(f"animations are written as GIF or PNG (APNG), not {fmt}")
    lay = layout(scene)
    width, height = lay.size
    budget.check(memory_estimate(scene, lay), max_memory,
                 f"an animation of {len(scene.cells) + 1} frames of {width}x{height} pixels")
    first, *others = frames(scene, lay)  # a list: the APNG writer reads it twice
    buf = io.BytesIO()
    # GIF: pixels that did not change are left transparent (the frames decode exactly as drawn)
    options = {"optimize": True} if fmt == "GIF" else {}
    first.save(buf, format=fmt, save_all=True, append_images=others, duration=durations(scene, delay), loop=0,
               **options)
    return buf.getvalue()
