"""The page's views: each an interactive plotly figure (`app.plots`) of a finished
`Exploration`, drawn once per (run, view) and never by rerunning a model.

Every view is kept as the figure's JSON (`gr.Plot` would otherwise serialise the figure
again on every event) in the bounded figure cache `app.draw.FIGURES`, and handed to
`gr.Plot` as `PlotData`. A view that cannot be drawn for this run (no attention maps, no CLS
token) is a figure that says why, so the panel never shows a stale picture.
"""
from __future__ import annotations

import json
from typing import Callable, Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from gradio.components.plot import PlotData

from . import limits
from . import plots as P
from .draw import cached
from .plots_compare import tome_destinations
from .plots_graphs import GRAPH_KINDS
from .results import COMPARED, METHOD_LABELS, Exploration

TRADEOFF_HEIGHT = 560   # the legend lies under the chart: its entries need room


def plot_data(fig: go.Figure) -> PlotData:
    """A figure as `gr.Plot` takes it, serialised once."""
    return PlotData(type="plotly", plot=fig.to_json())


def figure_of(value: PlotData) -> dict:
    """The figure JSON (data, layout) a view handed to `gr.Plot` (for tests and scripts)."""
    return json.loads(value.plot)


def message(text: str, height: int = 160) -> go.Figure:
    """A figure holding only a sentence: why this view has nothing to show."""
    fig = go.Figure()
    fig.add_annotation(text=P.escape(text), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font_size=14)
    P.theme(fig, height)
    hidden = dict(visible=False, fixedrange=True)
    fig.update_layout(xaxis=hidden, yaxis=hidden, meta={"message": text})
    return fig


def _view(exp: Exploration, view: tuple, make: Callable[[], go.Figure]) -> PlotData:
    """The view's figure, made once per run and kept as JSON; a ValueError of the builder
    (data the run does not hold) becomes a figure saying so."""
    def draw() -> str:
        try:
            return make().to_json()
        except ValueError as e:
            return message(str(e)).to_json()
    return PlotData(type="plotly", plot=cached(exp, ("plotly",) + view, draw))


def walk(exp: Exploration, block: int = 0) -> PlotData:
    """Every block in one figure (slider and Play run in the browser), starting at `block` (0-based)."""
    return _view(exp, ("walk", block), lambda: P.layer_walk_figure(exp.model_input, exp.trace, block=block))


def graph(exp: Exploration, kind: str) -> PlotData:
    kind = kind if kind in GRAPH_KINDS else GRAPH_KINDS[-1]
    return _view(exp, ("graph", kind), lambda: P.graph_figure(exp.model_input, exp.trace, kind))


def similarity(exp: Exploration, token: int) -> PlotData:
    return _view(exp, ("similarity", token), lambda: P.similarity_figure(exp.model_input, exp.trace, token))


def attention(exp: Exploration, block: int, head: int) -> PlotData:
    """Head `head`'s map in block `block` (0-based) before and after sparsification."""
    return _view(exp, ("attention", block, head), lambda: P.attention_figure(exp.trace, block, head))


def cls_attention(exp: Exploration, block: int, head: int) -> PlotData:
    return _view(exp, ("cls", block, head), lambda: P.cls_attention_figure(exp.model_input, exp.trace, block, head))


def attention_stats(exp: Exploration, block: int, head: int) -> dict:
    """The share of entries zeroed and of attention mass removed in this block (this head and
    all heads), as measured by the library in this run."""
    layer = exp.trace.layers[block]
    return {"block": block + 1, "head": head, "tokens": layer.tokens_in,
            "zeroed_fraction": float(layer.zeroed_fraction[0, head]),
            "mass_removed": float(layer.mass_removed[0, head]),
            "zeroed_fraction_all_heads": float(layer.zeroed_fraction[0].mean()),
            "mass_removed_all_heads": float(layer.mass_removed[0].mean())}


def compare(exp: Exploration) -> PlotData:
    """GTP, ToMe and pruning on the photo: per patch the block where its token left and how."""
    def make() -> go.Figure:
        comp = exp.comparison
        removed = {m: [list(ids) for ids in comp.method(m).removed] for m in COMPARED}
        destinations = {"gtp": P.gtp_destinations(exp.trace)}
        tome = comp.method("tome")
        if tome.merged_into is not None:
            destinations["tome"] = tome_destinations(tome.removed, tome.merged_into)
        labels = {m: f"{METHOD_LABELS[m]}: {comp.method(m).num_removed} tokens removed" for m in COMPARED}
        return P.compare_figure(exp.model_input, exp.trace.grid_size, removed, destinations, labels)
    return _view(exp, ("compare",), make)


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


def bounded_sweep(records: Sequence[dict]) -> list[dict]:
    """Sweep records with at most limits.MAX_SWEEP_METHODS method names; past them the rest are one
    series ("N other methods"), so a file with thousands of names stays one readable chart."""
    names = sorted({str(r.get("method", "sweep")) for r in records})
    rest = set(names[limits.MAX_SWEEP_METHODS:])
    other = f"{len(rest)} other methods"
    return [dict(r, method=other) if str(r.get("method", "sweep")) in rest else r for r in records]


def tradeoff(published: dict, model: str, current: Optional[dict], sweep: Sequence[dict] = (),
             throughput: Sequence[dict] = ()) -> PlotData:
    """The compact trade-off chart beside the prediction: the published curves of `model`'s
    family, its GMACs measured now, the user's sweep and the measured throughput. Where the
    paper has no curve for this model's family (it has DeiT-B's), the other families' curves
    are drawn dotted and labelled with their model, never as this model's."""
    own = any(r["model"] == model and r.get("top1") is not None and not str(r.get("method", "none")).startswith("none")
              for r in P.published_records(published))
    return plot_data(P.tradeoff_figure(published, model, current=current, sweep=bounded_sweep(sweep),
                                       throughput=throughput, other_families=not own, height=TRADEOFF_HEIGHT))
