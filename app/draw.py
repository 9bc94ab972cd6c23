"""Drawing helpers shared by the figures and charts: patch geometry on the display, colour
maps, captions, colour bars, and the figure cache.

Coordinates: patch ids are row-major positions on the g_h x g_w patch grid (as `gtp.trace`
reports them); the id -1 (a token made by `propagation="mean"`) has no place and is skipped.
Figures are cached by (run key, view) in one bounded, thread-safe cache (`app.limits`), so
moving a slider back and forth costs nothing the second time and sessions share drawings.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, TypeVar

import numpy as np
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
CITATION = "Xu et al., GTP-ViT, WACV 2024, arXiv:2311.03035"

PROPAGATED_NOW = (235, 50, 50)
RECEIVER = (255, 205, 0)
FADED = (0, 0, 0, 165)




@lru_cache(maxsize=None)
def font(size: int = 13) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=None)
def lut(name: str) -> np.ndarray:
    """A matplotlib colour map as a [256, 3] uint8 lookup table (built once)."""
    import matplotlib
    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def colourise(values: np.ndarray, cmap: str, lo: float, hi: float) -> np.ndarray:
    """Float array -> RGB uint8 via a colour map on [lo, hi]."""
    scaled = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    return lut(cmap)[(np.nan_to_num(scaled) * 255).astype(np.int64)]


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


def token_at(exp: Exploration, x: float, y: float) -> int:
    """The patch id under display pixel (x, y) (e.g. a click on a photo panel)."""
    gh, gw = grid(exp)
    cw, ch = cell_size(exp)
    col = min(max(int(x // cw), 0), gw - 1)
    row = min(max(int(y // ch), 0), gh - 1)
    return row * gw + col


def grid_image(exp: Exploration, rgb: np.ndarray) -> Image.Image:
    """A [g_h, g_w, 3] array of cell colours as a display-sized image."""
    return Image.fromarray(rgb.astype(np.uint8), "RGB").resize((DISPLAY, DISPLAY), Image.Resampling.NEAREST)


def label(img: Image.Image, text: str) -> Image.Image:
    """Write a caption in a dark box at the top left (in place) and return the image."""
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = draw.textbbox((6, 4), text, font=font(14))
    draw.rectangle((x0 - 4, y0 - 3, x1 + 4, y1 + 3), fill=(0, 0, 0))
    draw.text((6, 4), text, fill=(255, 255, 255), font=font(14))
    return img


def colour_bar(img: Image.Image, cmap: str, left: str, right: str, title: str) -> Image.Image:
    """Append a colour bar under an image: end labels beside the bar, the title under it."""
    bar_h, pad = 12, 5
    out = Image.new("RGB", (img.width, img.height + bar_h + 2 * pad + 16), (255, 255, 255))
    out.paste(img, (0, 0))
    bar = Image.fromarray(np.repeat(lut(cmap)[None], bar_h, axis=0), "RGB").resize((img.width // 2, bar_h))
    x, y = (img.width - bar.width) // 2, img.height + pad
    out.paste(bar, (x, y))
    draw = ImageDraw.Draw(out)
    mid = y + bar_h // 2
    draw.text((x - 5, mid), left, fill=(0, 0, 0), font=font(12), anchor="rm")
    draw.text((x + bar.width + 5, mid), right, fill=(0, 0, 0), font=font(12), anchor="lm")
    draw.text((img.width // 2, y + bar_h + 2), title, fill=(0, 0, 0), font=font(12), anchor="ma")
    return out


def placeholder(text: str, size: tuple[int, int] = (DISPLAY, 120)) -> Image.Image:
    """A plain panel that says why there is no figure."""
    img = Image.new("RGB", size, (245, 245, 245))
    ImageDraw.Draw(img).multiline_text((12, 12), text, fill=(60, 60, 60), font=font(14))
    return img


def propagated_before(exp: Exploration, block: int) -> list[int]:
    ids: list[int] = []
    for layer in exp.trace.layers[:block]:
        ids += [int(i) for i in layer.propagated[0].tolist() if i >= 0]
    return ids

def on_grid(exp, ids: list[int], vals: list[float]) -> np.ndarray:
    """Per-patch values [gh * gw] from (original patch id, value) pairs; NaN where none (or id -1)."""
    gh, gw = grid(exp)
    values = np.full(gh * gw, np.nan)
    for pid, v in zip(ids, vals):
        if pid >= 0:
            values[pid] = v
    return values


def heat_overlay(exp, values: np.ndarray, cmap: str, lo: float, hi: float, alpha: float) -> Image.Image:
    """The photo blended with a per-patch heat map of `values` (NaN patches dark grey)."""
    gh, gw = grid(exp)
    rgb = colourise(values, cmap, lo, hi)
    rgb[np.isnan(values)] = (20, 20, 20)
    return Image.blend(base(exp), grid_image(exp, rgb.reshape(gh, gw, 3)), alpha)


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot state: safe across threads
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_image(fig) -> Image.Image:
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy(), "RGB")

