"""The runs a whole classroom shares: the example photos at the published setting.

A class opens the same link at once, so the same few runs are asked for by every student. They
are made once (`shared_run`: the first request makes one, every other request waits for it and
takes it, under one lock) and kept in their own bounded cache, `SHARED`, apart from the
per-upload run cache, so that no student's upload pushes them out. Each is kept with the model
slot that made it (a weak reference, so a dropped model is not held in memory): a model or weights
loaded anew (`app.core.models`) invalidate it and it is made again. Values are immutable, so every
session is handed the same object.
"""
from __future__ import annotations

import hashlib
import weakref
from functools import lru_cache
from typing import Callable, Optional

from . import limits
from .assets import EXAMPLE_PHOTOS, example_paths
from .caches import BoundedCache
from .models import ModelSlot
from .photos import Photo, open_photo
from .results import Exploration
from .settings import PUBLISHED_SETTINGS, Settings
from .workers import Lock

SHARED: BoundedCache[tuple[weakref.ref, Exploration]] = BoundedCache(
    "shared runs", len(EXAMPLE_PHOTOS) * limits.MODEL_CACHE_ENTRIES, limits.SHARED_RUN_BYTES)
_making = Lock()   # one shared run is made at a time; a request for it meanwhile waits, then takes it


def pixels(photo: Photo) -> str:
    """A hash of the photo's pixels as the app sees them (after `open_photo`'s conversions)."""
    return hashlib.sha256(photo.image.tobytes()).hexdigest()


@lru_cache(maxsize=1)
def _example_pixels() -> frozenset[str]:
    return frozenset(pixels(open_photo(path)) for path in example_paths())


def is_shared(photo_pixels: str, settings: Settings) -> bool:
    """A photo with these `pixels` is an example photo (by its pixels: Gradio hands each session
    its own copy of the file) at the published setting, with any model and weights."""
    return (settings.config == PUBLISHED_SETTINGS.config and not settings.schedule
            and photo_pixels in _example_pixels())


def get(key: str, slot: ModelSlot) -> Optional[Exploration]:
    """The shared run `key` if it was made with this very model slot."""
    hit = SHARED.get(key)
    return hit[1] if hit is not None and hit[0]() is slot else None


def keep(exp: Exploration, slot: ModelSlot) -> Exploration:
    """Store (or replace, e.g. with its comparison) a shared run made with `slot`."""
    SHARED.put(exp.key, (weakref.ref(slot), exp))
    return exp


def shared_run(key: str, slot: ModelSlot, make: Callable[[], Exploration]) -> Exploration:
    """The shared run `key`, made by `make()` once for every session that asks."""
    exp = get(key, slot)
    if exp is None:
        with _making:
            exp = get(key, slot)   # made while this request waited
            if exp is None:
                exp = keep(make(), slot)
    return exp
