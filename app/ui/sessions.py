"""What Gradio keeps per session, kept small.

Gradio keeps, for every session (every API client is one: a new `gradio_client.Client` per call
makes a new one), a copy of each component's configuration holding the last value sent to or
from it (`SessionState.config_values`), read only to make a "deep link" (a page has none unless
it shows a `gr.DeepLinkButton`; this one does not). The `explore` endpoint's answer alone, its
trace summary with every propagation edge, is ~4,200 Python lists, ~0.84 MB per session
(measured), kept until `limits.SESSION_CAPACITY` newer sessions push the session out. So
after requests (`app.core.memory`), `forget_values` drops the values kept there; what a session
keeps on purpose (its `gr.State`s: the run on view, the sweep) is elsewhere and stays.
"""
from __future__ import annotations

import weakref

import gradio as gr


def forget_values(demo: gr.Blocks) -> int:
    """Drop the value of every component kept in every session's configuration; how many."""
    holder = getattr(demo, "state_holder", None)
    dropped = 0
    for session in list(getattr(holder, "session_data", {}).values()):
        for config in list(getattr(session, "config_values", {}).values()):
            props = config.get("props") if isinstance(config, dict) else None
            if isinstance(props, dict) and props.get("value") is not None:
                props["value"] = None
                dropped += 1
    return dropped


def sweeper(demo: gr.Blocks):
    """`forget_values` of `demo` for `app.core.memory.TRIMMER.add_sweep`, without keeping the
    page alive (a test builds and closes many)."""
    page = weakref.ref(demo)

    def sweep() -> None:
        if page() is not None:
            forget_values(page())
    return sweep
