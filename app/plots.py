"""Interactive plotly figures for the app: pure functions from library data to
`plotly.graph_objects.Figure`, shown with `gr.Plot`.

Every builder takes plain data: the photo as the model saw it (PIL image or uint8 array),
a `gtp.Trace` of one traced forward (`with gtp.trace(model, attention=True)`), and plain
dicts/lists; none takes the app's own result types. The builders live in

  plots_walk.py      layer_walk_figure: every block in one figure with a block slider
  plots_graphs.py    graph_figure, similarity_figure
  plots_attention.py attention_figure, cls_attention_figure
  plots_compare.py   compare_figure (GTP / ToMe / pruning: where each token left, and how)
  plots_tradeoff.py  tradeoff_figure (published curves of the model's family, measured points)
  plots_base.py      the theme, the photo as one layout image, patch coordinates

Playing the layer walk in the browser: Gradio 6 hands plotly only data, layout and config
(no frames, so no `animate`); the slider's steps use plotly's "update" method, and PLAY_JS
steps through them with `Plotly.update` in the page, asking the server for nothing:

    walk = gr.Plot(elem_id=WALK_ELEM_ID)              # shows layer_walk_figure(...)
    gr.Button("Play").click(None, js=PLAY_JS)          # a second press pauses

For a plot with another elem_id, use `play_js("that-id")`.
"""
from __future__ import annotations

import json

from .plots_attention import attention_figure, cls_attention_figure
from .plots_base import escape, gtp_destinations, photo_uri, theme
from .plots_compare import compare_figure
from .plots_graphs import graph_figure, similarity_figure
from .plots_tradeoff import family, published_records, tradeoff_figure
from .plots_walk import layer_walk_figure

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

__all__ = [
    "PLAY_JS", "WALK_ELEM_ID", "attention_figure", "cls_attention_figure", "compare_figure", "escape", "family",
    "graph_figure", "gtp_destinations", "layer_walk_figure", "photo_uri", "play_js", "published_records",
    "similarity_figure", "theme", "tradeoff_figure",
]
