"""Events that change nothing, through Gradio's own output step (`Blocks.postprocess_data`).

A handler that has nothing to update (no photo, no run yet, a view control moved before the
first run) must hand Gradio a "skip", never an empty dict: Gradio reads `{}` as ONE output
value, fails with "didn't return enough output values" and puts an error badge on every output
(the photo-removal bug of issue 25; issue 28 item 3). Each event is called as Gradio calls it:
the bound function (`app.ui.events.bind`) with the page's values by component.
"""
from __future__ import annotations

import asyncio
import os

import gradio as gr
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.ui import text  # noqa: E402
from app.ui.layout import build_demo  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    return build_demo()


def event(demo: gr.Blocks, name: str):
    """The page's event whose handler is called `name` (the bound function keeps its name)."""
    found = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name]
    assert found, f"no event calls {name}"
    return found[0]


def first_output(demo: gr.Blocks, name: str, **values) -> tuple[object, list]:
    """Call event `name` as Gradio does (every input at its page value, `values` by label or
    elem_id overriding) and put its first update through Gradio's output step: (the update,
    the values Gradio would send)."""
    block_fn = event(demo, name)
    data = {c: c.value for c in block_fn.inputs}
    for c in block_fn.inputs:
        for key, value in values.items():
            if key in (getattr(c, "elem_id", None), getattr(c, "label", None)):
                data[c] = value
    result = block_fn.fn(data) if block_fn.inputs_as_dict else block_fn.fn(*data.values())
    update = next(result) if hasattr(result, "__next__") else result   # a generator: its first update
    return update, asyncio.run(demo.postprocess_data(block_fn, update, None))


def skipped(values: list) -> bool:
    return all(isinstance(v, dict) and v.get("__type__") == "update" and len(v) == 1 for v in values)


@pytest.mark.parametrize("name", ["draw_graph", "draw_attention", "lesson_next", "lesson_back", "refresh_event",
                                  "compare_event", *(f"open_{t}" for t in ("prediction", "layers", "graphs",
                                                                           "attention", "compare", "lesson"))])
def test_an_event_before_any_run_reaches_the_page_without_error(demo, name):
    """Before the first run (state None) each view event answers through Gradio's output step;
    the view redraws (graph, attention) send no value at all."""
    update, sent = first_output(demo, name)
    assert len(sent) == len(event(demo, name).outputs)
    if name.startswith("draw_"):
        assert skipped([v for c, v in zip(event(demo, name).outputs, sent) if not isinstance(c, gr.State)]), sent


def test_removing_the_photo_says_so_and_touches_no_panel(demo):
    """The photo's x: no error; the status says there is no photo; no other output changes."""
    block_fn = event(demo, "run_event")
    update, sent = first_output(demo, "run_event", **{"gtp-photo": None})
    status = [c for c in block_fn.outputs if getattr(c, "elem_id", None) == "gtp-status"][0]
    assert list(update) == [status] and update[status] == text.NO_PHOTO
    by_component = dict(zip(block_fn.outputs, sent))
    assert "No photo" in str(by_component[status])
    assert skipped([v for c, v in by_component.items() if c is not status and not isinstance(c, gr.State)])
