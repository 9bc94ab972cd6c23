"""The compared token-reduction methods side by side (`gtp.methods.compared()` whose `mapped` is
set: GTP, ToMe and pruning; the other compared methods are in the numbers only): on each method's map every patch is coloured by the block in which its token left,
and its hover says when and how (propagated to ..., merged into ..., dropped) or that it stayed
to the end.

Data (plain lists, e.g. from the app's comparison): `removed[method][b]` = original patch ids
whose token left in block b; optionally `destinations[method][b]` = {patch id: receiving
patch ids} (for GTP: `app.views.base.gtp_destinations(trace)`; for ToMe:
`tome_destinations(merged, merged_into)` from `gtp.tome.merged_ids_of` / `merged_into_of`).
How each method's tokens leave, in words, is the method's own description (`Method.how`).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from gradio.components.plot import PlotData

from gtp import methods
from gtp.facts import left_in, tome_destinations  # noqa: F401 - tome_destinations re-exported

from ..core.results import Exploration
from .base import Figure, PhotoLike, figure, gtp_destinations, narrow, patch_name, photo_axes, photo_of, typed, view

MAX_LISTED = 6


def how_it_left(method: str, block: int, receivers: Optional[Sequence[int]], grid: tuple[int, int]) -> str:
    """'propagated in block 3 to patch 12, patch 13, ...' or 'merged in block 3 into the token of
    patch 12 (row 0, col 12)' (block 0-based, shown 1-based; a single receiver is named with its
    row and column)."""
    how = methods.METHODS[method].how if method in methods.METHODS else methods.How("removed")
    text = f"{how.verb} in block {block + 1}"
    if how.preposition and receivers:
        shown = [int(r) for r in receivers[:MAX_LISTED]]
        names = [how.receiver + (patch_name(r, grid) if len(receivers) == 1 else f"patch {r}") for r in shown]
        more = f" and {len(receivers) - MAX_LISTED} more" if len(receivers) > MAX_LISTED else ""
        text += f" {how.preposition} " + ", ".join(names) + more
    elif how.preposition:
        text += f" {how.preposition} another token (partner not recorded)"
    return text


def compare_figure(photo: PhotoLike, grid: tuple[int, int], removed: Mapping[str, Sequence[Sequence[int]]],
                   destinations: Optional[Mapping[str, Sequence[Mapping[int, Sequence[int]]]]] = None,
                   labels: Optional[Mapping[str, str]] = None, height: int = 420) -> Figure:
    """One map per method (in `removed`'s order) over the photo.

    grid: (rows, cols) of the patch grid; removed: method -> per block the patch ids that
    left there; destinations: method -> per block {patch id: receiving ids}; labels: method
    -> title (defaults: the method's label).
    """
    names = list(removed)
    if not names:
        raise ValueError("compare_figure needs at least one method's removed ids")
    gh, gw = grid
    depth = max(len(v) for v in removed.values())
    titles = [(labels or {}).get(m, methods.METHODS[m].label if m in methods.METHODS else m) for m in names]
    cells = [[[r * gw + c, r, c] for c in range(gw)] for r in range(gh)]
    data, layout = [], {"annotations": []}
    width = 1 / len(names)
    for k, method in enumerate(names):
        left = left_in(removed[method], gh * gw)
        dest = (destinations or {}).get(method)
        what = ["stayed to the end" if b < 0 else how_it_left(
                    method, b, dest[b].get(pid) if dest is not None and b < len(dest) else None, grid)
                for pid, b in enumerate(left.tolist())]
        axis = "" if k == 0 else str(k + 1)
        data.append(dict(
            type="heatmap", z=typed(np.where(left < 0, np.nan, left + 1).reshape(gh, gw)), x0=0.5, dx=1, y0=0.5, dy=1,
            xaxis=f"x{axis}", yaxis=f"y{axis}", colorscale="Plasma", zmin=1, zmax=max(depth, 2), opacity=0.7,
            customdata=cells, text=np.array(what, dtype=object).reshape(gh, gw).tolist(), hoverongaps=True,
            hovertemplate=("patch %{customdata[0]} (row %{customdata[1]}, col %{customdata[2]})<br>"
                           f"{titles[k]}: %{{text}}<extra></extra>"),
            name=titles[k], meta={"method": method}, showscale=k == len(names) - 1,
            colorbar=dict(title=dict(text="left in block"), thickness=12, dtick=1 if depth <= 12 else 2)))
        domain = [k * width + (0.01 if k else 0), (k + 1) * width - (0.01 if k < len(names) - 1 else 0)]
        layout[f"xaxis{axis}"] = dict(domain=domain, anchor=f"y{axis}")
        layout[f"yaxis{axis}"] = dict(anchor=f"x{axis}")
        layout["annotations"].append(dict(text=titles[k], xref="paper", yref="paper", x=(domain[0] + domain[1]) / 2,
                                          y=1.0, xanchor="center", yanchor="bottom", showarrow=False,
                                          font=dict(size=12)))
        photo_axes(layout, photo, grid, axis=axis)
    fig = figure(data, layout, height)
    fig["layout"]["margin"]["t"] = 46
    # narrow (a phone): the panels one under the other, each the panel's width (side by side they are
    # a thumbnail each beside a full-height colour bar)
    n, gap = len(names), 0.06
    stacked = {"height": 300 * n + 60}
    for k in range(n):
        axis = "" if k == 0 else str(k + 1)
        top = 1 - k / n - (gap if k else 0)
        stacked.update({f"xaxis{axis}.domain": [0, 0.82], f"yaxis{axis}.domain": [1 - (k + 1) / n, top],
                        f"annotations[{k}].x": 0.41, f"annotations[{k}].y": top})
    return narrow(fig, stacked)


def compare(exp: Exploration) -> PlotData:
    """The compared methods on the photo: per patch the block where its token left and how.
    `exp` must hold its comparison (`app.core.inference.compared`)."""
    comp = exp.comparison
    if comp is None:
        raise ValueError("the exploration has no comparison yet: call inference.compared(exp) first")

    def make() -> Figure:
        mapped = [m for m in comp.methods if methods.get(m.method).mapped]   # the rest: numbers only
        removed = {m.method: [list(ids) for ids in m.removed] for m in mapped}
        destinations = {}
        for m in mapped:
            if m.method == "gtp":
                destinations["gtp"] = gtp_destinations(exp.trace)
            elif m.merged_into is not None:
                destinations[m.method] = tome_destinations(m.removed, m.merged_into)
        labels = {m.method: f"{m.label}<br>{m.num_removed} removed" for m in mapped}   # fits a phone's third
        return compare_figure(photo_of(exp), exp.trace.grid_size, removed, destinations, labels)
    return view(exp, ("compare",), make)
