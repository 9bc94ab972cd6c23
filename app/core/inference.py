"""Running the models: the GPU functions and the run cache in front of them.

`run_photo`, `compare_photo` and `measure_throughput` are the only functions that run a model's
forward. On a ZeroGPU Space they run in a forked worker (`@spaces.GPU`), so they are pure: their
arguments and results are picklable CPU values (`app.core.results`), they never change their
arguments, and the only module state they touch is the model they patch and unpatch under its
lock. Everything the person can get wrong is checked before a GPU function is called
(`check_settings`), so an exception inside one is a bug.

One new photo runs GTP (traced, then timed) and the full model once; the other compared methods
(`gtp.methods.compared()`) run in the same call on ZeroGPU (one GPU call per photo), and
elsewhere only when the Compare tab or the `compare` endpoint asks (`compared`), reusing the
full model's outputs kept from the first call: the full model never runs twice for one photo.
GMACs, which need no GPU, are counted outside (`app.core.costs`).

`duration` of each GPU function: `app.core.limits.GPU_DURATION_*`, sized from the measured time of
one call (see there). `app.core.workers.gpu_function` makes each a GPU call (outside ZeroGPU the
function itself) that sets its worker's threads first, never loads weights inside a worker, and
on ZeroGPU goes on on the CPU, with a note, when no GPU is given.

A classroom opens the same example photos: their runs at the published setting are made once
and served to every session from `SHARED` (kept apart from `RUNS`, so that no upload pushes them
out; invalidated when the model or its weights are loaded anew); `warm_up` makes them at
start-up.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from typing import Optional

import numpy as np
import torch
from PIL import Image

import gtp
from gtp import adapters, methods
from gtp.measure.bench import CudaGraphed
from gtp.measure.metrics import Timer, cosine, device_name, features_and_logits, kl_divergence, top1_agreement

from . import classroom, costs, limits, workers
from .outputs import compact, final_tokens, outputs_of, top5, with_patches
from .assets import example_paths
from .caches import BoundedCache
from .errors import InputError, file_names_only
from .models import DEVICE, ZERO_GPU, ModelSlot, get_model, resident
from .photos import Photo, open_photo
from .results import (
    CompareJob, Comparison, Exploration, MethodResult, MethodRun, ModelInfo, Outputs, RunJob, RunResult, Throughput,
    ThroughputJob,
)
from .settings import PUBLISHED_SETTINGS, Settings


def _others(slot: ModelSlot, x: torch.Tensor, settings: Settings, budget: tuple[int, ...]) -> tuple[MethodRun, ...]:
    """Every compared method but GTP, each removing `budget` tokens per block. Hold the lock."""
    options = settings.patch_kwargs()
    options.pop("num_prop")
    runs = []
    for method in methods.compared(slot.model):
        if method.name == "gtp":   # the exploration's own GTP run stands for it
            continue
        (outputs, seconds), blocks = method.run_recorded(slot.model, lambda m: outputs_of(m, x), list(budget),
                                                         **options)
        runs.append(MethodRun(method.name, outputs, tuple(blocks), seconds))
    return tuple(runs)


# ----------------------------------------------------------------------------- the GPU functions


def _model(settings: Settings, device: torch.device) -> ModelSlot:
    """The model a GPU function runs: in a forked ZeroGPU worker the one it holds (never loaded
    there: `app.core.workers`), elsewhere the model on `device`, loaded if it is not yet."""
    if workers.FORKED:
        return resident(settings.model, settings.weights)
    return get_model(settings.model, settings.weights, device)


@workers.gpu_function(limits.GPU_DURATION_RUN_S, fallback=True)
@torch.inference_mode()
def run_photo(job: RunJob, device: torch.device = DEVICE) -> RunResult:
    """GTP (traced with attention maps, then timed), the full model once, and with `job.compare`
    the other compared methods, on one photo. The settings were checked (`check_settings`)."""
    workers.enter_gpu_call()
    slot = _model(job.settings, device)
    x = job.x.to(slot.loaded.device)
    backbone = not slot.loaded.has_head   # its page shows the final patch tokens (a PCA map)
    with slot.lock:
        try:
            model = gtp.patch(slot.model, **job.settings.patch_kwargs())
            with gtp.trace(model, attention=True) as rec, final_tokens(model, backbone) as gtp_tokens:
                features_and_logits(model, x)               # also warms the GTP path up
            reduced, gtp_seconds = outputs_of(model, x)       # timed without the recording
            gtp.unpatch(slot.model)
            with final_tokens(slot.model, backbone) as full_tokens:
                full, full_seconds = outputs_of(slot.model, x)
            others = _others(slot, x, job.settings, job.budget) if job.compare else None
        finally:
            methods.reset(slot.model)  # the model rests unpatched
    names = slot.loaded.class_names
    full, reduced = with_patches(full, full_tokens, rec.num_prefix), with_patches(reduced, gtp_tokens, rec.num_prefix)
    return RunResult(
        trace=compact(rec), full=full, gtp=reduced, full_top5=top5(full.logits, names),
        gtp_top5=top5(reduced.logits, names), feature_cosine=round(float(cosine(full.features, reduced.features)[0]), 6),
        latency_ms=(round(full_seconds * 1000, 2), round(gtp_seconds * 1000, 2)), device=device_label(x.device),
        num_heads=adapters.num_heads(slot.model), others=others)


@workers.gpu_function(limits.GPU_DURATION_RUN_S, fallback=True)
@torch.inference_mode()
def compare_photo(job: CompareJob, device: torch.device = DEVICE) -> tuple[MethodRun, ...]:
    """The compared methods besides GTP on one photo (the Compare tab opened after the run)."""
    workers.enter_gpu_call()
    slot = _model(job.settings, device)
    with slot.lock:
        try:
            return _others(slot, job.x.to(slot.loaded.device), job.settings, job.budget)
        finally:
            methods.reset(slot.model)


# ----------------------------------------------------------------------------- explorations (cached)

STARTING = threading.Event()   # set while `warm_up` runs: a latency timed then is not this server's steady one
STARTING_NOTE = ("Latency timed while the server was still starting up (its start-up work ran alongside): "
                 "a later photo's is the steady figure.")
RUNS: BoundedCache[Exploration] = BoundedCache("runs", limits.RUN_CACHE_ENTRIES, limits.RUN_CACHE_BYTES)


def check_settings(slot: ModelSlot, settings: Settings) -> tuple[int, ...]:
    """The comparison's budget (tokens removed per block) after checking that GTP and every
    compared method accept the settings on this model: each is applied and removed again, no
    forward run. InputError saying which refuses and why."""
    depth = adapters.depth(slot.model)
    options = settings.patch_kwargs()
    budget = tuple(settings.budget(depth))
    with slot.lock:
        try:
            try:
                gtp.patch(slot.model, **options)
            except ValueError as e:  # the library names the value and its valid range
                raise InputError(f"Impossible GTP hyper-parameters for {slot.loaded.name}: {e}") from None
            for method in methods.compared(slot.model):
                try:
                    method.apply(slot.model, list(budget), **{k: v for k, v in options.items() if k != "num_prop"})
                except ValueError as e:
                    raise InputError(f"Cannot run {method.label} at this token budget on {slot.loaded.name}: "
                                     f"{e}") from None
        finally:
            methods.reset(slot.model)
    return budget


def _unnormalise(x: torch.Tensor, data_config: dict) -> Image.Image:
    """The model input [1, 3, H, W] back to the RGB picture it shows."""
    mean = torch.tensor(data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(data_config["std"]).view(3, 1, 1)
    rgb = (x[0].detach().float().cpu() * std + mean).clamp(0, 1)
    return Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")


def run_key(photo: Photo, settings: Settings, pixels: Optional[str] = None) -> str:
    """What a run depends on: the photo's pixels (`classroom.pixels`, if already hashed) and
    conversions, the model, weights, setting."""
    h = hashlib.sha256((pixels or classroom.pixels(photo)).encode())
    h.update(repr((photo.image.size, tuple(photo.notes), settings)).encode())
    return h.hexdigest()


def model_input(photo: Photo, slot: ModelSlot) -> torch.Tensor:
    """The photo as the model's input [1, 3, H, W] on the CPU."""
    return slot.loaded.transform(photo.image.convert("RGB")).unsqueeze(0)


def _result(method: str, blocks: tuple, full: Outputs, out: Outputs, class_names: Optional[list[str]]) -> MethodResult:
    has_head = full.logits is not None
    return MethodResult(
        method=method, blocks=blocks, cosine=round(float(cosine(full.features, out.features)[0]), 6),
        top5=top5(out.logits, class_names) if has_head else None,
        agree=bool(top1_agreement(full.logits, out.logits)[0]) if has_head else None,
        kl=round(float(kl_divergence(full.logits, out.logits)[0]), 6) if has_head else None)


def _comparison(exp: Exploration, others: tuple[MethodRun, ...], class_names: Optional[list[str]]) -> Comparison:
    """The comparison of a run: GTP from the run itself, the others from their forwards."""
    run = exp.run
    results = {"gtp": _result("gtp", tuple(methods.records_of_trace(run.trace)), run.full, run.gtp, class_names)}
    results.update({o.method: _result(o.method, o.blocks, run.full, o.outputs, class_names) for o in others})
    seconds = sum(run.latency_ms) / 1000 + sum(o.seconds for o in others)
    return Comparison(budget=tuple(exp.settings.budget(exp.depth)),
                      methods=tuple(results[m.name] for m in methods.compared() if m.name in results),
                      full_top5=run.full_top5, seconds=seconds)


def explore_photo(photo: Photo, settings: Settings) -> Exploration:
    """One run of the photo with this setting, answered from the cache when seen before (an
    example photo at the published setting: from the runs every session shares).
    InputError for settings the model cannot take or unusable weights."""
    pixels = classroom.pixels(photo)
    key = run_key(photo, settings, pixels)
    if classroom.is_shared(pixels, settings):
        slot = get_model(settings.model, settings.weights)  # outside the GPU call: loading needs none
        return classroom.shared_run(key, slot, lambda: _explore(photo, settings, slot, key))
    hit = RUNS.get(key)
    if hit is not None:  # before the model: a cached run needs none loaded
        return hit
    slot = get_model(settings.model, settings.weights)
    return RUNS.put(key, _explore(photo, settings, slot, key))


def _explore(photo: Photo, settings: Settings, slot: ModelSlot, key: str) -> Exploration:
    """The run itself: settings checked, then one GPU call."""
    budget = check_settings(slot, settings)
    x = model_input(photo, slot)
    result = run_photo(RunJob(settings=settings, x=x, budget=budget, compare=ZERO_GPU))
    if STARTING.is_set():   # the start-up's own runs (the examples): say their latency is not the steady one
        result = dataclasses.replace(result, note=f"{result.note} {STARTING_NOTE}".strip())
    loaded = slot.loaded
    exp = Exploration(
        key=key, settings=settings,
        model=ModelInfo(loaded.name, loaded.pretrained, file_names_only(loaded.message), loaded.has_head), x=x,
        model_input=_unnormalise(x, loaded.data_config), photo_size=tuple(photo.original_size),
        photo_notes=tuple(photo.notes), run=result)
    if result.others is not None:
        exp = dataclasses.replace(exp, comparison=_comparison(exp, result.others, loaded.class_names))
    return exp


def compared(exp: Exploration) -> Exploration:
    """The exploration with its comparison: as it is, from the run caches, or with the compared
    methods run now (the full model's outputs come from the run)."""
    if exp.comparison is not None:
        return exp
    hit = RUNS.get(exp.key)
    if hit is not None and hit.comparison is not None:
        return hit
    slot = get_model(exp.settings.model, exp.settings.weights)
    shared = classroom.get(exp.key, slot)
    if shared is not None and shared.comparison is not None:
        return shared
    others = compare_photo(CompareJob(settings=exp.settings, x=exp.x, budget=tuple(exp.settings.budget(exp.depth))))
    done = dataclasses.replace(exp, comparison=_comparison(exp, others, slot.loaded.class_names))
    return classroom.keep(done, slot) if shared is not None else RUNS.put(exp.key, done)


def runs() -> list[Exploration]:
    """Every run kept: the shared ones, then the others."""
    return [exp for _, exp in classroom.SHARED.values()] + RUNS.values()


def forget_runs() -> None:
    """Empty both run caches (scripts and tests that time or count new runs)."""
    RUNS.clear()
    classroom.SHARED.clear()


def warm_up(examples: bool = True) -> None:
    """At start-up, in a background thread: the GMACs of the published setting of the default
    model (counted on a CPU) and, with `examples`, the shared runs of every example photo (on
    ZeroGPU a GPU call needs a visitor's request: there the first student makes them)."""
    settings = PUBLISHED_SETTINGS
    STARTING.set()
    try:
        depth = adapters.depth(get_model(settings.model).model)
        for method in costs.all_methods():
            costs.gmacs(settings, method, depth)
        for path in example_paths() if examples else ():
            explore_photo(open_photo(path), settings)
    finally:
        STARTING.clear()


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


@workers.gpu_function(limits.GPU_DURATION_THROUGHPUT_S, fallback=False)   # a GPU's batch sizes: not for a CPU
@torch.inference_mode()
def measure_throughput(job: ThroughputJob, device: torch.device = DEVICE) -> Throughput:
    """Images per second of the full and the GTP model, measured now on this device.

    The photo repeated `batch_size` times; each model gets half of `job.budget_s`: batches
    until it is spent (a warm-up batch first, dropped when another fitted), best of them.
    """
    workers.enter_gpu_call()
    slot = _model(job.settings, device)
    x = job.x.to(slot.loaded.device).expand(job.batch_size, -1, -1, -1).contiguous()
    start = time.perf_counter()
    with slot.lock:
        try:
            model = gtp.patch(slot.model, **job.settings.patch_kwargs())
            gtp_ms, gtp_batches, gtp_mode = _fastest(model, x, job.budget_s / 2, job.max_batches)
            gtp.unpatch(slot.model)
            full_ms, full_batches, full_mode = _fastest(slot.model, x, job.budget_s / 2, job.max_batches)
        finally:
            methods.reset(slot.model)
    return Throughput(model=slot.loaded.name, device=device_label(x.device), batch_size=job.batch_size,
                      timed_batches=min(gtp_batches, full_batches), full_img_per_s=job.batch_size / full_ms * 1000,
                      gtp_img_per_s=job.batch_size / gtp_ms * 1000, seconds=time.perf_counter() - start,
                      mode=f"full model {full_mode}, GTP {gtp_mode}")


def _fastest(model: torch.nn.Module, x: torch.Tensor, budget_s: float, max_batches: int) -> tuple[float, int, str]:
    """(ms per batch, batches timed, mode): on CUDA the faster of eager launches and a CUDA-graph replay
    (what a batch-1 forward needs: launches cost more than the work), each timed in half the budget."""
    if x.device.type != "cuda":
        return (*_rate(model, x, budget_s, max_batches), "eager")
    eager_ms, eager_n = _rate(model, x, budget_s / 2, max_batches)
    try:
        graph_ms, graph_n = _rate(CudaGraphed(model), x, budget_s / 2, max_batches)
    except Exception as error:  # noqa: BLE001 - a forward that cannot be captured runs eager, and says so
        return eager_ms, eager_n, f"eager (CUDA graphs failed: {type(error).__name__})"
    return (graph_ms, graph_n, "CUDA graphs") if graph_ms < eager_ms else (eager_ms, eager_n, "eager")


def device_label(device: torch.device) -> str:
    """The device's name; on CUDA with the state of GTP's fused kernels (`gtp.self_check`): checked, or off and why."""
    from gtp.kernels import triton_support
    name = device_name(device)
    return f"{name} ({triton_support.status_line()})" if torch.device(device).type == "cuda" else name


def throughput(exp: Exploration, batch_size: int) -> Throughput:
    """`measure_throughput` of the exploration's model, setting and photo, within the bounds
    of `app.core.limits` for this device. InputError for a batch size out of them."""
    bounds = limits.THROUGHPUT[DEVICE.type]
    if not 1 <= batch_size <= bounds.max_batch:
        raise InputError(f"batch size must be between 1 and {bounds.max_batch} on this server "
                         f"({DEVICE.type.upper()}); got {batch_size}")
    get_model(exp.settings.model, exp.settings.weights)  # loaded outside the GPU call
    return measure_throughput(ThroughputJob(settings=exp.settings, x=exp.x, batch_size=batch_size,
                                            budget_s=bounds.budget_s, max_batches=bounds.max_batches))
