"""Attention maps before and after sparsification, and the CLS token's attention over the photo
(SPEC.md section 2).

The maps are recorded with `gtp.trace(model, attention=True)`: `attn_before` / `attn_after`
[B, H, n, n] per block, n = prefix tokens + the patch tokens entering that block. Sparsification
zeroes entries without renormalising, so an entry was zeroed where it is 0 after and was not 0
before.

One head's two maps are n x n values each (197 x 197 at block 1 of a 16-pixel model), the
largest data of any view, so they travel once: the map after sparsification carries every
value (a zeroed entry as minus its value before, which its colour scale draws black and its
hover shows in parentheses), and the map before is a picture in the same colours (a PNG of a
few kB; its values are in the other map's hover).
"""
from __future__ import annotations

import base64
import io
from typing import Optional

import numpy as np
from gradio.components.plot import PlotData
from PIL import Image
from plotly.colors import sample_colorscale

import gtp

from ..core.results import Exploration
from .base import (CENTRED, HIGHLIGHT_COLOUR, Figure, PhotoLike, Unavailable, figure, highlight_mark, numpy, patch_name,
                   photo_axes, photo_of, propagated_block, typed, view)

DECADES = 3.0            # colours run over the top three decades below the map's largest entry (log scale)
LEVELS = 24              # colours of the map before sparsification, a picture: as many as the scale shows
PREFIX_NAMES = ("CLS", "distillation token")


def _map(t, image: int, head: int) -> np.ndarray:
    return t[image, head].detach().float().cpu().numpy()


def token_labels(trace: gtp.Trace, block: int, image: int = 0) -> list[str]:
    """Names of the n tokens entering `block`: prefix tokens, then patches by original id
    (unique, as category axes need)."""
    p0 = trace.num_prefix
    prefix = [PREFIX_NAMES[i] if i < len(PREFIX_NAMES) and p0 <= 2 else f"prefix token {i}" for i in range(p0)]
    cand = numpy(trace.layers[block].candidates, image).tolist()
    grid = trace.grid_size
    return prefix + [patch_name(p, grid) if p >= 0 else f"average token #{k}" for k, p in enumerate(cand)]


def _viridis(steps: int) -> list[str]:
    return sample_colorscale("Viridis", list(np.linspace(0.0, 1.0, steps)))


def log_levels(values: np.ndarray, zmax: float, levels: int = LEVELS) -> np.ndarray:
    """Colour levels 1..levels of positive values on a log scale over the DECADES below zmax;
    0 for values <= 0."""
    top = np.log10(max(zmax, 1e-12))
    with np.errstate(divide="ignore"):
        share = np.clip((np.log10(np.maximum(values, 1e-30)) - (top - DECADES)) / DECADES, 0.0, 1.0)
    return np.where(values > 0, 1 + np.round(share * (levels - 1)), 0).astype(np.uint8)


def map_picture(values: np.ndarray, zmax: float) -> str:
    """The map as a PNG data URI, one pixel per entry in the colours of `signed_colourscale`'s
    positive half (LEVELS of them; black for 0): a picture, a few kB."""
    img = Image.fromarray(log_levels(values, zmax), "P")
    rgb = [(0, 0, 0)] + [tuple(int(round(float(v))) for v in c[4:-1].split(",")) for c in _viridis(LEVELS)]
    img.putpalette([v for c in rgb for v in c])
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def signed_colourscale(zmax: float, steps: int = LEVELS) -> list:
    """For z in [-zmax, zmax]: black for z <= 0 (a zeroed entry is stored as minus its value), and
    for z > 0 colours that follow log10(z) over the DECADES below zmax (Viridis)."""
    top = np.log10(max(zmax, 1e-12))
    logs = np.linspace(top - DECADES, top, steps)
    scale = [[0.0, "rgb(0,0,0)"], [0.5, "rgb(0,0,0)"]]
    for lg, colour in zip(logs, _viridis(steps)):
        pos = 0.5 + 0.5 * float(10 ** lg / 10 ** top)
        if pos > scale[-1][0]:
            scale.append([pos, colour])
    scale[-1][0] = 1.0
    return scale


def _highlight(names: list[str], k: int, token: int, along: str) -> list[dict]:
    """Token k of the map (patch `token`) marked on its diagonal entry, with its row (as a query)
    or its column (as a key) outlined, on the map after sparsification."""
    ends = [names[0], names[-1]]
    x, y = ([names[k]] * 2, ends) if along == "column" else (ends, [names[k]] * 2)
    line = dict(type="scatter", x=x, y=y, xaxis="x2", yaxis="y2", mode="lines", hoverinfo="skip", showlegend=False,
                name=f"{along} of patch {token}", meta={"role": "highlight-line", "token": token},
                line=dict(width=1.5, color=HIGHLIGHT_COLOUR))
    return [line, highlight_mark(names[k], names[k], token, xaxis="x2", yaxis="y2", size=10)]


def attention_figure(trace: gtp.Trace, block: int, head: int, image: int = 0, height: int = 520,
                     highlight: Optional[int] = None, along: str = "column") -> Figure:
    """Head `head`'s attention in block `block` (0-based), before and after sparsification, side
    by side. Hover (right map): query token, key token, the value after sparsification, and for a
    zeroed entry its value before, in parentheses. Unavailable when the trace has no maps.
    highlight: a patch id entering the block, marked on the diagonal of the map after with its
    `along` ("column": as a key; "row": as a query) outlined."""
    layer = trace.layers[block]
    if layer.attn_before is None:
        raise Unavailable("attention maps were not recorded: trace with gtp.trace(model, attention=True)")
    if not 0 <= head < layer.attn_before.shape[1]:
        raise ValueError(f"head must be from 0 to {layer.attn_before.shape[1] - 1}; got {head}")
    before, after = _map(layer.attn_before, image, head), _map(layer.attn_after, image, head)
    zeroed = (after == 0) & (before != 0)
    zmax = float(before.max())
    names = token_labels(trace, block, image)
    share, mass = float(layer.zeroed_fraction[image, head]), float(layer.mass_removed[image, head])
    hidden = dict(showticklabels=False, ticks="", showgrid=False, zeroline=False)
    signed = dict(type="heatmap", x=names, y=names, z=typed(np.where(zeroed, -before, after)), xaxis="x2", yaxis="y2",
                  zmin=-zmax, zmax=zmax, colorscale=signed_colourscale(zmax), showscale=False, name="after",
                  meta={"zeroed": int(zeroed.sum())},
                  hovertemplate=("query: %{y}<br>key: %{x}<br>attention after sparsification %{z:(.4g}<br>"
                                 "(in parentheses, black: zeroed by sparsification; the value is the one "
                                 "before)<extra></extra>"))
    n = len(names)
    layout = dict(
        images=[dict(source=map_picture(before, zmax), xref="x", yref="y", x=-0.5, y=-0.5, sizex=n, sizey=n,
                     xanchor="left", yanchor="top", sizing="stretch", layer="below")],
        xaxis=dict(domain=[0, 0.48], range=[-0.5, n - 0.5], constrain="domain", **hidden),
        yaxis=dict(range=[n - 0.5, -0.5], scaleanchor="x", constrain="domain", **hidden),
        xaxis2=dict(domain=[0.52, 1], anchor="y2", constrain="domain", **hidden),
        yaxis2=dict(autorange="reversed", anchor="x2", scaleanchor="x2", constrain="domain", **hidden),
        annotations=[
            dict(text="before<br>sparsification", xref="paper", yref="paper", x=0.24, y=1.0, xanchor="center",
                 yanchor="bottom", showarrow=False, font=dict(size=13)),
            dict(text=f"after: {100 * share:.1f} % zeroed,<br>{100 * mass:.1f} % of the mass", xref="paper",
                 yref="paper", x=0.76, y=1.0, xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=13)),
            dict(text=f"block {block + 1}, head {head}: rows are queries, columns keys;<br>colour: log scale from "
                      f"{zmax / 10 ** DECADES:.2g} to {zmax:.3g}, black = 0", xref="paper", yref="paper", x=0,
                 y=-0.02, xanchor="left", yanchor="top", showarrow=False, font=dict(size=11))])
    marked = []
    if highlight is not None:
        ids = numpy(layer.candidates, image).tolist()
        if highlight not in ids:
            raise ValueError(f"patch {highlight} does not enter block {block + 1}")
        marked = _highlight(names, trace.num_prefix + ids.index(highlight), int(highlight), along)
    fig = figure([signed, *marked], layout, height)
    fig["layout"]["margin"].update(t=50, b=44)   # two short lines above and below: a phone's width
    return fig


def cls_attention_figure(photo: PhotoLike, trace: gtp.Trace, block: int, head: int, image: int = 0,
                         height: int = 480, highlight: Optional[int] = None) -> Figure:
    """How much the CLS token attends to each patch in block `block` and head `head` (after
    sparsification), over the photo; patches whose tokens already left are blank and say so.
    Unavailable for a model without a CLS token or a trace without maps. highlight: a patch id marked."""
    layer = trace.layers[block]
    if trace.num_prefix == 0:
        raise Unavailable("this model has no CLS token")
    if layer.attn_after is None:
        raise Unavailable("attention maps were not recorded: trace with gtp.trace(model, attention=True)")
    gh, gw = grid = trace.grid_size
    row = _map(layer.attn_after, image, head)[0, trace.num_prefix:]
    values = np.full(gh * gw, np.nan)
    for pid, v in zip(numpy(layer.candidates, image).tolist(), row.tolist()):
        if pid >= 0:
            values[pid] = v
    left = propagated_block(trace, image)
    gone = [f"<br>no token here: propagated in block {left[p] + 1}" if p in left and np.isnan(values[p]) else ""
            for p in range(gh * gw)]
    heat = dict(type="heatmap", z=typed(values.reshape(gh, gw)), colorscale="Inferno", opacity=0.65, zmin=0.0,
                customdata=typed(np.arange(gh * gw).reshape(gh, gw), "u2"),
                text=np.array(gone, dtype=object).reshape(gh, gw).tolist(), hoverongaps=True,
                colorbar=dict(title=dict(text="from CLS"), thickness=12),
                hovertemplate=("patch %{customdata} (row %{y}, col %{x})%{text}<br>"
                               f"CLS attention (block {block + 1}, head {head}): %{{z:.4g}}<extra></extra>"))
    layout: dict = {}
    photo_axes(layout, photo, grid, origin=CENTRED)
    marked = [] if highlight is None else [highlight_mark(highlight % gw, highlight // gw, highlight)]
    return figure([heat, *marked], layout, height)


def attention(exp: Exploration, block: int, head: int, highlight: Optional[int] = None,
              along: str = "column") -> PlotData:
    """Head `head`'s map in block `block` (0-based) before and after sparsification."""
    return view(exp, ("attention", block, head) + (() if highlight is None else (highlight, along)),
                lambda: attention_figure(exp.trace, block, head, highlight=highlight, along=along))


def cls_attention(exp: Exploration, block: int, head: int, highlight: Optional[int] = None) -> PlotData:
    return view(exp, ("cls", block, head) + (() if highlight is None else (highlight,)),
                lambda: cls_attention_figure(photo_of(exp), exp.trace, block, head, highlight=highlight))


def attention_stats(exp: Exploration, block: int, head: int) -> dict:
    """The share of entries zeroed and of attention mass removed in this block (this head and
    all heads), as measured by the library in this run."""
    layer = exp.trace.layers[block]
    return {"block": block + 1, "head": head, "tokens": layer.tokens_in,
            "zeroed_fraction": float(layer.zeroed_fraction[0, head]),
            "mass_removed": float(layer.mass_removed[0, head]),
            "zeroed_fraction_all_heads": float(layer.zeroed_fraction[0].mean()),
            "mass_removed_all_heads": float(layer.mass_removed[0].mean())}
