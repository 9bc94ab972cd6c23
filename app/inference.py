"""Running the full and the GTP model on one photo, with caches so the UI never reruns them needlessly.

Everything about GTP itself comes from the `gtp` library: `gtp.patch` / `gtp.unpatch` switch a
loaded model between its full and its GTP form, `gtp.trace` records what each block did, and
`gtp.gmacs` counts the cost. This module only orchestrates, times and caches.

Caches, from slow to fast:
  * `MODELS`: a small LRU of loaded models (loading deit_base takes seconds);
  * each model's GMACs per GTP configuration (they do not depend on the photo);
  * `RESULTS`: a small LRU of finished explorations keyed by photo + settings, so the same
    request twice (e.g. the UI and the API) runs the models once.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image

import gtp
from gtp.models import SUPPORTED_MODELS, LoadedModel, load_model, preprocess, top_k

from .photos import Photo

DEFAULT_MODEL = "deit_small_patch16_224"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# `@spaces.GPU` on Hugging Face ZeroGPU Spaces; a no-op everywhere else.
try:  # pragma: no cover - depends on the host
    import spaces  # type: ignore

    gpu: Callable = spaces.GPU
except ImportError:
    def gpu(fn: Callable) -> Callable:
        return fn


def device_name() -> str:
    """What the timings were measured on, in words."""
    if DEVICE.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(DEVICE)})"
    return f"CPU ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Everything the user chose; names follow the paper (P, theta, alpha, M)."""
    model: str = DEFAULT_MODEL
    num_prop: int = gtp.PUBLISHED["num_prop"]           # P, tokens propagated per block
    schedule: str = ""                                  # optional per-block P, e.g. "8,8,8,..."
    sparsity: float = gtp.PUBLISHED["sparsity"]         # theta (1 = no sparsification)
    alpha: float = gtp.PUBLISHED["alpha"]
    num_neighbours: int = gtp.PUBLISHED["num_neighbours"]  # M
    graph: str = gtp.PUBLISHED["graph"]
    selection: str = gtp.PUBLISHED["selection"]
    propagation: str = gtp.PUBLISHED["propagation"]
    token_scale: bool = gtp.PUBLISHED["token_scale"]
    weights: Optional[str] = None                       # a local weights file, if the user gave one

    def patch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `gtp.patch` (which validates them)."""
        schedule = parse_schedule(self.schedule)
        return dict(
            num_prop=schedule if schedule is not None else int(self.num_prop),
            sparsity=float(self.sparsity), alpha=float(self.alpha),
            num_neighbours=int(self.num_neighbours), graph=self.graph, selection=self.selection,
            propagation=self.propagation, token_scale=bool(self.token_scale),
        )


PUBLISHED_SETTINGS = Settings()  # the published setting with the default model


def parse_schedule(text: Optional[str]) -> Optional[list[int]]:
    """'8, 8, 4' -> [8, 8, 4]; empty -> None (use the single P). ValueError on anything else.

    The length is checked against the model's depth by `gtp.patch`.
    """
    if text is None or not str(text).strip():
        return None
    parts = [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"The per-block schedule must be comma-separated whole numbers, one per block "
            f"(e.g. 8,8,8,8,8,8,8,8,8,8,8,8); got {text!r}.") from None


# ----------------------------------------------------------------------------- models


class LRU(OrderedDict):
    """A tiny least-recently-used dict: storing beyond `capacity` drops the oldest entry."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)

    def get_or_none(self, key: Any) -> Any:
        if key not in self:
            return None
        self.move_to_end(key)
        return self[key]

    def put(self, key: Any, value: Any) -> None:
        self[key] = value


@dataclass
class ModelSlot:
    """One loaded model, the lock that serialises its use, and its GMACs per configuration.

    The same module is the full model while unpatched and the GTP model while patched, so
    only one copy of the weights is held; the lock keeps concurrent requests from seeing
    each other's configuration.
    """
    loaded: LoadedModel
    lock: threading.Lock = field(default_factory=threading.Lock)
    gmacs: dict = field(default_factory=dict)  # config key (None = full model) -> GMACs

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @contextmanager
    def patched(self, settings: Settings) -> Iterator[torch.nn.Module]:
        """The model with GTP applied for the duration of the block (hold `lock`).

        ValueError naming the problem when `gtp.patch` rejects the hyper-parameters.
        """
        try:
            gtp.patch(self.model, **settings.patch_kwargs())
        except ValueError as e:
            raise ValueError(f"Impossible GTP hyper-parameters for {self.loaded.name}: {e}") from None
        try:
            yield self.model
        finally:
            gtp.unpatch(self.model)

    def gmacs_of(self, config_key: Optional[tuple], count: bool = True) -> Optional[float]:
        """GMACs of the model as configured now (hold `lock`), counted once per configuration;
        None when not counted yet and `count` is False (counting takes seconds on a CPU)."""
        if config_key not in self.gmacs and count:
            self.gmacs[config_key] = gtp.gmacs(self.model, img_size=self.loaded.img_size)
        return self.gmacs.get(config_key)


MODELS = LRU(int(os.environ.get("GTP_APP_MODEL_CACHE", "2")))
_models_lock = threading.Lock()


def get_model(name: str, weights: Optional[str] = None) -> ModelSlot:
    """Load a supported model on first use (LRU-cached). ValueError for unknown names or bad files."""
    if name not in SUPPORTED_MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of: {', '.join(SUPPORTED_MODELS)}.")
    key = (name, weights or None)
    with _models_lock:  # loading twice at once would only waste memory and time
        slot = MODELS.get_or_none(key)
        if slot is None:
            slot = ModelSlot(load_model(name, weights=weights, device=DEVICE))
            MODELS.put(key, slot)
        return slot


def wait_idle(timeout: float = 120.0) -> bool:
    """Wait until no model is running (e.g. before a test process exits: torch aborts the
    interpreter if it is torn down under a running forward). True if idle in time."""
    deadline = time.monotonic() + timeout
    for _ in range(2):  # twice, a moment apart: a queued event may just be starting
        with _models_lock:
            slots = list(MODELS.values())
        for slot in slots:
            if not slot.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
            slot.lock.release()
        time.sleep(0.5)
    return True


def weights_banner(name: str, pretrained: bool, message: str) -> str:
    """A plain statement of where the weights came from; loud when they are random."""
    if pretrained:
        return f"Weights: {message}"
    return (
        f"⚠ **Predictions come from randomly initialised weights**: no pretrained weights for "
        f"`{name}` could be had here, so the classes below are meaningless (the token "
        f"graphs, selection and costs are still real computations of this random network). "
        f"To use real weights, upload a `.safetensors`/`.pth` file under *Your own weights*, or "
        f"put `{name}.safetensors` in the folder named by the `GTP_WEIGHTS_DIR` "
        f"environment variable and restart.")


# ----------------------------------------------------------------------------- one exploration


@dataclass
class Exploration:
    """Everything measured for one photo and one setting; the figures are drawn from this."""
    settings: Settings
    photo: Photo
    model_input: Image.Image          # the crop the model saw, un-normalised
    model_name: str
    pretrained: bool
    weights_message: str
    has_head: bool
    num_heads: int
    trace: gtp.Trace                  # the GTP forward, recorded with attention maps
    prediction: dict                  # JSON-ready: top-5s, agreement, GMACs, latency
    figures: LRU = field(default_factory=lambda: LRU(64))  # drawn figures by view (~0.6 MB each)
    comparison: Optional["Comparison"] = None  # GTP vs ToMe vs pruning, made on request (`compare_methods`)

    @property
    def depth(self) -> int:
        return len(self.trace.layers)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _timed(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[torch.Tensor, float]:
    """The output of `model(x)` and the best wall time of `repeats` runs, in milliseconds
    (the best, not the mean: other work on the machine only ever adds time)."""
    times = []
    out = None
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        out = model(x)
        _sync()
        times.append((time.perf_counter() - start) * 1000)
    return out, min(times)


def _unnormalise(x: torch.Tensor, data_config: dict) -> Image.Image:
    """The model input [1, 3, H, W] back to the RGB picture it shows."""
    mean = torch.tensor(data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(data_config["std"]).view(3, 1, 1)
    rgb = (x[0].detach().float().cpu() * std + mean).clamp(0, 1)
    return Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")


def _top5(logits: torch.Tensor, class_names: Optional[list[str]]) -> list[dict]:
    return [{"index": i, "label": name, "probability": round(p, 6)} for i, name, p in top_k(logits[0], class_names, 5)]


def _to_cpu(rec: gtp.Trace) -> gtp.Trace:
    """Move a trace recorded on the GPU to the CPU once, so figures never wait on the device."""
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.cpu()
        if isinstance(value, gtp.Edges):
            return gtp.Edges(*(t.cpu() for t in value))
        if isinstance(value, list):
            return [move(v) for v in value]
        return value
    for obj in [rec, *rec.layers]:
        for f in fields(obj):
            setattr(obj, f.name, move(getattr(obj, f.name)))
    return rec


def _compact(rec: gtp.Trace) -> gtp.Trace:
    """The trace as kept for drawing: on the CPU, attention maps in bfloat16 (half the memory
    of float32 for the largest part of a trace; exact zeros stay zero, and the sparsity
    statistics were computed by the library in full precision)."""
    if DEVICE.type != "cpu":
        rec = _to_cpu(rec)
    for layer in rec.layers:
        if layer.attn_before is not None:
            layer.attn_before = layer.attn_before.to(torch.bfloat16)
            layer.attn_after = layer.attn_after.to(torch.bfloat16)
    return rec


def _config_key(model: torch.nn.Module) -> tuple:
    """A hashable form of the GTP configuration the model is patched with."""
    cfg = gtp.config_of(model).as_dict()
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(cfg.items()))


LATENCY_REPEATS = 2 if DEVICE.type == "cpu" else 10  # CPU: keeps a new photo within ~1 s


def _gmacs_entry(full: Optional[float], reduced: Optional[float]) -> Optional[dict]:
    if full is None or reduced is None:
        return None
    return {"full": round(full, 4), "gtp": round(reduced, 4),
            "reduction_percent": round(100 * (1 - reduced / full), 2)}


@gpu
@torch.inference_mode()
def run_models(photo: Photo, settings: Settings, count_gmacs: bool = True) -> Exploration:
    """Run the full and the GTP model once each on the photo (plus a traced GTP forward).

    With `count_gmacs=False`, GMACs not counted before for this setting are left None (see
    `complete_gmacs`), so the UI can show every panel first.
    Raises ValueError for impossible hyper-parameters (from `gtp.patch`) or unusable weights.
    """
    slot = get_model(settings.model, settings.weights)
    loaded = slot.loaded
    x = preprocess(photo.image, loaded)
    with slot.lock:
        with slot.patched(settings) as model:  # ValueError here for impossible settings
            config_key = _config_key(model)
            with gtp.trace(model, attention=True) as rec:
                model(x)                         # also warms the GTP path up for the timing
            gtp_out, gtp_ms = _timed(model, x, LATENCY_REPEATS)
            gtp_gmacs = slot.gmacs_of(config_key, count=count_gmacs)
        full_out, full_ms = _timed(slot.model, x, LATENCY_REPEATS)
        full_gmacs = slot.gmacs_of(None, count=count_gmacs)

    prediction: dict[str, Any] = {
        "model": loaded.name,
        "weights": "pretrained" if loaded.pretrained else "random (predictions meaningless)",
        "weights_message": loaded.message,
        "device": device_name(),
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("model", "weights")},
        "gtp_config": rec.config,
        "gmacs": _gmacs_entry(full_gmacs, gtp_gmacs),
        "latency_ms": {"full": round(full_ms, 2), "gtp": round(gtp_ms, 2),
                       "how": f"best of {LATENCY_REPEATS} runs, batch 1, on {device_name()}"},
        "tokens_per_block": rec.tokens_per_block(),
        "input_notes": photo.notes,
    }
    if loaded.has_head:
        full_top, gtp_top = _top5(full_out, loaded.class_names), _top5(gtp_out, loaded.class_names)
        prediction.update({
            "full": {"top5": full_top},
            "gtp": {"top5": gtp_top},
            "agree": full_top[0]["index"] == gtp_top[0]["index"],
            "top5_overlap": len({t["index"] for t in full_top} & {t["index"] for t in gtp_top}),
        })
    else:  # a backbone: compare the final features instead of classes
        cos = torch.nn.functional.cosine_similarity(full_out.float().flatten(1), gtp_out.float().flatten(1))
        prediction["feature_cosine_similarity"] = round(float(cos[0]), 6)
    return Exploration(
        settings=settings, photo=photo, model_input=_unnormalise(x, loaded.data_config),
        model_name=loaded.name, pretrained=loaded.pretrained, weights_message=loaded.message,
        has_head=loaded.has_head, num_heads=int(slot.model.blocks[0].attn.num_heads),
        trace=_compact(rec), prediction=prediction,
    )


@gpu
@torch.inference_mode()
def complete_gmacs(exp: Exploration) -> bool:
    """Count the GMACs an exploration was run without (in place). True if it had to count."""
    if exp.prediction["gmacs"] is not None:
        return False
    slot = get_model(exp.settings.model, exp.settings.weights)
    with slot.lock:
        with slot.patched(exp.settings) as model:
            reduced = slot.gmacs_of(_config_key(model))
        full = slot.gmacs_of(None)
    exp.prediction["gmacs"] = _gmacs_entry(full, reduced)
    return True


RESULTS = LRU(int(os.environ.get("GTP_APP_RESULT_CACHE", "8")))
_results_lock = threading.Lock()


def explore_photo(photo: Photo, settings: Settings, count_gmacs: bool = True) -> Exploration:
    """`run_models`, answered from the result cache when this photo and setting were seen."""
    digest = hashlib.sha1(photo.image.tobytes()).hexdigest()
    key = (digest, photo.image.size, tuple(photo.notes), settings)  # notes: they are part of the answer
    with _results_lock:
        hit = RESULTS.get_or_none(key)
    if hit is None:
        hit = run_models(photo, settings, count_gmacs=count_gmacs)
        with _results_lock:
            RESULTS.put(key, hit)
    if count_gmacs:
        complete_gmacs(hit)
    return hit


# ----------------------------------------------------------------------------- GTP vs ToMe vs pruning

COMPARED = ("gtp", "tome", "pruning")  # names in `gtp.baselines.METHODS`
METHOD_LABELS = {"full": "Full model", "gtp": "GTP", "tome": "ToMe", "pruning": "Pruning"}


@dataclass
class MethodResult:
    """One token-reduction method on the photo, at the comparison's token budget."""
    method: str                        # a key of gtp.baselines.METHODS
    removed: list[list[int]]           # per block: original patch ids of the tokens that left there
    tokens_per_block: list[int]        # tokens (prefix included) leaving each block
    cosine: float                      # cosine similarity of the pre-logits features to the full model's
    top5: Optional[list[dict]] = None  # classifier models only
    agree: Optional[bool] = None       # top-1 equal to the full model's
    kl: Optional[float] = None         # KL(p_full || p_method) of the softmax, in nats
    gmacs: Optional[float] = None      # gtp.gmacs of the method as configured (None until counted)
    gmacs_key: Any = None              # where the model slot caches those GMACs

    @property
    def label(self) -> str:
        return METHOD_LABELS[self.method]

    @property
    def num_removed(self) -> int:
        return sum(len(ids) for ids in self.removed)


@dataclass
class Comparison:
    """GTP, ToMe and pruning on one photo with the same tokens removed per block (so equal GMACs),
    each against the full model; made once per exploration, figures drawn from it."""
    budget: list[int]                  # tokens each method removes per block (P; r for ToMe)
    methods: dict[str, MethodResult]   # by method name, in COMPARED order
    full_top5: Optional[list[dict]]    # classifier models only
    full_gmacs: Optional[float]
    has_head: bool
    seconds: float                     # wall time of the four forwards, measured
    figures: LRU = field(default_factory=lambda: LRU(48))

    @property
    def depth(self) -> int:
        return len(self.budget)

    def json(self) -> dict:
        """JSON-ready numbers (for downloads and tests)."""
        return {
            "budget": self.budget, "full_gmacs": self.full_gmacs, "seconds": round(self.seconds, 3),
            "full_top5": self.full_top5,
            "methods": {name: {k: v for k, v in asdict(m).items() if k not in ("gmacs_key",)}
                        for name, m in self.methods.items()},
        }


def _features_and_logits(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre-logits features, output) of one forward; for a headless model both are the features."""
    feats = model.forward_features(x)
    return model.forward_head(feats, pre_logits=True), model.forward_head(feats)


def _budget(settings: Settings, depth: int) -> list[int]:
    schedule = parse_schedule(settings.schedule)
    return schedule if schedule is not None else [int(settings.num_prop)] * depth


@gpu
@torch.inference_mode()
def compare_methods(exp: Exploration, count_gmacs: bool = True) -> Comparison:
    """GTP (the exploration's setting), ToMe and pruning (`gtp.baselines` presets) on the
    exploration's photo, each removing the same number of tokens per block (P), against the
    full model: which tokens left in which block, top-1 and its agreement with the full
    model, KL divergence of the softmax, cosine similarity of the pre-logits features, GMACs.

    Cached on the exploration (so per photo + setting): four forwards the first time, none
    after. With `count_gmacs=False`, GMACs not counted before are left None (`complete_comparison_gmacs`).
    """
    from gtp import baselines, tome
    if exp.comparison is not None:
        if count_gmacs:
            complete_comparison_gmacs(exp)
        return exp.comparison
    settings = exp.settings
    slot = get_model(settings.model, settings.weights)
    loaded = slot.loaded
    x = preprocess(exp.photo.image, loaded)
    budget = _budget(settings, exp.depth)
    gtp_options = settings.patch_kwargs()
    gtp_options.pop("num_prop")
    start = time.perf_counter()
    results: dict[str, MethodResult] = {}
    with slot.lock:
        try:
            baselines.reset(slot.model)
            full_feats, full_out = _features_and_logits(slot.model, x)
            full_gmacs = slot.gmacs_of(None, count=count_gmacs)
            for method in COMPARED:
                try:
                    model = baselines.apply_method(slot.model, method, budget, **gtp_options)
                except ValueError as e:
                    raise ValueError(f"Cannot run {METHOD_LABELS[method]} at this token budget on "
                                     f"{loaded.name}: {e}") from None
                if method == "tome":
                    key = ("tome", tuple(budget))
                    gmacs = slot.gmacs_of(key, count=count_gmacs)  # counted without source tracking
                    tome.patch(model, r=budget, trace_source=True)
                    feats, out = _features_and_logits(model, x)
                    removed = [ids[0].tolist() for ids in tome.merged_ids_of(model)]
                    n = tome.sources_of(model).shape[-1]  # tokens entering block 1
                    tokens, left = [], n
                    for ids in removed:
                        left -= len(ids)
                        tokens.append(left)
                else:
                    key = _config_key(model)  # the same key as the exploration's own GMACs
                    gmacs = slot.gmacs_of(key, count=count_gmacs)
                    with gtp.trace(model) as rec:
                        feats, out = _features_and_logits(model, x)
                    removed = [layer.propagated[0].tolist() for layer in rec.layers]
                    tokens = rec.tokens_per_block()
                cos = torch.nn.functional.cosine_similarity(full_feats.float().flatten(1), feats.float().flatten(1))
                result = MethodResult(method=method, removed=removed, tokens_per_block=tokens,
                                      cosine=round(float(cos[0]), 6), gmacs=gmacs, gmacs_key=key)
                if loaded.has_head:
                    log_p = full_out.double().log_softmax(-1)
                    log_q = out.double().log_softmax(-1)
                    result.kl = round(float((log_p.exp() * (log_p - log_q)).sum(-1)[0]), 6)
                    result.top5 = _top5(out, loaded.class_names)
                    result.agree = result.top5[0]["index"] == int(full_out[0].argmax())
                results[method] = result
        finally:
            baselines.reset(slot.model)  # the model rests unpatched
    comparison = Comparison(
        budget=budget, methods=results, full_top5=_top5(full_out, loaded.class_names) if loaded.has_head else None,
        full_gmacs=full_gmacs, has_head=loaded.has_head, seconds=time.perf_counter() - start)
    exp.comparison = comparison
    return comparison


@gpu
@torch.inference_mode()
def complete_comparison_gmacs(exp: Exploration) -> bool:
    """Count the GMACs a comparison was made without (in place). True if it had to count."""
    from gtp import baselines
    comp = exp.comparison
    if comp is None or (comp.full_gmacs is not None and all(m.gmacs is not None for m in comp.methods.values())):
        return False
    slot = get_model(exp.settings.model, exp.settings.weights)
    gtp_options = exp.settings.patch_kwargs()
    gtp_options.pop("num_prop")
    with slot.lock:
        try:
            baselines.reset(slot.model)
            comp.full_gmacs = slot.gmacs_of(None)
            for method, result in comp.methods.items():
                if result.gmacs is None:
                    baselines.apply_method(slot.model, method, comp.budget, **gtp_options)
                    result.gmacs = slot.gmacs_of(result.gmacs_key)
        finally:
            baselines.reset(slot.model)
    return True


# ----------------------------------------------------------------------------- throughput


def default_batch_size() -> int:
    return 64 if DEVICE.type == "cuda" else 8


@gpu
@torch.inference_mode()
def measure_throughput(settings: Settings, batch_size: int, photo: Optional[Photo] = None,
                       timed_batches: Optional[int] = None) -> dict:
    """Images per second of the full and the GTP model on this device, measured now.

    Uses the photo repeated `batch_size` times (random pixels without one); one warm-up batch,
    then the best of `timed_batches` batches.
    """
    batch_size = int(batch_size)
    if not 1 <= batch_size <= 256:
        raise ValueError(f"batch size must be between 1 and 256; got {batch_size}")
    timed_batches = timed_batches or (3 if DEVICE.type == "cpu" else 10)
    slot = get_model(settings.model, settings.weights)
    loaded = slot.loaded
    if photo is not None:
        x = preprocess(photo.image, loaded)
    else:
        x = torch.randn(1, 3, *loaded.img_size, generator=torch.Generator().manual_seed(0)).to(loaded.device)
    x = x.expand(batch_size, -1, -1, -1).contiguous()
    result = {"model": loaded.name, "device": device_name(), "batch_size": batch_size,
              "timed_batches": timed_batches}
    with slot.lock:
        with slot.patched(settings) as model:
            model(x)  # warm-up
            _, ms = _timed(model, x, timed_batches)
            result["gtp_img_per_s"] = round(batch_size / ms * 1000, 2)
        slot.model(x)
        _, ms = _timed(slot.model, x, timed_batches)
        result["full_img_per_s"] = round(batch_size / ms * 1000, 2)
    result["speed_up"] = round(result["gtp_img_per_s"] / result["full_img_per_s"], 3)
    return result
