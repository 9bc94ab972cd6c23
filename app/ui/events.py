"""Which component event calls which handler (`wire`), and the adapters from the page's raw
values to the handlers' `Settings` and `View`.

Run events share one queue slot (`concurrency_id="gtp_models"`): the models run one request
at a time. View events redraw from the session's state in their own slots and never wait on
a model.
"""
from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

from . import api, handlers as H
from ..views import walk
from .handlers import RUN_OUTPUT_NAMES, View, user_errors
from ..core.settings import Settings, make_settings

RUN_QUEUE = dict(concurrency_id="gtp_models", concurrency_limit=1, trigger_mode="always_last")
VIEW_QUEUE = dict(concurrency_id="gtp_views", concurrency_limit=4, trigger_mode="always_last",
                  show_progress="hidden", api_visibility="undocumented")
HIDDEN = dict(api_visibility="undocumented")
VIEW_NAMES = ["graph_kind", "token", "attn_block", "head"]  # the layer walk starts at block 1


def settings_from_ui(model: str, weights: Any, schedule: str, hp: dict[str, Any]) -> Settings:
    """The page's raw control values as Settings (ValueError naming a bad value)."""
    return make_settings(model, weights, schedule, **hp)


def _run_inputs(ui: dict) -> list:
    return ([ui["photo"], ui["model"], ui["weights"], ui["schedule"], *ui["hp"].values()]
            + [ui[name] for name in VIEW_NAMES] + [ui["sweep_state"], ui["throughput_state"]])


def _run_from_ui(names: list[str]):
    """A handler taking the page's values in `_run_inputs` order, calling `H.run` by keywords."""
    n = len(names)

    def run_event(photo: Any, model: str, weights: Any, schedule: str, *rest: Any) -> Iterator[list]:
        settings = settings_from_ui(model, weights, schedule, dict(zip(names, rest[:n])))
        view = View(**dict(zip(VIEW_NAMES, rest[n:n + len(VIEW_NAMES)])))
        yield from H.run(photo, settings=settings, view=view, sweep=rest[-2], measured=rest[-1])
    return run_event


def _api_inputs(ui: dict) -> list:
    """The endpoints' inputs in their documented parameter order."""
    by_name = {"model": ui["model"], "schedule": ui["schedule"], **ui["hp"]}
    return [ui["photo"]] + [by_name[name] for name in api.API_PARAMETERS]


def _wire_runs(demo: gr.Blocks, ui: dict) -> None:
    hp = ui["hp"]
    run_fn = user_errors(_run_from_ui(list(hp)))
    run_inputs, run_outputs = _run_inputs(ui), [ui[name] for name in RUN_OUTPUT_NAMES]
    releases = [c.release for c in hp.values() if isinstance(c, gr.Slider)]
    others = [c.input for c in hp.values() if not isinstance(c, gr.Slider)]
    triggers = [ui["photo"].change, ui["run_button"].click, ui["model"].input, ui["weights"].upload,
                ui["schedule"].submit, *others, *releases]
    gr.on(triggers, run_fn, inputs=run_inputs, outputs=run_outputs, **HIDDEN, **RUN_QUEUE)
    ui["preset"].click(H.published_preset, outputs=[ui["schedule"], *hp.values()], **HIDDEN).then(
        run_fn, inputs=run_inputs, outputs=run_outputs, **HIDDEN, **RUN_QUEUE)
    api_trigger = gr.Button(visible=False)
    api_trigger.click(user_errors(api.explore), inputs=_api_inputs(ui),
                      outputs=[gr.JSON(visible=False, label="prediction"), gr.JSON(visible=False, label="trace_summary")],
                      api_name="explore", **RUN_QUEUE)
    compare_trigger = gr.Button(visible=False)
    compare_trigger.click(user_errors(api.compare), inputs=_api_inputs(ui),
                          outputs=[gr.JSON(visible=False, label="comparison")], api_name="compare", **RUN_QUEUE)
    ui["measure"].click(user_errors(H.measure),
                        inputs=[ui["state"], ui["batch_size"], ui["throughput_state"], ui["sweep_state"]],
                        outputs=[ui["throughput_md"], ui["throughput_state"], ui["tradeoff_plot"]],
                        **HIDDEN, **RUN_QUEUE)
    gr.on([ui["tab_compare"].select, ui["compare_button"].click], user_errors(H.compare),
          inputs=[ui["state"]], outputs=[ui["compare_plot"], ui["compare_md"]], **HIDDEN, **RUN_QUEUE)
    demo.load(user_errors(H.startup), inputs=[ui["photo"]], outputs=[ui["photo"], ui["banner"]], **HIDDEN)


def _wire_views(ui: dict) -> None:
    state = ui["state"]
    # The layer walk's slider and Play run in the browser (app.views.walk.PLAY_JS): no request.
    ui["play"].click(None, js=walk.PLAY_JS, **HIDDEN)
    gr.on([ui["graph_kind"].change, ui["token"].change], user_errors(H.draw_graph),
          inputs=[state, ui["graph_kind"], ui["token"]],
          outputs=[ui["graph_plot"], ui["similarity_plot"], ui["neighbours_md"]], **VIEW_QUEUE)
    gr.on([ui["attn_block"].change, ui["head"].change], user_errors(H.draw_attention),
          inputs=[state, ui["attn_block"], ui["head"]],
          outputs=[ui["attn_plot"], ui["attn_md"], ui["cls_plot"]], **VIEW_QUEUE)
    ui["sweep_file"].change(user_errors(H.load_sweep_file), inputs=[ui["sweep_file"], state, ui["throughput_state"]],
                            outputs=[ui["sweep_state"], ui["sweep_md"], ui["tradeoff_plot"]], **VIEW_QUEUE)
    ui["make_downloads"].click(user_errors(H.downloads), inputs=[state],
                               outputs=[ui["gif_file"], ui["trace_file"]], **HIDDEN)


def wire(demo: gr.Blocks, ui: dict) -> None:
    """Connect every event of the page (call inside the gr.Blocks)."""
    _wire_runs(demo, ui)
    _wire_views(ui)


