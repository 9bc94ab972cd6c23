"""The one cache type (app/core/caches.py): bounded by entries and bytes, safe across threads;
the run cache holds to its bound."""
from __future__ import annotations

import threading

import torch

from app.core.caches import BoundedCache, nbytes
from conftest import ROOT


def test_entries_bound_drops_the_least_recently_used():
    cache = BoundedCache("t", max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1           # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2


def test_bytes_bound():
    cache = BoundedCache("t", max_entries=100, max_bytes=1000)
    for i in range(10):
        cache.put(i, torch.zeros(50))    # 200 bytes each
    assert cache.bytes <= 1000 and len(cache) == 5 and 9 in cache and 4 not in cache
    cache.put("huge", torch.zeros(1000))  # larger than the bound on its own: not kept
    assert "huge" not in cache and len(cache) == 5
    assert nbytes({"x": [torch.zeros(10), torch.zeros(5, dtype=torch.bfloat16)]}) >= 50


def test_concurrent_use_keeps_the_bounds():
    cache = BoundedCache("t", max_entries=16, max_bytes=16 * 400)

    def work(k: int) -> None:
        for i in range(300):
            cache.get_or_make((k, i % 40), lambda: torch.zeros(100))
    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) <= 16 and cache.bytes <= 16 * 400
    assert cache.bytes == sum(nbytes(v) for v in cache.values())


def test_the_run_cache_keeps_its_bound_and_drops_the_oldest_run(monkeypatch):
    """Runs of new settings beyond the bound push the oldest out; the newest stay answerable."""
    from app.core import inference
    from app.core.photos import open_photo
    from app.core.settings import make_settings
    monkeypatch.setattr(inference.RUNS, "max_entries", 3)
    inference.RUNS.clear()
    photo = open_photo(str(ROOT / "assets" / "chelsea.png"))
    runs = [inference.explore_photo(photo, make_settings("deit_tiny_patch16_224", num_prop=p)) for p in range(1, 6)]
    assert len(inference.RUNS) == 3 and runs[0].key not in inference.RUNS and runs[-1].key in inference.RUNS
    assert inference.RUNS.bytes <= inference.RUNS.max_bytes
    assert inference.explore_photo(photo, make_settings("deit_tiny_patch16_224", num_prop=5)) is runs[-1]


def test_a_cached_run_is_answered_before_any_model_is_loaded(monkeypatch):
    """A run seen before needs no model: switching back to a model the model cache dropped costs
    no load (issue 20: the model was loaded first, +0.3 s)."""
    import pytest
    from app.core import inference
    from app.core.photos import open_photo
    from app.core.settings import make_settings
    photo = open_photo(str(ROOT / "assets" / "chelsea.png"))
    settings = make_settings("deit_tiny_patch16_224", num_prop=3)
    first = inference.explore_photo(photo, settings)
    monkeypatch.setattr(inference, "get_model", lambda *a, **k: pytest.fail("a model was loaded for a cached run"))
    assert inference.explore_photo(photo, settings) is first


def test_the_heap_is_trimmed_after_requests():
    """Every event's end asks for a trim (app/ui/events.py); the trimmer thread does it once,
    TRIM_EVERY_S later, for all the requests that ended meanwhile."""
    import time

    import pytest
    from app.core import limits
    from app.core.memory import TRIMMER
    from app.ui.events import at_the_edge
    if TRIMMER._libc is None or not TRIMMER.every_s:
        pytest.skip("not glibc, or trimming turned off (GTP_APP_TRIM_EVERY_S=0)")
    TRIMMER.start()
    before = TRIMMER.trims
    for _ in range(5):
        at_the_edge(lambda: None)()
    deadline = time.monotonic() + limits.TRIM_EVERY_S + 5
    while TRIMMER.trims == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert TRIMMER.trims == before + 1  # five requests, one trim


def test_values_gradio_keeps_per_session_are_dropped():
    """Gradio keeps each session's last value of every component (the `explore` answer: ~0.84 MB
    per API session, measured); the sweep run before each trim drops them, leaving the values
    of the session's gr.State (its run, on purpose) alone."""
    from gradio.state_holder import StateHolder
    from app.core.memory import TRIMMER
    from app.ui import sessions
    from app.ui.layout import build_demo
    demo = build_demo()
    demo.config = demo.get_config_file()
    holder = StateHolder()
    holder.set_blocks(demo)
    session = holder["a-session"]
    json_id = next(i for i, b in demo.blocks.items() if type(b).__name__ == "JSON")
    state_id = next(i for i, b in demo.blocks.items() if type(b).__name__ == "State")
    session._update_value_in_config(json_id, {"layers": [[1, 2, 0.5]] * 4000})
    session[state_id] = "the run on view"
    TRIMMER.add_sweep("session values", sessions.sweeper(demo))
    TRIMMER.sweep_and_trim()
    assert session.config_values[json_id]["props"]["value"] is None
    assert session[state_id] == "the run on view"
    assert sessions.forget_values(demo) == 0  # nothing left to drop
