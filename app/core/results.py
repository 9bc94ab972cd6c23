"""What the app measures, as immutable values (frozen dataclasses of tensors and plain data).

A result is complete when it is built and is never filled in later: GMACs, which depend only
on the model and the configuration, are a separate value (`Costs`) from their own cache.
Everything here pickles (ZeroGPU sends the GPU function's arguments and results between
processes) and lives on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from PIL import Image

import gtp

from .settings import Settings

COMPARED = ("gtp", "tome", "pruning")  # names in `gtp.baselines.METHODS`
METHOD_LABELS = {"full": "Full model", "gtp": "GTP", "tome": "ToMe", "pruning": "Pruning"}


@dataclass(frozen=True)
class TopClass:
    index: int
    label: str
    probability: float

    def json(self) -> dict:
        return {"index": self.index, "label": self.label, "probability": self.probability}


@dataclass(frozen=True)
class RunJob:
    """The argument of the GPU function: what to run on which input."""
    settings: Settings
    x: torch.Tensor                 # [1, 3, H, W] the preprocessed photo, on the CPU


@dataclass(frozen=True)
class MethodResult:
    """One token-reduction method on the photo, at the comparison's token budget."""
    method: str                              # a key of gtp.baselines.METHODS
    removed: tuple[tuple[int, ...], ...]     # per block: original patch ids of the tokens that left there
    tokens_per_block: tuple[int, ...]        # tokens (prefix included) leaving each block
    cosine: float                            # cosine of the pre-logits features to the full model's
    top5: Optional[tuple[TopClass, ...]]     # classifier models only
    agree: Optional[bool]                    # top-1 equal to the full model's
    kl: Optional[float]                      # KL(p_full || p_method) of the softmax, in nats
    # ToMe only: per block, the patch id naming the token each removed id merged into (in
    # `removed`'s order; `gtp.tome.merged_into_of`); None for the other methods
    merged_into: Optional[tuple[tuple[int, ...], ...]] = None

    @property
    def label(self) -> str:
        return METHOD_LABELS[self.method]

    @property
    def num_removed(self) -> int:
        return sum(len(ids) for ids in self.removed)


@dataclass(frozen=True)
class Comparison:
    """GTP, ToMe and pruning with the same tokens removed per block (so equal GMACs)."""
    budget: tuple[int, ...]                  # tokens each method removes per block (P; r for ToMe)
    methods: tuple[MethodResult, ...]        # in COMPARED order
    full_top5: Optional[tuple[TopClass, ...]]
    seconds: float                           # wall time of the four forwards, measured

    @property
    def depth(self) -> int:
        return len(self.budget)

    def method(self, name: str) -> MethodResult:
        return next(m for m in self.methods if m.method == name)


@dataclass(frozen=True)
class RunResult:
    """The GPU function's result: everything measured on one photo with one setting."""
    trace: gtp.Trace                         # the GTP forward, attention maps in bfloat16
    full_top5: Optional[tuple[TopClass, ...]]
    gtp_top5: Optional[tuple[TopClass, ...]]
    feature_cosine: float                    # full vs GTP, pre-logits features
    latency_ms: tuple[float, float]          # (full, GTP), best of `repeats`, batch 1
    repeats: int
    device: str                              # the real card, read inside the GPU call
    num_heads: int
    comparison: Comparison


@dataclass(frozen=True)
class UserError:
    """A refusal the person must read (impossible hyper-parameters): returned, not raised,
    because ZeroGPU replaces the message of an exception raised in its worker."""
    message: str


@dataclass(frozen=True)
class ModelInfo:
    name: str
    pretrained: bool
    weights_message: str
    has_head: bool


@dataclass(frozen=True)
class Exploration:
    """One photo, one setting: the run plus what the page needs to show it."""
    key: str                                 # the run key: photo hash + model + weights + setting
    settings: Settings
    model: ModelInfo
    x: torch.Tensor                          # [1, 3, H, W] the model's input, on the CPU
    model_input: Image.Image                 # the crop the model saw, un-normalised
    photo_size: tuple[int, int]              # the uploaded photo's (width, height)
    photo_notes: tuple[str, ...]             # conversions applied to the upload
    run: RunResult

    @property
    def trace(self) -> gtp.Trace:
        return self.run.trace

    @property
    def comparison(self) -> Comparison:
        return self.run.comparison

    @property
    def depth(self) -> int:
        return len(self.run.trace.layers)

    @property
    def num_heads(self) -> int:
        return self.run.num_heads

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def pretrained(self) -> bool:
        return self.model.pretrained

    @property
    def has_head(self) -> bool:
        return self.model.has_head


@dataclass(frozen=True)
class Costs:
    """GMACs per image (PyTorch FLOP counter / 2); None where not counted yet."""
    full: Optional[float] = None
    gtp: Optional[float] = None
    tome: Optional[float] = None
    pruning: Optional[float] = None

    def of(self, method: str) -> Optional[float]:
        return getattr(self, method)

    def gmacs_json(self) -> Optional[dict]:
        """The `explore` endpoint's "gmacs" entry."""
        if self.full is None or self.gtp is None:
            return None
        return {"full": round(self.full, 4), "gtp": round(self.gtp, 4),
                "reduction_percent": round(100 * (1 - self.gtp / self.full), 2)}


@dataclass(frozen=True)
class ThroughputJob:
    settings: Settings
    x: torch.Tensor                          # [1, 3, H, W] on the CPU
    batch_size: int
    budget_s: float                          # most seconds the measurement may take
    max_batches: int


@dataclass(frozen=True)
class Throughput:
    model: str
    device: str
    batch_size: int
    timed_batches: int
    full_img_per_s: float
    gtp_img_per_s: float
    seconds: float                           # wall time the measurement held the model

    @property
    def speed_up(self) -> float:
        return self.gtp_img_per_s / self.full_img_per_s

    def json(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "batch_size": self.batch_size,
                "timed_batches": self.timed_batches, "full_img_per_s": round(self.full_img_per_s, 2),
                "gtp_img_per_s": round(self.gtp_img_per_s, 2), "speed_up": round(self.speed_up, 3),
                "seconds": round(self.seconds, 3)}
