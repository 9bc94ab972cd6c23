"""Which component event calls which handler (`wire`), by NAME: a handler's parameters name the
components it reads and it returns the components it updates as {name: value}
(`app.ui.handlers`); `bind` turns that into a Gradio function taking and returning dicts keyed
by component. No list of inputs or outputs has to match a position.

This is also the page's edge for errors: an `InputError` is shown as it is ("Cannot do that";
`errors.for_person`: one bounded line, no server folder); any other exception is a bug, logged
with its traceback and shown as one, with no internals. Values Gradio itself refuses before a
handler runs get a message too (`app.ui.inputs`). After each event the values Gradio keeps per
session are dropped (`app.ui.sessions`) and the freed heap handed back (`app.core.memory`).

A handler with a `request` parameter gets the page's `gr.Request` (the link's query parameters).

Run events share one queue slot (`concurrency_id="gtp_models"`): the models run one request at
a time. Every page run is preceded by `check_weights`, which Gradio runs with no queue limit: with
no file it returns at once, taking nothing; a file gets its own bounded turn (`app.core.weights`:
cheap checks first, one check per session, a few at once), so a file that is slow to refuse holds
neither the models' queue nor anyone's page run. View events redraw from the session's state in
their own slots and never wait on a model.
"""
from __future__ import annotations

import functools
import inspect
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import gradio as gr

from ..core import weights as W
from ..core.errors import InputError, for_person
from ..core.memory import TRIMMER
from ..core.settings import make_settings
from ..views import walk
from . import api, inputs, links, sessions
from . import handlers as H

RUN_QUEUE = dict(concurrency_id="gtp_models", concurrency_limit=1, trigger_mode="always_last")
WEIGHTS_QUEUE = dict(concurrency_id="gtp_weights", concurrency_limit=None,   # bounded in app.core.weights
                     trigger_mode="always_last")
VIEW_QUEUE = dict(concurrency_id="gtp_views", concurrency_limit=4, trigger_mode="always_last",
                  show_progress="hidden", api_visibility="undocumented")
HIDDEN = dict(api_visibility="undocumented")
BUG = ("This is a bug in GTP Explorer, not something you did; it was logged. Try again, or another "
       "photo or setting.")
log = logging.getLogger("gtp.app")


def page_error(e: Exception, event: str = "an event", started: Optional[float] = None) -> gr.Error:
    """The message the page shows for an exception. A refusal (an InputError, or a gr.Error of
    ours) is logged as ONE line, with no stack: the event, the message, the rule that refused it
    (where it was raised) and how long the event ran. Anything else is a bug: logged here with its
    traceback, and nothing of it reaches the page. Gradio prints no stack for either."""
    if isinstance(e, (InputError, gr.Error)):
        message = for_person(e.message if isinstance(e, gr.Error) else str(e))
        frames = traceback.extract_tb(e.__traceback__)
        rule = f"{Path(frames[-1].filename).stem}.{frames[-1].name}" if frames else type(e).__name__
        seconds = "" if started is None else f" after {time.perf_counter() - started:.2f} s"
        log.info("refused %s: %s [rule: %s]%s", event, message, rule, seconds)
        if isinstance(e, gr.Error):
            e.print_exception = False
            return e
        return gr.Error(message, title="Cannot do that", print_exception=False)
    log.error("bug in an event handler (%s)", event, exc_info=e)
    return gr.Error(BUG, title="Something went wrong", print_exception=False)


def at_the_edge(fn: Callable) -> Callable:
    """`fn` (a function or a generator function) with its exceptions turned into `page_error`s."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - the page's edge: keep serving, say what broke
                raise page_error(e, fn.__name__, started) from None
            finally:
                TRIMMER.after_request()
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the page's edge: keep serving, say what broke
            raise page_error(e, fn.__name__, started) from None
        finally:
            TRIMMER.after_request()
    return wrapper


def _components(value: Any) -> list:
    return list(value.values()) if isinstance(value, dict) else [value]


def nothing_changed() -> dict:
    """What an event returns when it updates no output: Gradio's `skip()`. An empty dict is not
    that: Gradio reads it as ONE output value ("didn't return enough output values") and every
    output shows an error."""
    return gr.skip()


def bind(ui: dict, fn: Callable, outputs: Iterable[str]) -> dict[str, Any]:
    """`gr.on` keyword arguments calling `fn` by name: its parameters are names in `ui` ("hp" is
    the dict of hyper-parameter controls, read and written as a dict), its result a dict
    {name in `outputs`: value} (a generator: one such dict per update)."""
    names = [n for n in inspect.signature(fn).parameters if n != "request"]
    wants_request = "request" in inspect.signature(fn).parameters
    outputs = list(outputs)

    def read(data: dict) -> dict[str, Any]:
        return {n: ({k: data[c] for k, c in ui[n].items()} if isinstance(ui[n], dict) else data[ui[n]]) for n in names}

    def write(out: dict[str, Any]) -> dict:
        unknown = set(out) - set(outputs)
        if unknown:
            raise KeyError(f"{fn.__name__} updated {sorted(unknown)}, not among its outputs {outputs}")
        written = {}
        for name, value in out.items():
            written.update({ui[name][k]: v for k, v in value.items()} if isinstance(ui[name], dict)
                           else {ui[name]: value})
        return written or nothing_changed()

    def arguments(data: Optional[dict], request: Optional[gr.Request]) -> dict[str, Any]:
        return {**read(data or {}), **({"request": request} if wants_request else {})}

    if inspect.isgeneratorfunction(fn):
        def call(data: Optional[dict] = None, request: Optional[gr.Request] = None) -> Iterator[dict]:
            updated = False
            for out in fn(**arguments(data, request)):
                updated = True
                yield write(out)
            if not updated:   # a generator that yields nothing would set every output to None
                yield nothing_changed()
    else:
        def call(data: Optional[dict] = None, request: Optional[gr.Request] = None) -> dict:
            return write(fn(**arguments(data, request)))
    call.__name__ = fn.__name__
    return dict(fn=at_the_edge(call), inputs={c for n in names for c in _components(ui[n])} or None,
                outputs=[c for n in outputs for c in _components(ui[n])])


# ----------------------------------------------------------------------------- the events' own functions
# Each reads the page's raw values by name and calls the handler with typed arguments.

ALL_PANELS = ("state", "shown", "banner", "status", "token", "attn_block", "head", "lesson_back", "lesson_next",
              *(name for names in H.TAB_PANELS.values() for name in names))


def run_event(photo: Optional[str], model: str, weights: Any, schedule: str, hp: dict, graph_kind: str, token: Any,
              attn_block: Any, head: Any, walk_block: Any, lesson_step: Any, tab: str, sweep_state: Optional[list],
              throughput_state: Optional[list], request: Optional[gr.Request] = None) -> Iterator[dict]:
    """A new photo, model, weights file or setting (the layer walk starts at `walk_block`: 1 unless a link said)."""
    settings = make_settings(model, weights, schedule, **hp)
    W.require_checked(settings.model, settings.weights, session_of(request))  # loaded by check_weights only
    view = H.View(block=walk_block, graph_kind=graph_kind, token=token, attn_block=attn_block, head=head,
                  step=lesson_step)
    yield from H.run(photo, settings, view, tab, sweep_state, throughput_state)


def session_of(request: Optional[gr.Request]) -> str:
    """The page's (or API client's) session: what checked weights files are remembered by."""
    return str(getattr(request, "session_hash", None) or "")


def check_weights(model: str, weights: Any, request: Optional[gr.Request] = None) -> None:
    """Before a run: the model loaded with the uploaded weights file, if any (nothing, at once, without one)."""
    if weights is None:
        return
    if not isinstance(weights, str):
        raise InputError("weights must be a file uploaded with the request (gradio_client: handle_file(path)).")
    W.check(make_settings(model).model, weights, session_of(request))


def refresh_event(tab: str, state: Any, shown: Optional[dict], graph_kind: str, token: Any, attn_block: Any,
                  head: Any, walk_block: Any, lesson_step: Any, sweep_state: Optional[list],
                  throughput_state: Optional[list]) -> Iterator[dict]:
    """After a run: draw the tab on view now if the run drew another (it was opened meanwhile)."""
    view = H.View(block=walk_block, graph_kind=graph_kind, token=token, attn_block=attn_block, head=head,
                  step=lesson_step)
    yield from H.open_tab(tab, state, shown, view, sweep_state, throughput_state)


def tab_event(tab_id: str) -> Callable[..., Iterator[dict]]:
    """The event of opening tab `tab_id`."""
    def open_tab(state: Any, shown: Optional[dict], graph_kind: str, token: Any, attn_block: Any, head: Any,
                 walk_block: Any, lesson_step: Any, sweep_state: Optional[list],
                 throughput_state: Optional[list]) -> Iterator[dict]:
        view = H.View(block=walk_block, graph_kind=graph_kind, token=token, attn_block=attn_block, head=head,
                      step=lesson_step)
        yield from H.open_tab(tab_id, state, shown, view, sweep_state, throughput_state)
    open_tab.__name__ = f"open_{tab_id}"
    return open_tab


def compare_event(state: Any, shown: Optional[dict]) -> Iterator[dict]:
    """The Compare button: the comparison drawn again (and run if it was deferred)."""
    yield from H.open_tab("compare", state, {k: v for k, v in (shown or {}).items() if k != "compare"})


def lesson_event(by: int) -> Callable[..., Iterator[dict]]:
    """The lesson's Back (`by` = -1) or Next (+1)."""
    def move(state: Any, lesson_step: Any, sweep_state: Optional[list], throughput_state: Optional[list]) -> Iterator[dict]:
        yield from H.move_lesson(state, lesson_step, by, sweep_state, throughput_state)
    move.__name__ = "lesson_next" if by > 0 else "lesson_back"
    return move


def _api_inputs(ui: dict) -> list:
    """The endpoints' inputs in their documented parameter order (the public API)."""
    by_name = {"model": ui["model"], "schedule": ui["schedule"], **ui["hp"]}
    return [ui["photo"]] + [by_name[name] for name in api.API_PARAMETERS]


def _wire_runs(demo: gr.Blocks, ui: dict) -> None:
    hp = ui["hp"]
    releases = [c.release for c in hp.values() if isinstance(c, gr.Slider)]
    others = [c.input for c in hp.values() if not isinstance(c, gr.Slider)]
    triggers = [ui["photo"].change, ui["run_button"].click, ui["model"].input, ui["weights"].upload,
                ui["schedule"].submit, *others, *releases]
    run = bind(ui, run_event, ALL_PANELS)
    refresh = bind(ui, refresh_event, ("tab", *ALL_PANELS))
    check = dict(fn=at_the_edge(check_weights), inputs=[ui["model"], ui["weights"]], outputs=None,
                 api_name="check_weights", show_progress="minimal")
    checked = gr.on(triggers, **check, **HIDDEN, **WEIGHTS_QUEUE)
    checked.success(**run, **HIDDEN, **RUN_QUEUE).then(**refresh, **HIDDEN, **RUN_QUEUE)
    # A refused file leaves the upload box (listed there, it looks in use); the message says why.
    checked.failure(lambda: None, outputs=[ui["weights"]], queue=False, **HIDDEN)
    ui["weights_box"].expand(W.warm_reader, queue=False, **HIDDEN)  # the reader is ready when the file is
    ui["preset"].click(**bind(ui, H.published_preset, ("schedule", "hp")), **HIDDEN).then(
        **run, **HIDDEN, **RUN_QUEUE).then(**refresh, **HIDDEN, **RUN_QUEUE)
    gr.Button(visible=False).click(
        at_the_edge(api.explore), inputs=_api_inputs(ui), api_name="explore", **RUN_QUEUE,
        outputs=[gr.JSON(visible=False, label="prediction"), gr.JSON(visible=False, label="trace_summary")])
    gr.Button(visible=False).click(
        at_the_edge(api.compare), inputs=_api_inputs(ui), api_name="compare", **RUN_QUEUE,
        outputs=[gr.JSON(visible=False, label="comparison")])
    ui["measure"].click(**bind(ui, H.measure, ("throughput_md", "throughput_state", "tradeoff_plot")),
                        **HIDDEN, **RUN_QUEUE)
    ui["measure_curves"].click(**bind(ui, H.measure_curves, ("curves_md", "tradeoff_plot")), **HIDDEN, **RUN_QUEUE)
    for tab_id in H.TAB_PANELS:   # Compare may run the compared methods: the models' queue
        queue = {**HIDDEN, **RUN_QUEUE} if tab_id == "compare" else VIEW_QUEUE
        ui[f"tab_{tab_id}"].select(**bind(ui, tab_event(tab_id), ("tab", *ALL_PANELS)), **queue)
    ui["compare_button"].click(**bind(ui, compare_event, ("tab", *ALL_PANELS)), **HIDDEN, **RUN_QUEUE)
    demo.load(**bind(ui, links.open_link, ("photo", "banner", "model", "schedule", "hp", "tab", "tabs", "walk_block",
                                            "attn_block", "lesson_step", "link_note")), **HIDDEN)


def _wire_views(ui: dict) -> None:
    # The layer walk's slider and Play run in the browser (`app.views.walk.PLAY_JS`): no request.
    ui["play"].click(None, js=walk.PLAY_JS, **HIDDEN)
    # .input, not .change: a run setting the token for a new model must not draw a tab not on view
    gr.on([ui["graph_kind"].input, ui["token"].input],
          **bind(ui, H.draw_graph, H.TAB_PANELS["graphs"]), **VIEW_QUEUE)
    gr.on([ui["attn_block"].change, ui["head"].change],
          **bind(ui, H.draw_attention, H.TAB_PANELS["attention"]), **VIEW_QUEUE)
    ui["sweep_file"].change(**bind(ui, H.load_sweep_file, ("sweep_state", "sweep_md", "tradeoff_plot")), **VIEW_QUEUE)
    ui["make_downloads"].click(**bind(ui, H.downloads, ("gif_file", "trace_file")), **HIDDEN, **RUN_QUEUE)
    ui["make_figures"].click(**bind(ui, H.download_figures, ("figures_file",)), **HIDDEN, **RUN_QUEUE)
    lesson_panels = ("lesson_step", "lesson_back", "lesson_next", *H.TAB_PANELS["lesson"])
    ui["lesson_back"].click(**bind(ui, lesson_event(-1), lesson_panels), **VIEW_QUEUE)
    ui["lesson_next"].click(**bind(ui, lesson_event(+1), lesson_panels), **VIEW_QUEUE)
    # Copy link: the page's address and the walk's block from the browser, the link from the server, the clipboard.
    ui["copy_link"].click(None, js=links.PAGE_JS, outputs=[ui["page"]], **HIDDEN).then(
        **bind(ui, links.copy_link, ("link", "link_note")), **VIEW_QUEUE).then(
        None, inputs=[ui["link"]], js=links.COPY_JS, **HIDDEN)


def wire(demo: gr.Blocks, ui: dict) -> None:
    """Connect every event of the page (call inside the gr.Blocks)."""
    _wire_runs(demo, ui)
    _wire_views(ui)
    inputs.guard(demo)
    TRIMMER.add_sweep("session values", sessions.sweeper(demo))
    TRIMMER.start()
