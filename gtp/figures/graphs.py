"""The two token graphs GTP propagates along (SPEC.md section 1), seen from one token: left the
spatial graph (every grid edge faint, the token's own in the highlight colour), right the
semantic graph (the token's cosine similarity to every patch as a heat map, and its edges to its
M most similar tokens). Both were recorded before block 1 (`trace.spatial_edges`,
`trace.semantic_edges`, `trace.similarity`); the app's Graphs tab draws the same edges.
"""
from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection

from .. import facts
from . import Choice, RunFigures
from . import style as S


def _segments(src, dst, grid: tuple[int, int]) -> np.ndarray:
    xs, ys = S.centres(src, grid)
    xd, yd = S.centres(dst, grid)
    return np.stack([np.stack([xs, ys], 1), np.stack([xd, yd], 1)], 1)   # [E, 2, 2]


def _star(ax, token: int, ends: list[int], grid: tuple[int, int], colour, style: S.Style) -> None:
    """The token's edges to `ends`, the ends marked, the token boxed."""
    highlight = S.rgb(facts.COLOURS["highlight"])
    if ends:
        ax.add_collection(LineCollection(_segments([token] * len(ends), ends, grid), colors=[highlight],
                                         linewidths=style.marker * 0.35, zorder=3))
        x, y = S.centres(ends, grid)
        ax.scatter(x, y, s=(style.marker * 0.9) ** 2, color=colour, edgecolors="black", linewidths=0.4, zorder=4)
    r, c = divmod(token, grid[1])
    ax.add_patch(_box(c, r, highlight, style))


def _box(c: int, r: int, colour, style: S.Style):
    from matplotlib.patches import Rectangle
    return Rectangle((c, r), 1, 1, fill=False, edgecolor=colour, linewidth=style.marker * 0.4, zorder=5)


def draw(run: RunFigures, style: S.Style, choice: Choice = Choice()):
    trace = run.trace
    grid, n = trace.grid_size, trace.num_patches
    token = n // 2 + grid[1] // 2 if choice.token is None else int(choice.token)   # the middle of the grid
    if not 0 <= token < n:
        raise ValueError(f"token must be a patch id from 0 to {n - 1}; got {token}")
    near = facts.neighbours(trace, token)
    fig = S.new(style, "column", aspect=0.62)
    spatial_ax, semantic_ax = fig.subplots(1, 2)

    S.photo_axes(spatial_ax, run.photo, grid)
    if trace.spatial_edges is not None:
        e = trace.spatial_edges
        keep = (e.src < e.dst).cpu().numpy()   # one line per undirected edge
        spatial_ax.add_collection(LineCollection(
            _segments(e.src.cpu().numpy()[keep], e.dst.cpu().numpy()[keep], grid),
            colors=[S.rgb(facts.COLOURS["spatial"], 0.45)], linewidths=0.3))
    _star(spatial_ax, token, near["spatial"], grid, S.rgb(facts.COLOURS["spatial"]), style)
    spatial_ax.set_title(f"spatial ({len(near['spatial'])} neighbours)")

    S.photo_axes(semantic_ax, run.photo, grid)
    gh, gw = grid
    if trace.similarity is not None:
        row = trace.similarity[0, token].float().cpu().numpy().astype(np.float64)
        others = np.delete(row, token)
        heat = semantic_ax.imshow(row.reshape(gh, gw), extent=(0, gw, gh, 0), cmap="magma", alpha=0.7,
                                  vmin=float(others.min()), vmax=float(others.max()), interpolation="nearest")
        bar = fig.colorbar(heat, ax=semantic_ax, shrink=0.8, pad=0.02)
        bar.set_label(f"cosine to patch {token}")
        bar.ax.tick_params(labelsize=style.small)
    _star(semantic_ax, token, near["semantic"], grid, S.rgb(facts.COLOURS["semantic"]), style)
    semantic_ax.set_title(f"semantic (M = {len(near['semantic'])})")
    r, c = divmod(token, gw)
    fig.suptitle(f"The graphs of patch {token} (row {r}, col {c})", fontsize=style.title)
    return fig
