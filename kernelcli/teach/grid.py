"""Contact sheets: one image through many kernels, labelled; and kernels drawn as heatmaps.

Pure Pillow/numpy: cells arrive as already-filtered Rasters, this module only lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

from ..errors import UsageError
from ..io.images import Raster, from_pil, to_pil

LABEL_FONT_PX = 16
MAX_SIDE = {"JPEG": 65_500, "WEBP": 16_383}  # the largest side each encoder writes
POSITIVE = (178, 24, 43)  # diverging palette (ColorBrewer RdBu ends): weights > 0
NEGATIVE = (33, 102, 172)  # weights < 0
ZERO = (247, 247, 247)


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of a grid of equal slots, each with an optional band above the image."""

    rows: int
    cols: int
    slot_w: int
    slot_h: int
    band_h: int  # label (and heatmap) band above each slot's image; 0 without labels
    gap: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole sheet."""
        width = self.cols * self.slot_w + (self.cols + 1) * self.gap
        height = self.rows * (self.band_h + self.slot_h) + (self.rows + 1) * self.gap
        return width, height

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """Top-left (x, y) of the slot's band; the image area starts ``band_h`` below."""
        x = self.gap + col * (self.slot_w + self.gap)
        y = self.gap + row * (self.band_h + self.slot_h + self.gap)
        return x, y


@dataclass
class Cell:
    label: str
    raster: Raster
    kernel: object = None  # a Kernel, drawn as a heatmap under the label with show_kernels


def parse_color(text: str) -> tuple[int, int, int]:
    try:
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise UsageError(f"unknown colour {text!r}; use a name (white) or #rrggbb") from None


def fit(raster: Raster, long_side: int | None) -> Raster:
    """Downscale (never up) so the long side is at most ``long_side``, with Lanczos.

    Colour and alpha are resized together by Pillow (premultiplied) for 8-bit images;
    other depths resize each plane in float.
    """
    h, w = raster.size
    if long_side is None or max(h, w) <= long_side:
        return raster
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if raster.maxval == 255.0 and raster.pixels.shape[0] in (1, 3):
        small = from_pil(to_pil(raster).resize(size, Image.Resampling.LANCZOS))
        return Raster(small.pixels, small.alpha, 255.0, raster.format)

    def resize(plane):
        return np.asarray(Image.fromarray(plane.astype(np.float32)).resize(size, Image.Resampling.LANCZOS))

    pixels = np.stack([resize(p) for p in raster.pixels])
    if raster.maxval is not None:  # back to the pixel type: rounded, inside the range
        pixels = np.clip(np.round(pixels), 0, raster.maxval).astype(raster.pixels.dtype)
    alpha = None if raster.alpha is None else resize(raster.alpha)
    return Raster(pixels, alpha, raster.maxval, raster.format)


def to_rgb8(raster: Raster, background) -> Image.Image:
    """A mapped Raster as 8-bit RGB for display: gray expanded, 16-bit scaled, alpha composited."""
    maxval = raster.maxval or 255.0
    pixels = raster.pixels * (255.0 / maxval)
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    rgb = pixels.transpose(1, 2, 0)
    if raster.alpha is not None:
        a = (raster.alpha / maxval)[..., None]
        rgb = rgb * a + np.asarray(background, float) * (1 - a)
    return Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8))


def label_font(px: int = LABEL_FONT_PX):
    return ImageFont.load_default(size=px)


def heatmap(weights, cell_px: int = 48, values: bool = True) -> Image.Image:
    """Kernel weights as a picture: one square per weight, red above zero, blue below, white
    at zero (intensity by |w| / max|w|), the value written in each square when ``values``."""
    w = np.asarray(weights, dtype=np.float64)
    kh, kw = w.shape
    peak = float(np.abs(w).max()) or 1.0
    img = Image.new("RGB", (kw * cell_px + 1, kh * cell_px + 1), (120, 120, 120))
    draw = ImageDraw.Draw(img)
    font = label_font(max(8, min(16, cell_px // 3)))
    decimals = next((d for d in range(4) if np.allclose(np.round(w, d), w, atol=1e-12)), 3)
    for r in range(kh):
        for c in range(kw):
            v = w[r, c]
            t = min(1.0, abs(v) / peak)
            end = POSITIVE if v > 0 else NEGATIVE
            colour = tuple(round(z + (e - z) * t) for z, e in zip(ZERO, end))
            box = (c * cell_px + 1, r * cell_px + 1, (c + 1) * cell_px - 1, (r + 1) * cell_px - 1)
            draw.rectangle(box, fill=colour)
            if values and cell_px >= 20:
                text = f"{v:.{decimals}f}"
                ink = (255, 255, 255) if t > 0.55 else (20, 20, 20)
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                draw.text((cx, cy), text, fill=ink, font=font, anchor="mm")
    return img


def _matrices(kernel) -> list[list[np.ndarray]]:
    """The weight matrices of any kind of kernel, in rows: one for a plain kernel, its parts
    side by side when combined, output × input channels when multi-channel."""
    if kernel.kind == "combined":
        return [[p.weights for p in kernel.parts]]
    if kernel.kind == "multi-channel":
        return [list(row) for row in kernel.full_weights]
    return [[kernel.weights]]


def kernel_picture(kernel, cell_px: int = 48, values: bool = True) -> Image.Image:
    """Heatmaps of all of a kernel's matrices, laid out as :func:`_matrices` says."""
    rows = [[heatmap(m, cell_px, values) for m in row] for row in _matrices(kernel)]
    gap = max(4, cell_px // 4)
    width = max(sum(im.width for im in row) + gap * (len(row) - 1) for row in rows)
    height = sum(max(im.height for im in row) for row in rows) + gap * (len(rows) - 1)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for row in rows:
        x = 0
        for im in row:
            sheet.paste(im, (x, y))
            x += im.width + gap
        y += max(im.height for im in row) + gap
    return sheet


def compose(grid: list[list[Cell | None]], *, labels: bool = True, show_kernels: bool = False,
            gap: int = 8, background=(255, 255, 255), fmt: str | None = None,
            max_memory: int | None = None) -> Image.Image:
    """Lay out rows of cells (None leaves a slot empty) on one RGB sheet, images centred in
    equal slots sized to the largest cell, each labelled in a band above its image. The
    sheet's size is checked before it is drawn: against what ``fmt`` can encode and the
    memory budget (kernelcli.compute.budget)."""
    cells = [c for row in grid for c in row if c is not None]
    slot_w = max(c.raster.size[1] for c in cells)
    slot_h = max(c.raster.size[0] for c in cells)
    font = label_font(LABEL_FONT_PX)
    label_h = LABEL_FONT_PX + 8 if labels else 0
    heat_px = heat_cell = 0
    kernels = [c.kernel for c in cells if c.kernel is not None] if show_kernels else []
    if kernels:  # one square size for every heatmap of the sheet, as large as the slots allow
        widest = max(sum(m.shape[1] + 1 for m in row) for k in kernels for row in _matrices(k))
        heat_cell = max(6, min(24, (slot_w - 2) // widest))
        heat_px = max(kernel_picture(k, heat_cell).height for k in kernels) + 6
    layout = Layout(len(grid), max(len(r) for r in grid), slot_w, slot_h, label_h + heat_px, gap)
    check_sheet(layout.size, fmt, max_memory)
    sheet = Image.new("RGB", layout.size, background)
    draw = ImageDraw.Draw(sheet)
    ink = (0, 0, 0) if sum(background) > 382 else (255, 255, 255)
    for r, row in enumerate(grid):
        for c, cell in enumerate(row):
            if cell is None:
                continue
            x, y = layout.origin(r, c)
            if labels:
                draw.text((x + slot_w / 2, y + label_h / 2), _fit_text(cell.label, font, slot_w),
                          fill=ink, font=font, anchor="mm")
            if heat_px and cell.kernel is not None:
                hm = kernel_picture(cell.kernel, heat_cell)
                sheet.paste(hm, (x + (slot_w - hm.width) // 2, y + label_h))
            img = to_rgb8(cell.raster, background)
            sheet.paste(img, (x + (slot_w - img.width) // 2, y + layout.band_h + (slot_h - img.height) // 2))
    return sheet


def check_sheet(size: tuple[int, int], fmt: str | None = None, max_memory: int | None = None) -> None:
    """Refuse a sheet that ``fmt`` cannot encode or that would not fit the memory budget."""
    from ..compute import budget

    width, height = size
    limit = MAX_SIDE.get(fmt)
    if limit and max(width, height) > limit:
        raise UsageError(f"the sheet would be {width}x{height} pixels; {fmt} holds at most {limit} a side "
                         "(write .png, or use a smaller --cell or --gap)")
    budget.check(budget.image_estimate(width, height), max_memory, f"a {width}x{height} sheet")


def _fit_text(text: str, font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def arrange(rows: list[list[Cell]], *, transpose: bool = False, cols: int | None = None) -> list[list[Cell | None]]:
    """Rows of cells (one row per input) → the grid to draw: transposed, or one row wrapped
    into ``cols`` columns."""
    if cols is not None:
        if len(rows) != 1:
            raise UsageError("--cols wraps the cells of a single input; give one input")
        flat = rows[0]
        return [flat[i:i + cols] + [None] * max(0, cols - len(flat[i:i + cols])) for i in range(0, len(flat), cols)]
    if transpose:
        return [list(col) for col in zip(*rows)]
    return rows
