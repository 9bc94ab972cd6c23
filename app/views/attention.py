"""Attention maps before and after sparsification, and the CLS token's attention over the photo.

The maps are recorded with `gtp.trace(model, attention=True)`: `attn_before` / `attn_after`
[B, H, n, n] per block, n = prefix tokens + the patch tokens entering that block. Sparsification
zeroes entries without renormalising, so an entry was zeroed where it is 0 after and was not
0 before.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from gradio.components.plot import PlotData

import gtp

from ..core.results import Exploration
from .base import PhotoLike, numpy, patch_name, photo_axes, propagated_block, theme, view

DECADES = 3.0            # colours run over the top three decades below the map's largest entry (log scale)
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


def log_colourscale(zmax: float, steps: int = 24) -> list:
    """A colour scale on the RAW values 0..zmax whose colours follow log10(value) over the
    DECADES below zmax (Viridis), with exact 0 black: hover shows the real value while the
    colours still separate small entries by order of magnitude."""
    top = np.log10(max(zmax, 1e-12))
    logs = np.linspace(top - DECADES, top, steps)
    colours = sample_colorscale("Viridis", list(np.clip((logs - logs[0]) / DECADES, 0.0, 1.0)))
    scale = [[0.0, "rgb(0,0,0)"]]
    for lg, colour in zip(logs, colours):
        pos = float(10 ** lg / 10 ** top)
        if pos > scale[-1][0]:
            scale.append([pos, colour])
    scale[-1][0] = 1.0
    return scale


def attention_figure(trace: gtp.Trace, block: int, head: int, image: int = 0, height: int = 520) -> go.Figure:
    """Head `head`'s attention in block `block` (0-based), before and after sparsification,
    side by side. Hover: query token, key token, the value, and whether it was zeroed.
    ValueError when the trace has no maps (trace with attention=True)."""
    layer = trace.layers[block]
    if layer.attn_before is None:
        raise ValueError("attention maps were not recorded: trace with gtp.trace(model, attention=True)")
    if not 0 <= head < layer.attn_before.shape[1]:
        raise ValueError(f"head must be from 0 to {layer.attn_before.shape[1] - 1}; got {head}")
    before, after = _map(layer.attn_before, image, head), _map(layer.attn_after, image, head)
    zeroed = (after == 0) & (before != 0)
    names = token_labels(trace, block, image)
    scale = log_colourscale(float(before.max()))
    share, mass = float(layer.zeroed_fraction[image, head]), float(layer.mass_removed[image, head])
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.04, subplot_titles=(
        "before sparsification", f"after: {100 * share:.1f} % zeroed, {100 * mass:.1f} % of the mass"))
    # Two maps of float32 (sent as binary arrays): an entry was zeroed where it is 0 after and
    # not before, which the hover of the right map says; a third "zeroed" map would add ~200 kB.
    common = dict(x=names, y=names, colorscale=scale, zmin=0.0, zmax=float(before.max()), showscale=False)
    query_key = "query: %{y}<br>key: %{x}<br>"
    fig.add_trace(go.Heatmap(z=before.astype(np.float32), name="before", **common,
                             hovertemplate=query_key + "attention before sparsification %{z:.4g}<extra></extra>"),
                  1, 1)
    fig.add_trace(go.Heatmap(z=after.astype(np.float32), name="after", **common, meta={"zeroed": int(zeroed.sum())},
                             hovertemplate=query_key + "attention after sparsification %{z:.4g}<br>"
                                                       "(0, black: zeroed by sparsification)<extra></extra>"), 1, 2)
    theme(fig, height)
    hidden = dict(showticklabels=False, ticks="", showgrid=False, zeroline=False)
    fig.update_xaxes(**hidden)
    fig.update_yaxes(autorange="reversed", **hidden)
    fig.update_yaxes(matches="y", row=1, col=2)
    fig.update_xaxes(matches="x", row=1, col=2)
    fig.add_annotation(text=f"block {block + 1}, head {head}: rows are queries, columns keys; colour: log scale "
                            f"from {before.max() / 10 ** DECADES:.2g} to {before.max():.3g}, black = 0", xref="paper", yref="paper", x=0, y=-0.02,
                       xanchor="left", yanchor="top", showarrow=False, font_size=11)
    fig.update_layout(margin=dict(t=40, b=30))
    return fig


def cls_attention_figure(photo: PhotoLike, trace: gtp.Trace, block: int, head: int, image: int = 0,
                         height: int = 480) -> go.Figure:
    """How much the CLS token attends to each patch in block `block` and head `head` (after
    sparsification), over the photo; patches whose tokens already left are blank and say so.
    ValueError for a model without a CLS token or a trace without maps."""
    layer = trace.layers[block]
    if trace.num_prefix == 0:
        raise ValueError("this model has no CLS token")
    if layer.attn_after is None:
        raise ValueError("attention maps were not recorded: trace with gtp.trace(model, attention=True)")
    grid = trace.grid_size
    gh, gw = grid
    row = _map(layer.attn_after, image, head)[0, trace.num_prefix:]
    values = np.full(gh * gw, np.nan)
    for pid, v in zip(numpy(layer.candidates, image).tolist(), row.tolist()):
        if pid >= 0:
            values[pid] = v
    left = propagated_block(trace, image)
    text = [patch_name(p, grid) + ("" if not np.isnan(values[p]) else
                                   f"<br>no token here: propagated in block {left.get(p, -1) + 1}")
            for p in range(gh * gw)]
    fig = go.Figure(go.Heatmap(
        z=values.reshape(gh, gw).astype(np.float32), x0=0.5, dx=1, y0=0.5, dy=1, colorscale="Inferno", opacity=0.65,
        zmin=0.0, text=np.array(text, dtype=object).reshape(gh, gw).tolist(), hoverongaps=True,
        colorbar=dict(title_text="from CLS", thickness=12),
        hovertemplate=f"%{{text}}<br>CLS attention (block {block + 1}, head {head}): %{{z:.4g}}<extra></extra>"))
    photo_axes(fig, photo, grid)
    theme(fig, height)
    return fig


def attention(exp: Exploration, block: int, head: int) -> PlotData:
    """Head `head`'s map in block `block` (0-based) before and after sparsification."""
    return view(exp, ("attention", block, head), lambda: attention_figure(exp.trace, block, head))


def cls_attention(exp: Exploration, block: int, head: int) -> PlotData:
    return view(exp, ("cls", block, head), lambda: cls_attention_figure(exp.model_input, exp.trace, block, head))


def attention_stats(exp: Exploration, block: int, head: int) -> dict:
    """The share of entries zeroed and of attention mass removed in this block (this head and
    all heads), as measured by the library in this run."""
    layer = exp.trace.layers[block]
    return {"block": block + 1, "head": head, "tokens": layer.tokens_in,
            "zeroed_fraction": float(layer.zeroed_fraction[0, head]),
            "mass_removed": float(layer.mass_removed[0, head]),
            "zeroed_fraction_all_heads": float(layer.zeroed_fraction[0].mean()),
            "mass_removed_all_heads": float(layer.mass_removed[0].mean())}
