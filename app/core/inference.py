"""Running the models: the two GPU functions and the run cache in front of them.

`run_photo` and `measure_throughput` are the only functions that touch a model's forward.
On a ZeroGPU Space they run in a forked worker (`@spaces.GPU`), so they are pure: their
arguments and results are picklable CPU values (`app.core.results`), they never change their
arguments, and the only module state they touch is the model they patch and unpatch under its
lock. One call per new photo does everything (full, GTP with trace, ToMe, pruning); GMACs,
which need no GPU, are counted outside (`app.core.costs`).

`duration` of each GPU function: `app.core.limits.GPU_DURATION_*`, sized from the measured time of
one call (see there). Outside ZeroGPU `spaces.GPU` returns the function unchanged.
"""
from __future__ import annotations

import hashlib
import time
from typing import Optional, Union

import numpy as np
import spaces
import torch
from PIL import Image

import gtp
from gtp import baselines, tome
from gtp.measure.metrics import Timer, cosine, device_name, features_and_logits, kl_divergence, top1_agreement

from . import limits
from .caches import BoundedCache
from .models import DEVICE, ModelSlot, get_model, wait_idle  # noqa: F401  (wait_idle: tests/conftest.py)
from .photos import Photo
from .results import (
    COMPARED, METHOD_LABELS, Comparison, Exploration, MethodResult, ModelInfo, RunJob, RunResult, Throughput,
    ThroughputJob, TopClass, UserError,
)
from .settings import Settings, parse_schedule

# ----------------------------------------------------------------------------- helpers


def _top5(logits: Optional[torch.Tensor], class_names: Optional[list[str]]) -> Optional[tuple[TopClass, ...]]:
    if logits is None:
        return None
    probs = logits[0].detach().float().softmax(-1)
    p, idx = probs.topk(min(5, probs.numel()))
    return tuple(TopClass(int(i), class_names[int(i)] if class_names else f"class {int(i)}", round(float(q), 6))
                 for q, i in zip(p, idx))


def _best_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """The best wall time of `repeats` forwards, in ms (other work only ever adds time)."""
    times = []
    for _ in range(repeats):
        with Timer(x.device) as t:
            model(x)
        times.append(t.seconds * 1000)
    return min(times)


def _to_cpu(value):
    """A trace (or any part of one) copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, gtp.Edges):
        return gtp.Edges(*(t.detach().cpu() for t in value))
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _compact(rec: gtp.Trace) -> gtp.Trace:
    """A freshly recorded trace made ready to leave the GPU function (before anyone sees it):
    attention maps in bfloat16 (half the memory of float32 for the largest part; exact zeros
    stay zero; sparsity statistics were computed by the library in full precision), then
    everything copied to the CPU. The cast is done on the model's device: a ZeroGPU worker is
    a forked process, where CPU thread pools (OpenMP) inherited from the parent are unsafe."""
    for layer in rec.layers:
        if layer.attn_before is not None:
            layer.attn_before = layer.attn_before.to(torch.bfloat16)
            layer.attn_after = layer.attn_after.to(torch.bfloat16)
    for obj in [rec, *rec.layers]:
        for name in obj.__dataclass_fields__:
            setattr(obj, name, _to_cpu(getattr(obj, name)))
    return rec


def _slot_for(settings: Settings) -> ModelSlot:
    """The loaded model (loaded before the GPU call; a reused ZeroGPU worker forked before
    that load loads its own copy, which is deterministic for the same name and file)."""
    return get_model(settings.model, settings.weights)


# ----------------------------------------------------------------------------- the run (GPU)


def _compare(slot: ModelSlot, x: torch.Tensor, settings: Settings, budget: list[int],
             full_feats: torch.Tensor, full_logits: Optional[torch.Tensor], full_seconds: float) -> Comparison:
    """GTP (this setting), ToMe and pruning, each removing `budget` tokens per block, against the
    full model's forward (`full_*`, which took `full_seconds`). Hold the lock."""
    loaded = slot.loaded
    options = settings.patch_kwargs()
    options.pop("num_prop")
    results = []
    with Timer(x.device) as timer:
        for method in COMPARED:
            try:
                model = baselines.apply_method(slot.model, method, budget, **options)
            except ValueError as e:
                raise ValueError(f"Cannot run {METHOD_LABELS[method]} at this token budget on "
                                 f"{loaded.name}: {e}") from None
            if method == "tome":
                tome.patch(model, r=budget, trace_source=True)
                feats, logits = features_and_logits(model, x)
                removed = [tuple(ids[0].tolist()) for ids in tome.merged_ids_of(model)]
                merged_into = tuple(tuple(ids[0].tolist()) for ids in tome.merged_into_of(model))
                left, tokens = tome.sources_of(model).shape[-1], []  # tokens entering block 1
                for ids in removed:
                    left -= len(ids)
                    tokens.append(left)
            else:
                merged_into = None
                with gtp.trace(model) as rec:
                    feats, logits = features_and_logits(model, x)
                removed = [tuple(layer.propagated[0].tolist()) for layer in rec.layers]
                tokens = rec.tokens_per_block()
            has_head = full_logits is not None
            results.append(MethodResult(
                method=method, removed=tuple(removed), tokens_per_block=tuple(tokens),
                cosine=round(float(cosine(full_feats, feats)[0]), 6),
                top5=_top5(logits, loaded.class_names) if has_head else None,
                agree=bool(top1_agreement(full_logits, logits)[0]) if has_head else None,
                kl=round(float(kl_divergence(full_logits, logits)[0]), 6) if has_head else None,
                merged_into=merged_into))
    baselines.reset(slot.model)
    return Comparison(budget=tuple(budget), methods=tuple(results),
                      full_top5=_top5(full_logits, loaded.class_names),
                      seconds=full_seconds + timer.seconds)


def _patch_or_refuse(slot: ModelSlot, settings: Settings) -> Union[torch.nn.Module, UserError]:
    """The slot's model patched with `settings`, or a `UserError` saying why it cannot be."""
    try:
        return gtp.patch(slot.model, **settings.patch_kwargs())
    except ValueError as e:
        return UserError(f"Impossible GTP hyper-parameters for {slot.loaded.name}: {e}")


@spaces.GPU(duration=limits.GPU_DURATION_RUN_S)
@torch.inference_mode()
def run_photo(job: RunJob) -> Union[RunResult, UserError]:
    """Full model, GTP (traced, with attention maps, and timed), ToMe and pruning on one photo.

    Returns a `UserError` for hyper-parameters the model cannot take (not raised: see there).
    """
    slot = _slot_for(job.settings)
    x = job.x.to(slot.loaded.device)
    repeats = limits.LATENCY_REPEATS.get(x.device.type, 10)
    with slot.lock:
        try:
            model = _patch_or_refuse(slot, job.settings)
            if isinstance(model, UserError):
                return model
            with gtp.trace(model, attention=True) as rec:
                gtp_feats, gtp_logits = features_and_logits(model, x)  # also warms the GTP path up
            gtp_ms = _best_ms(model, x, repeats)
            gtp.unpatch(slot.model)
            with Timer(x.device) as full_timer:
                full_feats, full_logits = features_and_logits(slot.model, x)
            full_ms = _best_ms(slot.model, x, repeats)
            schedule = parse_schedule(job.settings.schedule)
            budget = schedule if schedule is not None else [int(job.settings.num_prop)] * len(rec.layers)
            try:
                comparison = _compare(slot, x, job.settings, budget, full_feats, full_logits, full_timer.seconds)
            except ValueError as e:
                return UserError(str(e))
        finally:
            baselines.reset(slot.model)  # the model rests unpatched
    names = slot.loaded.class_names
    return RunResult(
        trace=_compact(rec), full_top5=_top5(full_logits, names), gtp_top5=_top5(gtp_logits, names),
        feature_cosine=round(float(cosine(full_feats, gtp_feats)[0]), 6),
        latency_ms=(round(full_ms, 2), round(gtp_ms, 2)), repeats=repeats, device=device_name(x.device),
        num_heads=int(slot.model.blocks[0].attn.num_heads), comparison=comparison)


# ----------------------------------------------------------------------------- explorations (cached)

RUNS: BoundedCache[Exploration] = BoundedCache("runs", limits.RUN_CACHE_ENTRIES, limits.RUN_CACHE_BYTES)


def _unnormalise(x: torch.Tensor, data_config: dict) -> Image.Image:
    """The model input [1, 3, H, W] back to the RGB picture it shows."""
    mean = torch.tensor(data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(data_config["std"]).view(3, 1, 1)
    rgb = (x[0].detach().float().cpu() * std + mean).clamp(0, 1)
    return Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")


def run_key(photo: Photo, settings: Settings) -> str:
    """What a run depends on: the photo's pixels and conversions, the model, weights, setting."""
    h = hashlib.sha256(photo.image.tobytes())
    h.update(repr((photo.image.size, tuple(photo.notes), settings)).encode())
    return h.hexdigest()


def model_input(photo: Photo, slot: ModelSlot) -> torch.Tensor:
    """The photo as the model's input [1, 3, H, W] on the CPU."""
    return slot.loaded.transform(photo.image.convert("RGB")).unsqueeze(0)


def explore_photo(photo: Photo, settings: Settings) -> Exploration:
    """One run of the photo with this setting, answered from the cache when seen before.
    ValueError (a message for the person) for impossible settings or unusable weights."""
    slot = get_model(settings.model, settings.weights)  # outside the GPU call: loading needs none
    key = run_key(photo, settings)
    hit = RUNS.get(key)
    if hit is not None:
        return hit
    x = model_input(photo, slot)
    result = run_photo(RunJob(settings=settings, x=x))
    if isinstance(result, UserError):
        raise ValueError(result.message)
    loaded = slot.loaded
    exp = Exploration(
        key=key, settings=settings,
        model=ModelInfo(loaded.name, loaded.pretrained, loaded.message, loaded.has_head), x=x,
        model_input=_unnormalise(x, loaded.data_config), photo_size=tuple(photo.original_size),
        photo_notes=tuple(photo.notes), run=result)
    return RUNS.put(key, exp)


# ----------------------------------------------------------------------------- throughput (GPU)


def _rate(model: torch.nn.Module, x: torch.Tensor, budget_s: float, max_batches: int) -> tuple[float, int]:
    """(best ms per batch, batches timed): batches until `budget_s` is spent (at least one).
    The first batch warms up and is dropped when there was time for another."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_batches + 1 and (not times or time.perf_counter() - start < budget_s):
        with Timer(x.device) as t:
            model(x)
        times.append(t.seconds * 1000)
    timed = times[1:] or times
    return min(timed), len(timed)


@spaces.GPU(duration=limits.GPU_DURATION_THROUGHPUT_S)
@torch.inference_mode()
def measure_throughput(job: ThroughputJob) -> Union[Throughput, UserError]:
    """Images per second of the full and the GTP model, measured now on this device.

    The photo repeated `batch_size` times; each model gets half of `job.budget_s`: batches
    until it is spent (a warm-up batch first, dropped when another fitted), best of them.
    """
    slot = _slot_for(job.settings)
    x = job.x.to(slot.loaded.device).expand(job.batch_size, -1, -1, -1).contiguous()
    start = time.perf_counter()
    with slot.lock:
        try:
            model = _patch_or_refuse(slot, job.settings)
            if isinstance(model, UserError):
                return model
            gtp_ms, gtp_batches = _rate(model, x, job.budget_s / 2, job.max_batches)
            gtp.unpatch(slot.model)
            full_ms, full_batches = _rate(slot.model, x, job.budget_s / 2, job.max_batches)
        finally:
            baselines.reset(slot.model)
    return Throughput(model=slot.loaded.name, device=device_name(x.device), batch_size=job.batch_size,
                      timed_batches=min(gtp_batches, full_batches), full_img_per_s=job.batch_size / full_ms * 1000,
                      gtp_img_per_s=job.batch_size / gtp_ms * 1000, seconds=time.perf_counter() - start)


def throughput(exp: Exploration, batch_size: int) -> Throughput:
    """`measure_throughput` of the exploration's model, setting and photo, within the bounds
    of `app.core.limits` for this device. ValueError for a batch size out of them."""
    settings = exp.settings
    kind = DEVICE.type
    top = limits.THROUGHPUT_MAX_BATCH.get(kind, 16)
    if not 1 <= batch_size <= top:
        raise ValueError(f"batch size must be between 1 and {top} on this server ({kind.upper()}); got {batch_size}")
    get_model(settings.model, settings.weights)  # loaded outside the GPU call
    job = ThroughputJob(settings=settings, x=exp.x, batch_size=batch_size,
                        budget_s=limits.THROUGHPUT_BUDGET_S.get(kind, 4.0), max_batches=10)
    result = measure_throughput(job)
    if isinstance(result, UserError):
        raise ValueError(result.message)
    return result
