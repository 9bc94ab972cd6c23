"""Links that reopen a view (app/ui/links.py): every query parameter read (each GTPConfig field
by its name, per-block schedules), bad values answered with a message and their default,
checked against the model, and the link "Copy link" writes reads back as the same view."""
from __future__ import annotations

import os
import re
import shutil
import threading
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlsplit

import gradio as gr
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.core.assets import example_paths  # noqa: E402
from app.core.settings import hyper_parameters  # noqa: E402
from app.ui import links  # noqa: E402

TINY = "deit_tiny_patch16_224"
EXAMPLES = len(example_paths())
# One good and one bad query value per GTPConfig field, with the value the good one means. A new
# field fails `test_every_field_is_read_by_its_name` until it is given a line here.
GOOD = {"num_prop": ("16", 16), "sparsity": ("0.8", 0.8), "alpha": ("0.25", 0.25), "graph": ("spatial", "spatial"),
        "num_neighbours": ("4", 4), "selection": ("cls_attn_max", "cls_attn_max"), "propagation": ("mean", "mean"),
        "token_scale": ("false", False)}
BAD = {"num_prop": "-1", "sparsity": "0", "alpha": "lots", "graph": "star", "num_neighbours": "0",
       "selection": "best", "propagation": "teleport", "token_scale": "maybe"}


def parse(**params: str) -> links.Link:
    return links.parse(params, EXAMPLES)


def test_every_field_is_read_by_its_name():
    names = [p.name for p in hyper_parameters()]
    assert set(GOOD) == set(BAD) == set(names)
    link = parse(**{name: raw for name, (raw, _) in GOOD.items()})
    assert link.hp == {name: value for name, (_, value) in GOOD.items()} and link.messages == ()
    assert [type(link.hp[n]) for n in names] == [type(v) for _, v in (GOOD[n] for n in names)]
    assert parse(token_scale="1").hp == {"token_scale": True} and parse(token_scale="OFF").hp == {"token_scale": False}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_value_is_named_and_left_at_its_default(name):
    link = parse(**{name: BAD[name], "tab": "layers"})
    assert name not in link.hp and link.tab == "layers"            # the rest of the link still applies
    assert len(link.messages) == 1 and link.messages[0].startswith(name) and "using the default" in link.messages[0]


def test_the_view_parameters():
    link = parse(example="2", tab="layers", block="5", step="3", model=TINY)
    assert (link.example, link.tab, link.block, link.step, link.model, link.messages) == (2, "layers", 5, 3, TINY, ())
    assert parse(tab="learn").tab == "lesson"                       # the tab's old id still opens it
    assert parse(__theme="dark").messages == ()                     # Gradio's own parameter
    for params in ({"example": "0"}, {"example": str(EXAMPLES + 1)}, {"example": "two"}, {"tab": "nowhere"},
                   {"block": "0"}, {"step": "99"}, {"model": "resnet50"}, {"colour": "red"}):
        link = parse(**params)
        assert (link.example, link.tab, link.block, link.step, link.model) == (1, "prediction", None, None,
                                                                              links.DEFAULT_MODEL), params
        assert len(link.messages) == 1 and (next(iter(params)) in link.messages[0]), params


def test_num_prop_may_be_a_per_block_schedule():
    link = parse(num_prop="8, 8,0,8,8,8,8,8,8,8,8,4")
    assert link.schedule == "8,8,0,8,8,8,8,8,8,8,8,4" and "num_prop" not in link.hp and link.messages == ()
    for bad in ("8,x,8", "8,-1,8"):
        link = parse(num_prop=bad)
        assert link.schedule == "" and "num_prop" in link.messages[0]


def test_settings_the_model_refuses_fall_back_with_a_message():
    ok = links.checked(parse(model=TINY, num_prop="16", sparsity="0.8"))
    assert ok.hp == {"num_prop": 16, "sparsity": 0.8} and ok.messages == ()
    link = links.checked(parse(model=TINY, num_prop="500", num_neighbours="300", alpha="0.3", block="13"))
    assert link.hp == {"alpha": 0.3} and link.block == 1          # 196 patch tokens, 12 blocks
    text = " ".join(link.messages)
    assert "num_prop" in text and "num_neighbours" in text and "block must be from 1 to 12" in text
    short = links.checked(parse(model=TINY, num_prop="8,8,8"))    # one entry per block is needed
    assert short.schedule == "" and "12 entries" in short.messages[0]


def test_opening_a_link_sets_the_page():
    request = SimpleNamespace(query_params={"example": "2", "num_prop": "16", "tab": "layers", "block": "5"})
    out = links.open_link(None, request)
    assert out["photo"] == example_paths()[1] and out["hp"]["num_prop"] == 16 and out["schedule"] == ""
    assert out["hp"]["sparsity"] == 0.6 and out["tab"] == "layers" and out["link_note"] == ""
    assert isinstance(out["tabs"], gr.Tabs) and out["tabs"].selected == "layers"
    assert out["walk_block"] == 5 and out["attn_block"].value == 5
    plain = links.open_link(example_paths()[2], SimpleNamespace(query_params={}))
    assert "photo" not in plain and plain["tab"] == "prediction"    # no link: the photo on view stays
    with pytest.warns(UserWarning, match="sparsity"):               # a toast on the page, a warning here
        bad = links.open_link(None, SimpleNamespace(query_params={"sparsity": "2", "tab": "lesson", "step": "4"}))
    assert bad["hp"]["sparsity"] == 0.6 and "sparsity" in bad["link_note"] and bad["lesson_step"] == 4


def _reopened(link: str) -> links.Link:
    return links.parse(dict(parse_qsl(urlsplit(link).query)), EXAMPLES)


def test_copy_link_writes_what_opening_it_reads(tmp_path):
    hp = {p.name: p.default for p in hyper_parameters()} | {"num_prop": 16.0, "graph": "semantic", "token_scale": False}
    page = '{"url": "http://host:7860/app/", "walk_block": 7}'
    out = links.copy_link(example_paths()[1], TINY, None, "", hp, "layers", 1, 3, 5, page)
    assert out["link"].startswith("http://host:7860/app/?")
    back = _reopened(out["link"])
    assert (back.example, back.model, back.tab, back.block) == (2, TINY, "layers", 7)   # the walk's block, from the page
    assert back.hp == {"num_prop": 16, "graph": "semantic", "token_scale": False} and back.messages == ()
    lesson = _reopened(links.copy_link(example_paths()[0], links.DEFAULT_MODEL, None, "8,8,0,8,8,8,8,8,8,8,8,8",
                                       hp, "lesson", 6, 3, 5, page)["link"])
    assert (lesson.tab, lesson.step, lesson.block, lesson.schedule) == ("lesson", 6, None, "8,8,0,8,8,8,8,8,8,8,8,8")
    attention = _reopened(links.copy_link(None, TINY, None, "", hp, "attention", 1, 3, 5, page)["link"])
    assert attention.block == 3
    upload = tmp_path / "mine.png"
    shutil.copy(example_paths()[0], upload)
    upload.write_bytes(upload.read_bytes() + b"\0")                 # not an example's bytes: an upload
    out = links.copy_link(str(upload), TINY, "weights.safetensors", "", hp, "graphs", 1, 1, 1, page)
    assert "example=" not in out["link"] and _reopened(out["link"]).tab == "graphs"
    assert "photo cannot travel" in out["link_note"] and "weights file cannot travel" in out["link_note"]
    assert links.example_number(example_paths()[3]) == 4 and links.example_number(str(upload)) is None


def test_a_class_opening_one_link_checks_it_once():
    """The check of a link's settings takes the model's lock once; the next student's load does not
    wait behind a run for it."""
    from app.core.models import get_model
    link = parse(model=TINY, alpha="0.35")
    links.checked(link)
    done = threading.Event()
    with get_model(TINY).lock:                       # a run holds the model
        threading.Thread(target=lambda: (links.checked(link), done.set()), daemon=True).start()
        assert done.wait(10)


def as_read(markdown: str) -> str:
    """The words a Markdown value of escaped text shows (its backslash escapes undone)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def test_a_long_value_is_quoted_short_and_many_parameters_give_a_bounded_note():
    """A 5,000-digit value is named by its length (the red-team saw a 5,206-character note), and
    thousands of unknown parameters are counted, not listed (they gave 20,061 characters)."""
    digits = "9" * 5000
    for name in ("example", "block", "num_prop", "alpha", "model"):
        with pytest.warns(UserWarning):
            note = links.open_link(None, SimpleNamespace(query_params={name: digits}))["link_note"]
        assert len(note) < 600 and "5,000 digits" in as_read(note) and digits[:30] not in note, (name, len(note))
    many = {f"p{i}": digits for i in range(5000)} | {name: digits for name in links.PARAMETERS if name != "tab"}
    with pytest.warns(UserWarning) as toasts:
        note = links.open_link(None, SimpleNamespace(query_params=many))["link_note"]
    assert "and 4,995 more" in as_read(note) and "p4999" not in note
    assert len(note) < (len(links.PARAMETERS) + 1) * 400, len(note)   # one bounded line per parameter at most
    assert len(toasts) == 1 and len(str(toasts[0].message)) < 600      # one toast, however many


def test_the_note_is_markdown_that_reads_as_the_value():
    """The note's Markdown holds no markup of the link's values: every punctuation character of
    theirs is escaped, so unescaping gives back the words the page shows."""
    value = '<img src="http://x/b.png"> ![x](http://x/m.png) *em* `code` [a](b)'
    with pytest.warns(UserWarning) as toasts:
        note = links.open_link(None, SimpleNamespace(query_params={"tab": value}))["link_note"]
    assert re.search(r"(?<!\\)[<>\[\]()!`*]", note.replace("⚠ Link:", "")) is None, note
    assert "<img" in as_read(note)
    assert "<" not in str(toasts[0].message) and "&lt;img" in str(toasts[0].message)
