"""The layer walk as an animated GIF (the Learn tab's download): one PIL frame per block, drawn
on the model's own input crop. Every view of the page is an interactive plotly figure
(`app.views`); PIL stays here because a GIF is a picture file.
"""
from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from gtp.facts import COLOURS

from ..core.results import Exploration
from .base import cached

DISPLAY = 448            # side of the photo panels, in pixels

PROPAGATED_NOW = COLOURS["propagated"]
RECEIVER = COLOURS["edges"]
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



def layer_frame(exp: Exploration, block: int) -> Image.Image:
    """Block `block` (0-based): the photo and its token grid; tokens propagated in this block
    in red, tokens propagated earlier faded, and a line from each propagated token to every
    token receiving from it, thicker and brighter for a larger weight alpha * W."""
    return cached(exp, ("layer", block), lambda: _draw_layer_frame(exp, block))


def _draw_layer_frame(exp: Exploration, block: int) -> Image.Image:
    layer = exp.trace.layers[block]
    img = base(exp).convert("RGBA")
    over = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    gh, gw = grid(exp)
    cw, ch = cell_size(exp)
    for c in range(1, gw):  # the token grid
        draw.line([(c * cw, 0), (c * cw, DISPLAY)], fill=(255, 255, 255, 55))
    for r in range(1, gh):
        draw.line([(0, r * ch), (DISPLAY, r * ch)], fill=(255, 255, 255, 55))
    for pid in propagated_before(exp, block):
        draw.rectangle(box(exp, pid), fill=FADED)
    img = Image.alpha_composite(img, over)
    if layer.edges:  # the propagation lines, weakest first so the strongest lie on top
        edges = layer.edges[0]
        src, dst, w = edges.src.tolist(), edges.dst.tolist(), edges.weight.tolist()
        if w:
            lines = Image.new("RGBA", img.size, (0, 0, 0, 0))
            ldraw = ImageDraw.Draw(lines)
            w_max = max(w)
            for s, d, wt in sorted(zip(src, dst, w), key=lambda e: e[2]):
                share = wt / w_max if w_max > 0 else 0.0
                ldraw.line([centre(exp, s), centre(exp, d)], fill=RECEIVER + (int(50 + 190 * share),),
                           width=max(1, round(1 + 2 * share)))
            img = Image.alpha_composite(img, lines)
    now = [int(i) for i in layer.propagated[0].tolist() if i >= 0]
    marks = Image.new("RGBA", img.size, (0, 0, 0, 0))  # the propagated tokens, over the lines
    mdraw = ImageDraw.Draw(marks)
    for pid in now:
        mdraw.rectangle(box(exp, pid), fill=PROPAGATED_NOW + (150,), outline=(255, 255, 255, 255), width=2)
    img = Image.alpha_composite(img, marks)
    img = img.convert("RGB")
    label(img, f"block {block + 1}/{exp.depth}: {len(now)} propagated, {layer.tokens_out} tokens left")
    return img


def animation_gif(exp: Exploration, path: str, side: int = 336, ms_per_frame: int = 800) -> str:
    """The layer walk as an animated GIF at `path` (one frame per block); returns the path."""
    frames = [layer_frame(exp, b).resize((side, side), Image.Resampling.BILINEAR) for b in range(exp.depth)]
    frames = [f.quantize(colors=128, method=Image.Quantize.FASTOCTREE) for f in frames]  # fast
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0, optimize=False)
    return path
