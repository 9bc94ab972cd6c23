"""The photo panels, drawn from a finished `Exploration` (never by rerunning a model).

Overlays are drawn with PIL on the model's own input crop (a few milliseconds each) and
cached by (run key, view) in `app.draw.FIGURES`; the charts are in `app.charts`.
"""
from __future__ import annotations

from typing import Optional

import networkx as nx
import numpy as np
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


def size_overlay(exp: Exploration, block: int) -> Image.Image:
    """Token sizes after block `block`: each surviving token coloured by its size s (1 = one
    patch's worth); tokens already propagated are dark."""
    return D.cached(exp, ("sizes", block), lambda: _draw_size_overlay(exp, block))


def _draw_size_overlay(exp: Exploration, block: int) -> Image.Image:
    layer = exp.trace.layers[block]
    values = D.on_grid(exp, layer.kept[0].tolist(), layer.sizes[0].tolist())
    s_max = max(1.0 + 1e-6, max(float(l.sizes[0].max()) for l in exp.trace.layers))
    img = D.heat_overlay(exp, values, "viridis", 1.0, s_max, 0.6)
    D.label(img, f"token sizes after block {block + 1}")
    img = D.colour_bar(img, "viridis", "1.00", f"{s_max:.3f}", "token size s")
    return img


GRAPH_KINDS = ("spatial", "semantic", "spatial + semantic")


def token_graph(exp: Exploration, kind: str) -> nx.DiGraph:
    """The token graph recorded before block 1, as networkx: spatial (8 grid neighbours),
    semantic (each token -> its M most similar), or both. Edges point i -> j."""
    return D.cached(exp, ("nx", kind), lambda: _draw_token_graph(exp, kind))


def _draw_token_graph(exp: Exploration, kind: str) -> nx.DiGraph:
    rec = exp.trace
    graph = nx.DiGraph()
    graph.add_nodes_from(range(rec.num_patches))
    if kind in ("spatial", "spatial + semantic") and rec.spatial_edges is not None:
        graph.add_edges_from(zip(rec.spatial_edges.src.tolist(), rec.spatial_edges.dst.tolist()), kind="spatial")
    if kind in ("semantic", "spatial + semantic") and rec.semantic_edges:
        e = rec.semantic_edges[0]
        graph.add_edges_from(zip(e.src.tolist(), e.dst.tolist()), kind="semantic")
    return graph


EDGE_COLOURS = {"spatial": (80, 200, 255), "semantic": (255, 120, 220)}


def graph_figure(exp: Exploration, kind: str, token: Optional[int]) -> Image.Image:
    """The chosen token graph over the photo; with a token picked, its edges bold and its
    neighbours outlined."""
    if kind not in GRAPH_KINDS:
        kind = GRAPH_KINDS[0]
    graph = token_graph(exp, kind)
    img = D.cached(exp, ("graph", kind), lambda: _draw_graph_base(exp, graph)).copy()
    if token is not None and 0 <= token < exp.trace.num_patches:
        draw = ImageDraw.Draw(img)
        for _, j, data in graph.out_edges(token, data=True):  # dark halo, then the colour
            draw.line([D.centre(exp, token), D.centre(exp, j)], fill=(0, 0, 0), width=5)
            draw.line([D.centre(exp, token), D.centre(exp, j)], fill=EDGE_COLOURS[data["kind"]], width=3)
        for j in graph.successors(token):
            draw.rectangle(D.box(exp, j), outline=(0, 0, 0), width=4)
            draw.rectangle(D.box(exp, j), outline=EDGE_COLOURS[graph.edges[token, j]["kind"]], width=2)
        draw.rectangle(D.box(exp, token), outline=(0, 0, 0), width=5)
        draw.rectangle(D.box(exp, token), outline=(255, 255, 255), width=3)
    return D.label(img, f"{kind} graph" + (f", token {token}" if token is not None else ""))


def _draw_graph_base(exp: Exploration, graph: nx.DiGraph) -> Image.Image:
    """Every edge of the graph over the photo (thin, translucent)."""
    img = D.base(exp).convert("RGBA")
    lines = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(lines)
    seen = set()
    for i, j, data in graph.edges(data=True):
        if (j, i) in seen and data["kind"] == "spatial":  # a spatial edge is drawn once
            continue
        seen.add((i, j))
        alpha = 90 if data["kind"] == "spatial" else 45  # long semantic edges would hide the photo
        draw.line([D.centre(exp, i), D.centre(exp, j)], fill=EDGE_COLOURS[data["kind"]] + (alpha,), width=1)
    return Image.alpha_composite(img, lines).convert("RGB")


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
    return D.cached(exp, ("similarity", token), lambda: _draw_similarity_figure(exp, token))


def _draw_similarity_figure(exp: Exploration, token: int) -> Image.Image:
    gh, gw = D.grid(exp)
    sim = exp.trace.similarity[0, token].float().cpu().numpy().astype(np.float64)
    others = np.delete(sim, token)
    lo, hi = float(others.min()), float(others.max())
    rgb = D.colourise(sim, "magma", lo, hi).reshape(gh, gw, 3)
    img = Image.blend(D.base(exp), D.grid_image(exp, rgb), 0.7)
    ImageDraw.Draw(img).rectangle(D.box(exp, token), outline=(0, 255, 120), width=3)
    D.label(img, f"cosine similarity to token {token}")
    img = D.colour_bar(img, "magma", f"{lo:.2f}", f"{hi:.2f}", "cosine similarity")
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
    before_img, after_img = D.cached(exp, ("attention", block, head), lambda: _draw_attention(exp, block, head))
    return before_img, after_img, stats


def _draw_attention(exp: Exploration, block: int, head: int) -> tuple[Image.Image, Image.Image]:
    layer = exp.trace.layers[block]
    if layer.attn_before is None:
        none = D.placeholder("attention maps were not recorded")
        return none, none
    maps = []
    before = layer.attn_before[0, head].float().cpu().numpy()
    after = layer.attn_after[0, head].float().cpu().numpy()
    lo = -5.0  # log10 colour scale from 1e-5 to 1
    for a, title in ((before, "before sparsification"), (after, "after sparsification")):
        rgb = D.colourise(np.log10(np.maximum(a, 1e-12)), "viridis", lo, 0.0)
        rgb[a == 0] = (0, 0, 0)
        n = a.shape[0]
        side = n * max(1, round(400 / n))  # whole pixels per entry
        img = Image.fromarray(rgb, "RGB").resize((side, side), Image.Resampling.NEAREST)
        D.label(img, f"block {block + 1}, head {head}: {title}")
        maps.append(D.colour_bar(img, "viridis", "1e-5", "1", "attention (log scale); black = zeroed"))
    return maps[0], maps[1]


def cls_attention_figure(exp: Exploration, block: int, head: int) -> Image.Image:
    """How much the CLS token attends to each patch in this block and head (after
    sparsification), over the photo; patches already propagated are dark."""
    return D.cached(exp, ("cls", block, head), lambda: _draw_cls_attention_figure(exp, block, head))


def _draw_cls_attention_figure(exp: Exploration, block: int, head: int) -> Image.Image:
    rec, layer = exp.trace, exp.trace.layers[block]
    if rec.num_prefix == 0:
        img = D.placeholder("This model has no CLS token.")
    elif layer.attn_after is None:
        img = D.placeholder("attention maps were not recorded")
    else:
        row = layer.attn_after[0, head, 0, rec.num_prefix:].float().cpu().numpy()
        values = D.on_grid(exp, layer.candidates[0].tolist(), row.tolist())
        hi = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        img = D.heat_overlay(exp, values, "inferno", 0.0, hi, 0.65)
        D.label(img, f"CLS attention, block {block + 1}, head {head}")
        img = D.colour_bar(img, "inferno", "0", f"{hi:.3g}", "attention from CLS")
    return img


# ----------------------------------------------------------------------------- compare

REMOVED_CMAP = "plasma"   # block in which a token left: dark (block 1) to yellow (last block)


def _block_colour(block: int, depth: int) -> tuple[int, int, int]:
    t = block / max(depth - 1, 1)
    return tuple(int(v) for v in D.lut(REMOVED_CMAP)[int(round(t * 255))])


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
        draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), str(b + 1), fill=text, font=D.font(11), anchor="mm")
    draw.text((img.width // 2, y + sw + 1), "block in which the token left (white outline: this block)",
              fill=(0, 0, 0), font=D.font(12), anchor="ma")
    return out


def removed_figure(exp: Exploration, method: str, block: int) -> Image.Image:
    """Which tokens the method removed up to block `block` (0-based) on the photo, each
    patch shaded by the block in which its token left (the colour bar under the photo); the
    tokens removed in block `block` itself are outlined in white. Drawn from the cached
    comparison (made with the run)."""
    return D.cached(exp, ("removed", method, block), lambda: _draw_removed(exp, method, block))


def _draw_removed(exp: Exploration, method: str, block: int) -> Image.Image:
    comp = exp.comparison
    result = comp.method(method)
    img = D.base(exp).convert("RGBA")
    over = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    for b, ids in enumerate(result.removed[: block + 1]):
        colour = _block_colour(b, comp.depth) + (185,)
        for pid in ids:
            if pid >= 0:
                draw.rectangle(D.box(exp, pid), fill=colour)
    for pid in result.removed[block]:
        if pid >= 0:
            draw.rectangle(D.box(exp, pid), outline=(255, 255, 255, 255), width=2)
    img = Image.alpha_composite(img, over).convert("RGB")
    gone = sum(len(ids) for ids in result.removed[: block + 1])
    D.label(img, f"{result.label}: {gone} tokens removed by block {block + 1}/{comp.depth}")
    img = _block_legend(img, comp.depth, block)
    return img
