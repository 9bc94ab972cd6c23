"""The layer walk as one grid: a panel per block, the photo under the patch grid, each patch
marked by its status in that block, in the app's legend and colours (`gtp.facts.COLOURS`):
propagated in this block (red square), kept and received features (yellow diamond), propagated
earlier (dark cross), kept (white dot); yellow lines from each propagated token to its
receivers, wider for a larger weight alpha * W (scaled by the run's largest weight).
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D

from .. import facts
from . import Choice, RunFigures
from . import style as S

# (marker, colour alpha, size relative to the style's marker, edge) per status, as the app draws them
MARKS = {"earlier": ("x", 0.9, 0.8, None), "kept": ("o", 0.55, 0.35, None),
         "received": ("D", 0.95, 0.7, None), "propagated": ("s", 0.95, 1.3, (1, 1, 1, 1))}
EDGE_WIDTH = (0.15, 0.8)        # points, times the style's marker / 3.2: the weakest and strongest line


def columns(depth: int, style: S.Style) -> int:
    """Panels per row: 6 for 12 blocks (two rows), more for deeper models."""
    return min(depth, max(4, math.ceil(math.sqrt(depth * 3.0))))


def _panel(ax, run: RunFigures, b: int, w_max: float, style: S.Style) -> None:
    trace, grid = run.trace, run.trace.grid_size
    S.photo_axes(ax, run.photo, grid)
    src, dst, w = facts.edges_of(trace.layers[b])
    if len(w):
        xs, ys = S.centres(src, grid)
        xd, yd = S.centres(dst, grid)
        share = w / w_max if w_max > 0 else np.zeros_like(w)
        order = np.argsort(share)   # weakest first, so the strongest lie on top
        scale = style.marker / 3.2
        ax.add_collection(LineCollection(
            np.stack([np.stack([xs, ys], 1), np.stack([xd, yd], 1)], 1)[order],
            colors=[S.rgb(facts.COLOURS["edges"], 0.3 + 0.6 * v) for v in share[order]],
            linewidths=scale * (EDGE_WIDTH[0] + (EDGE_WIDTH[1] - EDGE_WIDTH[0]) * share[order]), zorder=2))
    for status, patches in facts.statuses(trace, b).items():
        if not patches:
            continue
        marker, alpha, size, edge = MARKS[status]
        x, y = S.centres(patches, grid)
        ax.scatter(x, y, marker=marker, s=(style.marker * size) ** 2, color=S.rgb(facts.COLOURS[status], alpha),
                   linewidths=0.5 if edge or marker == "x" else 0, zorder=4 if status == "propagated" else 3,
                   **({"edgecolors": [edge]} if edge else {}))
    now = sum(1 for p in facts.ids(trace.layers[b].propagated) if p >= 0)
    ax.set_title(f"block {b + 1}", fontsize=style.font, fontweight="bold", pad=2)
    ax.text(0.5, -0.02, f"{now} out, {trace.layers[b].tokens_out} left", transform=ax.transAxes, ha="center",
            va="top", fontsize=style.small)


def legend_handles(style: S.Style) -> list[Line2D]:
    """One entry per status, and the lines: the app's legend."""
    handles = []
    for status in ("propagated", "received", "earlier", "kept"):
        marker, alpha, size, edge = MARKS[status]
        colour = S.rgb(facts.COLOURS[status], alpha)
        handles.append(Line2D([], [], ls="none", marker=marker, ms=style.marker * size, color=colour,
                              markeredgecolor=(0.3, 0.3, 0.3, 1) if status in ("kept", "propagated") else colour,
                              markeredgewidth=0.4 if status != "earlier" else 0.8, label=facts.STATUS_WORDS[status]))
    handles.append(Line2D([], [], color=S.rgb(facts.COLOURS["edges"]), lw=1.0, label="features sent (width ∝ α·W)"))
    return handles


def draw(run: RunFigures, style: S.Style, choice: Choice = Choice()):
    trace = run.trace
    depth = len(trace.layers)
    if depth == 0:
        raise ValueError("the trace holds no block: run the model inside gtp.trace(model) first")
    ncols = columns(depth, style)
    nrows = math.ceil(depth / ncols)
    fig = S.new(style, "full", aspect=(nrows / ncols) * 1.08 + 0.12)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    w_max = facts.max_edge_weight(trace)
    for b, ax in enumerate(axes):
        if b < depth:
            _panel(ax, run, b, w_max, style)
        else:
            ax.set_visible(False)
    fig.legend(handles=legend_handles(style), loc="outside lower center", ncols=3 if style.height else 5,
               handletextpad=0.3,
               columnspacing=1.0)
    cfg = trace.config
    amount = cfg.get("num_prop")
    if isinstance(amount, (list, tuple)) and len(set(amount)) == 1:
        amount = amount[0]
    title = (f"{facts.family(run.model)}: GTP, P={amount}, θ={cfg.get('sparsity')}, "
             f"α={cfg.get('alpha')}, {cfg.get('graph')} graph" + ("" if run.pretrained else " (random weights)"))
    fig.suptitle(title, fontsize=style.title)
    return fig
