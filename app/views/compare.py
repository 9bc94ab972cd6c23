"""GTP, ToMe and pruning side by side: on each method's map every patch is coloured by the
block in which its token left, and its hover says when and how (propagated to ..., merged
into ..., dropped) or that it stayed to the end.

Data (plain lists, e.g. from the app's comparison): `removed[method][b]` = original patch ids
whose token left in block b; optionally `destinations[method][b]` = {patch id: receiving
patch ids} (for GTP: `app.views.base.gtp_destinations(trace)`; for ToMe:
`tome_destinations(merged, merged_into)` from `gtp.tome.merged_ids_of` / `merged_into_of`).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradio.components.plot import PlotData

from ..core.results import COMPARED, METHOD_LABELS, Exploration
from .base import PhotoLike, gtp_destinations, patch_name, photo_axes, theme, view

LABELS = {"gtp": "GTP", "tome": "ToMe", "pruning": "Pruning", "evit": "EViT"}
HOW = {"gtp": ("propagated", "to"), "tome": ("merged", "into"), "pruning": ("dropped", ""),
       "evit": ("fused into the average token", "")}
# A ToMe partner is a token that may already stand for several patches; it is named by the
# patch it started as (gtp.tome.merged_into_of), so the hover says whose token it is.
RECEIVER = {"tome": "the token of "}
MAX_LISTED = 6


def tome_destinations(merged: Sequence[Sequence[int]], merged_into: Sequence[Sequence[int]]
                      ) -> list[dict[int, list[int]]]:
    """Per block: merged patch id -> [the patch id naming the token it merged into] (for
    `compare_figure`'s ToMe map).

    merged, merged_into: one image's `gtp.tome.merged_ids_of` / `merged_into_of`, per block
    the ids in the same order, e.g. `[m[0].tolist() for m in tome.merged_into_of(model)]`.
    """
    if len(merged) != len(merged_into):
        raise ValueError(f"merged has {len(merged)} blocks but merged_into has {len(merged_into)}")
    out = []
    for block, (gone, into) in enumerate(zip(merged, merged_into)):
        if len(gone) != len(into):
            raise ValueError(f"block {block}: {len(gone)} merged ids but {len(into)} partners")
        out.append({int(pid): [int(dst)] for pid, dst in zip(gone, into)})
    return out


def how_it_left(method: str, block: int, receivers: Optional[Sequence[int]], grid: tuple[int, int]) -> str:
    """'propagated in block 3 to patch 12 (row 0, col 12), ...' or 'merged in block 3 into the
    token of patch 12 (row 0, col 12)' (block 0-based, shown 1-based)."""
    verb, prep = HOW.get(method, ("removed", ""))
    text = f"{verb} in block {block + 1}"
    if prep and receivers:
        names = [RECEIVER.get(method, "") + patch_name(int(r), grid) for r in receivers[:MAX_LISTED]]
        more = f" and {len(receivers) - MAX_LISTED} more" if len(receivers) > MAX_LISTED else ""
        text += f" {prep} " + ", ".join(names) + more
    elif prep:
        text += f" {prep} another token (partner not recorded)"
    return text


def _left_in(removed: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """[n] block (0-based) in which each patch's token left; -1 where it stayed."""
    out = np.full(n, -1, dtype=np.int64)
    for b, ids in enumerate(removed):
        for pid in ids:
            if 0 <= pid < n:
                out[pid] = b
    return out


def compare_figure(photo: PhotoLike, grid: tuple[int, int], removed: Mapping[str, Sequence[Sequence[int]]],
                   destinations: Optional[Mapping[str, Sequence[Mapping[int, Sequence[int]]]]] = None,
                   labels: Optional[Mapping[str, str]] = None, height: int = 420) -> go.Figure:
    """One map per method (in `removed`'s order) over the photo.

    grid: (rows, cols) of the patch grid; removed: method -> per block the patch ids that
    left there; destinations: method -> per block {patch id: receiving ids}; labels: method
    -> title (defaults: GTP, ToMe, Pruning).
    """
    methods = list(removed)
    if not methods:
        raise ValueError("compare_figure needs at least one method's removed ids")
    gh, gw = grid
    depth = max(len(v) for v in removed.values())
    titles = [(labels or {}).get(m, LABELS.get(m, m)) for m in methods]
    fig = make_subplots(rows=1, cols=len(methods), horizontal_spacing=0.02, subplot_titles=titles)
    for k, method in enumerate(methods):
        left = _left_in(removed[method], gh * gw)
        dest = (destinations or {}).get(method)
        text = []
        for pid in range(gh * gw):
            b = int(left[pid])
            what = "stayed to the end" if b < 0 else how_it_left(
                method, b, dest[b].get(pid) if dest is not None and b < len(dest) else None, grid)
            text.append(f"{patch_name(pid, grid)}<br>{titles[k]}: {what}")
        z = np.where(left < 0, np.nan, left + 1).reshape(gh, gw).astype(np.float32)
        axis = "" if k == 0 else str(k + 1)
        fig.add_trace(go.Heatmap(
            z=z, x0=0.5, dx=1, y0=0.5, dy=1, colorscale="Plasma", zmin=1, zmax=max(depth, 2), opacity=0.7,
            text=np.array(text, dtype=object).reshape(gh, gw).tolist(), hovertemplate="%{text}<extra></extra>",
            hoverongaps=True, name=titles[k], meta={"method": method}, showscale=k == len(methods) - 1,
            colorbar=dict(title_text="left in block", thickness=12, dtick=1 if depth <= 12 else 2)),
            row=1, col=k + 1)
        photo_axes(fig, photo, grid, xaxis=f"x{axis}", yaxis=f"y{axis}")
    theme(fig, height)
    fig.update_layout(margin=dict(t=30))
    return fig


def compare(exp: Exploration) -> PlotData:
    """GTP, ToMe and pruning on the photo: per patch the block where its token left and how."""
    def make() -> go.Figure:
        comp = exp.comparison
        removed = {m: [list(ids) for ids in comp.method(m).removed] for m in COMPARED}
        destinations = {"gtp": gtp_destinations(exp.trace)}
        tome = comp.method("tome")
        if tome.merged_into is not None:
            destinations["tome"] = tome_destinations(tome.removed, tome.merged_into)
        labels = {m: f"{METHOD_LABELS[m]}: {comp.method(m).num_removed} tokens removed" for m in COMPARED}
        return compare_figure(exp.model_input, exp.trace.grid_size, removed, destinations, labels)
    return view(exp, ("compare",), make)
