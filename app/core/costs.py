"""GMACs per (model, configuration), counted once, outside any GPU call.

A model's cost depends on its architecture and GTP configuration, not on its weights or the
photo (token reduction changes which tokens leave, not how many), so the count is cached by
(model name, method, configuration) and made on a CPU model: on a CPU host the loaded model
itself (under its lock), on a CUDA host a CPU copy kept only for counting (ZeroGPU offers no
GPU outside `@spaces.GPU`, and counting needs none).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

import gtp
from gtp import methods
from gtp.models import load_model

from . import limits
from .caches import BoundedCache
from .models import DEVICE, ModelSlot, get_model
from .results import Costs, Exploration
from .settings import Settings
from .workers import Lock

GMACS: BoundedCache[float] = BoundedCache("gmacs", limits.GMACS_CACHE_ENTRIES)
_COUNTING: BoundedCache[ModelSlot] = BoundedCache("counting models", limits.COUNTING_MODELS, size_of=lambda v: 0)
_counting_lock = Lock()


def all_methods() -> tuple[str, ...]:
    """The methods whose GMACs the page shows: the full model, GTP and the compared methods."""
    return tuple(dict.fromkeys(["full", "gtp"] + [m.name for m in methods.compared()]))


def _counting_slot(settings: Settings) -> ModelSlot:
    """A CPU model of this architecture to count on."""
    if DEVICE.type == "cpu":
        return get_model(settings.model, settings.weights)
    with _counting_lock:
        slot = _COUNTING.get(settings.model)
        if slot is None:
            slot = _COUNTING.put(settings.model, ModelSlot(load_model(settings.model, device="cpu")))
        return slot


def _amount_and_options(settings: Settings, method: str, depth: int) -> tuple[object, dict]:
    """GTP runs the setting itself; every other method removes the comparison's budget per block."""
    options = settings.patch_kwargs()
    amount = options.pop("num_prop")
    return (amount if method == "gtp" else settings.budget(depth)), options


@torch.inference_mode()
def _count(settings: Settings, method: str, depth: int) -> Optional[float]:
    slot = _counting_slot(settings)
    amount, options = _amount_and_options(settings, method, depth)
    if not methods.get(method).runs_on(slot.model):
        return None  # not run on this model (a CLS-attention method on a model without CLS): nothing to count
    with slot.lock:
        try:
            model = methods.get(method).apply(slot.model, amount, **options)
            return gtp.gmacs(model, img_size=slot.loaded.img_size)
        finally:
            methods.reset(slot.model)


def gmacs(settings: Settings, method: str, depth: int, count: bool = True) -> Optional[float]:
    """GMACs of `method` (a name in `gtp.methods.METHODS`) with this setting; None when not
    counted before and `count` is False (counting takes seconds on a CPU). Cached by the model
    and the method's own cost key (`Method.cost_key`)."""
    amount, options = _amount_and_options(settings, method, depth)
    key = (settings.model, methods.get(method).cost_key(amount, **options))
    if not count:
        return GMACS.get(key)
    return GMACS.get_or_make(key, lambda: _count(settings, method, depth))


def costs(exp: Exploration, names: Sequence[str] = ("full", "gtp"), count: bool = True) -> Costs:
    """The exploration's GMACs for the methods `names` (the others None), counted where `count`."""
    return Costs({m: gmacs(exp.settings, m, exp.depth, count) for m in names})
