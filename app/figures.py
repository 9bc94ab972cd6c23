"""Every picture the app shows, drawn from a finished `Exploration` (never by rerunning a model).

Photo overlays are drawn with PIL on the model's own input crop (cheap: a few milliseconds);
matplotlib (Agg, small figures) is used only for the two charts. Drawn figures are cached on
the exploration, so moving a slider back and forth costs nothing the second time.

Coordinates: patch ids are row-major positions on the g_h x g_w patch grid (as `gtp.trace`
reports them); the id -1 (a token made by `propagation="mean"`) has no place and is skipped.
"""
from __future__ import annotations

import io
from functools import lru_cache
from typing import Optional, Sequence

import networkx as nx
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .inference import Exploration

DISPLAY = 448            # side of the photo panels, in pixels
CITATION = "Xu et al., GTP-ViT, WACV 2024, arXiv:2311.03035"

PROPAGATED_NOW = (235, 50, 50)
RECEIVER = (255, 205, 0)
FADED = (0, 0, 0, 165)


# ----------------------------------------------------------------------------- helpers


@lru_cache(maxsize=None)
def _font(size: int = 13) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=None)
def _lut(name: str) -> np.ndarray:
    """A matplotlib colour map as a [256, 3] uint8 lookup table (built once)."""
    import matplotlib
    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def _colourise(values: np.ndarray, cmap: str, lo: float, hi: float) -> np.ndarray:
    """Float array -> RGB uint8 via a colour map on [lo, hi]."""
    scaled = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    return _lut(cmap)[(np.nan_to_num(scaled) * 255).astype(np.int64)]


def _base(exp: Exploration) -> Image.Image:
    """The model's input crop at display size (cached)."""
    if "base" not in exp.figures:
        exp.figures["base"] = exp.model_input.resize((DISPLAY, DISPLAY), Image.Resampling.BICUBIC)
    return exp.figures["base"]


def _grid(exp: Exploration) -> tuple[int, int]:
    return tuple(exp.trace.grid_size)


def cell_size(exp: Exploration) -> tuple[float, float]:
    """(width, height) of one patch on the display."""
    gh, gw = _grid(exp)
    return DISPLAY / gw, DISPLAY / gh


def _box(exp: Exploration, pid: int) -> tuple[float, float, float, float]:
    gh, gw = _grid(exp)
    cw, ch = cell_size(exp)
    r, c = divmod(int(pid), gw)
    return c * cw, r * ch, (c + 1) * cw - 1, (r + 1) * ch - 1


def _centre(exp: Exploration, pid: int) -> tuple[float, float]:
    x0, y0, x1, y1 = _box(exp, pid)
    return (x0 + x1) / 2, (y0 + y1) / 2


def token_at(exp: Exploration, x: float, y: float) -> int:
    """The patch id under display pixel (x, y) (e.g. a click on a photo panel)."""
    gh, gw = _grid(exp)
    cw, ch = cell_size(exp)
    col = min(max(int(x // cw), 0), gw - 1)
    row = min(max(int(y // ch), 0), gh - 1)
    return row * gw + col


def _grid_image(exp: Exploration, rgb: np.ndarray) -> Image.Image:
    """A [g_h, g_w, 3] array of cell colours as a display-sized image."""
    return Image.fromarray(rgb.astype(np.uint8), "RGB").resize((DISPLAY, DISPLAY), Image.Resampling.NEAREST)


def _label(img: Image.Image, text: str) -> Image.Image:
    """Write a caption in a dark box at the top left (in place) and return the image."""
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = draw.textbbox((6, 4), text, font=_font(14))
    draw.rectangle((x0 - 4, y0 - 3, x1 + 4, y1 + 3), fill=(0, 0, 0))
    draw.text((6, 4), text, fill=(255, 255, 255), font=_font(14))
    return img


def _colour_bar(img: Image.Image, cmap: str, left: str, right: str, title: str) -> Image.Image:
    """Append a colour bar under an image: end labels beside the bar, the title under it."""
    bar_h, pad = 12, 5
    out = Image.new("RGB", (img.width, img.height + bar_h + 2 * pad + 16), (255, 255, 255))
    out.paste(img, (0, 0))
    bar = Image.fromarray(np.repeat(_lut(cmap)[None], bar_h, axis=0), "RGB").resize((img.width // 2, bar_h))
    x, y = (img.width - bar.width) // 2, img.height + pad
    out.paste(bar, (x, y))
    draw = ImageDraw.Draw(out)
    mid = y + bar_h // 2
    draw.text((x - 5, mid), left, fill=(0, 0, 0), font=_font(12), anchor="rm")
    draw.text((x + bar.width + 5, mid), right, fill=(0, 0, 0), font=_font(12), anchor="lm")
    draw.text((img.width // 2, y + bar_h + 2), title, fill=(0, 0, 0), font=_font(12), anchor="ma")
    return out


def placeholder(text: str, size: tuple[int, int] = (DISPLAY, 120)) -> Image.Image:
    """A plain panel that says why there is no figure."""
    img = Image.new("RGB", size, (245, 245, 245))
    ImageDraw.Draw(img).multiline_text((12, 12), text, fill=(60, 60, 60), font=_font(14))
    return img


def _propagated_before(exp: Exploration, block: int) -> list[int]:
    ids: list[int] = []
    for layer in exp.trace.layers[:block]:
        ids += [int(i) for i in layer.propagated[0].tolist() if i >= 0]
    return ids


# ----------------------------------------------------------------------------- layer walk


def layer_frame(exp: Exploration, block: int) -> Image.Image:
    """Block `block` (0-based): the photo and its token grid; tokens propagated in this block
    in red, tokens propagated earlier faded, and a line from each propagated token to every
    token receiving from it, thicker and brighter for a larger weight alpha * W."""
    key = ("layer", block)
    if key in exp.figures:
        return exp.figures[key]
    layer = exp.trace.layers[block]
    img = _base(exp).convert("RGBA")
    over = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    gh, gw = _grid(exp)
    cw, ch = cell_size(exp)
    for c in range(1, gw):  # the token grid
        draw.line([(c * cw, 0), (c * cw, DISPLAY)], fill=(255, 255, 255, 55))
    for r in range(1, gh):
        draw.line([(0, r * ch), (DISPLAY, r * ch)], fill=(255, 255, 255, 55))
    for pid in _propagated_before(exp, block):
        draw.rectangle(_box(exp, pid), fill=FADED)
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
                ldraw.line([_centre(exp, s), _centre(exp, d)], fill=RECEIVER + (int(50 + 190 * share),),
                           width=max(1, round(1 + 2 * share)))
            img = Image.alpha_composite(img, lines)
    now = [int(i) for i in layer.propagated[0].tolist() if i >= 0]
    marks = Image.new("RGBA", img.size, (0, 0, 0, 0))  # the propagated tokens, over the lines
    mdraw = ImageDraw.Draw(marks)
    for pid in now:
        mdraw.rectangle(_box(exp, pid), fill=PROPAGATED_NOW + (150,), outline=(255, 255, 255, 255), width=2)
    img = Image.alpha_composite(img, marks)
    img = img.convert("RGB")
    _label(img, f"block {block + 1}/{exp.depth}: {len(now)} propagated, {layer.tokens_out} tokens left")
    exp.figures[key] = img
    return img


def size_overlay(exp: Exploration, block: int) -> Image.Image:
    """Token sizes after block `block`: each surviving token coloured by its size s (1 = one
    patch's worth); tokens already propagated are dark."""
    key = ("sizes", block)
    if key in exp.figures:
        return exp.figures[key]
    layer = exp.trace.layers[block]
    values = _on_grid(exp, layer.kept[0].tolist(), layer.sizes[0].tolist())
    s_max = max(1.0 + 1e-6, max(float(l.sizes[0].max()) for l in exp.trace.layers))
    img = _heat_overlay(exp, values, "viridis", 1.0, s_max, 0.6)
    _label(img, f"token sizes after block {block + 1}")
    img = _colour_bar(img, "viridis", "1.00", f"{s_max:.3f}", "token size s")
    exp.figures[key] = img
    return img


def _on_grid(exp, ids: list[int], vals: list[float]) -> np.ndarray:
    """Per-patch values [gh * gw] from (original patch id, value) pairs; NaN where none (or id -1)."""
    gh, gw = _grid(exp)
    values = np.full(gh * gw, np.nan)
    for pid, v in zip(ids, vals):
        if pid >= 0:
            values[pid] = v
    return values


def _heat_overlay(exp, values: np.ndarray, cmap: str, lo: float, hi: float, alpha: float) -> Image.Image:
    """The photo blended with a per-patch heat map of `values` (NaN patches dark grey)."""
    gh, gw = _grid(exp)
    rgb = _colourise(values, cmap, lo, hi)
    rgb[np.isnan(values)] = (20, 20, 20)
    return Image.blend(_base(exp), _grid_image(exp, rgb.reshape(gh, gw, 3)), alpha)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot state: safe across threads
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _to_image(fig) -> Image.Image:
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy(), "RGB")


def tokens_chart(exp: Exploration, block: int, width: int = 460, height: int = 230) -> Image.Image:
    """Bar chart of the tokens (prefix included) leaving each block, measured in this run;
    `block` in red. Drawn with PIL: it is redrawn on every slider move and must be cheap."""
    key = ("tokens", block)
    if key in exp.figures:
        return exp.figures[key]
    counts = exp.trace.tokens_per_block()
    start = exp.trace.layers[0].tokens_in
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 46, width - 10, 26, height - 34
    draw.text((width // 2, 4), "Tokens remaining per block (measured, this photo)", fill=(0, 0, 0),
              font=_font(13), anchor="ma")
    y_max = start * 1.1

    def y_of(v: float) -> float:
        return bottom - (bottom - top) * v / y_max

    for tick in (0, start // 2, start):  # y axis with three ticks
        y = y_of(tick)
        draw.line([(left - 4, y), (right, y)], fill=(225, 225, 225))
        draw.text((left - 6, y), str(tick), fill=(60, 60, 60), font=_font(11), anchor="rm")
    draw.line([(left, y_of(start)), (right, y_of(start))], fill=(150, 150, 150), width=1)
    slot = (right - left) / len(counts)
    for i, c in enumerate(counts):
        x0 = left + i * slot + slot * 0.15
        colour = (214, 39, 40) if i == block else (31, 119, 180)
        draw.rectangle((x0, y_of(c), x0 + slot * 0.7, bottom), fill=colour)
        draw.text((x0 + slot * 0.35, bottom + 3), str(i + 1), fill=(60, 60, 60), font=_font(11), anchor="ma")
        if i == block:
            draw.text((x0 + slot * 0.35, y_of(c) - 2), str(c), fill=colour, font=_font(11), anchor="md")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0))
    draw.text(((left + right) // 2, height - 4), f"block (tokens entering block 1: {start})", fill=(0, 0, 0),
              font=_font(12), anchor="md")
    exp.figures[key] = img
    return img


def animation_gif(exp: Exploration, path: str, side: int = 336, ms_per_frame: int = 800) -> str:
    """The layer walk as an animated GIF at `path` (one frame per block); returns the path."""
    frames = [layer_frame(exp, b).resize((side, side), Image.Resampling.BILINEAR) for b in range(exp.depth)]
    frames = [f.quantize(colors=128, method=Image.Quantize.FASTOCTREE) for f in frames]  # fast
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0, optimize=False)
    return path


# ----------------------------------------------------------------------------- graphs

GRAPH_KINDS = ("spatial", "semantic", "spatial + semantic")


def token_graph(exp: Exploration, kind: str) -> nx.DiGraph:
    """The token graph recorded before block 1, as networkx: spatial (8 grid neighbours),
    semantic (each token -> its M most similar), or both. Edges point i -> j."""
    key = ("nx", kind)
    if key in exp.figures:
        return exp.figures[key]
    rec = exp.trace
    graph = nx.DiGraph()
    graph.add_nodes_from(range(rec.num_patches))
    if kind in ("spatial", "spatial + semantic") and rec.spatial_edges is not None:
        graph.add_edges_from(zip(rec.spatial_edges.src.tolist(), rec.spatial_edges.dst.tolist()), kind="spatial")
    if kind in ("semantic", "spatial + semantic") and rec.semantic_edges:
        e = rec.semantic_edges[0]
        graph.add_edges_from(zip(e.src.tolist(), e.dst.tolist()), kind="semantic")
    exp.figures[key] = graph
    return graph


EDGE_COLOURS = {"spatial": (80, 200, 255), "semantic": (255, 120, 220)}


def graph_figure(exp: Exploration, kind: str, token: Optional[int]) -> Image.Image:
    """The chosen token graph over the photo; with a token picked, its edges bold and its
    neighbours outlined."""
    if kind not in GRAPH_KINDS:
        kind = GRAPH_KINDS[0]
    graph = token_graph(exp, kind)
    base_key = ("graph", kind)
    if base_key not in exp.figures:
        img = _base(exp).convert("RGBA")
        lines = Image.new("RGBA", img.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(lines)
        seen = set()
        for i, j, data in graph.edges(data=True):
            if (j, i) in seen and data["kind"] == "spatial":  # a spatial edge is drawn once
                continue
            seen.add((i, j))
            alpha = 90 if data["kind"] == "spatial" else 45  # long semantic edges would hide the photo
            draw.line([_centre(exp, i), _centre(exp, j)], fill=EDGE_COLOURS[data["kind"]] + (alpha,), width=1)
        exp.figures[base_key] = Image.alpha_composite(img, lines).convert("RGB")
    img = exp.figures[base_key].copy()
    if token is not None and 0 <= token < exp.trace.num_patches:
        draw = ImageDraw.Draw(img)
        for _, j, data in graph.out_edges(token, data=True):  # dark halo, then the colour
            draw.line([_centre(exp, token), _centre(exp, j)], fill=(0, 0, 0), width=5)
            draw.line([_centre(exp, token), _centre(exp, j)], fill=EDGE_COLOURS[data["kind"]], width=3)
        for j in graph.successors(token):
            draw.rectangle(_box(exp, j), outline=(0, 0, 0), width=4)
            draw.rectangle(_box(exp, j), outline=EDGE_COLOURS[graph.edges[token, j]["kind"]], width=2)
        draw.rectangle(_box(exp, token), outline=(0, 0, 0), width=5)
        draw.rectangle(_box(exp, token), outline=(255, 255, 255), width=3)
    return _label(img, f"{kind} graph" + (f", token {token}" if token is not None else ""))


def neighbours_of(exp: Exploration, kind: str, token: int) -> dict[str, list[int]]:
    """The token's neighbours in the chosen graph, by edge kind."""
    graph = token_graph(exp, kind)
    out: dict[str, list[int]] = {"spatial": [], "semantic": []}
    for _, j, data in graph.out_edges(token, data=True):
        out[data["kind"]].append(int(j))
    return out


def similarity_figure(exp: Exploration, token: int) -> Image.Image:
    """Cosine similarity of the picked token's embedding to every patch (the semantic graph's
    basis, recorded before block 1), as a heat map over the photo."""
    key = ("similarity", token)
    if key in exp.figures:
        return exp.figures[key]
    gh, gw = _grid(exp)
    sim = exp.trace.similarity[0, token].float().cpu().numpy().astype(np.float64)
    others = np.delete(sim, token)
    lo, hi = float(others.min()), float(others.max())
    rgb = _colourise(sim, "magma", lo, hi).reshape(gh, gw, 3)
    img = Image.blend(_base(exp), _grid_image(exp, rgb), 0.7)
    ImageDraw.Draw(img).rectangle(_box(exp, token), outline=(0, 255, 120), width=3)
    _label(img, f"cosine similarity to token {token}")
    img = _colour_bar(img, "magma", f"{lo:.2f}", f"{hi:.2f}", "cosine similarity")
    exp.figures[key] = img
    return img


# ----------------------------------------------------------------------------- attention


def attention_figures(exp: Exploration, block: int, head: int) -> tuple[Image.Image, Image.Image, dict]:
    """Head `head`'s attention map in block `block` before and after sparsification (log colour
    scale, entries set to zero in black) and the share of entries zeroed / mass removed."""
    layer = exp.trace.layers[block]
    stats = {
        "block": block + 1, "head": head, "tokens": layer.tokens_in,
        "zeroed_fraction": float(layer.zeroed_fraction[0, head]),
        "mass_removed": float(layer.mass_removed[0, head]),
        "zeroed_fraction_all_heads": float(layer.zeroed_fraction[0].mean()),
        "mass_removed_all_heads": float(layer.mass_removed[0].mean()),
    }
    key = ("attention", block, head)
    if key not in exp.figures:
        if layer.attn_before is None:
            none = placeholder("attention maps were not recorded")
            exp.figures[key] = (none, none)
        else:
            maps = []
            before = layer.attn_before[0, head].float().cpu().numpy()
            after = layer.attn_after[0, head].float().cpu().numpy()
            lo = -5.0  # log10 colour scale from 1e-5 to 1
            for a, title in ((before, "before sparsification"), (after, "after sparsification")):
                rgb = _colourise(np.log10(np.maximum(a, 1e-12)), "viridis", lo, 0.0)
                rgb[a == 0] = (0, 0, 0)
                n = a.shape[0]
                side = n * max(1, round(400 / n))  # whole pixels per entry
                img = Image.fromarray(rgb, "RGB").resize((side, side), Image.Resampling.NEAREST)
                _label(img, f"block {block + 1}, head {head}: {title}")
                maps.append(_colour_bar(img, "viridis", "1e-5", "1", "attention (log scale); black = zeroed"))
            exp.figures[key] = tuple(maps)
    before_img, after_img = exp.figures[key]
    return before_img, after_img, stats


def cls_attention_figure(exp: Exploration, block: int, head: int) -> Image.Image:
    """How much the CLS token attends to each patch in this block and head (after
    sparsification), over the photo; patches already propagated are dark."""
    key = ("cls", block, head)
    if key in exp.figures:
        return exp.figures[key]
    rec, layer = exp.trace, exp.trace.layers[block]
    if rec.num_prefix == 0:
        img = placeholder("This model has no CLS token.")
    elif layer.attn_after is None:
        img = placeholder("attention maps were not recorded")
    else:
        row = layer.attn_after[0, head, 0, rec.num_prefix:].float().cpu().numpy()
        values = _on_grid(exp, layer.candidates[0].tolist(), row.tolist())
        hi = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        img = _heat_overlay(exp, values, "inferno", 0.0, hi, 0.65)
        _label(img, f"CLS attention, block {block + 1}, head {head}")
        img = _colour_bar(img, "inferno", "0", f"{hi:.3g}", "attention from CLS")
    exp.figures[key] = img
    return img


# ----------------------------------------------------------------------------- compare

REMOVED_CMAP = "plasma"   # block in which a token left: dark (block 1) to yellow (last block)


def _block_colour(block: int, depth: int) -> tuple[int, int, int]:
    t = block / max(depth - 1, 1)
    return tuple(int(v) for v in _lut(REMOVED_CMAP)[int(round(t * 255))])


def _block_legend(img: Image.Image, depth: int, block: int) -> Image.Image:
    """Append one numbered swatch per block under an image; blocks after `block` are hatched out."""
    sw, pad = min(28, (img.width - 20) // depth), 5
    out = Image.new("RGB", (img.width, img.height + sw + 2 * pad + 16), (255, 255, 255))
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    x0, y = (img.width - sw * depth) // 2, img.height + pad
    for b in range(depth):
        box = (x0 + b * sw, y, x0 + (b + 1) * sw - 2, y + sw - 2)
        colour = _block_colour(b, depth)
        draw.rectangle(box, fill=colour if b <= block else (235, 235, 235),
                       outline=(0, 0, 0) if b == block else None, width=2)
        text = (0, 0, 0) if sum(colour) > 380 or b > block else (255, 255, 255)
        draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), str(b + 1), fill=text, font=_font(11), anchor="mm")
    draw.text((img.width // 2, y + sw + 1), "block in which the token left (white outline: this block)",
              fill=(0, 0, 0), font=_font(12), anchor="ma")
    return out


def removed_figure(exp: Exploration, method: str, block: int) -> Image.Image:
    """Which tokens the method removed up to block `block` (0-based) on the photo, each
    patch shaded by the block in which its token left (the colour bar under the photo); the
    tokens removed in block `block` itself are outlined in white. Drawn from the cached
    comparison (`app.inference.compare_methods`)."""
    comp = exp.comparison
    key = ("removed", method, block)
    if key in comp.figures:
        return comp.figures[key]
    result = comp.methods[method]
    img = _base(exp).convert("RGBA")
    over = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    for b, ids in enumerate(result.removed[: block + 1]):
        colour = _block_colour(b, comp.depth) + (185,)
        for pid in ids:
            if pid >= 0:
                draw.rectangle(_box(exp, pid), fill=colour)
    for pid in result.removed[block]:
        if pid >= 0:
            draw.rectangle(_box(exp, pid), outline=(255, 255, 255, 255), width=2)
    img = Image.alpha_composite(img, over).convert("RGB")
    gone = sum(len(ids) for ids in result.removed[: block + 1])
    _label(img, f"{result.label}: {gone} tokens removed by block {block + 1}/{comp.depth}")
    img = _block_legend(img, comp.depth, block)
    comp.figures[key] = img
    return img


# ----------------------------------------------------------------------------- trade-off


def tradeoff_chart(published: dict, current: Optional[dict] = None,
                   sweep: Sequence[dict] = ()) -> Image.Image:
    """ImageNet top-1 vs GMACs on DeiT-B as PUBLISHED (GTP, ToMe, EViT, ATS), the current
    configuration's GMACs measured now (vertical lines), and the user's own sweep points."""
    fig = _figure(7.2, 4.4)
    ax = fig.add_subplot()
    styles = {"GTP": ("tab:red", "o"), "ToMe": ("tab:blue", "s"), "EViT": ("tab:green", "^"), "ATS": ("tab:purple", "D")}
    for method, (colour, marker) in styles.items():
        pts = sorted((r["gmacs"], r["top1"]) for r in published["tradeoff_deit_base"] if r["method"] == method)
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=colour, marker=marker, linewidth=1.5, markersize=5, label=f"{method} (published)")
    for base in published.get("baselines", []):
        if base["model"] == "deit_base_patch16_224":
            ax.plot([base["gmacs"]], [base["top1"]], marker="*", color="black", markersize=11, linestyle="none",
                    label="DeiT-B, no reduction (published)")
    if current is not None:
        ax.axvline(current["gtp"], color="tab:orange", linewidth=2,
                   label=f"GTP now: {current['gtp']:.2f} GMACs ({current['model']}, measured)")
        ax.axvline(current["full"], color="tab:orange", linewidth=1, linestyle=":",
                   label=f"full model now: {current['full']:.2f} GMACs (measured)")
    top1 = [r for r in sweep if r.get("top1") is not None]
    agreement = [r for r in sweep if r.get("top1") is None and r.get("agreement") is not None]
    markers = "xP+1*v"
    for i, method in enumerate(sorted({r.get("method", "sweep") for r in top1})):
        pts = [r for r in top1 if r.get("method", "sweep") == method]
        ax.scatter([r["gmacs"] for r in pts], [r["top1"] for r in pts], color="black", marker=markers[i % 6],
                   s=45, zorder=5, label=f"your measurements: {method} top-1")
    if agreement:  # a different quantity: its own axis
        ax2 = ax.twinx()
        for i, method in enumerate(sorted({r.get("method", "sweep") for r in agreement})):
            pts = [r for r in agreement if r.get("method", "sweep") == method]
            ax2.scatter([r["gmacs"] for r in pts], [r["agreement"] for r in pts], color="tab:gray",
                        marker=markers[i % 6], s=45, label=f"your measurements: {method} agreement")
        ax2.set_ylabel("your measurements: top-1 agreement with the full model (%)", fontsize=8)
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("ImageNet-1K top-1 (%)")
    ax.set_title(f"DeiT-B, no fine-tuning: published results ({CITATION})", fontsize=8)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if agreement:  # one legend for both axes
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=7, loc="lower right")
    img = _to_image(fig)
    return img


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding (for tests and downloads)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
