"""GMACs per (model, configuration), counted once, outside any GPU call.

A model's cost depends on its architecture and GTP configuration, not on its weights or the
photo (token reduction changes which tokens leave, not how many), so the count is cached by
(model name, method, configuration) and made on a CPU model: on a CPU host the loaded model
itself (under its lock), on a CUDA host a CPU copy kept only for counting (ZeroGPU offers no
GPU outside `@spaces.GPU`, and counting needs none).
"""
from __future__ import annotations

import threading
from typing import Hashable, Optional

import torch

import gtp
from gtp import baselines
from gtp.models import load_model

from . import limits
from .caches import BoundedCache
from .models import DEVICE, ModelSlot, get_model
from .results import COMPARED, Costs, Exploration
from .settings import Settings, parse_schedule

GMACS: BoundedCache[float] = BoundedCache("gmacs", limits.GMACS_CACHE_ENTRIES)
_COUNTING: BoundedCache[ModelSlot] = BoundedCache("counting models", limits.COUNTING_MODELS, size_of=lambda v: 0)
_counting_lock = threading.Lock()


def _counting_slot(settings: Settings) -> ModelSlot:
    """A CPU model of this architecture to count on."""
    if DEVICE.type == "cpu":
        return get_model(settings.model, settings.weights)
    with _counting_lock:
        slot = _COUNTING.get(settings.model)
        if slot is None:
            slot = _COUNTING.put(settings.model, ModelSlot(load_model(settings.model, device="cpu")))
        return slot


def _budget(settings: Settings, depth: int) -> list[int]:
    schedule = parse_schedule(settings.schedule)
    return schedule if schedule is not None else [int(settings.num_prop)] * depth


def _key(settings: Settings, method: str, depth: int) -> Hashable:
    if method == "full":
        return (settings.model, "full")
    if method == "gtp":
        return (settings.model, "gtp", settings.config_key())
    # ToMe and pruning depend only on the budget (pruning's other switches are a preset)
    return (settings.model, method, tuple(_budget(settings, depth)))


@torch.inference_mode()
def _count(settings: Settings, method: str) -> float:
    slot = _counting_slot(settings)
    options = settings.patch_kwargs()
    amount = options.pop("num_prop")
    if method in ("tome", "pruning"):
        amount = _budget(settings, len(slot.model.blocks))
    with slot.lock:
        try:
            model = baselines.apply_method(slot.model, method, amount, **options)
            return gtp.gmacs(model, img_size=slot.loaded.img_size)
        finally:
            baselines.reset(slot.model)


def gmacs(settings: Settings, method: str, depth: int, count: bool = True) -> Optional[float]:
    """GMACs of `method` ("full", "gtp", "tome", "pruning") with this setting; None when not
    counted before and `count` is False (counting takes seconds on a CPU)."""
    key = _key(settings, method, depth)
    if not count:
        return GMACS.get(key)
    return GMACS.get_or_make(key, lambda: _count(settings, method))


def costs(exp: Exploration, methods: tuple[str, ...] = ("full", "gtp"), count: bool = True) -> Costs:
    """The exploration's GMACs for `methods` (the others None), counted where `count`."""
    values = {m: gmacs(exp.settings, m, exp.depth, count) for m in methods}
    return Costs(**values)


ALL_METHODS = ("full",) + COMPARED
