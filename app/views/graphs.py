"""The token graphs GTP propagates along, and the cosine similarity they are built from.

Both are recorded once per forward, before block 1 (`trace.spatial_edges`,
`trace.semantic_edges[image]`, `trace.similarity[image]`).
"""
from __future__ import annotations

from typing import Optional

import networkx as nx
import numpy as np
import plotly.graph_objects as go

from gradio.components.plot import PlotData

import gtp

from ..core.results import Exploration
from .base import PhotoLike, centres, numpy, patch_name, photo_axes, segments, theme, view

GRAPH_KINDS = ("spatial", "semantic", "spatial + semantic")
EDGE_COLOURS = {"spatial": "rgba(80,200,255,0.55)", "semantic": "rgba(255,120,220,0.35)"}


def token_graph(trace: gtp.Trace, image: int = 0) -> nx.DiGraph:
    """Both graphs as one networkx DiGraph over the patch ids; each edge's `kind` is
    "spatial" (grid neighbours) or "semantic" (i -> one of its M most similar tokens);
    an edge in both graphs is kept as spatial and marked `also_semantic`."""
    graph = nx.DiGraph()
    graph.add_nodes_from(range(trace.num_patches))
    if trace.semantic_edges:
        e = trace.semantic_edges[image]
        graph.add_edges_from(zip(e.src.tolist(), e.dst.tolist()), kind="semantic")
    if trace.spatial_edges is not None:
        for i, j in zip(trace.spatial_edges.src.tolist(), trace.spatial_edges.dst.tolist()):
            also = graph.has_edge(i, j) and graph.edges[i, j]["kind"] == "semantic"
            graph.add_edge(i, j, kind="spatial", also_semantic=also)
    return graph


def neighbours(graph: nx.DiGraph, token: int) -> dict[str, list[int]]:
    """A token's out-neighbours by graph: {"spatial": [...], "semantic": [...]}."""
    out: dict[str, list[int]] = {"spatial": [], "semantic": []}
    for _, j, data in graph.out_edges(token, data=True):
        out[data["kind"]].append(int(j))
        if data.get("also_semantic"):
            out["semantic"].append(int(j))
    return out


def _hover(token: int, near: dict[str, list[int]], sim: Optional[np.ndarray], grid: tuple[int, int]) -> str:
    lines = [f"<b>{patch_name(token, grid)}</b>"]
    for kind in ("spatial", "semantic"):
        ids = sorted(near[kind], key=lambda j: -sim[token, j] if sim is not None else j)
        lines.append(f"{kind} neighbours ({len(ids)})" + (", cosine similarity:" if sim is not None else ":"))
        # neighbours by id only (row and column are in their own hover): ~45 kB less per figure
        lines += [f"· patch {j}" + (f": {sim[token, j]:.3f}" if sim is not None else "") for j in ids]
    return "<br>".join(lines)


def graph_figure(photo: PhotoLike, trace: gtp.Trace, kind: str = "spatial + semantic", image: int = 0,
                 height: int = 480) -> go.Figure:
    """The chosen graph(s) over the photo; hovering a token lists its spatial and semantic
    neighbours with their cosine similarity (whatever `kind` draws).

    photo: the model input as shown; trace: a `gtp.Trace`; kind: one of GRAPH_KINDS.
    """
    if kind not in GRAPH_KINDS:
        raise ValueError(f"graph kind must be one of {', '.join(GRAPH_KINDS)}; got {kind!r}")
    grid = trace.grid_size
    graph = token_graph(trace, image)
    sim = numpy(trace.similarity, image) if trace.similarity is not None else None
    fig = go.Figure()
    for edge_kind in ("spatial", "semantic"):
        if edge_kind not in kind:
            continue
        pairs = [(i, j) for i, j, d in graph.edges(data=True)
                 if (d["kind"] == edge_kind or (edge_kind == "semantic" and d.get("also_semantic")))
                 and not (edge_kind == "spatial" and graph.has_edge(j, i) and j < i)]  # a spatial edge once
        src, dst = (np.array(v, dtype=np.int64) for v in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 2
        x, y = segments(src, dst, grid)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", hoverinfo="skip", name=f"{edge_kind} edges ({len(pairs)})",
                                 line=dict(width=1, color=EDGE_COLOURS[edge_kind])))
    ids = np.arange(trace.num_patches)
    x, y = centres(ids, grid)
    fig.add_trace(go.Scatter(
        x=x.tolist(), y=y.tolist(), mode="markers", name="tokens", showlegend=False,
        marker=dict(size=6, color="rgba(255,255,255,0.6)"), meta={"role": "tokens"},
        hovertext=[_hover(int(p), neighbours(graph, int(p)), sim, grid) for p in ids], hoverinfo="text"))
    photo_axes(fig, photo, grid)
    theme(fig, height)
    fig.update_layout(legend=dict(orientation="h", y=0, yanchor="top", x=0), margin=dict(b=40))
    return fig


def similarity_figure(photo: PhotoLike, trace: gtp.Trace, token: Optional[int] = None, image: int = 0,
                      height: int = 480) -> go.Figure:
    """Cosine similarity of the patch tokens before block 1 (the semantic graph's basis).

    With `token`: its similarity to every patch as a heat map over the photo (hover: the
    patch and the value). Without: the whole [N, N] matrix (hover: both patches, the value).
    """
    if trace.similarity is None:
        raise ValueError("this trace holds no similarity (it is recorded with the graphs before block 1)")
    sim = numpy(trace.similarity, image)
    grid = trace.grid_size
    fig = go.Figure()
    if token is None:
        names = [patch_name(p, grid) for p in range(len(sim))]
        fig.add_trace(go.Heatmap(z=sim.astype(np.float32), x=names, y=names, colorscale="Magma",
                                 hovertemplate="%{y} and %{x}: cosine %{z:.3f}<extra></extra>",
                                 colorbar=dict(title_text="cosine", thickness=12)))
        theme(fig, height)
        fig.update_layout(xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False, autorange="reversed"))
        return fig
    if not 0 <= int(token) < trace.num_patches:
        raise ValueError(f"token must be a patch id from 0 to {trace.num_patches - 1}; got {token}")
    row = sim[int(token)]
    others = np.delete(row, int(token))
    gh, gw = grid
    fig.add_trace(go.Heatmap(
        z=row.reshape(gh, gw).astype(np.float32), x0=0.5, dx=1, y0=0.5, dy=1, colorscale="Magma", opacity=0.7,
        zmin=float(others.min()), zmax=float(others.max()), colorbar=dict(title_text="cosine", thickness=12),
        text=[[patch_name(r * gw + c, grid) for c in range(gw)] for r in range(gh)],
        hovertemplate=f"%{{text}}<br>cosine similarity to patch {int(token)}: %{{z:.3f}}<extra></extra>"))
    tx, ty = centres(np.array([int(token)]), grid)
    fig.add_trace(go.Scatter(x=tx.tolist(), y=ty.tolist(), mode="markers", hoverinfo="skip", showlegend=False,
                             marker=dict(symbol="square-open", size=16, color="rgb(0,255,120)", line_width=3)))
    photo_axes(fig, photo, grid)
    theme(fig, height)
    return fig


def graph(exp: Exploration, kind: str) -> PlotData:
    kind = kind if kind in GRAPH_KINDS else GRAPH_KINDS[-1]
    return view(exp, ("graph", kind), lambda: graph_figure(exp.model_input, exp.trace, kind))


def similarity(exp: Exploration, token: int) -> PlotData:
    return view(exp, ("similarity", token), lambda: similarity_figure(exp.model_input, exp.trace, token))


def neighbours_of(exp: Exploration, kind: str, token: int) -> dict[str, list[int]]:
    """The token's neighbours in the chosen graph, by edge kind (recorded before block 1)."""
    rec = exp.trace
    out: dict[str, list[int]] = {"spatial": [], "semantic": []}
    edges = {"spatial": rec.spatial_edges, "semantic": rec.semantic_edges[0] if rec.semantic_edges else None}
    for name, e in edges.items():
        if name in kind and e is not None:
            src, dst = np.asarray(e.src), np.asarray(e.dst)
            out[name] = [int(j) for j in dst[src == token]]
    return out
