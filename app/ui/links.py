"""Links that reopen a view: the page's query parameters, read when the page loads (`open_link`)
and written by "Copy link" (`copy_link`).

    ?example=2&num_prop=16&tab=layers&block=5

`example`: 1-based index of the example photos; `model`: a supported model; every field of
`gtp.GTPConfig` by its name (`num_prop`, `sparsity`, ...; `num_prop` may also be a per-block
schedule, "8,8,0,..."), read through the app's own list of them (`hyper_parameters`); `tab`: a
tab id; `block`: the block (1-based) the layer walk and the attention tab open on; `step`: the
lesson's step (1-based). A bad value is named in a message and replaced by its default: the page
always opens. An uploaded photo or weights file cannot travel in a link: the link says so and
carries the rest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlencode

import gradio as gr

import gtp
from gtp import adapters
from gtp.config import check_value
from gtp.models import SUPPORTED_MODELS

from ..core import limits
from ..core.assets import example_paths
from ..core.caches import BoundedCache
from ..core.errors import InputError, for_person
from ..core.inference import check_settings
from ..core.models import get_model, weights_banner
from ..core.plain import as_html, as_markdown, shown
from ..core.settings import DEFAULT_MODEL, Settings, hyper_parameters, make_settings, parse_schedule
from . import lesson
from .handlers import TAB_PANELS

PARAMETERS = ("example", "model", *(p.name for p in hyper_parameters()), "tab", "block", "step")
TAB_ALIASES = {"learn": "lesson"}      # the lesson's tab was "learn" before it became the lesson
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_FIELDS = {f.name: f for f in dataclasses.fields(gtp.GTPConfig)}
UNKNOWN_NAMED = 5   # unknown parameters a message names (a link may carry thousands)


@dataclass(frozen=True)
class Link:
    """What a link opens: every value checked, defaults where none (or a bad one) was given."""
    example: int = 1                                    # 1-based
    model: str = DEFAULT_MODEL
    hp: dict = field(default_factory=dict)              # hyper-parameters the link sets, by field name
    schedule: str = ""                                  # a per-block num_prop ("8,8,0,..."), or ""
    tab: str = "prediction"
    block: Optional[int] = None                         # 1-based
    step: Optional[int] = None                          # 1-based
    messages: tuple[str, ...] = ()                      # what was wrong, and what was used instead


def _hyper_parameter(name: str, raw: str) -> tuple[dict, str]:
    """({name: value} or {"schedule": text}) for one query value; InputError naming it otherwise."""
    p = next(p for p in hyper_parameters() if p.name == name)
    if p.kind == "bool":
        if raw.strip().lower() not in TRUE + FALSE:
            raise InputError(f"{name} must be true or false; got {shown(raw)}")
        return {name: raw.strip().lower() in TRUE}, ""
    if name == "num_prop" and "," in raw:   # a per-block schedule: each entry checked like P
        schedule = parse_schedule(raw) or []
        for value in schedule:
            _checked(name, value)
        return {}, ",".join(map(str, schedule))
    return {name: _checked(name, p.parse(raw.strip()))}, ""


def _checked(name: str, value: Any) -> Any:
    """The library's own check of a field's type and range (not yet against a model)."""
    try:
        return check_value(_FIELDS[name], value)
    except ValueError as e:
        raise InputError(str(e)) from None


def _whole(raw: str, name: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"{name} must be a whole number from {low} to {high}; got {shown(raw)}") from None
    if not low <= value <= high:
        raise InputError(f"{name} must be from {low} to {high}; got {value}")
    return value


def parse(params: Mapping[str, str], examples: int) -> Link:
    """The link's values from the page's query parameters (`request.query_params`), each checked
    on its own: a bad one is left at its default with a message. `examples`: how many example
    photos there are. The hyper-parameters are checked against the model by `checked`."""
    values: dict[str, Any] = {"hp": {}}
    messages = []
    unknown = [k for k in params if k not in PARAMETERS and not k.startswith("__")]  # __theme is Gradio's
    if unknown:
        named = ", ".join(shown(k, 24) for k in sorted(unknown[:1000])[:UNKNOWN_NAMED])
        more = f" and {len(unknown) - UNKNOWN_NAMED:,} more" if len(unknown) > UNKNOWN_NAMED else ""
        messages.append(f"unknown link parameter(s) {named}{more}: ignored (known: {', '.join(PARAMETERS)})")
    for name in PARAMETERS:
        raw = params.get(name)
        if raw is None:
            continue
        try:
            if name == "example":
                values["example"] = _whole(raw, name, 1, examples)
            elif name == "model":
                if raw not in SUPPORTED_MODELS:
                    raise InputError(f"model {shown(raw)} is not supported; one of {', '.join(SUPPORTED_MODELS)}")
                values["model"] = raw
            elif name == "tab":
                tab = TAB_ALIASES.get(raw, raw)
                if tab not in TAB_PANELS:
                    raise InputError(f"tab {shown(raw)} is not a tab; one of {', '.join(TAB_PANELS)}")
                values["tab"] = tab
            elif name == "block":
                values["block"] = _whole(raw, name, 1, 10_000)       # the model's depth bounds it later
            elif name == "step":
                values["step"] = _whole(raw, name, 1, lesson.NUM_STEPS)
            else:
                hp, schedule = _hyper_parameter(name, raw)
                values["hp"].update(hp)
                values["schedule"] = schedule or values.get("schedule", "")
        except InputError as e:   # named first, as the person wrote it
            messages.append(f"{e if str(e).startswith(name) else f'{name}: {e}'}: using the default")
    return Link(**values, messages=tuple(for_person(m) for m in messages))


_REFUSALS: BoundedCache[str] = BoundedCache("link checks", limits.LINK_CHECK_CACHE_ENTRIES)


def _refusal(settings: Settings) -> str:
    """Why the model refuses these settings ('' when it takes them): `check_settings`, the
    library's own rules (no forward run, but the model's lock), once per setting."""
    def check() -> str:
        try:
            check_settings(get_model(settings.model), settings)
            return ""
        except InputError as e:
            return str(e)
    return _REFUSALS.get_or_make(settings, check)


def checked(link: Link) -> Link:
    """The link with its settings checked against its model; a setting the model refuses is left
    at its default with a message, as is a block beyond the model's depth."""
    depth = adapters.depth(get_model(link.model).model)
    messages = list(link.messages)
    hp, schedule, block = dict(link.hp), link.schedule, link.block

    def refused(**changes: Any) -> str:
        return _refusal(make_settings(link.model, None, changes.pop("schedule", ""), **changes))

    # The published setting needs no check (nor the model's lock, which a run may hold for seconds).
    if (hp or schedule) and refused(schedule=schedule, **hp):
        for name in list(hp) + (["num_prop"] if schedule else []):
            why = refused(**{name: hp[name]}) if name in hp else refused(schedule=schedule)
            if why:
                messages.append(f"{name}: {why}: using the default")
                if name in hp:
                    del hp[name]
                else:
                    schedule = ""
        if refused(schedule=schedule, **hp):   # each fine alone, not together
            messages.append(f"{refused(schedule=schedule, **hp)}: using the published setting")
            hp, schedule = {}, ""
    if block is not None and block > depth:
        messages.append(f"block must be from 1 to {depth} on {link.model}; got {block}: using 1")
        block = 1
    return dataclasses.replace(link, hp=hp, schedule=schedule, block=block,
                               messages=tuple(for_person(m) for m in messages))


def open_link(photo: Optional[str], request: Optional[gr.Request] = None) -> dict:
    """On page load: the link's example, model, settings, tab, block and step (the photo's change
    then runs it), the weights banner at once, and what was wrong with the link, if anything."""
    examples = example_paths()
    params = dict(request.query_params) if request is not None else {}
    link = checked(parse(params, len(examples)))
    loaded = get_model(link.model).loaded
    out: dict[str, Any] = {
        "banner": gr.Markdown(weights_banner(loaded.name, loaded.pretrained, loaded.message, loaded.has_head),
                              elem_classes=["gtp-banner-ok" if loaded.pretrained else "gtp-banner-random"]),
        "model": link.model, "schedule": link.schedule, "tab": link.tab, "tabs": gr.Tabs(selected=link.tab),
        "hp": {p.name: link.hp.get(p.name, p.default) for p in hyper_parameters()},
        "link_note": "\n\n".join(f"⚠ Link: {as_markdown(m)}." for m in link.messages)}
    if examples and ("example" in params or not photo):
        out["photo"] = examples[link.example - 1]
    if link.block is not None:
        depth = adapters.depth(get_model(link.model).model)
        out.update(walk_block=link.block, attn_block=gr.Slider(maximum=depth, value=link.block, interactive=True))
    if link.step is not None:
        out["lesson_step"] = link.step
    if link.messages:   # one toast, however many: the note lists them all
        more = len(link.messages) - 1
        gr.Warning(as_html(f"Link: {link.messages[0]}." + (f" ({more} more in the note on the page.)" if more else "")))
    return out


# ----------------------------------------------------------------------------- Copy link

PAGE_JS = """
() => {
  const gd = document.querySelector('#gtp-walk .js-plotly-plot');
  const walk = gd && gd.layout && (gd.layout.sliders || []).length ? (gd.layout.sliders[0].active || 0) + 1 : null;
  return [JSON.stringify({url: window.location.origin + window.location.pathname, walk_block: walk})];
}
"""
"""The page's own address and the layer walk's block (its slider runs in the browser) for `copy_link`."""

COPY_JS = """
(link) => {
  if (link && navigator.clipboard) navigator.clipboard.writeText(link).catch(() => {});
  return [];
}
"""
"""The link to the clipboard (where the browser allows it; the text box shows it anyway)."""


@lru_cache(maxsize=None)
def _digest(path: str, mtime: float) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def example_number(photo: Optional[str]) -> Optional[int]:
    """The 1-based example index of the photo file (the same bytes), or None (an upload)."""
    if not photo or not Path(photo).is_file():
        return None
    mine = _digest(photo, Path(photo).stat().st_mtime)
    for k, path in enumerate(example_paths(), 1):
        if _digest(path, Path(path).stat().st_mtime) == mine:
            return k
    return None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return format(value, "g") if isinstance(value, float) else str(value)


def link_query(example: Optional[int], model: str, schedule: str, hp: Mapping[str, Any], tab: str,
               block: Optional[int] = None, step: Optional[int] = None) -> str:
    """The query string of a view: only what differs from the defaults, and the tab with its block or step."""
    params: dict[str, str] = {}
    if example is not None:
        params["example"] = str(example)
    if model != DEFAULT_MODEL:
        params["model"] = model
    for p in hyper_parameters():
        if p.name == "num_prop" and schedule:
            params["num_prop"] = ",".join(map(str, parse_schedule(schedule) or []))
        elif p.name in hp and hp[p.name] != p.default:
            params[p.name] = _text(hp[p.name])
    params["tab"] = tab
    if block is not None and tab in ("layers", "attention"):
        params["block"] = str(block)
    if step is not None and tab == "lesson":
        params["step"] = str(step)
    return urlencode(params, safe=",")


def copy_link(photo: Optional[str], model: str, weights: Any, schedule: str, hp: dict, tab: str, lesson_step: Any,
              attn_block: Any, walk_block: Any, page: str) -> dict:
    """"Copy link": the link of the page's state (the controls' settings, the tab on view and its
    block or step), with a note where something cannot travel in it."""
    settings = make_settings(model, None, schedule, **hp)   # refused with a message if a control is wrong
    try:
        info = json.loads(page or "{}")
    except ValueError:
        info = {}
    example = example_number(photo)
    block = (info.get("walk_block") or walk_block) if tab == "layers" else attn_block
    query = link_query(example, settings.model, settings.schedule, settings.config.as_dict(), tab,
                       None if block is None else int(block), lesson.step_of(lesson_step))
    notes = []
    if photo and example is None:
        notes.append("Your photo cannot travel in a link: the link opens the first example photo with "
                     "everything else as it is here.")
    if weights:
        notes.append(f"Your weights file cannot travel in a link either: the link opens `{settings.model}` "
                     "with the weights the server has.")
    return {"link": f"{info.get('url') or ''}?{query}", "link_note": " ".join(notes) or "The link of this view (also copied to "
            "the clipboard, where the browser allows it)."}
