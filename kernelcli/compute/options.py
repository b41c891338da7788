"""How kernels are applied, as plain data: geometry (borders, padding, stride, dilation),
the border index arithmetic, and value options. No torch here (numpy only inside the border
functions), so the command line checks every option before torch or numpy is imported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import UsageError
from ..kernels.kernel import DEFAULT_MAP, MAP_MODES

FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: 8-bit images and float32 arrays compute in float32
MAX_GEOMETRY = 1 << 24  # largest stride, dilation, padding, factor or window: beyond it no image fits in memory
BORDERS = ("replicate", "reflect", "symmetric", "circular", "zeros", "constant")
CONSTANT_BORDERS = ("zeros", "constant")  # outside the image: geometry.border_value (convolve.gather)
COLOR_MODES = ("channels", "gray", "luma", "sum")


@dataclass(frozen=True)
class Geometry:
    """How a kernel is laid over the image: borders, padding, stride, dilation.

    ``padding`` is ``"same"`` (output keeps the input size at stride 1), ``"valid"`` (no
    padding) or a number of pixels added on every side. ``border_value`` is used by the
    ``constant`` border, in the image's own units (0–255 for 8-bit).
    """

    border: str = "replicate"
    border_value: float = 0.0
    padding: str | int = "same"
    stride: int = 1
    dilation: int = 1

    def __post_init__(self):
        if self.border not in BORDERS:
            raise UsageError(f"unknown border {self.border!r}; choose one of {', '.join(BORDERS)}")
        if not (self.padding in ("same", "valid") or (isinstance(self.padding, int) and self.padding >= 0)):
            raise UsageError(f"padding must be 'same', 'valid' or a number >= 0, not {self.padding!r}")
        if self.stride < 1 or self.dilation < 1:
            raise UsageError("stride and dilation must be at least 1")
        for name, value in (("stride", self.stride), ("dilation", self.dilation), ("padding", self.padding)):
            check_geometry(name, value)
        check_finite(self.border_value, "border value")
        if abs(self.border_value) > FLOAT32_MAX:  # torch cannot pad a float32 image with it
            raise UsageError(f"border value {self.border_value:g} is beyond what float32 arithmetic holds "
                             f"(±{FLOAT32_MAX:.4g})")


def parse_border(text: str) -> tuple[str, float]:
    """``replicate`` → ("replicate", 0); ``constant:128`` → ("constant", 128.0); ``zeros`` → constant 0."""
    name, _, value = text.partition(":")
    if name == "zeros" and not value:
        return "zeros", 0.0
    if name == "constant":
        try:
            return "constant", check_finite(float(value), "border value") if value else 0.0
        except ValueError:
            raise UsageError(f"border {text!r}: write constant:V with a number V") from None
    if name in BORDERS and not value:
        return name, 0.0
    raise UsageError(f"unknown border {text!r}; choose one of {', '.join(BORDERS[:-1])} or constant:V")


def parse_padding(text: str) -> str | int:
    if text in ("same", "valid"):
        return text
    if re.fullmatch(r"\d+", text):
        return int(text)
    raise UsageError(f"{text!r}: use same, valid or a number of pixels")


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")  # the words of --device; cuda:N is cuda with an index


def parse_device(text: str | None) -> str | None:
    """A device's name as written (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), lower-cased;
    refused when it is none of these. Whether it is available is the engine's question
    (kernelcli.compute.convolve.resolve_device, which needs torch); the form is checked here, first."""
    if text is None:
        return None
    name = text.strip().lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(?::\d+)?", name):
        raise UsageError(f"unknown device {text!r}; use {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")
    return name


def pad_amounts(shape: tuple[int, int], anchor: tuple[int, int], geo: Geometry) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixels added around the image for a kernel of ``shape``."""
    (kh, kw), (ar, ac), d = shape, anchor, geo.dilation
    if geo.padding == "same":
        return d * ar, d * (kh - 1 - ar), d * ac, d * (kw - 1 - ac)
    p = 0 if geo.padding == "valid" else geo.padding
    return p, p, p, p


def border_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index for each position of a padded axis of length n + before + after.

    Works for any pad size, also pads larger than the image (unlike torch's reflect).
    """
    import numpy as np  # here, not above: the command line imports this module and must start fast

    i = np.arange(-before, n + after)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    if mode == "circular":
        return np.mod(i, n)
    if mode == "symmetric":  # c b a | a b c d | d c b
        m = np.mod(i, 2 * n)
        return np.where(m >= n, 2 * n - 1 - m, m)
    if mode == "reflect":  # d c b | a b c d | c b a
        if n == 1:
            return np.zeros_like(i)
        m = np.mod(i, 2 * n - 2)
        return np.where(m >= n, 2 * n - 2 - m, m)
    raise ValueError(mode)


def padded_axis(n: int, before: int, after: int, geo: Geometry) -> tuple[np.ndarray, np.ndarray | None]:
    """(source index, outside) for each position of an axis of length n padded by ``before``
    and ``after``: the border mode's index (:func:`border_index`), and for the constant
    borders the positions outside the image, which take ``geo.border_value`` (None for others)."""
    import numpy as np

    if geo.border not in CONSTANT_BORDERS:
        return border_index(n, before, after, geo.border), None
    i = np.arange(-before, n + after)
    return np.clip(i, 0, n - 1), (i < 0) | (i >= n)


def check_geometry(name: str, value) -> None:
    """Refuse a stride, dilation, padding, factor or window over MAX_GEOMETRY pixels."""
    if isinstance(value, int) and value > MAX_GEOMETRY:
        raise UsageError(f"{name} {value} is over the limit of {MAX_GEOMETRY}")


def check_finite(value: float, what: str) -> float:
    """Refuse NaN and ±inf for a numeric option (they would silently give a black image)."""
    if not math.isfinite(value):
        raise UsageError(f"{what} {value!r} is not a finite number")
    return value


def parse_bias(text: str) -> float:
    """``0.5`` or ``50%`` → 0.5 (a fraction of full scale)."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise UsageError(f"{text!r}: write a fraction such as 0.5 or a percentage such as 50%") from None
    return check_finite(value, "bias")


def check_mode(mode: str) -> str:
    if mode not in MAP_MODES:
        raise UsageError(f"unknown map {mode!r}; choose one of {', '.join(MAP_MODES)}")
    return mode


@dataclass(frozen=True)
class Options:
    """How kernels are applied. ``map=None`` uses each kernel's default (else clip);
    ``bias=None`` uses each kernel's bias. ``raw`` skips mapping: float results out."""

    geometry: Geometry = field(default_factory=Geometry)
    convolve: bool = False
    color: str = "channels"
    map: str | None = None
    scale: float = 1.0
    bias: float | None = None
    raw: bool = False
    device: str | None = None
    stats: bool = True  # compute each step's Stats (the fast engine skips them when False)
    max_memory: int | None = None  # bytes a job may use (kernelcli.compute.budget); None: half of the available memory

    def __post_init__(self):
        if self.color not in COLOR_MODES:
            raise UsageError(f"unknown color mode {self.color!r}; choose one of {', '.join(COLOR_MODES)}")
        if self.map is not None:
            check_mode(self.map)
        check_finite(self.scale, "scale")
        if self.bias is not None:
            check_finite(self.bias, "bias")

    def map_for(self, kernel) -> str:
        """The value mapping of one step: --map, else the kernel's own, else DEFAULT_MAP (clip)."""
        return self.map or kernel.map or DEFAULT_MAP

    def bias_for(self, kernel) -> float:
        """The bias of one step: --bias, else the kernel's own."""
        return kernel.bias if self.bias is None else self.bias
