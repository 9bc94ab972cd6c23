"""The loaded models: a bounded cache of model slots, each with the lock that serialises its use.

The same module is the full model while unpatched and the GTP model while patched, so one
copy of the weights is held per (model, weights file); the lock keeps concurrent requests
from seeing each other's configuration. On a CUDA host the default model is placed on the
GPU at start-up (`preload`), outside any request, as ZeroGPU requires.
"""
from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from gtp.models import SUPPORTED_MODELS, LoadedModel, load_model

from . import limits
from .caches import BoundedCache
from .errors import InputError, file_names_only
from .plain import shown
from .settings import DEFAULT_MODEL
from .workers import Lock, NotInWorker, leave_worker

log = logging.getLogger("gtp.app")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
"""On a ZeroGPU Space (as the `spaces` package reads it) every forward of one photo stays in one
GPU call; elsewhere what the page does not show yet may run later."""


@dataclass(eq=False)
class ModelSlot:
    """One loaded model and its lock (hold `lock` while patching or running it)."""
    loaded: LoadedModel
    lock: Lock = field(default_factory=Lock)

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model


MODELS: BoundedCache[ModelSlot] = BoundedCache("models", limits.MODEL_CACHE_ENTRIES, size_of=lambda v: 0)
_load_lock = Lock()  # loading twice at once would only waste memory and time


def _key(name: str, weights: Optional[str], device: torch.device) -> tuple:
    return (name, weights or None, device.type)


def is_loaded(name: str, weights: Optional[str] = None) -> bool:
    """Whether `name` with these weights is loaded on DEVICE (no load, no waiting)."""
    return _key(name, weights, DEVICE) in MODELS


def get_model(name: str, weights: Optional[str] = None, device: Optional[torch.device] = None) -> ModelSlot:
    """A supported model on `device` (default DEVICE), loaded on first use. InputError for unknown
    names or unusable weights files; a failed load frees what it built before the error reaches
    the user."""
    if name not in SUPPORTED_MODELS:
        raise InputError(f"Unknown model {shown(name)}; choose one of: {', '.join(SUPPORTED_MODELS)}.")
    key = _key(name, weights, device or DEVICE)
    slot = MODELS.get(key)
    if slot is not None:  # a loaded model never waits for another one's load
        return slot
    with _load_lock:
        slot = MODELS.get(key)
        if slot is None:
            refused = None
            try:
                loaded = load_model(name, weights=weights, device=device or DEVICE)
            except ValueError as e:  # the library's refusal of the weights file: a message for the person
                refused = str(e)
            if refused is not None:
                # Raised outside the `except`: a new error raised inside it would keep the old one
                # (and the frames holding the refused model) as its __context__, even `from None`.
                gc.collect()
                raise InputError(file_names_only(refused))
            slot = MODELS.put(key, ModelSlot(loaded))
            if not loaded.pretrained:   # the page's banner says so; whoever reads the server's console too
                log.warning("%s runs with RANDOMLY INITIALISED weights (its predictions mean nothing): %s",
                            name, file_names_only(loaded.message))
        return slot


def resident(name: str, weights: Optional[str] = None) -> ModelSlot:
    """The model on DEVICE as this process holds it, never loaded here: what a GPU function runs
    in a forked ZeroGPU worker (`app.core.workers`). NotInWorker where it was loaded after the
    worker's fork (the worker then ends: it is of no further use)."""
    slot = MODELS.get(_key(name, weights, DEVICE))
    if slot is None:
        leave_worker()
        raise NotInWorker(f"{name} was loaded after this worker was forked")
    return slot


def preload() -> None:
    """Load the default model now (on the GPU where there is one): called at start-up."""
    get_model(DEFAULT_MODEL)


def weights_banner(name: str, pretrained: bool, message: str, has_head: bool = True) -> str:
    """A plain statement of where the weights came from; loud when they are random, in the terms
    of the model's output: classes for a classifier, features for a backbone (`has_head` False)."""
    if pretrained:
        return f"Weights: {file_names_only(message)}"
    what, meaningless = (("Predictions", "the classes below are meaningless") if has_head else
                         ("Features", "the features below (their similarity and PCA map) describe a random "
                                      "network, not the photo"))
    return (
        f"⚠ **{what} come from randomly initialised weights**: no pretrained weights for "
        f"`{name}` could be had here, so {meaningless} (the token "
        f"graphs, selection and costs are still real computations of this random network). "
        f"To use real weights, upload a `.safetensors`/`.pth` file under *Your own weights*, or "
        f"put `{name}.safetensors` in the folder named by the `GTP_WEIGHTS_DIR` "
        f"environment variable and restart.")
