"""The page's events as plain functions: each returns the panels it updates BY NAME (a dict
whose keys are the names of `app.ui.layout`'s components); `app.ui.events` binds them.

  * a new photo or new settings (`run`): the models run once per photo and setting
    (`inference.explore_photo`, cached); the visible tab's panels are drawn and the other tabs'
    cleared (each is drawn when it is opened, `open_tab`); then the GMACs the visible tab shows
    and that were never counted are counted and its panels updated: one event, two updates;
  * a tab opened (`open_tab`): its panels drawn from the session's run, unless it shows that run
    already (`shown`: tab -> run key); the Compare tab first runs the compared methods where
    they were deferred (`inference.compared`);
  * view controls (graph kind, token, attention block and head) and the lesson's Back / Next:
    that view redrawn from the run; no model runs. The layer walk has no view event: its slider
    and Play run in the browser.
Errors: `InputError` for input the person must change; anything else is a bug (`app.ui.events`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import gradio as gr

from ..core import costs as K
from ..core import curves, files, inference, limits
from ..core.assets import published_results
from ..core.caches import BoundedCache
from ..core.errors import InputError
from ..core.models import DEFAULT_MODEL, DEVICE
from ..core.photos import open_photo
from ..core.results import Costs, Exploration
from ..core.settings import Settings, hyper_parameters
from ..core.sweep_file import load_sweep
from ..views import attention, backbone, compare as compare_view, figures, gif, graphs, tradeoff, walk
from . import lesson, text

# The panels of each tab, by component name; a run clears those of the tabs not on view.
TAB_PANELS = {
    "prediction": ("full_label", "gtp_label", "backbone_md", "backbone_plot", "tradeoff_plot", "metrics"),
    "layers": ("walk_plot",),
    "graphs": ("graph_plot", "similarity_plot", "neighbours_md"),
    "attention": ("attn_plot", "attn_md", "cls_plot"),
    "compare": ("compare_plot", "compare_md"),
    "lesson": ("lesson_md", "lesson_plot", "lesson_counter"),
}
CLEARED = {"full_label": None, "gtp_label": None, "backbone_md": "", "backbone_plot": None, "tradeoff_plot": None, "metrics": "", "walk_plot": None,
           "graph_plot": None, "similarity_plot": None, "neighbours_md": "", "attn_plot": None, "attn_md": "",
           "cls_plot": None, "compare_plot": None, "compare_md": "Open this tab after a run: the methods run then.",
           "lesson_md": "", "lesson_plot": None, "lesson_counter": ""}


def _clamp(value: Any, low: int, high: int, default: int) -> int:
    try:
        return min(max(int(value), low), high)
    except (TypeError, ValueError, OverflowError):
        return default


@dataclass(frozen=True)
class View:
    """Where the person is looking: the panels' own controls (1-based blocks and lesson step;
    token None: the patch at the centre of the grid). Bounds come from the run's model (`within`)."""
    block: Any = 1
    graph_kind: str = "spatial + semantic"
    token: Any = None
    attn_block: Any = 1
    head: Any = 0
    step: Any = 1

    def within(self, exp: Exploration) -> "View":
        n, (gh, gw) = exp.trace.num_patches, exp.trace.grid_size
        return View(block=_clamp(self.block, 1, exp.depth, 1), graph_kind=self.graph_kind,
                    token=_clamp(self.token, 0, n - 1, (gh // 2) * gw + gw // 2), attn_block=_clamp(self.attn_block, 1, exp.depth, 1),
                    head=_clamp(self.head, 0, exp.num_heads - 1, 0), step=lesson.step_of(self.step))


# ----------------------------------------------------------------------------- views (no model runs)


def draw_layer(state: Optional[Exploration], block: Any = 1) -> dict:
    """The layer walk: every block in one figure, starting at block `block` (1-based)."""
    if state is None:
        return {}
    return {"walk_plot": walk.walk(state, _clamp(block, 1, state.depth, 1) - 1)}


def draw_graph(state: Optional[Exploration], graph_kind: str, token: Any) -> dict:
    if state is None:
        return {}
    t = View(token=token).within(state).token
    return {"graph_plot": graphs.graph(state, graph_kind, highlight=t), "similarity_plot": graphs.similarity(state, t),
            "neighbours_md": text.neighbours_markdown(state, graph_kind, t)}


def draw_attention(state: Optional[Exploration], attn_block: Any, head: Any) -> dict:
    if state is None:
        return {}
    v = View(attn_block=attn_block, head=head).within(state)
    b, h = v.attn_block - 1, v.head
    return {"attn_plot": attention.attention(state, b, h), "cls_plot": attention.cls_attention(state, b, h),
            "attn_md": text.attention_markdown(attention.attention_stats(state, b, h))}


_TRADEOFF: BoundedCache = BoundedCache("trade-off charts", limits.TRADEOFF_CACHE_ENTRIES)


def measured_throughput(exp: Optional[Exploration], measured: Optional[list]) -> list[dict]:
    """The session's throughput measurements of this run's model and setting."""
    if exp is None:
        return []
    return [m for m in measured or () if m.get("setting") == repr(exp.settings)]


def draw_tradeoff(exp: Optional[Exploration], sweep: Optional[list], costs: Optional[Costs] = None,
                  measured: Optional[list] = None):
    """The published trade-off of the model's family with what was measured now (cached: it
    rarely changes)."""
    if costs is None and exp is not None:
        costs = K.costs(exp, count=False)
    model = exp.model_name if exp is not None else DEFAULT_MODEL
    has_head = exp is None or exp.has_head
    current = None if costs is None else {"full": costs.of("full"), "gtp": costs.of("gtp")}
    if current is not None and not has_head:   # a backbone: this photo's feature cosine, GTP vs full
        current["cosine"] = exp.run.feature_cosine
    rates = measured_throughput(exp, measured)
    measured_curves = curves.load(exp.settings) if exp is not None else None
    key = hashlib.sha256(json.dumps([model, has_head, current, sweep or [], rates, measured_curves],
                                    sort_keys=True, default=str).encode()).hexdigest()
    return _TRADEOFF.get_or_make(key, lambda: tradeoff.tradeoff(published_results(), model, current, sweep or (), rates,
                                                                measured_curves, has_head=has_head))


def draw_lesson(exp: Exploration, step: int, sweep: Optional[list] = None, measured: Optional[list] = None,
                count: bool = False) -> dict:
    """Lesson step `step` (1-based) of this run: its text, its figure (a tab's view, highlighted), the
    counter. The last step shows the GMACs, counted here only with `count`."""
    costs = K.costs(exp, ("full", "gtp"), count=count)
    f = lesson.focus(exp)
    plot = lesson.step_figure(exp, step, f, lambda: draw_tradeoff(exp, sweep, costs, measured))
    return {"lesson_md": lesson.step_markdown(exp, step, f, costs), "lesson_plot": plot,
            "lesson_counter": lesson.counter(step), **lesson_buttons(step)}


def lesson_buttons(step: int) -> dict:
    """Back and Next, each enabled only where it leads somewhere (no Next on the last step)."""
    return {"lesson_back": gr.Button(interactive=step > 1), "lesson_next": gr.Button(interactive=step < lesson.NUM_STEPS)}


def lesson_panels(exp: Exploration, step: int, sweep: Optional[list] = None,
                  measured: Optional[list] = None) -> Iterator[dict]:
    """The lesson's panels at `step`; on the last step, then the GMACs if they were never counted."""
    yield draw_lesson(exp, step, sweep, measured)
    if step == lesson.NUM_STEPS and any(K.costs(exp, ("full", "gtp"), count=False).of(m) is None for m in ("full", "gtp")):
        yield draw_lesson(exp, step, sweep, measured, count=True)


def move_lesson(state: Optional[Exploration], lesson_step: Any, by: int, sweep_state: Optional[list] = None,
                throughput_state: Optional[list] = None) -> Iterator[dict]:
    """The lesson's Back (`by` = -1) or Next (+1): the step's panels from the session's run."""
    step = lesson.step_of(lesson.step_of(lesson_step) + by)
    if state is None:
        yield {"lesson_step": step, "lesson_counter": lesson.counter(step), "lesson_md": lesson.without_run(step),
               "lesson_plot": None, **lesson_buttons(step)}
        return
    for k, panels in enumerate(lesson_panels(state, step, sweep_state, throughput_state)):
        yield {"lesson_step": step, **panels} if k == 0 else panels


def draw_compare(state: Exploration) -> dict:
    """The compare view of a compared exploration (`inference.compared`)."""
    return {"compare_plot": compare_view.compare(state),
            "compare_md": text.compare_markdown(state, K.costs(state, K.all_methods(), count=False))}


def top5(classes) -> dict[str, float]:
    """The top-5 as gr.Label takes it, each class named with its probability to 3 significant digits:
    the Label's own figure is a whole percent, "0%" for every class of a random network (the page
    hides it: `layout.CSS`)."""
    return {f"{t.label} ({100 * t.probability:.3g}%)": t.probability for t in classes}


def _prediction(exp: Exploration, costs: Costs, sweep: Optional[list], measured: Optional[list]) -> dict:
    if exp.has_head:
        tag = "" if exp.pretrained else " (random weights)"
        cost = {k: "GMACs counting…" if costs.of(k) is None else f"{costs.of(k):.2f} GMACs" for k in ("full", "gtp")}
        labels = {"full_label": gr.Label(value=top5(exp.run.full_top5), visible=True,
                                         label=f"Full model, {cost['full']}{tag}"),
                  "gtp_label": gr.Label(value=top5(exp.run.gtp_top5), visible=True, label=f"GTP, {cost['gtp']}{tag}")}
        labels.update(backbone_md=gr.Markdown("", visible=False), backbone_plot=gr.Plot(value=None, visible=False))
    else:  # a backbone (no classes): its own result, the features of GTP against the full model's
        labels = {"full_label": gr.Label(value=None, visible=False), "gtp_label": gr.Label(value=None, visible=False),
                  "backbone_md": gr.Markdown(text.backbone_markdown(exp), visible=True),
                  "backbone_plot": gr.Plot(value=backbone.feature_pca(exp), visible=True)}
    return {**labels, "metrics": text.metrics_markdown(exp, costs),
            "tradeoff_plot": draw_tradeoff(exp, sweep, costs, measured)}


def tab_panels(tab: str, exp: Exploration, view: View, sweep: Optional[list] = None,
               measured: Optional[list] = None) -> Iterator[dict]:
    """The panels of tab `tab` for this run; then, where the tab shows GMACs never counted,
    counted and shown. A tab that needs the comparison (Compare) gets it first and updates the
    session's run ("state")."""
    v = view.within(exp)
    if tab == "prediction":
        shown = ("full", "gtp")
        yield _prediction(exp, K.costs(exp, shown, count=False), sweep, measured)
        if any(K.costs(exp, shown, count=False).of(m) is None for m in shown):
            yield _prediction(exp, K.costs(exp, shown), sweep, measured)
    elif tab == "compare":
        done = inference.compared(exp)
        yield {"state": done, **draw_compare(done)}
        if any(K.costs(done, K.all_methods(), count=False).of(m) is None for m in K.all_methods()):
            yield {"compare_md": text.compare_markdown(done, K.costs(done, K.all_methods()))}
    elif tab == "layers":
        yield draw_layer(exp, v.block)
    elif tab == "graphs":
        yield draw_graph(exp, v.graph_kind, v.token)
    elif tab == "attention":
        yield draw_attention(exp, v.attn_block, v.head)
    elif tab == "lesson":
        yield from lesson_panels(exp, v.step, sweep, measured)
    else:
        yield {}


# ----------------------------------------------------------------------------- run events


def run(photo: Optional[str], settings: Settings, view: View = View(), tab: str = "prediction",
        sweep: Optional[list] = None, measured: Optional[list] = None) -> Iterator[dict]:
    """A new photo or new settings: run the models once, draw the visible tab `tab`, clear the
    others; then count the GMACs the tab shows if they never were and update its panels."""
    if not photo:  # the photo was cleared: the panels keep the last run, the status says why nothing ran
        yield {"status": text.NO_PHOTO}
        return
    exp = inference.explore_photo(open_photo(photo), settings)
    v = view.within(exp)
    first = {name: CLEARED[name] for t, names in TAB_PANELS.items() if t != tab for name in names}
    first.update(state=exp, shown={tab: exp.key}, banner=_banner(exp), status=text.status_markdown(exp),
                 token=gr.Number(value=v.token, maximum=exp.trace.num_patches - 1),
                 attn_block=gr.Slider(maximum=exp.depth, value=v.attn_block, interactive=True),
                 head=gr.Slider(maximum=max(1, exp.num_heads - 1), value=v.head, interactive=True))
    for k, panels in enumerate(tab_panels(tab, exp, v, sweep, measured)):
        yield {**first, **panels} if k == 0 else panels


def open_tab(tab: str, state: Optional[Exploration], shown: Optional[dict], view: View = View(),
             sweep: Optional[list] = None, measured: Optional[list] = None) -> Iterator[dict]:
    """Tab `tab` is on view: draw its panels for the session's run, unless it shows it already."""
    shown = dict(shown or {})
    if state is None or shown.get(tab) == state.key:
        yield {"tab": tab}
        return
    shown[tab] = state.key
    for k, panels in enumerate(tab_panels(tab, state, view, sweep, measured)):
        yield {"tab": tab, "shown": shown, **panels} if k == 0 else panels


def _banner(exp: Exploration) -> gr.Markdown:
    style = "gtp-banner-ok" if exp.pretrained else "gtp-banner-random"
    return gr.Markdown(text.banner_markdown(exp), elem_classes=[style])


def published_preset() -> dict:
    """The published setting of every hyper-parameter, and an empty schedule."""
    return {"schedule": "", "hp": {p.name: p.default for p in hyper_parameters()}}


def _batch(exp: Optional[Exploration], batch_size: Any) -> int:
    if exp is None:
        raise InputError("Run a photo first: throughput is measured for the current model and setting.")
    try:
        return int(float(batch_size))
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"batch size must be a whole number; got {batch_size!r}") from None


def measure(state: Optional[Exploration], batch_size: Any, throughput_state: Optional[list],
            sweep_state: Optional[list]) -> dict:
    """The Measure button: the throughput text, the session's measurements with this one added
    (same batch size replaced), and the trade-off chart drawing them."""
    result = inference.throughput(state, _batch(state, batch_size))
    row = dict(result.json(), setting=repr(state.settings))
    kept = [m for m in throughput_state or () if not (m.get("setting") == row["setting"]
                                                      and m.get("batch_size") == row["batch_size"])]
    kept = (kept + [row])[-limits.MAX_MEASUREMENTS:]
    faster = [m["batch_size"] for m in kept if m.get("setting") == row["setting"] and m.get("speed_up", 0) >= 1]
    return {"throughput_md": text.throughput_markdown(result, min(faster, default=None)), "throughput_state": kept,
            "tradeoff_plot": draw_tradeoff(state, sweep_state, None, kept)}


def measure_curves(state: Optional[Exploration], sweep_state: Optional[list],
                   throughput_state: Optional[list]) -> dict:
    """The Measure-curves button: the fidelity curves of this model and weights on the bundled
    photos (from disk when measured before), drawn in the trade-off chart."""
    if state is None:
        raise InputError("Run a photo first: the curves are measured for the current model and weights.")
    record = curves.curves(state.settings)
    return {"curves_md": text.curves_markdown(record),
            "tradeoff_plot": draw_tradeoff(state, sweep_state, None, throughput_state)}


def throughput_intro() -> str:
    bounds = limits.THROUGHPUT[DEVICE.type]  # the card's name is read inside the measurement (ZeroGPU: the real one)
    return text.throughput_intro(DEVICE.type.upper(), bounds.max_batch, bounds.budget_s)


def load_sweep_file(sweep_file: Optional[str], state: Optional[Exploration],
                    throughput_state: Optional[list] = None) -> dict:
    if not sweep_file:
        return {"sweep_state": None, "sweep_md": "No sweep loaded.",
                "tradeoff_plot": draw_tradeoff(state, None, measured=throughput_state)}
    records, message = load_sweep(sweep_file)
    return {"sweep_state": records, "sweep_md": message + " Shown as “your sweep” in the trade-off chart.",
            "tradeoff_plot": draw_tradeoff(state, records, measured=throughput_state)}


def downloads(state: Optional[Exploration]) -> dict:
    """The layer walk as an animated GIF and the trace as JSON (`gtp.Trace.summary()`, with the
    comparison of the compared methods, run now if it was not)."""
    if state is None:
        raise InputError("Run a photo first.")
    from .api import comparison_json, prediction_json
    done = inference.compared(state)
    folder = files.download_folder()
    animation = gif.animation_gif(done, str(folder / f"gtp_layers_{done.model_name}.gif"))
    trace_path = folder / f"gtp_trace_{done.model_name}.json"
    costs = K.costs(done, K.all_methods(), count=False)
    summary = {"prediction": prediction_json(done, costs), "trace": done.trace.summary(),
               "comparison": comparison_json(done, costs)}
    trace_path.write_text(json.dumps(summary), encoding="utf-8")
    return {"gif_file": animation, "trace_file": str(trace_path)}


def download_figures(state: Optional[Exploration], attn_block: Any = 1, head: Any = 0, token: Any = None,
                     sweep_state: Optional[list] = None) -> dict:
    """The run's five figures for a paper (PDF and PNG, `app.views.figures`) in one zip, from the
    same run as the page, at the attention block and head and the graphs' token on view."""
    if state is None:
        raise InputError("Run a photo first.")
    done = inference.compared(state)
    v = View(attn_block=attn_block, head=head, token=token).within(done)
    costs = K.costs(done, ("full", "gtp"))
    path = figures.figures_zip(done, costs, files.download_folder(), v.attn_block - 1, v.head, v.token, sweep_state)
    return {"figures_file": path}
