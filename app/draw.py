"""The figure cache (every view of a run, drawn once) and the PIL helpers of the layer-walk
GIF (`app.charts`): patch geometry on the display and captions.

Coordinates: patch ids are row-major positions on the g_h x g_w patch grid (as `gtp.trace`
reports them); the id -1 (a token made by `propagation="mean"`) has no place and is skipped.
Figures are cached by (run key, view) in one bounded, thread-safe cache (`app.limits`), so
moving a slider back and forth costs nothing the second time and sessions share drawings.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, TypeVar

from PIL import Image, ImageDraw, ImageFont

from . import limits
from .caches import BoundedCache
from .results import Exploration

T = TypeVar("T")
FIGURES: BoundedCache = BoundedCache("figures", limits.FIGURE_CACHE_ENTRIES, limits.FIGURE_CACHE_BYTES)


def cached(exp: Exploration, view: tuple, make: Callable[[], T]) -> T:
    """The figure `view` of this run, drawn once (`make`) and then taken from the cache."""
    return FIGURES.get_or_make((exp.key,) + view, make)


DISPLAY = 448            # side of the photo panels, in pixels

PROPAGATED_NOW = (235, 50, 50)
RECEIVER = (255, 205, 0)
FADED = (0, 0, 0, 165)


@lru_cache(maxsize=None)
def font(size: int = 13) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def base(exp: Exploration) -> Image.Image:
    """The model's input crop at display size (cached; callers copy before drawing on it)."""
    return cached(exp, ("base",), lambda: exp.model_input.resize((DISPLAY, DISPLAY), Image.Resampling.BICUBIC))


def grid(exp: Exploration) -> tuple[int, int]:
    return tuple(exp.trace.grid_size)


def cell_size(exp: Exploration) -> tuple[float, float]:
    """(width, height) of one patch on the display."""
    gh, gw = grid(exp)
    return DISPLAY / gw, DISPLAY / gh


def box(exp: Exploration, pid: int) -> tuple[float, float, float, float]:
    gh, gw = grid(exp)
    cw, ch = cell_size(exp)
    r, c = divmod(int(pid), gw)
    return c * cw, r * ch, (c + 1) * cw - 1, (r + 1) * ch - 1


def centre(exp: Exploration, pid: int) -> tuple[float, float]:
    x0, y0, x1, y1 = box(exp, pid)
    return (x0 + x1) / 2, (y0 + y1) / 2


def label(img: Image.Image, text: str) -> Image.Image:
    """Write a caption in a dark box at the top left (in place) and return the image."""
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = draw.textbbox((6, 4), text, font=font(14))
    draw.rectangle((x0 - 4, y0 - 3, x1 + 4, y1 + 3), fill=(0, 0, 0))
    draw.text((6, 4), text, fill=(255, 255, 255), font=font(14))
    return img


def propagated_before(exp: Exploration, block: int) -> list[int]:
    ids: list[int] = []
    for layer in exp.trace.layers[:block]:
        ids += [int(i) for i in layer.propagated[0].tolist() if i >= 0]
    return ids
