"""Values Gradio refuses before any handler of ours sees them, answered with a message.

Gradio reads each value sent to an event (`Blocks.preprocess_data`) before calling the handler:
it counts the arguments, validates a file's description, moves uploaded files into its cache
(refusing paths it did not receive), fetches files named by an address, and runs each
component's `preprocess` (a slider given null fails there). What fails there reaches the client
as `{"error": null}` (no message at all) unless the app launches with `show_error=True`, which
would show any exception's text, server paths included. `guard` wraps that one step of the app's
Blocks instead: each such failure becomes a `gr.Error` naming the argument and what to send, and
a file named by an address (http, https) is refused before Gradio fetches anything, so every
download the server makes is one the person uploaded (bounded by `limits.MAX_UPLOAD`).
"""
from __future__ import annotations

import functools
import inspect
import logging
import re
import time
from typing import Any, Callable

import gradio as gr
from gradio.exceptions import InvalidPathError

from ..core.errors import for_person
from ..core.plain import shown

log = logging.getLogger("gtp.app")
_INDEX = re.compile(r"input component at index (\d+)")
_NOT_ENOUGH = re.compile(r"needed: (\d+), got: (\d+)")
_NOT_A_CHOICE = re.compile(r"Value: (.*) is not in the list of choices: (\[.*\])", re.S)
SEND_FILE = "send the file itself (gradio_client: handle_file(path))"


def parameter_names(block_fn: Any) -> list[str]:
    """What each input of an event is called in a message: the handler's parameter names where
    they match the inputs one to one (the API endpoints), else each component's label."""
    inputs = list(getattr(block_fn, "inputs", []) or [])
    try:
        names = [p for p in inspect.signature(block_fn.fn).parameters if p != "request"]  # Gradio's, not an input
    except (TypeError, ValueError, AttributeError):
        names = []
    if len(names) == len(inputs):
        return names
    return [(getattr(c, "label", None) or type(c).__name__).split(":")[0].strip() for c in inputs]


def _is_address(value: Any) -> bool:
    """A file description naming a file by its web address instead of sending it. Only its `path`
    counts: Gradio fetches a path that is an address, and ignores the `url` of an input (the page
    sends back, with its own url, a file the server handed it)."""
    path = value.get("path") if isinstance(value, dict) else None
    return isinstance(path, str) and path.strip().lower().startswith(("http:", "https:", "//"))


def refusal(block_fn: Any, inputs: list, error: Exception) -> str:
    """The message for a value Gradio could not read (`error`), naming the argument."""
    names = parameter_names(block_fn)
    components = list(getattr(block_fn, "inputs", []) or [])
    text = str(error)
    if isinstance(error, gr.Error):  # a component's own refusal, e.g. a slider's bounds
        choice = _NOT_A_CHOICE.fullmatch(error.message)  # a dropdown's repeats the value whole
        return f"{shown(choice[1], 40)} is not one of {choice[2]}" if choice else error.message
    found = _NOT_ENOUGH.search(text)
    if found:
        needed, got = found.groups()
        return (f"This request sent {got} values; it takes {needed} ({', '.join(names)}). "
                "gradio_client fills in the defaults of those left out.")
    if isinstance(error, InvalidPathError):
        return f"A file in this request was never uploaded to this server: {SEND_FILE}, not a path."
    index = _INDEX.search(text)
    is_file = [getattr(c, "data_model", None) is not None for c in components]  # images, files
    at = int(index[1]) if index else next(  # a file's description that failed validation
        (i for i, v in enumerate(inputs[:len(is_file)]) if is_file[i] and v is not None and not isinstance(v, dict)),
        None)
    if at is None or at >= min(len(names), len(inputs)):
        return "A value in this request could not be read; check each one against the API page (view_api)."
    if is_file[at]:
        return f"{names[at]} must be a file: {SEND_FILE}; got {type(inputs[at]).__name__}."
    if inputs[at] is None:
        return f"{names[at]} cannot be null: send a value, or leave it out for its default."
    return f"{names[at]} cannot take {shown(inputs[at])}; see the API page (view_api) for what it takes."


def guard(demo: gr.Blocks) -> None:
    """Route every value Gradio refuses before a handler runs through `refusal` (see above)."""
    preprocess: Callable = demo.preprocess_data

    @functools.wraps(preprocess)
    async def checked(block_fn: Any, inputs: list, *args: Any, **kwargs: Any) -> Any:
        event = getattr(getattr(block_fn, "fn", None), "__name__", "an event")
        if any(_is_address(v) for v in inputs or ()):
            message = f"This server fetches no files from web addresses: {SEND_FILE}."
            log.info("refused %s's input: %s [rule: inputs.address]", event, message)
            raise gr.Error(message, title="Cannot do that", print_exception=False)
        started = time.perf_counter()
        try:
            return await preprocess(block_fn, inputs, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a value the client sent: say which and why
            message = for_person(refusal(block_fn, list(inputs or ()), e))
            log.info("refused %s's input: %s [rule: Gradio's %s] after %.2f s", event, message,
                     type(e).__name__, time.perf_counter() - started)
        raise gr.Error(message, title="Cannot do that", print_exception=False)

    demo.preprocess_data = checked
