"""The one cache type (app/caches.py): bounded by entries and bytes, safe across threads."""
from __future__ import annotations

import threading

import torch

from app.core import limits
from app.core.caches import BoundedCache, nbytes


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


def test_the_app_caches_are_bounded_as_documented():
    from app.core import costs, inference, models
    from app.ui import handlers
    from app.views import base
    assert models.MODELS.max_entries == limits.MODEL_CACHE_ENTRIES
    assert inference.RUNS.max_entries == limits.RUN_CACHE_ENTRIES and inference.RUNS.max_bytes == limits.RUN_CACHE_BYTES
    assert costs.GMACS.max_entries == limits.GMACS_CACHE_ENTRIES
    assert base.FIGURES.max_bytes == limits.FIGURE_CACHE_BYTES
    assert handlers._TRADEOFF.max_entries == limits.TRADEOFF_CACHE_ENTRIES
