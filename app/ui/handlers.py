"""The page's events: one function per kind of event, returning what the panels show.

Two kinds:
  * run events (a new photo, new settings, the Run button) run the models once per photo and
    setting (`inference.explore_photo`, cached), draw every panel, then count the GMACs not
    counted before and update the panels that show them: one event, two updates;
  * view events (sliders, graph kind, picked token, head, compare block) only redraw from the
    exploration kept in the session's `gr.State`; they never touch a model.
Handlers take a `Settings` and a `View` (or keyword arguments), never long positional lists.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import gradio as gr

from ..core import costs as K
from ..core import files, inference, limits
from ..core.assets import example_paths, published_results
from ..core.caches import BoundedCache
from ..core.models import DEFAULT_MODEL, DEVICE, get_model, weights_banner
from ..core.photos import open_photo
from ..core.results import Costs, Exploration
from ..core.settings import Settings, hyper_parameters
from ..core.sweep_file import load_sweep
from ..views import attention, compare as compare_view, gif, graphs, tradeoff, walk
from . import text


def user_errors(fn: Callable) -> Callable:
    """Turn the app's ValueErrors (bad photo, impossible hyper-parameters, bad files) into a
    gr.Error the person sees; anything else is a bug and is reported as one, without taking
    the server down. Works for plain functions and generators."""
    def translate(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, ValueError):  # PhotoError is a ValueError
            return gr.Error(str(e), title="Cannot do that")
        return gr.Error(f"Internal error ({type(e).__name__}): {e}", title="Something went wrong")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - keep serving, say what broke
                raise translate(e) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - keep serving, say what broke
            raise translate(e) from None
    return wrapper


def _clamp(value: Any, low: int, high: int, default: int) -> int:
    try:
        return min(max(int(value), low), high)
    except (TypeError, ValueError, OverflowError):
        return default


@dataclass(frozen=True)
class View:
    """Where the person is looking: the panels' own controls (1-based blocks)."""
    block: Any = 1
    graph_kind: str = "spatial + semantic"
    token: Any = 98
    attn_block: Any = 1
    head: Any = 0

    def within(self, exp: Exploration) -> "View":
        n = exp.trace.num_patches
        return View(block=_clamp(self.block, 1, exp.depth, 1), graph_kind=self.graph_kind,
                    token=_clamp(self.token, 0, n - 1, n // 2), attn_block=_clamp(self.attn_block, 1, exp.depth, 1),
                    head=_clamp(self.head, 0, exp.num_heads - 1, 0))


# ----------------------------------------------------------------------------- view events
# Each returns `gr.Plot` values (app.views, cached per run and view) and text; none runs a
# model. The layer walk has no view event: its slider and Play run in the browser.


def draw_layer(exp: Optional[Exploration], block: Any = 1):
    """The layer walk: every block in one figure, starting at block `block` (1-based)."""
    if exp is None:
        return gr.skip()
    return walk.walk(exp, _clamp(block, 1, exp.depth, 1) - 1)


def draw_graph(exp: Optional[Exploration], kind: str, token: Any):
    if exp is None:
        return gr.skip(), gr.skip(), gr.skip()
    t = _clamp(token, 0, exp.trace.num_patches - 1, exp.trace.num_patches // 2)
    return graphs.graph(exp, kind), graphs.similarity(exp, t), text.neighbours_markdown(exp, kind, t)


def draw_attention(exp: Optional[Exploration], block: Any, head: Any):
    if exp is None:
        return gr.skip(), gr.skip(), gr.skip()
    b = _clamp(block, 1, exp.depth, 1) - 1
    h = _clamp(head, 0, exp.num_heads - 1, 0)
    return attention.attention(exp, b, h), text.attention_markdown(attention.attention_stats(exp, b, h)), attention.cls_attention(exp, b, h)


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
    current = None if costs is None else {"full": costs.full, "gtp": costs.gtp}
    rates = measured_throughput(exp, measured)
    key = hashlib.sha256(json.dumps([model, current, sweep or [], rates], sort_keys=True).encode()).hexdigest()
    return _TRADEOFF.get_or_make(key, lambda: tradeoff.tradeoff(published_results(), model, current, sweep or (), rates))


def draw_compare(exp: Optional[Exploration]):
    """The compare view, from the run's comparison (no model runs)."""
    if exp is None:
        return gr.skip()
    return compare_view.compare(exp)


# ----------------------------------------------------------------------------- run events

RUN_OUTPUT_NAMES = [
    "state", "banner", "status", "full_label", "gtp_label", "metrics",
    "walk_plot", "token", "graph_plot", "similarity_plot", "neighbours_md",
    "attn_block", "head", "attn_plot", "attn_md", "cls_plot", "tradeoff_plot", "compare_plot", "compare_md",
]
GMACS_OUTPUT_NAMES = ["metrics", "full_label", "gtp_label", "tradeoff_plot", "compare_md"]


def _banner(exp: Exploration) -> gr.Markdown:
    style = "gtp-banner-ok" if exp.pretrained else "gtp-banner-random"
    return gr.Markdown(text.banner_markdown(exp), elem_classes=[style])


def _labels(exp: Exploration, costs: Costs) -> tuple[gr.Label, gr.Label]:
    if not exp.has_head:
        return gr.Label(value=None, visible=False), gr.Label(value=None, visible=False)
    tag = "" if exp.pretrained else " (random weights)"
    full = {t.label: t.probability for t in exp.run.full_top5}
    reduced = {t.label: t.probability for t in exp.run.gtp_top5}
    cost = {k: "GMACs counting…" if v is None else f"{v:.2f} GMACs" for k, v in (("full", costs.full), ("gtp", costs.gtp))}
    return (gr.Label(value=full, label=f"Full model, {cost['full']}{tag}", visible=True),
            gr.Label(value=reduced, label=f"GTP, {cost['gtp']}{tag}", visible=True))


def _gmacs_panels(exp: Exploration, costs: Costs, sweep: Optional[list], measured: Optional[list]) -> list:
    """The panels that show GMACs (GMACS_OUTPUT_NAMES order)."""
    full_label, gtp_label = _labels(exp, costs)
    return [text.metrics_markdown(exp, costs), full_label, gtp_label, draw_tradeoff(exp, sweep, costs, measured),
            text.compare_markdown(exp, costs)]


def _outputs(values: dict) -> list:
    """RUN_OUTPUT_NAMES in order, gr.skip() for the panels not in `values`."""
    return [values.get(name, gr.skip()) for name in RUN_OUTPUT_NAMES]


def run(photo_path: Optional[str], settings: Settings, view: View = View(),
        sweep: Optional[list] = None, measured: Optional[list] = None) -> Iterator[list]:
    """A new photo or new settings: run the models once and redraw every panel (RUN_OUTPUT_NAMES);
    then, if the GMACs of this setting were never counted, count them and update their panels."""
    if not photo_path:  # the photo was cleared: leave everything as it is
        yield _outputs({})
        return
    exp = inference.explore_photo(open_photo(photo_path), settings)
    v = view.within(exp)
    costs = K.costs(exp, K.ALL_METHODS, count=False)
    panels = dict(zip(GMACS_OUTPUT_NAMES, _gmacs_panels(exp, costs, sweep, measured)))
    panels["walk_plot"] = draw_layer(exp, v.block)
    panels.update(zip(["graph_plot", "similarity_plot", "neighbours_md"], draw_graph(exp, v.graph_kind, v.token)))
    panels.update(zip(["attn_plot", "attn_md", "cls_plot"], draw_attention(exp, v.attn_block, v.head)))
    panels["compare_plot"] = draw_compare(exp)
    panels.update(
        state=exp, banner=_banner(exp), status=text.status_markdown(exp),
        token=gr.Number(value=v.token, maximum=exp.trace.num_patches - 1),
        attn_block=gr.Slider(maximum=exp.depth, value=v.attn_block),
        head=gr.Slider(maximum=exp.num_heads - 1, value=v.head))
    yield _outputs(panels)
    if costs.full is None or costs.gtp is None:
        K.costs(exp, ("full", "gtp"))  # counted once per (model, configuration), then cached
        counted = K.costs(exp, K.ALL_METHODS, count=False)
        yield _outputs(dict(zip(GMACS_OUTPUT_NAMES, _gmacs_panels(exp, counted, sweep, measured))))


def compare(exp: Optional[Exploration]) -> Iterator[list]:
    """The Compare tab opened (or its button pressed): draw the run's comparison of GTP, ToMe
    and pruning, then count the GMACs of the three not counted before and show them."""
    if exp is None:
        yield [gr.skip(), gr.skip()]
        return
    yield [draw_compare(exp), text.compare_markdown(exp, K.costs(exp, K.ALL_METHODS, count=False))]
    before = K.costs(exp, K.ALL_METHODS, count=False)
    if any(before.of(m) is None for m in K.ALL_METHODS):
        yield [gr.skip(), text.compare_markdown(exp, K.costs(exp, K.ALL_METHODS))]


def published_preset() -> list:
    """The published setting of every hyper-parameter, and an empty schedule."""
    return [""] + [p.default for p in hyper_parameters()]


def throughput(exp: Optional[Exploration], batch_size: Any) -> str:
    return text.throughput_markdown(_measure(exp, batch_size))


MAX_MEASUREMENTS = 16   # throughput measurements a session keeps for its chart


def measure(exp: Optional[Exploration], batch_size: Any, measured: Optional[list], sweep: Optional[list]):
    """The Measure button: the throughput text, the session's measurements with this one
    added (same batch size replaced), and the trade-off chart drawing them."""
    result = _measure(exp, batch_size)
    row = dict(result.json(), setting=repr(exp.settings))
    kept = [m for m in measured or () if not (m.get("setting") == row["setting"]
                                             and m.get("batch_size") == row["batch_size"])]
    kept = (kept + [row])[-MAX_MEASUREMENTS:]
    return text.throughput_markdown(result), kept, draw_tradeoff(exp, sweep, None, kept)


def _measure(exp: Optional[Exploration], batch_size: Any):
    if exp is None:
        raise gr.Error("Run a photo first: throughput is measured for the current model and setting.")
    try:
        batch = int(float(batch_size))
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"batch size must be a whole number; got {batch_size!r}") from None
    return inference.throughput(exp, batch)


def throughput_intro() -> str:
    kind = DEVICE.type  # the card's name is read inside the measurement (ZeroGPU: the real one)
    return text.throughput_intro(kind.upper(), limits.THROUGHPUT_MAX_BATCH[kind],
                                 limits.THROUGHPUT_BUDGET_S[kind])


def load_sweep_file(path: Optional[str], exp: Optional[Exploration], measured: Optional[list] = None):
    if not path:
        return None, "No sweep loaded.", draw_tradeoff(exp, None, measured=measured)
    records, message = load_sweep(path)
    return records, message + " Shown as “your sweep” in the trade-off chart.", draw_tradeoff(exp, records,
                                                                                              measured=measured)


def downloads(exp: Optional[Exploration]) -> tuple[str, str]:
    """The layer walk as an animated GIF and the trace as JSON (`gtp.Trace.summary()`, with the
    GTP / ToMe / pruning comparison)."""
    if exp is None:
        raise gr.Error("Run a photo first.")
    from .api import comparison_json, prediction_json
    folder = files.download_folder()
    animation = gif.animation_gif(exp, str(folder / f"gtp_layers_{exp.model_name}.gif"))
    trace_path = folder / f"gtp_trace_{exp.model_name}.json"
    costs = K.costs(exp, K.ALL_METHODS, count=False)
    summary = {"prediction": prediction_json(exp, costs), "trace": exp.trace.summary(),
               "comparison": comparison_json(exp, costs)}
    trace_path.write_text(json.dumps(summary), encoding="utf-8")
    return animation, str(trace_path)


def startup(photo_path: Optional[str]):
    """On page load: say at once whether real weights are loaded, and show the first example
    (unless a photo is already there)."""
    loaded = get_model(DEFAULT_MODEL).loaded
    banner = gr.Markdown(weights_banner(loaded.name, loaded.pretrained, loaded.message),
                         elem_classes=["gtp-banner-ok" if loaded.pretrained else "gtp-banner-random"])
    examples = example_paths()
    return (examples[0] if examples and not photo_path else gr.skip()), banner
