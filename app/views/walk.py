"""The layer walk: ONE figure holding every block, switched by a slider in the browser.

Left: the photo (one shared layout image) with the token grid as a scatter, per block one
token trace and a few line traces (propagated token -> receivers, wider for a larger weight
alpha * W). Right: tokens left after each block and the attention sparsity per block, with
the current block marked. Each slider step uses plotly's "update" method: it only switches
which block's traces are visible and moves the marks, so scrubbing and playing
(`PLAY_JS` below) never ask the server for anything.
"""
from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
from gradio.components.plot import PlotData

import gtp

from ..core.results import Exploration
from .base import (PhotoLike, centres, edges_of, numpy, photo_axes, propagated_block, score_formula, segments,
                   theme, view)

# Per-token status at a block -> (marker symbol, colour, size, opacity)
STATUS_STYLE = {
    "here": ("square", "rgb(235,50,50)", 15, 0.9),
    "earlier": ("x", "rgb(60,60,60)", 9, 0.9),
    "received": ("diamond", "rgb(255,205,0)", 10, 0.95),
    "kept": ("circle", "rgb(255,255,255)", 6, 0.45),
}
EDGE_WIDTHS = (0.8, 1.6, 2.6, 4.0)          # line width per weight quarter (of the run's max)
EDGE_ALPHAS = (0.35, 0.55, 0.75, 0.95)
TRACES_PER_BLOCK = len(EDGE_WIDTHS) + 2     # one line trace per weight quarter, then two token scatters
STATIC_TRACES = 3                           # tokens-left bars, share zeroed, mass removed
MAX_LISTED = 10                             # receivers / senders listed per hover
LEGEND = ("<span style='color:rgb(235,50,50)'>■</span> propagated in this block   "
          "<span style='color:rgb(255,205,0)'>◆</span> received features   × propagated earlier   "
          "● kept   lines: width ∝ weight α·W")


def _block_facts(trace: gtp.Trace, b: int, image: int) -> dict:
    """What the hover of block b needs, as plain numpy: scores and ranks by candidate id,
    sizes entering and leaving, and the block's edges."""
    layer = trace.layers[b]
    cand = numpy(layer.candidates, image)
    facts = {"score": {}, "regeneration": {}, "broadcasting": {}, "rank": {}, "n_candidates": len(cand)}
    score = numpy(layer.score, image)
    if score is not None:
        order = np.argsort(score, kind="stable")     # ties to the lower position, as gtp does
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(1, len(order) + 1)
        for name, values in (("score", score), ("regeneration", numpy(layer.regeneration, image)),
                             ("broadcasting", numpy(layer.broadcasting, image)), ("rank", rank)):
            if values is not None:
                facts[name] = {int(p): v for p, v in zip(cand, values.tolist()) if p >= 0}
    facts["size_after"] = {int(p): s for p, s in zip(numpy(layer.kept, image), numpy(layer.sizes, image).tolist())}
    if b > 0:
        prev = trace.layers[b - 1]
        facts["size_before"] = {int(p): s for p, s in zip(numpy(prev.kept, image), numpy(prev.sizes, image).tolist())}
    else:
        facts["size_before"] = {}                     # every patch token enters block 1 with size 1
    facts["edges"] = src, dst, w = edges_of(layer, image)
    facts["sent"], facts["got"] = {}, {}          # sender -> [(receiver, weight)], receiver -> [(sender, weight)]
    for s, d, x in zip(src.tolist(), dst.tolist(), w.tolist()):
        facts["sent"].setdefault(s, []).append((d, x))
        facts["got"].setdefault(d, []).append((s, x))
    return facts


def _listing(pairs: list[tuple[int, float]]) -> str:
    """'· patch 13: 0.0077' lines, strongest first, at most MAX_LISTED."""
    pairs = sorted(pairs, key=lambda p: -p[1])
    lines = [f"· patch {p}: {w:.3g}" for p, w in pairs[:MAX_LISTED]]   # by id: ~60 kB less per figure
    if len(pairs) > MAX_LISTED:
        lines.append(f"· … and {len(pairs) - MAX_LISTED} more")
    return "<br>".join(lines)


STATUS_TEXT = {"here": "propagated in this block", "received": "kept; received features in this block",
               "kept": "kept"}


def _extra(pid: int, status: str, facts: dict, grid: tuple[int, int]) -> str:
    """The size line and, for a sender or a receiver, whom it sent to / received from."""
    if status == "here":
        sent = facts["sent"].get(pid, [])
        text = f"size {facts['size_before'].get(pid, 1.0):.4g} when it left"
        if sent:
            text += f"<br>sent its features to {len(sent)} tokens (weight α·W):<br>" + _listing(sent)
        return text
    text = f"size {facts['size_after'].get(pid, 1.0):.4g} after this block"
    if status == "received":
        got = facts["got"].get(pid, [])
        text += f"<br>received {sum(x for _, x in got):.3g} in all (weight α·W) from:<br>" + _listing(got)
    return text


def _template(b: int, facts: dict, formula: str) -> str:
    """The hover template of block b's candidate tokens; customdata = [pid, row, col, status,
    score, regeneration, broadcasting, rank, extra] (CANDIDATE_FIELDS)."""
    lines = ["<b>patch %{customdata[0]} (row %{customdata[1]}, col %{customdata[2]})</b>",
             f"block {b + 1}: %{{customdata[3]}}"]
    if facts["score"]:
        has_factors = bool(facts["regeneration"]) and bool(formula)
        lines.append("selection score %{customdata[4]:.4~g}" + (f" = {formula}" if has_factors else ""))
        if facts["regeneration"]:
            lines.append("· regeneration difficulty %{customdata[5]:.4~g}")
        if facts["broadcasting"]:
            lines.append("· broadcasting ability %{customdata[6]:.4~g}")
        lines.append(f"rank %{{customdata[7]}} of {facts['n_candidates']} candidates (lowest leaves first)")
    else:
        lines.append("no selection in this block")
    lines.append("%{customdata[8]}")
    return "<br>".join(lines) + "<extra></extra>"


CANDIDATE_FIELDS = ("pid", "row", "col", "status", "score", "regeneration", "broadcasting", "rank", "extra")


def _status(pid: int, b: int, left: dict[int, int], receivers: set[int]) -> str:
    k = left.get(pid)
    if k is not None and k < b:
        return "earlier"
    if k == b:
        return "here"
    return "received" if pid in receivers else "kept"


def _marker(statuses: list[str]) -> dict:
    style = [STATUS_STYLE[s] for s in statuses]
    return dict(symbol=[s[0] for s in style], color=[s[1] for s in style], size=[s[2] for s in style],
                opacity=[s[3] for s in style],
                line=dict(width=[1 if s in ("here", "earlier") else 0 for s in statuses], color="white"))


def _token_traces(trace: gtp.Trace, b: int, image: int, facts: dict, visible: bool) -> list[go.Scatter]:
    """Block b's tokens as two scatters: the candidates entering the block (with their scores)
    and the patches whose tokens left in an earlier block."""
    grid = trace.grid_size
    left = propagated_block(trace, image)
    receivers = set(facts["edges"][1].tolist())
    statuses = {p: _status(p, b, left, receivers) for p in range(trace.num_patches)}
    cand = [p for p in range(trace.num_patches) if statuses[p] != "earlier"]
    gone = [p for p in range(trace.num_patches) if statuses[p] == "earlier"]
    formula = score_formula(str(trace.config.get("selection", "")))

    def value(name: str, p: int):
        v = facts[name].get(p)
        return None if v is None else (int(v) if name == "rank" else float(f"{v:.6g}"))

    data = [[p, p // grid[1], p % grid[1], STATUS_TEXT[statuses[p]], value("score", p), value("regeneration", p),
             value("broadcasting", p), value("rank", p), _extra(p, statuses[p], facts, grid)] for p in cand]
    x, y = centres(np.array(cand), grid)
    candidates = go.Scatter(
        x=x.tolist(), y=y.tolist(), mode="markers", xaxis="x", yaxis="y", visible=visible, showlegend=False,
        name=f"block {b + 1}", customdata=data, hovertemplate=_template(b, facts, formula),
        meta={"block": b, "role": "candidates",
              "propagated": [int(p) for p in numpy(trace.layers[b].propagated, image) if p >= 0]},
        marker=_marker([statuses[p] for p in cand]))
    x, y = centres(np.array(gone, dtype=np.int64), grid)
    earlier = go.Scatter(
        x=x.tolist(), y=y.tolist(), mode="markers", xaxis="x", yaxis="y", visible=visible, showlegend=False,
        name=f"block {b + 1}, gone", customdata=[[p, p // grid[1], p % grid[1], left[p] + 1] for p in gone],
        hovertemplate=("<b>patch %{customdata[0]} (row %{customdata[1]}, col %{customdata[2]})</b><br>"
                       f"block {b + 1}: " "propagated in block %{customdata[3]}<extra></extra>"),
        meta={"block": b, "role": "earlier"}, marker=_marker(["earlier"] * len(gone)))
    return [earlier, candidates]


def _block_traces(trace: gtp.Trace, b: int, image: int, w_max: float, visible: bool) -> list[go.Scatter]:
    """Block b's line traces (one per weight quarter) and its two token scatters, on top."""
    facts = _block_facts(trace, b, image)
    src, dst, w = facts["edges"]
    lines = []
    share = w / w_max if w_max > 0 else np.zeros_like(w)
    quarter = np.minimum((share * len(EDGE_WIDTHS)).astype(np.int64), len(EDGE_WIDTHS) - 1)
    for q, (width, alpha) in enumerate(zip(EDGE_WIDTHS, EDGE_ALPHAS)):
        keep = quarter == q
        ex, ey = segments(src[keep], dst[keep], trace.grid_size)
        lines.append(go.Scatter(x=ex, y=ey, mode="lines", xaxis="x", yaxis="y", visible=visible, showlegend=False,
                                hoverinfo="skip", name=f"block {b + 1} weights, quarter {q + 1}",
                                line=dict(width=width, color=f"rgba(255,205,0,{alpha})")))
    return [*lines, *_token_traces(trace, b, image, facts, visible)]


def _charts(trace: gtp.Trace, image: int) -> list[go.Bar | go.Scatter]:
    """Tokens left after each block, and the share of attention zeroed / mass removed."""
    blocks = list(range(1, len(trace.layers) + 1))
    left = trace.tokens_per_block()
    gone = [len([p for p in numpy(l.propagated, image)]) for l in trace.layers]
    bars = go.Bar(x=blocks, y=left, xaxis="x2", yaxis="y2", marker_color="rgb(31,119,180)", showlegend=False,
                  name="tokens left", customdata=gone,
                  hovertemplate="after block %{x}: %{y} tokens left (prefix included)<br>"
                                "%{customdata} propagated in this block<extra></extra>")
    zeroed = np.stack([numpy(l.zeroed_fraction, image) for l in trace.layers]) * 100   # [depth, H]
    mass = np.stack([numpy(l.mass_removed, image) for l in trace.layers]) * 100
    out: list = [bars]
    for values, name, colour in ((zeroed, "attention entries zeroed", "rgb(214,39,40)"),
                                 (mass, "attention mass removed", "rgb(255,127,14)")):
        out.append(go.Scatter(
            x=blocks, y=values.mean(1).round(3).tolist(), xaxis="x3", yaxis="y3", mode="lines+markers",
            name=name, line=dict(color=colour), customdata=np.stack([values.min(1), values.max(1)], 1).round(3).tolist(),
            hovertemplate=f"block %{{x}}: %{{y:.1f}} % of {name} (mean of heads; "
                          "heads %{customdata[0]:.1f} to %{customdata[1]:.1f} %)<extra></extra>"))
    return out


def _step(trace: gtp.Trace, b: int, image: int) -> dict:
    """Slider step b: this block's traces visible, the marks on the charts moved."""
    depth = len(trace.layers)
    visible = [True] * STATIC_TRACES + [False] * (TRACES_PER_BLOCK * depth)
    for t in range(TRACES_PER_BLOCK):
        visible[STATIC_TRACES + b * TRACES_PER_BLOCK + t] = True
    layer = trace.layers[b]
    now = len([p for p in numpy(layer.propagated, image) if p >= 0])
    caption = f"block {b + 1}/{depth}: {now} propagated, {layer.tokens_out} tokens left"
    marks = {f"shapes[{i}].{k}": b + 1 + d for i in (0, 1) for k, d in (("x0", -0.5), ("x1", 0.5))}
    return dict(method="update", label=str(b + 1), value=str(b),
                args=[{"visible": visible}, {"annotations[0].text": caption, **marks}])


def layer_walk_figure(photo: PhotoLike, trace: gtp.Trace, image: int = 0, block: int = 0,
                      height: int = 560) -> go.Figure:
    """Every block of one traced GTP forward in one figure with a block slider.

    photo: the model's input as shown (PIL image or uint8 [H, W, 3]); trace: a `gtp.Trace`
    (attention maps not needed); image: which image of the batch; block: the step shown first
    (0-based). Traces: STATIC_TRACES chart traces, then TRACES_PER_BLOCK per block (tokens
    first); `layout.sliders[0].steps[b]` makes block b's visible.
    """
    depth = len(trace.layers)
    if depth == 0:
        raise ValueError("the trace holds no block: run the model inside gtp.trace(model) first")
    block = min(max(int(block), 0), depth - 1)
    fig = go.Figure()
    fig.add_traces(_charts(trace, image))
    w_max = max((float(edges_of(l, image)[2].max()) for l in trace.layers if len(edges_of(l, image)[2])), default=0.0)
    for b in range(depth):
        fig.add_traces(_block_traces(trace, b, image, w_max, visible=b == block))
    photo_axes(fig, photo, trace.grid_size)
    fig.update_layout(xaxis_domain=[0, 0.6], yaxis_domain=[0.08, 1])
    axis = dict(gridcolor="rgba(138,143,152,0.25)", zeroline=False, fixedrange=True)
    fig.update_layout(
        xaxis2=dict(domain=[0.68, 1], anchor="y2", dtick=1 if depth <= 12 else 2, title_text="block", **axis),
        yaxis2=dict(domain=[0.62, 1], anchor="x2", title_text="tokens left", rangemode="tozero", **axis),
        xaxis3=dict(domain=[0.68, 1], anchor="y3", dtick=1 if depth <= 12 else 2, title_text="block", **axis),
        yaxis3=dict(domain=[0.12, 0.46], anchor="x3", title_text="% of attention", rangemode="tozero", **axis),
        legend=dict(x=0.68, y=0.0, xanchor="left", yanchor="top", orientation="h", font_size=10))
    mark = dict(type="rect", y0=0, y1=1, fillcolor="rgba(138,143,152,0.25)", line_width=0, layer="below")
    fig.add_shape(xref="x2", yref="y2 domain", x0=block + 0.5, x1=block + 1.5, **mark)
    fig.add_shape(xref="x3", yref="y3 domain", x0=block + 0.5, x1=block + 1.5, **mark)
    steps = [_step(trace, b, image) for b in range(depth)]
    fig.add_annotation(text=steps[block]["args"][1]["annotations[0].text"], xref="paper", yref="paper",
                       x=0, y=1.0, xanchor="left", yanchor="bottom", showarrow=False, font_size=13)
    fig.add_annotation(text=LEGEND, xref="paper", yref="paper", x=0, y=0.06, xanchor="left", yanchor="top",
                       showarrow=False, font_size=10)
    theme(fig, height)
    fig.update_layout(margin=dict(t=30, b=70), sliders=[dict(
        active=block, steps=steps, currentvalue=dict(prefix="block ", font_size=12), x=0, len=0.6, y=0,
        yanchor="top", pad=dict(t=20, b=0), font_size=10)])
    return fig



def walk(exp: Exploration, block: int = 0) -> PlotData:
    """Every block in one figure (slider and Play run in the browser), starting at `block` (0-based)."""
    return view(exp, ("walk", block), lambda: layer_walk_figure(exp.model_input, exp.trace, block=block))


# ----------------------------------------------------------------------------- Play, in the browser
# Gradio 6 hands plotly only data, layout and config (no frames, so no `animate`); the slider's
# steps use plotly's "update" method, and PLAY_JS steps through them with `Plotly.update` in the
# page, asking the server for nothing:
#
#     walk = gr.Plot(elem_id=WALK_ELEM_ID)              # shows layer_walk_figure(...)
#     gr.Button("Play").click(None, js=PLAY_JS)          # a second press pauses

WALK_ELEM_ID = "gtp-walk"
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
