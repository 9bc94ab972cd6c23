"""The layer walk: ONE figure holding every block, switched by a slider in the browser.

Left: the photo (one shared layout image) with the token grid, per block the tokens as four
scatters (kept, receiving, propagated here, propagated earlier) and a few line traces
(propagated token -> receivers, wider for a larger weight alpha * W). Right: tokens left after
each block and the attention sparsity per block, with the current block marked. Each slider
step uses plotly's "update" method: it only switches which block's traces are visible and moves
the marks, so scrubbing and playing (`PLAY_JS` below) never ask the server for anything.

Per-token facts travel as arrays (`customdata`, rounded to what the hover shows) read by one
hover template per scatter; only what varies in length (whom a token sent its features to, or
received them from) is text.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np
from gradio.components.plot import PlotData

import gtp
from gtp.facts import rgba, statuses

from ..core.results import Exploration
from .base import (GRID_COLOUR, Figure, PhotoLike, Unavailable, centres, edges_of, figure, g4, narrow, numpy, patch_mark,
                   photo_axes, photo_of, propagated_block, ranks, score_formula, segments, view)

WALK_ELEM_ID = "gtp-walk"
EARLIER = ("x", rgba("earlier", 0.9), 9)       # marker of a token propagated in an earlier block
EDGE_WIDTHS = (0.8, 1.6, 2.6, 4.0)          # line width per weight quarter (of the run's max)
EDGE_ALPHAS = (0.35, 0.55, 0.75, 0.95)
TRACES_PER_BLOCK = len(EDGE_WIDTHS) + 4     # one line trace per weight quarter, then four token scatters
STATIC_TRACES = 3                           # tokens-left bars, share zeroed, mass removed
MAX_LISTED = 10                             # receivers / senders listed per hover
LEGEND = "<br>".join((   # short lines: the caption fits under the photo on a phone too
    "<span style='color:rgb(235,50,50)'>■</span> propagated in this block   "
    "<span style='color:rgb(255,205,0)'>◆</span> received features",
    "× propagated earlier   ● kept   lines: width ∝ weight α·W",
    "right, per block: tokens left; share of attention",
    "<span style='color:rgb(214,39,40)'>entries zeroed</span> and "
    "<span style='color:rgb(255,127,14)'>mass removed</span>"))
# customdata columns of the tokens still in a block
FIELDS = ("pid", "row", "col", "score", "regeneration", "broadcasting", "rank", "size")


def _listing(pairs: list[tuple[int, float]]) -> str:
    """'· 13: 0.0077' lines (patch id: weight), strongest first, at most MAX_LISTED (by id: the
    row and column are in that token's own hover)."""
    pairs = sorted(pairs, key=lambda p: -p[1])
    lines = [f"· {p}: {w:.3g}" for p, w in pairs[:MAX_LISTED]]
    if len(pairs) > MAX_LISTED:
        lines.append(f"· … and {len(pairs) - MAX_LISTED} more")
    return "<br>".join(lines)


def _facts(trace: gtp.Trace, b: int, image: int) -> dict:
    """Block b's facts by patch id: score, factors and rank (candidates), size entering and
    after the block, and the edges (sender -> [(receiver, weight)], receiver -> [(sender, weight)])."""
    layer = trace.layers[b]
    cand = numpy(layer.candidates, image)
    facts: dict = {"n_candidates": len(cand), "columns": {}}
    score = numpy(layer.score, image)
    if score is not None:
        for name, values in (("score", score), ("regeneration", numpy(layer.regeneration, image)),
                             ("broadcasting", numpy(layer.broadcasting, image)), ("rank", ranks(score))):
            if values is not None:
                facts["columns"][name] = {int(p): v for p, v in zip(cand, values.tolist()) if p >= 0}
    facts["size_after"] = dict(zip(numpy(layer.kept, image).tolist(), numpy(layer.sizes, image).tolist()))
    facts["size_in"] = ({} if b == 0 else   # every patch token enters block 1 with size 1
                        dict(zip(numpy(trace.layers[b - 1].kept, image).tolist(),
                                 numpy(trace.layers[b - 1].sizes, image).tolist())))
    facts["edges"] = src, dst, w = edges_of(layer, image)
    facts["sent"], facts["got"] = {}, {}
    for s, d, x in zip(src.tolist(), dst.tolist(), w.tolist()):
        facts["sent"].setdefault(s, []).append((d, x))
        facts["got"].setdefault(d, []).append((s, x))
    return facts


# The statuses a token can have in a block: (role, marker (plotly symbol, colour, size), words).
STATUSES = {
    "kept": ("candidates", ("circle", rgba("kept", 0.45), 6), "kept"),
    "received": ("received", ("diamond", rgba("received", 0.95), 10), "kept; received features in this block"),
    "here": ("propagated", ("square", rgba("propagated", 0.9), 15), "propagated in this block"),
}


def _template(b: int, facts: dict, formula: str, status: str) -> str:
    """The hover template of block b's tokens of one status; customdata: FIELDS, then for a
    receiver the weight received and its size after the block; text: whom the token sent its
    features to, or received them from."""
    columns = facts["columns"]
    lines = ["<b>patch %{customdata[0]} (row %{customdata[1]}, col %{customdata[2]})</b>",
             f"block {b + 1}: {STATUSES[status][2]}"]
    if "score" in columns:
        lines.append("selection score %{customdata[3]:.4~g}" + (f" = {formula}" if "regeneration" in columns
                                                                 and formula else ""))
        if "regeneration" in columns:
            lines.append("· regeneration difficulty %{customdata[4]:.4~g}")
        if "broadcasting" in columns:
            lines.append("· broadcasting ability %{customdata[5]:.4~g}")
        lines.append(f"rank %{{customdata[6]}} of {facts['n_candidates']} candidates (lowest leaves first)")
    else:
        lines.append("no selection in this block")
    if status == "here":
        lines += ["size %{customdata[7]:.4~g} when it left",
                  "sent its features to %{customdata[8]} tokens (patch: weight α·W):<br>%{text}"]
    elif status == "received":
        lines += ["size %{customdata[7]:.4~g} entering this block, %{customdata[9]:.4~g} after it",
                  "received %{customdata[8]:.3~g} in all from (patch: weight α·W):<br>%{text}"]
    else:
        lines.append("size %{customdata[7]:.4~g} entering this block")
    return "<br>".join(lines) + "<extra></extra>"


def _tokens(ids: list[int], b: int, facts: dict, formula: str, grid: tuple[int, int], status: str,
            visible: bool) -> dict:
    """One scatter of block b's tokens of one status, their facts rounded to what the hover shows."""
    columns, got = facts["columns"], facts["got"]

    def row(p: int) -> list:
        score, regeneration, broadcasting, rank = (columns.get(name, {}).get(p) for name in FIELDS[3:7])
        facts_of_p = [p, p // grid[1], p % grid[1], *(None if v is None else g4(v) for v in
                                                      (score, regeneration, broadcasting)),
                      None if rank is None else int(rank), g4(facts["size_in"].get(p, 1.0))]
        if status == "received":
            facts_of_p += [g4(sum(x for _, x in got[p])), g4(facts["size_after"].get(p, 1.0))]
        elif status == "here":
            facts_of_p.append(len(facts["sent"].get(p, ())))
        return facts_of_p

    role, (symbol, colour, size), _ = STATUSES[status]
    x, y = centres(np.array(ids, dtype=np.int64), grid)
    trace = dict(x=x.tolist(), y=y.tolist(), mode="markers", visible=visible, name=f"block {b + 1}, {role}",
                 customdata=[row(p) for p in ids], hovertemplate=_template(b, facts, formula, status),
                 meta={"block": b, "role": role}, marker=dict(symbol=symbol, color=colour, size=size))
    if status == "here":
        trace["marker"]["line"] = dict(width=1, color="white")
    if status != "kept":
        listed = facts["sent"] if status == "here" else got
        trace["text"] = [_listing(listed[p]) if p in listed else "" for p in ids]
    return trace


def _token_traces(trace: gtp.Trace, b: int, image: int, facts: dict, visible: bool) -> list[dict]:
    """Block b's tokens as four scatters: propagated in an earlier block ("earlier"), kept
    ("candidates"), kept and receiving features ("received"), propagated here ("propagated")."""
    grid = trace.grid_size
    left = propagated_block(trace, image)
    formula = score_formula(str(trace.config.get("selection", "")))
    status = statuses(trace, b, image)   # the library's statuses: the static figures draw the same
    gone = status["earlier"]
    x, y = centres(np.array(gone, dtype=np.int64), grid)
    earlier = dict(
        x=x.tolist(), y=y.tolist(), mode="markers", visible=visible, name=f"block {b + 1}, gone",
        meta={"block": b, "role": "earlier"},
        customdata=[[p, p // grid[1], p % grid[1], left[p] + 1] for p in gone],
        hovertemplate=("<b>patch %{customdata[0]} (row %{customdata[1]}, col %{customdata[2]})</b><br>"
                       f"block {b + 1}: " "propagated in block %{customdata[3]}<extra></extra>"),
        marker=dict(symbol=EARLIER[0], color=EARLIER[1], size=EARLIER[2], line=dict(width=1, color="white")))
    return [earlier,
            _tokens(status["kept"], b, facts, formula, grid, "kept", visible),
            _tokens(status["received"], b, facts, formula, grid, "received", visible),
            _tokens(status["propagated"], b, facts, formula, grid, "here", visible)]


def _block_traces(trace: gtp.Trace, b: int, image: int, w_max: float, visible: bool) -> list[dict]:
    """Block b's line traces (one per weight quarter) and its token scatters, on top."""
    facts = _facts(trace, b, image)
    src, dst, w = facts["edges"]
    lines = []
    share = w / w_max if w_max > 0 else np.zeros_like(w)
    quarter = np.minimum((share * len(EDGE_WIDTHS)).astype(np.int64), len(EDGE_WIDTHS) - 1)
    for q, (width, alpha) in enumerate(zip(EDGE_WIDTHS, EDGE_ALPHAS)):
        keep = quarter == q
        ex, ey = segments(src[keep], dst[keep], trace.grid_size)
        lines.append(dict(x=ex, y=ey, mode="lines", visible=visible, hoverinfo="skip",
                          name=f"block {b + 1} weights, quarter {q + 1}",
                          line=dict(width=width, color=rgba("edges", alpha))))
    return [*lines, *_token_traces(trace, b, image, facts, visible)]


def _charts(trace: gtp.Trace, image: int) -> list[dict]:
    """Tokens left after each block, and the share of attention zeroed / mass removed."""
    blocks = list(range(1, len(trace.layers) + 1))
    gone = [int((numpy(layer.propagated, image) >= 0).sum()) for layer in trace.layers]
    out = [dict(type="bar", x=blocks, y=trace.tokens_per_block(), xaxis="x2", yaxis="y2",
                marker=dict(color="rgb(31,119,180)"), name="tokens left", customdata=gone,
                hovertemplate="after block %{x}: %{y} tokens left (prefix included)<br>"
                              "%{customdata} propagated in this block<extra></extra>")]
    zeroed = np.stack([numpy(layer.zeroed_fraction, image) for layer in trace.layers]) * 100   # [depth, H]
    mass = np.stack([numpy(layer.mass_removed, image) for layer in trace.layers]) * 100
    for values, name, colour in ((zeroed, "attention entries zeroed", "rgb(214,39,40)"),
                                 (mass, "attention mass removed", "rgb(255,127,14)")):
        out.append(dict(
            x=blocks, y=values.mean(1).round(3).tolist(), xaxis="x3", yaxis="y3", mode="lines+markers",
            name=name, line=dict(color=colour), customdata=np.stack([values.min(1), values.max(1)], 1).round(3).tolist(),
            hovertemplate=f"block %{{x}}: %{{y:.1f}} % of {name} (mean of heads; "
                          "heads %{customdata[0]:.1f} to %{customdata[1]:.1f} %)<extra></extra>"))
    return out


def _step(trace: gtp.Trace, b: int, image: int, extra: int = 0) -> dict:
    """Slider step b: this block's traces visible, the marks on the charts moved; the `extra`
    traces after the blocks' (a highlight) stay visible."""
    depth = len(trace.layers)
    visible = [True] * STATIC_TRACES + [False] * (TRACES_PER_BLOCK * depth) + [True] * extra
    for t in range(TRACES_PER_BLOCK):
        visible[STATIC_TRACES + b * TRACES_PER_BLOCK + t] = True
    layer = trace.layers[b]
    now = int((numpy(layer.propagated, image) >= 0).sum())
    caption = f"block {b + 1}/{depth}: {now} propagated, {layer.tokens_out} tokens left"
    marks = {f"shapes[{i}].{k}": b + 1 + d for i in (0, 1) for k, d in (("x0", -0.5), ("x1", 0.5))}
    return dict(method="update", label=str(b + 1), value=str(b),
                args=[{"visible": visible}, {"annotations[0].text": caption, **marks}])


def layer_walk_figure(photo: PhotoLike, trace: gtp.Trace, image: int = 0, block: int = 0,
                      height: int = 560, highlight: Optional[int] = None) -> Figure:
    """Every block of one traced GTP forward in one figure with a block slider.

    photo: the model's input as shown (PIL image, uint8 [H, W, 3] or an image source); trace: a
    `gtp.Trace` (attention maps not needed); image: which image of the batch; block: the step
    shown first (0-based); highlight: a patch id marked in every block. Traces: STATIC_TRACES
    chart traces, then TRACES_PER_BLOCK per block (lines first, tokens last), then the highlight;
    `layout.sliders[0].steps[b]` makes block b's visible.
    """
    depth = len(trace.layers)
    if depth == 0:
        raise Unavailable("the trace holds no block: run the model inside gtp.trace(model) first")
    block = min(max(int(block), 0), depth - 1)
    data = _charts(trace, image)
    w_max = max((float(edges_of(layer, image)[2].max()) for layer in trace.layers
                 if len(edges_of(layer, image)[2])), default=0.0)
    for b in range(depth):
        data += _block_traces(trace, b, image, w_max, visible=b == block)
    if highlight is not None:
        data.append(patch_mark(highlight, trace.grid_size))
    steps = [_step(trace, b, image, extra=int(highlight is not None)) for b in range(depth)]
    axis = dict(gridcolor=GRID_COLOUR, zeroline=False, fixedrange=True)
    mark = dict(type="rect", y0=0, y1=1, fillcolor=GRID_COLOUR, line=dict(width=0), layer="below",
                x0=block + 0.5, x1=block + 1.5)
    layout = dict(
        xaxis=dict(domain=[0, 0.6]), yaxis=dict(domain=[0.14, 1]),
        xaxis2=dict(domain=[0.68, 1], anchor="y2", dtick=1 if depth <= 12 else 2, title=dict(text="block"), **axis),
        yaxis2=dict(domain=[0.62, 1], anchor="x2", title=dict(text="tokens left"), rangemode="tozero", **axis),
        xaxis3=dict(domain=[0.68, 1], anchor="y3", dtick=1 if depth <= 12 else 2, title=dict(text="block"), **axis),
        yaxis3=dict(domain=[0.12, 0.46], anchor="x3", title=dict(text="% of attention"), rangemode="tozero", **axis),
        showlegend=False,   # the caption under the photo says what each mark and line is
        shapes=[dict(xref="x2", yref="y2 domain", **mark), dict(xref="x3", yref="y3 domain", **mark)],
        annotations=[dict(text=steps[block]["args"][1]["annotations[0].text"], xref="paper", yref="paper", x=0, y=1.0,
                          xanchor="left", yanchor="bottom", showarrow=False, font=dict(size=13)),
                     dict(text=LEGEND, xref="paper", yref="paper", x=0, y=0.12, xanchor="left", yanchor="top",
                          showarrow=False, font=dict(size=10))],
        sliders=[dict(active=block, steps=steps, currentvalue=dict(prefix="block ", font=dict(size=12)), x=0,
                      len=0.6, y=0, yanchor="top", pad=dict(t=20, b=0), font=dict(size=10))])
    photo_axes(layout, photo, trace.grid_size)
    fig = figure(data, layout, height)
    fig["layout"]["margin"].update(t=30, b=70)
    # narrow (a phone): the photo the full width, its caption under it, then the two charts, each the
    # full width, one under the other (beside the photo they overlap it and pile their ticks up)
    return narrow(fig, {"height": 940, "xaxis.domain": [0, 1], "yaxis.domain": [0.57, 1], "annotations[1].y": 0.555,
                        "annotations[1].text": LEGEND.replace("right, per block", "below, per block"),
                        "xaxis2.domain": [0.2, 1], "yaxis2.domain": [0.34, 0.47], "xaxis3.domain": [0.2, 1],
                        "yaxis3.domain": [0.09, 0.22], "sliders[0].len": 1, "margin.b": 80})


def walk(exp: Exploration, block: int = 0, highlight: Optional[int] = None) -> PlotData:
    """Every block in one figure (slider and Play run in the browser), starting at `block`
    (0-based); `highlight`: a patch id marked in every block."""
    return view(exp, ("walk", block) + (() if highlight is None else (highlight,)),
                lambda: layer_walk_figure(photo_of(exp), exp.trace, block=block, highlight=highlight))


def sent_figure(photo: PhotoLike, trace: gtp.Trace, block: int, token: int, image: int = 0,
                height: int = 480) -> Figure:
    """One propagated token's own edges in block `block` (0-based): patch `token` marked, a line to
    each token that received its features, wider for a larger weight alpha * W, the receivers
    marked (hover: the weight). The layer walk draws every token's edges at once."""
    grid = trace.grid_size
    src, dst, w = edges_of(trace.layers[block], image)
    mine = src == int(token)
    dst, w = dst[mine], w[mine]
    if not len(dst):
        raise Unavailable(f"patch {int(token)} sent its features to no token in block {block + 1}")
    share = w / w.max()
    data = []
    for d, x, sh in zip(dst.tolist(), w.tolist(), share.tolist()):
        lx, ly = segments(np.array([int(token)]), np.array([d]), grid)
        data.append(dict(x=lx, y=ly, mode="lines", hoverinfo="skip", showlegend=False, name=f"to patch {d}",
                         line=dict(width=1 + 5 * sh, color=f"rgba(255,205,0,{0.4 + 0.55 * sh:.2f})")))
    x, y = centres(dst, grid)
    data.append(dict(x=x.tolist(), y=y.tolist(), mode="markers", name="received", meta={"role": "received"},
                     customdata=[[int(d), d // grid[1], d % grid[1], g4(v)] for d, v in zip(dst.tolist(), w.tolist())],
                     hovertemplate=("<b>patch %{customdata[0]} (row %{customdata[1]}, col %{customdata[2]})</b><br>"
                                    f"received α·W = %{{customdata[3]:.4~g}} of patch {int(token)}'s features"
                                    "<extra></extra>"),
                     marker=dict(symbol="diamond", size=10, color="rgba(255,205,0,0.95)"), showlegend=False))
    data.append(patch_mark(int(token), grid))
    layout = dict(showlegend=False, annotations=[dict(
        text=f"block {block + 1}: patch {int(token)} sent its features to {len(dst)} tokens (width ∝ α·W)",
        xref="paper", yref="paper", x=0, y=1.0, xanchor="left", yanchor="bottom", showarrow=False, font=dict(size=12))])
    photo_axes(layout, photo, grid)
    fig = figure(data, layout, height)
    fig["layout"]["margin"].update(t=30)
    return fig


def sent(exp: Exploration, block: int, token: int) -> PlotData:
    """`sent_figure` of this run (cached)."""
    return view(exp, ("sent", block, token), lambda: sent_figure(photo_of(exp), exp.trace, block, token))


# ----------------------------------------------------------------------------- Play, in the browser
# Gradio 6 hands plotly only data, layout and config (no frames, so no `animate`); the slider's
# steps use plotly's "update" method, and PLAY_JS steps through them with `Plotly.update` in the
# page, asking the server for nothing:
#
#     walk = gr.Plot(elem_id=WALK_ELEM_ID)              # shows layer_walk_figure(...)
#     gr.Button("Play").click(None, js=PLAY_JS)          # a second press pauses

PLAY_MS = 700          # milliseconds per block while playing

_PLAY_TEMPLATE = """
() => {
  const host = document.getElementById(__ID__);
  const gd = host && host.querySelector(".js-plotly-plot");
  if (!gd || !window.Plotly || !gd.layout || !(gd.layout.sliders || []).length) return [];
  if (gd._gtpPlay) { clearInterval(gd._gtpPlay); gd._gtpPlay = null; return []; }  // pressed again: pause
  const slider = () => gd.layout.sliders[0];
  let i = slider().active || 0;
  if (i >= slider().steps.length - 1) i = -1;                                     // at the end: from the start
  const next = () => {
    const steps = slider().steps;                     // re-read: the server may have sent a new figure
    i += 1;
    if (i >= steps.length) { clearInterval(gd._gtpPlay); gd._gtpPlay = null; return; }
    const [data, layout] = steps[i].args;
    window.Plotly.update(gd, data, Object.assign({}, layout || {}, {"sliders[0].active": i}));
  };
  next();
  gd._gtpPlay = setInterval(next, __MS__);
  return [];
}
"""


def play_js(elem_id: str = WALK_ELEM_ID, ms_per_block: int = PLAY_MS) -> str:
    """JavaScript for `gr.Button(...).click(None, js=...)`: step the slider of the plotly
    figure inside the element `elem_id` through its steps in the browser; pressing again
    pauses; at the last step it starts over."""
    return _PLAY_TEMPLATE.replace("__ID__", json.dumps(elem_id)).replace("__MS__", str(int(ms_per_block)))


PLAY_JS = play_js()
