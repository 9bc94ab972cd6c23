"""The token graphs GTP propagates along, and the cosine similarity they are built from
(SPEC.md section 1).

Both are recorded once per forward, before block 1 (`trace.spatial_edges`,
`trace.semantic_edges[image]`, `trace.similarity[image]`). The spatial graph is drawn as the
straight lines its edges line up on (rows, columns, diagonals), a semantic edge found in both
directions once; each token's hover lists its neighbours from per-token arrays.
"""
from __future__ import annotations

from typing import Optional

import networkx as nx
import numpy as np
from gradio.components.plot import PlotData

import gtp
from gtp.facts import rgba

from ..core.results import Exploration
from .base import (CENTRED, HIGHLIGHT_COLOUR, Figure, PhotoLike, Unavailable, centres, figure, highlight_mark, numpy,
                   patch_mark, photo_axes, photo_of, segments, typed, view)

GRAPH_KINDS = ("spatial", "semantic", "spatial + semantic")
EDGE_COLOURS = {"spatial": rgba("spatial", 0.55), "semantic": rgba("semantic", 0.35)}


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


def _lines(pairs: list[tuple[int, int]], grid: tuple[int, int]) -> tuple[list, list]:
    """Edges between grid neighbours joined into the longest straight lines they form (one
    segment per run of collinear edges instead of one per edge): a scatter's x and y."""
    gw = grid[1]
    step = {}
    for i, j in pairs:
        (ri, ci), (rj, cj) = divmod(i, gw), divmod(j, gw)
        if (rj - ri, cj - ci) < (0, 0):   # one direction of each undirected edge
            i, j, ri, ci, rj, cj = j, i, rj, cj, ri, ci
        step[(i, (rj - ri, cj - ci))] = j
    src, dst = [], []
    for (i, d), j in step.items():
        if step.get((i - d[0] * gw - d[1], d)) == i:
            continue                      # not the start of its line
        end = j
        while (end, d) in step:
            end = step[(end, d)]
        src.append(i)
        dst.append(end)
    return segments(np.array(src, np.int64), np.array(dst, np.int64), grid)


def _stars(pairs: list[tuple[int, int]], grid: tuple[int, int]) -> tuple[list, list]:
    """Edges drawn as one path per token through its neighbours and back (i, j1, i, j2, ...): a
    point per edge end instead of a segment and a gap per edge. A scatter's x and y."""
    star: dict[int, list[int]] = {}
    for i, j in pairs:
        star.setdefault(i, []).append(j)
    x, y = [], []
    for i, near in star.items():
        path = [p for j in near for p in (i, j)] + [i]
        px, py = centres(np.array(path, dtype=np.int64), grid)
        x += px.tolist() + [None]
        y += py.tolist() + [None]
    return x, y


def _edge_traces(graph: nx.DiGraph, kind: str, grid: tuple[int, int]) -> list[dict]:
    """One line trace per edge kind drawn. With both kinds, the semantic edges (well over a thousand
    crossing the photo) start hidden, a click on their legend entry away: drawn, they hide the photo
    and the spatial edges; the chosen token's own semantic edges are drawn (`_highlight`)."""
    data = []
    for edge_kind in ("spatial", "semantic"):
        if edge_kind not in kind:
            continue
        pairs = {(min(i, j), max(i, j)) for i, j, d in graph.edges(data=True)
                 if d["kind"] == edge_kind or (edge_kind == "semantic" and d.get("also_semantic"))}
        x, y = _lines(sorted(pairs), grid) if edge_kind == "spatial" else _stars(sorted(pairs), grid)
        hidden = edge_kind == "semantic" and "spatial" in kind
        data.append(dict(type="scatter", x=x, y=y, mode="lines", hoverinfo="skip",
                         name=f"{edge_kind} edges ({len(pairs)})" + (": click to show" if hidden else ""),
                         visible="legendonly" if hidden else True, meta={"role": f"{edge_kind}-edges"},
                         line=dict(width=1, color=EDGE_COLOURS[edge_kind])))
    return data


def _token_traces(graph: nx.DiGraph, sim: Optional[np.ndarray], grid: tuple[int, int]) -> list[dict]:
    """The tokens, one scatter per (spatial, semantic) neighbour count so that one hover
    template per scatter lists every neighbour: customdata = [pid, row, col, then per
    neighbour its id and cosine similarity, spatial first, each kind by similarity]."""
    groups: dict[tuple[int, int], list[list[float]]] = {}
    for p in range(grid[0] * grid[1]):
        near = neighbours(graph, p)
        row = [p, p // grid[1], p % grid[1]]
        for kind in ("spatial", "semantic"):
            ids = sorted(near[kind], key=lambda j: -sim[p, j] if sim is not None else j)
            row += [v for j in ids for v in (j, sim[p, j] if sim is not None else np.nan)]
        groups.setdefault((len(near["spatial"]), len(near["semantic"])), []).append(row)
    out = []
    for (n_spatial, n_semantic), rows in sorted(groups.items()):
        lines = ["<b>patch %{customdata[0]} (row %{customdata[1]}, col %{customdata[2]})</b>"]
        k = 3
        for kind, count in (("spatial", n_spatial), ("semantic", n_semantic)):
            lines.append(f"{kind} neighbours ({count})" + (", cosine similarity:" if sim is not None else ":"))
            for _ in range(count):
                lines.append(f"· patch %{{customdata[{k}]}}" + (f": %{{customdata[{k + 1}]:.3f}}" if sim is not None else ""))
                k += 2
        x, y = centres(np.array([r[0] for r in rows], dtype=np.int64), grid)
        out.append(dict(type="scatter", x=x.tolist(), y=y.tolist(), mode="markers", showlegend=False,
                        name=f"tokens with {n_spatial} + {n_semantic} neighbours", meta={"role": "tokens"},
                        marker=dict(size=6, color="rgba(255,255,255,0.6)"), customdata=typed(rows),
                        hovertemplate="<br>".join(lines) + "<extra></extra>"))
    return out


def _highlight(graph: nx.DiGraph, kind: str, token: int, grid: tuple[int, int]) -> list[dict]:
    """Token `token` marked, and its edges in the graph(s) `kind` drawn over the others."""
    near = neighbours(graph, token)
    ends = sorted({j for edge_kind in ("spatial", "semantic") if edge_kind in kind for j in near[edge_kind]})
    x, y = _stars([(token, j) for j in ends], grid)
    edges = dict(type="scatter", x=x, y=y, mode="lines", hoverinfo="skip", showlegend=True,
                 name=f"edges of patch {token}", meta={"role": "highlight-edges", "token": token},
                 line=dict(width=2.5, color=HIGHLIGHT_COLOUR))
    return [edges, patch_mark(token, grid)]


def graph_figure(photo: PhotoLike, trace: gtp.Trace, kind: str = "spatial + semantic", image: int = 0,
                 height: int = 480, highlight: Optional[int] = None) -> Figure:
    """The chosen graph(s) over the photo; hovering a token lists its spatial and semantic
    neighbours with their cosine similarity (whatever `kind` draws).

    photo: the model input as shown; trace: a `gtp.Trace`; kind: one of GRAPH_KINDS;
    highlight: a patch id whose edges are drawn over the others and which is marked.
    """
    if kind not in GRAPH_KINDS:
        raise ValueError(f"graph kind must be one of {', '.join(GRAPH_KINDS)}; got {kind!r}")
    grid = trace.grid_size
    graph = token_graph(trace, image)
    sim = numpy(trace.similarity, image) if trace.similarity is not None else None
    layout = dict(legend=dict(orientation="h", y=0, yanchor="top", x=0, bgcolor="rgba(0,0,0,0)"))
    photo_axes(layout, photo, grid)
    marked = [] if highlight is None else _highlight(graph, kind, int(highlight), grid)
    fig = figure(_edge_traces(graph, kind, grid) + _token_traces(graph, sim, grid) + marked, layout, height)
    fig["layout"]["margin"]["b"] = 40
    return fig


def similarity_figure(photo: PhotoLike, trace: gtp.Trace, token: int, image: int = 0, height: int = 480) -> Figure:
    """Cosine similarity of the patch tokens before block 1 (the semantic graph's basis): the
    token's similarity to every patch as a heat map over the photo (hover: the patch and the value)."""
    if trace.similarity is None:
        raise Unavailable("this trace holds no similarity (it is recorded with the graphs before block 1)")
    if not 0 <= int(token) < trace.num_patches:
        raise ValueError(f"token must be a patch id from 0 to {trace.num_patches - 1}; got {token}")
    row = numpy(trace.similarity, image)[int(token)]
    others = np.delete(row, int(token))
    gh, gw = grid = trace.grid_size
    heat = dict(type="heatmap", z=typed(row.reshape(gh, gw)), colorscale="Magma", opacity=0.7,
                zmin=round(float(others.min()), 4), zmax=round(float(others.max()), 4),
                colorbar=dict(title=dict(text="cosine"), thickness=12), customdata=typed(np.arange(gh * gw).reshape(gh, gw), "u2"),
                hovertemplate=("patch %{customdata} (row %{y}, col %{x})<br>"
                               f"cosine similarity to patch {int(token)}: %{{z:.3f}}<extra></extra>"))
    mark = highlight_mark(int(token) % gw, int(token) // gw, int(token), size=16)
    layout: dict = {}
    photo_axes(layout, photo, grid, origin=CENTRED)
    return figure([heat, mark], layout, height)


def graph(exp: Exploration, kind: str, highlight: Optional[int] = None) -> PlotData:
    kind = kind if kind in GRAPH_KINDS else GRAPH_KINDS[-1]
    return view(exp, ("graph", kind) + (() if highlight is None else (highlight,)),
                lambda: graph_figure(photo_of(exp), exp.trace, kind, highlight=highlight))


def similarity(exp: Exploration, token: int) -> PlotData:
    return view(exp, ("similarity", token), lambda: similarity_figure(photo_of(exp), exp.trace, token))


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
