"""The layer walk as an animated GIF (the Learn tab's download): one PIL frame per block, drawn
on the model's own input crop. Every view of the page is an interactive plotly figure
(`app.figures`); PIL stays here because a GIF is a picture file.
"""
from __future__ import annotations

from PIL import Image, ImageDraw

from . import draw as D
from .results import Exploration


def layer_frame(exp: Exploration, block: int) -> Image.Image:
    """Block `block` (0-based): the photo and its token grid; tokens propagated in this block
    in red, tokens propagated earlier faded, and a line from each propagated token to every
    token receiving from it, thicker and brighter for a larger weight alpha * W."""
    return D.cached(exp, ("layer", block), lambda: _draw_layer_frame(exp, block))


def _draw_layer_frame(exp: Exploration, block: int) -> Image.Image:
    layer = exp.trace.layers[block]
    img = D.base(exp).convert("RGBA")
    over = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    gh, gw = D.grid(exp)
    cw, ch = D.cell_size(exp)
    for c in range(1, gw):  # the token grid
        draw.line([(c * cw, 0), (c * cw, D.DISPLAY)], fill=(255, 255, 255, 55))
    for r in range(1, gh):
        draw.line([(0, r * ch), (D.DISPLAY, r * ch)], fill=(255, 255, 255, 55))
    for pid in D.propagated_before(exp, block):
        draw.rectangle(D.box(exp, pid), fill=D.FADED)
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
                ldraw.line([D.centre(exp, s), D.centre(exp, d)], fill=D.RECEIVER + (int(50 + 190 * share),),
                           width=max(1, round(1 + 2 * share)))
            img = Image.alpha_composite(img, lines)
    now = [int(i) for i in layer.propagated[0].tolist() if i >= 0]
    marks = Image.new("RGBA", img.size, (0, 0, 0, 0))  # the propagated tokens, over the lines
    mdraw = ImageDraw.Draw(marks)
    for pid in now:
        mdraw.rectangle(D.box(exp, pid), fill=D.PROPAGATED_NOW + (150,), outline=(255, 255, 255, 255), width=2)
    img = Image.alpha_composite(img, marks)
    img = img.convert("RGB")
    D.label(img, f"block {block + 1}/{exp.depth}: {len(now)} propagated, {layer.tokens_out} tokens left")
    return img


def animation_gif(exp: Exploration, path: str, side: int = 336, ms_per_frame: int = 800) -> str:
    """The layer walk as an animated GIF at `path` (one frame per block); returns the path."""
    frames = [layer_frame(exp, b).resize((side, side), Image.Resampling.BILINEAR) for b in range(exp.depth)]
    frames = [f.quantize(colors=128, method=Image.Quantize.FASTOCTREE) for f in frames]  # fast
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0, optimize=False)
    return path
