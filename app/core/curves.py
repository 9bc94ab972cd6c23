"""Measured trade-off curves: the fidelity bench (`gtp.measure.fidelity`) of the chosen model and
weights on the bundled photos, run once on demand (a button; never at start-up) and kept on disk.

Per method of `limits.CURVE_METHODS` at each P of `limits.CURVE_NUM_PROP` (matched GMACs at each
P): the counted GMACs and the cosine of the final features to the full model's, with top-1
agreement where the model has a head. One JSON file per (model, weights) under the app's folder
(`app.core.files.ROOT`); only the newest `limits.CURVE_FILES_KEPT` are kept.
"""
from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from gtp import methods
from gtp.measure import fidelity

from . import files, limits, workers
from .models import DEVICE, get_model
from .settings import Settings
from .workers import Lock

CURVE_DIR = files.ROOT / "curves"
CURVE_DIR.mkdir(exist_ok=True)
_lock = Lock()
_kept: deque = deque()


@dataclass(frozen=True)
class CurvesJob:
    settings: Settings
    x: torch.Tensor          # [V, 3, H, W] the views, on the CPU
    photos: int


def _file(settings: Settings) -> Path:
    key = hashlib.sha256(json.dumps([settings.model, settings.weights]).encode()).hexdigest()[:24]
    return CURVE_DIR / f"{key}.json"


def load(settings: Settings) -> Optional[dict]:
    """The curves measured before for this model and weights, or None."""
    path = _file(settings)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save(settings: Settings, record: dict) -> None:
    path = _file(settings)
    with _lock:
        path.write_text(json.dumps(record))
        if path in _kept:
            _kept.remove(path)
        _kept.append(path)
        while len(_kept) > limits.CURVE_FILES_KEPT:
            _kept.popleft().unlink(missing_ok=True)


@workers.gpu_function(limits.GPU_DURATION_CURVES_S, fallback=True)
@torch.inference_mode()
def measure_curves(job: CurvesJob, device: torch.device = DEVICE) -> list[dict]:
    """The fidelity records of the curve methods at the curve P's on the job's views."""
    from .inference import _model
    workers.enter_gpu_call()
    slot = _model(job.settings, device)
    runs = fidelity.method_runs(("full",) + limits.CURVE_METHODS, limits.CURVE_NUM_PROP)
    with slot.lock:
        try:
            return fidelity.measure(slot.model, job.x.to(slot.loaded.device), runs, slot.loaded.has_head,
                                    job.photos, batch=limits.CURVE_VIEWS, progress=False)
        finally:
            methods.reset(slot.model)


def curves(settings: Settings) -> dict:
    """The measured curves of this model and weights: from disk, else measured now (bounded by
    `limits.CURVE_VIEWS` and the fixed methods and P's) and saved."""
    known = load(settings)
    if known is not None:
        return known
    slot = get_model(settings.model, settings.weights)     # loaded outside the GPU call
    photos = fidelity.bundled_photos()
    x, _ = fidelity.make_views(photos, slot.loaded.transform, min(limits.CURVE_VIEWS, len(photos)))
    x = x[:limits.CURVE_VIEWS]
    rows = measure_curves(CurvesJob(settings=settings, x=x, photos=len(photos)))
    record = dict(model=settings.model, weights=settings.weights, pretrained=slot.loaded.pretrained,
                  views=int(x.shape[0]), photos=len(photos), has_head=slot.loaded.has_head, rows=rows)
    _save(settings, record)
    return record
