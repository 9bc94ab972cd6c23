"""The page: its components, built tab by tab (`build_demo`), and nothing else.

Every component goes into one dict, `ui`, by name; `app.ui.events.wire` connects them to the
handlers. The hyper-parameter controls are made from `gtp.GTPConfig`'s fields
(`settings_controls`), so a new field appears here without an edit.
"""
from __future__ import annotations

import base64
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import gradio as gr

import gtp
from gtp import methods
from gtp.models import SUPPORTED_MODELS

from ..core import files, limits
from ..core.assets import example_paths
from ..core.models import DEVICE
from ..core.plain import shown
from ..core.settings import DEFAULT_MODEL, HyperParameter, hyper_parameters
from ..views import graphs, walk
from . import lesson, text
from .handlers import throughput_intro

TITLE = "GTP Explorer: Graph-based Token Propagation on pretrained ViTs"
PAPER = "https://arxiv.org/abs/2311.03035"
LEARN_TEXT = (Path(__file__).with_name("learn.md")).read_text(encoding="utf-8")
gr.set_static_paths([files.PHOTO_DIR])   # the photos the figures show (`app.views.base.photo_of`)
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
# Translucent banners: readable on Gradio's light and dark themes alike.
# Figures start below their panel's label (Gradio floats it over the top left). Below 700 px (a
# phone: the two columns no longer fit side by side) the results come first and the photo and
# settings follow, each column the full width; wide tables scroll inside their panel.
CSS = """
.gtp-banner-random {background: rgba(224,176,0,0.14); border: 1px solid #e0b000; border-radius: 6px; padding: 6px 10px;}
.gtp-banner-ok {background: rgba(102,187,106,0.14); border: 1px solid #66bb6a; border-radius: 6px; padding: 6px 10px;}
#gtp-results .block > .js-plotly-plot {margin-top: 28px;}
#gtp-full .confidence, #gtp-gtp .confidence {display: none;}
@media (max-width: 700px) {
  #gtp-main {flex-wrap: wrap;}
  #gtp-results {order: -1; flex-basis: 100%; min-width: 0 !important;}
  #gtp-inputs {flex-basis: 100%; min-width: 0 !important;}
  #gtp-results table {display: block; overflow-x: auto; font-size: 13px;}
  #gtp-results th, #gtp-results td {white-space: nowrap; padding: 4px 6px;}
  #gtp-results th:first-child, #gtp-results td:first-child {position: sticky; left: 0; z-index: 1;
    background: var(--table-odd-background-fill, var(--background-fill-primary));}
  #gtp-results .modebar-container {display: none;}
}
.gtp-clamped {color: var(--color-accent); font-size: 13px; margin-top: 4px;}
"""
# Run in the page once it loads (`build_demo`):
#  * Enter in a slider's number box runs the setting: Gradio sends a slider's value on release,
#    which its number box fires on blur (not on Enter), so Enter blurs the box;
#  * a typed value outside the slider's bounds is set to the nearest bound by Gradio without a
#    word: a line under the slider says so;
#  * figures with a narrow layout (`layout.meta.narrow`, e.g. the layer walk's charts under the
#    photo instead of beside it) get it where their panel is narrower than `app.views.base.NARROW_PX`.
PAGE_JS = """
() => {
  if (window.gtpPage) return [];
  window.gtpPage = true;
  const sliderOf = (box) => box instanceof HTMLInputElement && box.type === 'number'
    ? box.closest('.block')?.querySelector('input[type=range]') : null;
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && sliderOf(e.target)) e.target.blur();
  }, true);
  document.addEventListener('blur', (e) => {
    const range = sliderOf(e.target);
    if (!range) return;
    const block = e.target.closest('.block');
    block.querySelector('.gtp-clamped')?.remove();
    const v = parseFloat(e.target.value), lo = parseFloat(range.min), hi = parseFloat(range.max);
    if (isNaN(v) || (v >= lo && v <= hi)) return;
    const name = (block.querySelector('[data-testid=block-info], label')?.innerText || 'This setting').split(':')[0].trim();
    const note = document.createElement('div');
    note.className = 'gtp-clamped';
    note.textContent = `${name}: ${v} is outside ${lo} to ${hi}; set to ${v < lo ? lo : hi}.`;
    block.appendChild(note);
  }, true);
  setInterval(() => {
    for (const gd of document.querySelectorAll('.js-plotly-plot')) {
      const narrow = gd.layout && gd.layout.meta && gd.layout.meta.narrow;
      const width = gd.getBoundingClientRect().width;
      if (!narrow || !width || width >= narrow.below || gd._gtpNarrowFor === gd.layout || !window.Plotly) continue;
      gd._gtpNarrowFor = gd.layout;
      window.Plotly.relayout(gd, narrow.relayout);
    }
  }, 250);
  return [];
}
"""


def photo_input(**kwargs: Any) -> gr.Image:
    """A gr.Image (type="filepath") that hands the app the uploaded file's path WITHOUT decoding it.

    Stock gr.Image opens the file with PIL before the app sees it, so a damaged file or a
    decompression bomb would fail inside Gradio with an unhelpful message; here
    `app.core.photos.open_photo` does all decoding, safely. The override is per instance: a subclass
    would make Gradio write a .pyi stub next to this file at import.
    """
    image = gr.Image(type="filepath", **kwargs)

    def preprocess(payload: Any) -> Optional[str]:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # webcam/paste sent inline
            header, _, data = payload.url.partition(",")
            suffix = "." + header.split("/")[-1].split(";")[0] if "/" in header else ".img"
            tmp = tempfile.NamedTemporaryFile(delete=False, suffix=suffix, dir=image.GRADIO_CACHE)
            with tmp, contextlib.suppress(ValueError):  # undecodable: an empty file, reported as such
                tmp.write(base64.b64decode(data))
            return tmp.name
        return payload.path

    image.preprocess = preprocess
    return image


def checked_number(component: gr.components.Component, name: str) -> gr.components.Component:
    """A slider or number box that answers a non-numeric value (possible through the raw API)
    with a clear message; stock Gradio fails comparing it with the bounds and says nothing."""
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is not None and (isinstance(payload, bool) or not isinstance(payload, (int, float))):
            try:
                payload = float(payload)
            except (TypeError, ValueError):
                raise gr.Error(f"{name} must be a number; got {shown(payload)}", title="Cannot do that") from None
        return original(payload)

    component.preprocess = preprocess
    return component


def control(p: HyperParameter) -> gr.components.Component:
    """The input component for one hyper-parameter, from its metadata."""
    elem_id = f"gtp-hp-{p.name}"
    if p.kind == "bool":
        return gr.Checkbox(value=bool(p.default), label=p.label, elem_id=elem_id)
    if p.kind == "choice":
        return gr.Dropdown(list(p.choices), value=p.default, label=p.label, elem_id=elem_id)
    if p.kind in ("int", "float") and p.min is not None and p.max is not None:
        step = p.step if p.step is not None else (p.max - p.min) / 100
        return checked_number(gr.Slider(p.min, p.max, value=p.default, step=step, label=p.label,
                                        elem_id=elem_id), p.name)
    if p.kind in ("int", "float"):
        return checked_number(gr.Number(value=p.default, precision=0 if p.kind == "int" else None,
                                        label=p.label, elem_id=elem_id), p.name)
    return gr.Textbox(value="" if p.default is None else str(p.default), label=p.label, elem_id=elem_id)


def settings_controls(config_cls: type = gtp.GTPConfig) -> dict[str, gr.components.Component]:
    """One control per field of `config_cls`, by field name (call inside a gr.Blocks)."""
    return {p.name: control(p) for p in hyper_parameters(config_cls)}


def _plot(label: str, elem_id: str) -> gr.Plot:
    """An interactive plotly view (handlers return `app.views` values)."""
    return gr.Plot(label=label, elem_id=elem_id)


# ----------------------------------------------------------------------------- the left column


def _inputs_column(ui: dict) -> None:
    ui["photo"] = photo_input(label="Photo (upload, paste or webcam)", image_mode=None,
                              sources=["upload", "clipboard", "webcam"], height=300, elem_id="gtp-photo")
    gr.Examples(examples=[[p] for p in example_paths()], inputs=[ui["photo"]],
                label="Example photos (CC0 / public domain)")
    ui["model"] = gr.Dropdown([(f"{name}: {about}", name) for name, about in SUPPORTED_MODELS.items()],
                              value=DEFAULT_MODEL, label="Model", elem_id="gtp-model")
    with gr.Accordion("Your own weights", open=False) as ui["weights_box"]:
        ui["weights"] = gr.File(label="Weights file for the chosen model (.safetensors / .pth)", elem_id="gtp-weights",
                                file_types=[".safetensors", ".pth", ".pt", ".bin"], type="filepath")
        gr.Markdown(text.UPLOAD_NOTE + " Or set the environment variable `GTP_WEIGHTS_DIR` to a folder "
                    "holding `<model name>.safetensors` before starting the app.")
    with gr.Accordion("GTP hyper-parameters", open=True):
        ui["hp"] = settings_controls()
        ui["schedule"] = gr.Textbox(value="", label="Per-block P schedule (optional)",
                                    placeholder="e.g. 0,0,8,8,8,8,8,8,8,8,8,8 — one per block; overrides P",
                                    info="Press Enter to apply.")
        ui["preset"] = gr.Button("Published setting", elem_id="gtp-preset")
    ui["run_button"] = gr.Button("Run", variant="primary", elem_id="gtp-run")
    ui["copy_link"] = gr.Button("Copy link", size="sm", elem_id="gtp-copy-link")
    ui["link"] = gr.Textbox(label="Link to this view (photo, model, settings, tab)", interactive=False,
                            buttons=["copy"], elem_id="gtp-link")
    ui["link_note"] = gr.Markdown("", elem_id="gtp-link-note")
    ui["page"] = gr.Textbox(visible="hidden", elem_id="gtp-page")   # the page's address, from the browser


# ----------------------------------------------------------------------------- the tabs


def _prediction_tab(ui: dict) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=260):
            ui["full_label"] = gr.Label(num_top_classes=5, label="Full model", elem_id="gtp-full")
            ui["gtp_label"] = gr.Label(num_top_classes=5, label="GTP", elem_id="gtp-gtp")
            # A model without classes (a backbone such as DINOv2) shows its own result here instead.
            ui["backbone_md"] = gr.Markdown("", visible=False, elem_id="gtp-backbone-md")
            ui["backbone_plot"] = gr.Plot(label="Final patch features: first 3 PCA components as RGB",
                                          visible=False, elem_id="gtp-backbone")
        with gr.Column(scale=3, min_width=360):
            ui["tradeoff_plot"] = _plot("Trade-off: quality vs GMACs", "gtp-tradeoff")
    ui["metrics"] = gr.Markdown("", elem_id="gtp-metrics")
    with gr.Accordion("Measure throughput, add your sweep results", open=False):
        bounds = limits.THROUGHPUT[DEVICE.type]
        with gr.Row():
            ui["batch_size"] = checked_number(gr.Number(
                value=bounds.default_batch, precision=0, minimum=1, maximum=bounds.max_batch,
                label=f"Batch size (1 to {bounds.max_batch} here)", scale=1), "batch size")
            ui["measure"] = gr.Button("Measure throughput", scale=1, elem_id="gtp-measure")
        ui["throughput_md"] = gr.Markdown(throughput_intro())
        ui["measure_curves"] = gr.Button("Measure curves on the bundled photos", elem_id="gtp-measure-curves")
        ui["curves_md"] = gr.Markdown("Each method's feature fidelity against GMACs for this model, measured once "
                                      "(about half a minute on a CPU) and kept.")
        ui["sweep_file"] = gr.File(label="Your sweep results (JSON or CSV from `python -m gtp sweep`)",
                                   file_types=[".json", ".csv"], type="filepath")
        ui["sweep_md"] = gr.Markdown("")


def _layers_tab(ui: dict) -> None:
    ui["walk_plot"] = _plot("Layer walk: every block (slider and Play run in your browser)", walk.WALK_ELEM_ID)
    ui["play"] = gr.Button("▶ Play / pause", elem_id="gtp-play")
    gr.Markdown("Hover a token: its status in this block, its selection score and rank, its size and the "
                "tokens it sent its features to (or received from), with the weights α·W.")


def _graphs_tab(ui: dict) -> None:
    with gr.Row():
        ui["graph_kind"] = gr.Radio(list(graphs.GRAPH_KINDS), value="spatial + semantic", label="Show",
                                    elem_id="gtp-graph-kind")
        # Bounds and the middle token come with the first run: they are the model's (`View.within`).
        ui["token"] = gr.Number(value=None, precision=0, minimum=0, label="Token of the similarity map",
                                elem_id="gtp-token")
    with gr.Row():
        ui["graph_plot"] = _plot("Token graph (hover a token; the chosen token's edges in green)", "gtp-graph")
        ui["similarity_plot"] = _plot("Semantic similarity", "gtp-similarity")
    ui["neighbours_md"] = gr.Markdown("")


def _attention_tab(ui: dict) -> None:
    with gr.Row():
        # Placeholders until the first run gives the model's blocks and heads (`handlers.run`).
        ui["attn_block"] = gr.Slider(1, 2, value=1, step=1, label="Block", elem_id="gtp-attn-block", interactive=False)
        ui["head"] = gr.Slider(0, 1, value=0, step=1, label="Head", elem_id="gtp-head", interactive=False)
    ui["attn_plot"] = _plot("Attention before and after sparsification", "gtp-attn")
    ui["attn_md"] = gr.Markdown("")
    ui["cls_plot"] = _plot("CLS attention over the photo", "gtp-cls")


def _compare_tab(ui: dict) -> None:
    names = [m.label for m in methods.compared()]
    gr.Markdown(f"{', '.join(names[:-1])} and {names[-1]} on the same photo with the same number of tokens "
                "removed per block (P). Each patch is shaded by the block in which its token left; hover it "
                "for how: " + ", ".join(f"{m.how.verb} ({m.label})" for m in methods.compared()) + ".")
    ui["compare_button"] = gr.Button("Compare", elem_id="gtp-compare")
    ui["compare_plot"] = _plot("Where each token left, and how", "gtp-compare-plot")
    ui["compare_md"] = gr.Markdown("Run a photo: the methods run when this tab opens.", elem_id="gtp-compare-md")


def _lesson_tab(ui: dict) -> None:
    with gr.Row(equal_height=True):
        ui["lesson_back"] = gr.Button("Back", size="sm", scale=0, min_width=90, elem_id="gtp-lesson-back",
                                      interactive=False)   # step 1; each step says where Back and Next lead
        ui["lesson_counter"] = gr.Markdown(lesson.counter(1), elem_id="gtp-lesson-counter")
        ui["lesson_next"] = gr.Button("Next", size="sm", variant="primary", scale=0, min_width=90,
                                      elem_id="gtp-lesson-next")
    ui["lesson_md"] = gr.Markdown(lesson.without_run(1), latex_delimiters=LATEX, elem_id="gtp-lesson-md")
    ui["lesson_plot"] = _plot("This run, as the lesson's step shows it (the text says what is highlighted)",
                              "gtp-lesson-plot")
    with gr.Accordion("The method on one page, and how to read the tabs", open=False):
        gr.Markdown(LEARN_TEXT, latex_delimiters=LATEX)
    gr.Markdown("### Downloads")
    ui["make_downloads"] = gr.Button("Prepare the layer-walk GIF and the trace JSON", elem_id="gtp-downloads")
    ui["make_figures"] = gr.Button("Download figures (PDF and PNG)", elem_id="gtp-figures")
    with gr.Row():
        ui["gif_file"] = gr.File(label="Layer walk (GIF)")
        ui["trace_file"] = gr.File(label="Trace (JSON)")
        ui["figures_file"] = gr.File(label="Figures for a paper (zip)", elem_id="gtp-figures-file")


TABS = [("Prediction", "prediction", _prediction_tab), ("Layer walk", "layers", _layers_tab),
        ("Graphs", "graphs", _graphs_tab), ("Attention", "attention", _attention_tab),
        ("Compare", "compare", _compare_tab), ("Lesson", "lesson", _lesson_tab)]


def build_demo() -> gr.Blocks:
    """The whole app (not launched): the components, then `app.ui.events.wire`."""
    from .events import wire
    ui: dict[str, Any] = {}
    with gr.Blocks(title="GTP Explorer", delete_cache=limits.GRADIO_CACHE_CLEANUP) as demo:
        # Session state expires (API clients never close their session): `limits.SESSION_TTL_S`.
        ui["state"] = gr.State(None, time_to_live=limits.SESSION_TTL_S)        # the run on view
        ui["tab"] = gr.State("prediction", time_to_live=limits.SESSION_TTL_S)   # the tab on view
        ui["walk_block"] = gr.State(1, time_to_live=limits.SESSION_TTL_S)       # the layer walk's first block
        ui["lesson_step"] = gr.State(1, time_to_live=limits.SESSION_TTL_S)      # the lesson's step
        ui["shown"] = gr.State(None, time_to_live=limits.SESSION_TTL_S)         # tab -> run key it shows
        ui["sweep_state"] = gr.State(None, time_to_live=limits.SESSION_TTL_S)
        ui["throughput_state"] = gr.State(None, time_to_live=limits.SESSION_TTL_S)
        gr.Markdown(f"# {TITLE}\nAn interactive look at [GTP-ViT (Xu et al., WACV 2024)]({PAPER}): "
                    "watch a ViT drop tokens block by block and push them along a token graph, with no retraining.")
        ui["banner"] = gr.Markdown("Loading the default model…", elem_id="gtp-banner")
        with gr.Row(equal_height=False, elem_id="gtp-main"):
            with gr.Column(scale=1, min_width=320, elem_id="gtp-inputs"):
                _inputs_column(ui)
            with gr.Column(scale=2, elem_id="gtp-results"):
                # What ran, where; while a request waits, Gradio's queue position and ETA show here.
                ui["status"] = gr.Markdown("", elem_id="gtp-status")
                with gr.Tabs(overflow_behavior="wrap", elem_id="gtp-tabs") as ui["tabs"]:   # every tab in sight, on a phone too
                    for title, tab_id, build in TABS:
                        extra = {"elem_id": "gtp-compare-tab"} if tab_id == "compare" else {}
                        with gr.Tab(title, id=tab_id, **extra) as tab:
                            build(ui)
                        ui[f"tab_{tab_id}"] = tab
        wire(demo, ui)
        demo.load(None, js=PAGE_JS)
    return demo


def launch_options() -> dict:
    """Keyword arguments of `demo.launch` for the app as served: the page's CSS, the MCP server
    (the `explore` and `compare` endpoints as tools, at /gradio_api/mcp/; `app.ui.api`), and the
    bounds on uploads and sessions (`limits.launch_options`)."""
    return dict(css=CSS, mcp_server=True, **limits.launch_options())


def create_app() -> gr.Blocks:
    """The app with its queue: one model run at a time (CPU-bound), up to `limits.QUEUE_SIZE` waiting.
    Launch it with `launch_options()` (CSS, MCP server, upload size, session count)."""
    for name, value in limits.SERVER_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    demo = build_demo()
    demo.queue(default_concurrency_limit=1, max_size=limits.QUEUE_SIZE)
    return demo
