"""Every refusal through the API has a message a person can act on (issue 20): non-empty, at
most `limits.MAX_MESSAGE_CHARS`, naming no folder of the server. Values Gradio refuses before
our handlers run (app/ui/inputs.py) are checked through the raw HTTP API, where a refusal
without a message arrives as `{"error": null}`.

Weights uploads (app/core/weights.py) are checked outside every queue limit, in bounded turns:
a file its header refuses takes no turn, a resent refused file is refused from memory (without
the model load lock), a run never reads a file its session did not check, a burst of junk files
never holds another session's page run, and a refusal is logged as one line. Hostile files are
built small and the bounds scaled down with them.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import gtp.models as M  # noqa: E402
from app.core import limits, models, weights as W  # noqa: E402
from app.core.errors import InputError  # noqa: E402
from app.core.settings import DEFAULT_MODEL  # noqa: E402
from gtp.weights import REFUSED, WeightsBounds  # noqa: E402
from gtp.weights import readable as real_readable  # noqa: E402
from test_weights_safety import KINDS, hostile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAT = str(ROOT / "assets" / "chelsea.png")
TINY = "deit_tiny_patch16_224"
SMALL = WeightsBounds(max_bytes=2**20, max_tensors=100)  # deit_tiny's bounds, scaled down


def assert_for_a_person(message, *words: str) -> None:
    """Non-empty, bounded, naming no server folder, and saying what it is about (`words`)."""
    assert isinstance(message, str) and message.strip(), f"no message: {message!r}"
    assert len(message) <= limits.MAX_MESSAGE_CHARS, message
    assert not re.search(r"(^|[\s('\"])/\w", message) and str(ROOT) not in message, message
    for word in words:
        assert word in message, message


@pytest.fixture(scope="module")
def client(url):
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def defaults(client) -> dict:
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/explore"]["parameters"]
    return {p["parameter_name"]: p["parameter_default"] for p in info[1:]}


@pytest.fixture(autouse=True)
def forget_refusals():
    REFUSED.clear()
    yield
    REFUSED.clear()


def raw_error(url: str, api: str, data: list):
    """The error the server sends for one call of `api` with `data` (raw HTTP, no client-side
    checks); pytest.fail if the call succeeded."""
    base = url.rstrip("/")
    event = httpx.post(f"{base}/gradio_api/call/{api}", json={"data": data}, timeout=60).json()["event_id"]
    with httpx.stream("GET", f"{base}/gradio_api/call/{api}/{event}", timeout=300) as stream:
        text = "".join(stream.iter_text())
    kind, _, payload = text.partition("\n")
    assert kind == "event: error", f"{api} answered instead of refusing: {text[:300]}"
    return json.loads(payload.removeprefix("data:").strip())["error"]


def explore_args(defaults: dict, image, **changed) -> list:
    values = {**defaults, "model": TINY, **changed}
    return [image] + list(values.values())


# ----------------------------------------------------------------------------- values Gradio refuses

FILE = {"meta": {"_type": "gradio.FileData"}}


@pytest.mark.parametrize("case, words", [
    ("no arguments", ["sent 0 values", "takes 11", "num_prop"]),
    ("one argument", ["sent 1 values", "takes 11"]),
    ("null num_prop", ["num_prop cannot be null"]),
    ("num_prop of 400 digits", ["401 digits", "maximum"]),
    ("a URL as image", ["web addresses", "handle_file"]),
    ("a URL as plain text image", ["image must be a file", "handle_file"]),
    ("a server path as image", ["never uploaded", "handle_file"]),
    ("a 10,000-character model name", ["is not one of", "deit_tiny_patch16_224"]),
    ("a 1 MB schedule", ["comma-separated whole numbers"]),
    ("a schedule of 4,300-digit numbers", ["4,300 digits"]),
    ("no photo", ["No photo given"]),
])
def test_each_refusal_of_explore_says_what_to_send(url, defaults, case, words):
    cat = {"path": client_upload(url), **FILE}
    data = {
        "no arguments": [],
        "one argument": [cat],
        "null num_prop": explore_args(defaults, cat, num_prop=None),
        "num_prop of 400 digits": explore_args(defaults, cat, num_prop=10**400),
        "a URL as image": explore_args(defaults, {"path": "https://example.com/cat.png",
                                                  "url": "https://example.com/cat.png", **FILE}),
        "a URL as plain text image": explore_args(defaults, "https://example.com/cat.png"),
        "a server path as image": explore_args(defaults, {"path": "/etc/hostname", **FILE}),
        "a 10,000-character model name": explore_args(defaults, cat, model="x" * 10_000),
        "a 1 MB schedule": explore_args(defaults, cat, schedule="8" * 2**20),
        "a schedule of 4,300-digit numbers": explore_args(defaults, cat, schedule=",".join(["9" * 4300] * 12)),
        "no photo": explore_args(defaults, None),
    }[case]
    assert_for_a_person(raw_error(url, "explore", data), *words)


_UPLOADED: dict[str, str] = {}


def client_upload(url: str) -> str:
    """The cat photo uploaded once to the server: its path there (a file the server received)."""
    if url not in _UPLOADED:
        with open(CAT, "rb") as f:
            r = httpx.post(url.rstrip("/") + "/gradio_api/upload", files={"files": ("chelsea.png", f)}, timeout=60)
        _UPLOADED[url] = r.json()[0]
    return _UPLOADED[url]


@pytest.mark.parametrize("weights, words", [
    ({"path": str(ROOT / "README.md"), **FILE}, ["never uploaded"]),  # a path outside Gradio's cache
    ("/etc/passwd", ["weights must be a file"]),
])
def test_a_weights_file_the_server_never_received_is_refused(url, weights, words):
    assert_for_a_person(raw_error(url, "check_weights", [TINY, weights]), *words)


def test_the_server_keeps_serving_after_refusals(client):
    _, summary = client.predict(handle_file(CAT), api_name="/explore", model=TINY)
    assert len(summary["layers"]) == 12


# ----------------------------------------------------------------------------- weights uploads


@pytest.fixture
def scaled_bounds(monkeypatch):
    monkeypatch.setattr(M, "weights_bounds", lambda name: SMALL)


def test_hostile_uploads_are_refused_and_a_resent_one_at_once(client, scaled_bounds, tmp_path, monkeypatch):
    for kind in ("zip_bomb", "too_many_tensors", "legacy", "not_weights"):
        path = hostile(kind, tmp_path)
        with pytest.raises(AppError) as info:
            client.predict(TINY, handle_file(str(path)), api_name="/check_weights")
        assert_for_a_person(str(info.value), "could not load weights", path.name, KINDS[kind].split()[0])
    # The bomb again, under another name: refused by its header, before any turn, hash or read,
    # while another load holds the model load lock (it would wait for it otherwise).
    again = tmp_path / "again" / "renamed.pth"
    again.parent.mkdir()
    again.write_bytes((tmp_path / "bomb.pth").read_bytes())
    read, turns = [], []
    monkeypatch.setattr(M, "readable", lambda *a, **k: read.append(a) or pytest.fail("read again"))
    real_turn = W.turn
    monkeypatch.setattr(W, "turn", lambda session: turns.append(session) or real_turn(session))
    with models._load_lock:  # another load in progress: a refusal from the header does not wait for it
        job = client.submit(TINY, handle_file(str(again)), api_name="/check_weights")
        with pytest.raises(AppError, match="compressed"):
            job.result(timeout=120)  # a hang guard: it cannot finish at all if it waits for the lock
        assert models._load_lock.locked()
    assert not read and not turns
    # A file that passes the header checks and is refused by the load is remembered by its hash:
    # sent again under another name, refused in its turn from memory, the lock never taken.
    from safetensors.torch import save_file
    import torch
    wrong = tmp_path / "wrong.safetensors"
    save_file({"junk": torch.zeros(16, dtype=torch.uint8)}, str(wrong))
    monkeypatch.setattr(M, "readable", lambda *a, **k: read.append(a) or real_readable(*a, **k))
    with pytest.raises(AppError, match="could not load weights"):
        client.predict(TINY, handle_file(str(wrong)), api_name="/check_weights")
    assert len(read) == 1
    renamed = tmp_path / "again" / "renamed.safetensors"
    renamed.write_bytes(wrong.read_bytes())
    with models._load_lock:
        job = client.submit(TINY, handle_file(str(renamed)), api_name="/check_weights")
        with pytest.raises(AppError, match="could not load weights"):
            job.result(timeout=120)
    assert len(read) == 1 and len(turns) == 2


def run_event_args(client: Client, photo, weights, model: str = "") -> list:
    """Arguments for the page's (undocumented) run endpoint: each input's value on the page,
    the photo, the weights file and (if given) the model."""
    components = {c["id"]: c for c in client.config["components"]}
    event = next(d for d in client.config["dependencies"] if d.get("api_name") == "run_event")
    kinds = [components[i]["type"] for i in event["inputs"] if components[i]["type"] != "state"]
    values = [components[i].get("props", {}).get("value") for i in event["inputs"] if components[i]["type"] != "state"]
    return [photo if k == "image" else weights if k == "file" else model if model and v == DEFAULT_MODEL else v
            for k, v in zip(kinds, values)]


def wait_until(condition, timeout_s: float = 120.0) -> None:
    """Wait for `condition()` to hold (a guard against a hang, not a time limit under test)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not so after {timeout_s:g} s")
        time.sleep(0.02)


def test_a_run_never_reads_an_unchecked_weights_file(client, tmp_path, monkeypatch):
    """Called directly, the run endpoint (the models' queue) refuses a file check_weights never
    saw, at once; once checked, the file loads there too, for the session that checked it only."""
    from safetensors.torch import save_file
    from conftest import random_model
    path = tmp_path / "tiny.safetensors"
    save_file(random_model(TINY).state_dict(), str(path))
    args = run_event_args(client, handle_file(CAT), handle_file(str(path)))
    with pytest.raises(AppError) as info:
        client.predict(*args, api_name="/run_event")
    assert_for_a_person(str(info.value), "has not been checked", "tiny.safetensors")
    with pytest.raises(InputError, match="has not been checked"):
        W.require_checked(TINY, str(path), "mine")
    W.check(TINY, str(path), "mine")  # loads it (deit_tiny's own bounds): now a run may load it again
    assert models.is_loaded(TINY, str(path))
    models.MODELS.clear()             # the model cache dropped it: a run would read the file again
    W.require_checked(TINY, str(path), "mine")
    with pytest.raises(InputError, match="has not been checked"):
        W.require_checked(TINY, str(path), "another session")


def junk_weights(folder: Path, i: int, big: bool) -> Path:
    """A distinct junk .safetensors file: small (refused by its header against deit_tiny's
    bounds) or just big enough to pass the header checks (its one tensor fits no model)."""
    from safetensors.torch import save_file
    import torch
    path = folder / f"junk_{i}.safetensors"
    size = (M.weights_bounds(TINY).min_bytes if big else 64) + i
    save_file({"junk": torch.full((size,), i % 256, dtype=torch.uint8)}, str(path))
    return path


def test_a_burst_of_junk_weights_never_holds_another_sessions_page_run(url, client, tmp_path, monkeypatch):
    """20 distinct junk weights files sent to /check_weights at once from 5 sessions, while the
    model load lock is held (standing for a slow load): the small ones are refused by their
    header without a turn, the big ones take one turn per session, at most WEIGHTS_CHECKS_AT_ONCE
    in all, and the rest are refused at once. Meanwhile another session's page run (the weights
    step with no file, then the run) completes: it took no turn, while every turn was taken and
    the load lock held. (Its wait, alone and during a burst: scripts/weights_burst.py.)"""
    client.predict(handle_file(CAT), api_name="/explore", model=TINY)  # deit_tiny loaded: the run needs no load
    turns: list[str] = []
    real_turn = W.turn
    monkeypatch.setattr(W, "turn", lambda session: turns.append(session) or real_turn(session))
    attackers = [Client(url, verbose=False) for _ in range(5)]
    files = [junk_weights(tmp_path, i, big=i % 2 == 1) for i in range(20)]
    bystander = Client(url, verbose=False)
    with models._load_lock:   # every check that gets a turn waits here
        jobs = [attackers[i % 5].submit(TINY, handle_file(str(f)), api_name="/check_weights")
                for i, f in enumerate(files)]
        # Every check is answered (refused) or holds a turn, waiting on the lock: none is left queued.
        wait_until(lambda: sum(job.done() for job in jobs) + W.in_flight() == len(jobs))
        answered = []
        for job, f in zip(jobs, files):
            if job.done():
                with pytest.raises(AppError) as info:
                    job.result()
                answered.append((f.name, str(info.value)))
        holders = W.in_flight()
        assert 1 <= holders <= min(5, limits.WEIGHTS_CHECKS_AT_ONCE), holders
        assert len(answered) == 20 - holders, answered
        # The bystander: the page's weights step without a file, then the run, all while the turns
        # are taken and the load lock held.
        bystander.submit(TINY, None, api_name="/check_weights").result(timeout=120)   # a hang guard only
        out = bystander.submit(*run_event_args(bystander, handle_file(CAT), None, TINY),
                               api_name="/run_event").result(timeout=300)
        assert out and models._load_lock.locked() and W.in_flight() == holders
    assert all(session for session in turns) and len(turns) <= 10, turns   # only the big files asked for a turn
    bystander_session = bystander.session_hash
    assert bystander_session not in turns
    small = [m for name, m in answered if int(name.split("_")[1].split(".")[0]) % 2 == 0]
    assert len(small) == 10 and all("holds 64" in m or "bytes of tensors" in m for m in small), small
    refused_at_once = [m for name, m in answered if m not in small]
    assert all(W.BUSY in m or W.ONE_AT_A_TIME in m for m in refused_at_once), refused_at_once
    for job in jobs:                  # the holders, once the lock is free: refused by the library
        try:
            job.result(timeout=300)
        except AppError as e:
            assert_for_a_person(str(e))


def test_a_refusal_is_logged_as_one_line_and_a_bug_with_its_stack(url, defaults, tmp_path, caplog, capfd, monkeypatch):
    """The red-team's inputs, each refused: one INFO line each (the event, the message, the rule,
    how long), no stack in the log or on the console. A bug still logs its stack."""
    cat = {"path": client_upload(url), **FILE}
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")   # a wrong-shape (empty) file
    uploaded = httpx.post(url.rstrip("/") + "/gradio_api/upload", files={"files": ("junk.safetensors", junk.read_bytes())},
                          timeout=60).json()[0]
    calls = [
        ("check_weights", [TINY, {"path": uploaded, **FILE}]),                                  # our check
        ("explore", explore_args(defaults, None)),                                             # no photo
        ("explore", explore_args(defaults, cat, schedule='<img src="http://127.0.0.1:9/b.png">')),  # a bad schedule
        ("explore", explore_args(defaults, cat, num_prop=10**400)),                           # Gradio's own check
        ("explore", explore_args(defaults, cat, model="x" * 10_000)),                         # a dropdown's choices
        ("explore", explore_args(defaults, {"path": "https://example.com/cat.png", **FILE})),  # an address
    ]
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="gtp.app"):
        for api, data in calls:
            caplog.clear()
            raw_error(url, api, data)
            refusals = [r for r in caplog.records if r.getMessage().startswith("refused")]
            assert len(refusals) == 1 and refusals[0].exc_info is None, (api, [r.getMessage() for r in caplog.records])
            line = refusals[0].getMessage()
            assert "\n" not in line and api in line and "[rule: " in line and len(line) < 600, line
            assert all(r.exc_info is None for r in caplog.records), api
        assert "Traceback" not in capfd.readouterr().err
        # A bug: its stack is logged (once, by the app), and the page is told it is one.
        import app.ui.api as api_module
        monkeypatch.setattr(api_module, "explore_photo", lambda *a, **k: 1 / 0)
        caplog.clear()
        assert "bug in GTP Explorer" in raw_error(url, "explore", explore_args(defaults, cat))
        bugs = [r for r in caplog.records if r.exc_info is not None]
        assert len(bugs) == 1 and bugs[0].levelno == logging.ERROR and "ZeroDivisionError" in caplog.text
