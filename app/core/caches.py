"""A bounded, thread-safe least-recently-used cache (the one cache type the app uses).

Every cache is bounded by a number of entries and, optionally, by bytes (an entry's size is
given by `size_of`); the bounds themselves live in `app.limits`. Values are immutable
results, so handing the same object to several sessions at once is safe.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, Optional, TypeVar

import numpy as np
import torch
from PIL import Image

from .workers import Lock

V = TypeVar("V")


def nbytes(value: Any) -> int:
    """Approximate memory held by a value: tensors, arrays and PIL images counted, containers
    and dataclasses walked one level at a time (shared objects are counted each time)."""
    seen: set[int] = set()

    def walk(v: Any, depth: int) -> int:
        if id(v) in seen or depth > 6:
            return 0
        seen.add(id(v))
        if isinstance(v, torch.Tensor):
            return v.element_size() * v.nelement()
        if isinstance(v, np.ndarray):
            return v.nbytes
        if isinstance(v, Image.Image):
            return v.width * v.height * len(v.getbands())
        if isinstance(v, (str, bytes)):
            return len(v)
        if isinstance(v, dict):
            return sum(walk(k, depth + 1) + walk(x, depth + 1) for k, x in v.items())
        if isinstance(v, (list, tuple, set, frozenset)):
            return sum(walk(x, depth + 1) for x in v)
        if hasattr(v, "__dataclass_fields__"):
            return sum(walk(getattr(v, f), depth + 1) for f in v.__dataclass_fields__)
        return 64
    return walk(value, 0)


class BoundedCache(Generic[V]):
    """LRU by entries and bytes; every method is atomic (one lock per cache)."""

    def __init__(self, name: str, max_entries: int, max_bytes: Optional[int] = None,
                 size_of: Callable[[Any], int] = nbytes):
        self.name = name
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._data: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = Lock()   # unlocked again in a forked GPU worker (`app.core.workers`)

    def get(self, key: Hashable) -> Optional[V]:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            self._data.move_to_end(key)
            return hit[0]

    def put(self, key: Hashable, value: V) -> V:
        """Store `value` (dropping the least recently used entries past a bound); returns it.
        A value larger than the byte bound on its own is returned without being kept."""
        size = self._size_of(value) if self.max_bytes is not None else 0
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if self.max_bytes is not None and size > self.max_bytes:
                return value
            self._data[key] = (value, size)
            self._bytes += size
            while len(self._data) > self.max_entries or (
                    self.max_bytes is not None and self._bytes > self.max_bytes):
                _, (_, dropped) = self._data.popitem(last=False)
                self._bytes -= dropped
        return value

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        """The cached value, or `make()` stored. `make` runs outside the lock (it may take
        seconds), so two threads missing at once may both make it; the last one is kept."""
        hit = self.get(key)
        return hit if hit is not None else self.put(key, make())

    def values(self) -> list[V]:
        with self._lock:
            return [v for v, _ in self._data.values()]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes
