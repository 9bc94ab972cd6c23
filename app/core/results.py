"""What the app measures, as immutable values (frozen dataclasses of tensors and plain data).

A result is complete when it is built and is never filled in later: GMACs, which depend only
on the model and the configuration, are a separate value (`Costs`) from their own cache, and
an exploration whose comparison was deferred is a complete value (`comparison` None) that a
new one, with the comparison, replaces. Everything here pickles (ZeroGPU sends the GPU
functions' arguments and results between processes) and lives on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from PIL import Image

import gtp
from gtp import methods
from gtp.methods import BlockRecord

from .settings import Settings


@dataclass(frozen=True)
class TopClass:
    index: int
    label: str
    probability: float

    def json(self) -> dict:
        return {"index": self.index, "label": self.label, "probability": self.probability}


@dataclass(frozen=True)
class Outputs:
    """One model's outputs on the photo, kept so that comparing another method with it later
    never runs it again."""
    features: torch.Tensor                   # [1, C] pre-logits features, float32
    logits: Optional[torch.Tensor]           # [1, K]; None for a model without a classifier head
    patches: Optional[torch.Tensor] = None   # [n, C] final (normed) patch tokens in token order, float16:
                                             # kept for a backbone only, whose page shows their PCA map


@dataclass(frozen=True)
class MethodRun:
    """One compared method's forward on the photo (raw, as the GPU function returns it)."""
    method: str                              # a name in `gtp.methods.METHODS`
    outputs: Outputs
    blocks: tuple[BlockRecord, ...]          # per block: what left, tokens left (ToMe: partners)
    seconds: float                           # wall time of the forward, measured


@dataclass(frozen=True)
class RunJob:
    """The argument of `run_photo`: what to run on which input."""
    settings: Settings
    x: torch.Tensor                          # [1, 3, H, W] the preprocessed photo, on the CPU
    budget: tuple[int, ...]                  # tokens each compared method removes per block
    compare: bool                            # also run the compared methods (one GPU call on ZeroGPU)


@dataclass(frozen=True)
class RunResult:
    """`run_photo`'s result: GTP traced and timed, the full model once, and (when asked) the
    other compared methods."""
    trace: gtp.Trace                         # the GTP forward, attention maps in bfloat16
    full: Outputs
    gtp: Outputs
    full_top5: Optional[tuple[TopClass, ...]]
    gtp_top5: Optional[tuple[TopClass, ...]]
    feature_cosine: float                    # full vs GTP, pre-logits features
    latency_ms: tuple[float, float]          # (full, GTP): one forward each, batch 1
    device: str                              # the real card, read inside the GPU call
    num_heads: int
    others: Optional[tuple[MethodRun, ...]] = None   # the compared methods besides GTP, when run
    note: str = ""                           # why it ran elsewhere than asked (no GPU: `app.core.workers`)


@dataclass(frozen=True)
class CompareJob:
    """The argument of `compare_photo`: the compared methods besides GTP, run later."""
    settings: Settings
    x: torch.Tensor                          # [1, 3, H, W] on the CPU
    budget: tuple[int, ...]


@dataclass(frozen=True)
class MethodResult:
    """One token-reduction method on the photo, at the comparison's token budget."""
    method: str                              # a name in `gtp.methods.METHODS`
    blocks: tuple[BlockRecord, ...]          # per block: original patch ids that left, tokens left
    cosine: float                            # cosine of the pre-logits features to the full model's
    top5: Optional[tuple[TopClass, ...]]     # classifier models only
    agree: Optional[bool]                    # top-1 equal to the full model's
    kl: Optional[float]                      # KL(p_full || p_method) of the softmax, in nats

    @property
    def label(self) -> str:
        return methods.get(self.method).label

    @property
    def removed(self) -> tuple[tuple[int, ...], ...]:
        return tuple(b.removed for b in self.blocks)

    @property
    def tokens_per_block(self) -> tuple[int, ...]:
        return tuple(b.tokens_left for b in self.blocks)

    @property
    def merged_into(self) -> Optional[tuple[tuple[int, ...], ...]]:
        """ToMe: per block, the patch naming the token each removed id merged into; else None."""
        return None if any(b.into is None for b in self.blocks) else tuple(b.into for b in self.blocks)

    @property
    def num_removed(self) -> int:
        return sum(len(ids) for ids in self.removed)


@dataclass(frozen=True)
class Comparison:
    """The compared methods (`gtp.methods.compared()`) with the same tokens removed per block
    (so equal GMACs)."""
    budget: tuple[int, ...]                  # tokens each method removes per block (P; r for ToMe)
    methods: tuple[MethodResult, ...]
    full_top5: Optional[tuple[TopClass, ...]]
    seconds: float                           # wall time of all the forwards, measured

    @property
    def depth(self) -> int:
        return len(self.budget)

    def method(self, name: str) -> MethodResult:
        return next(m for m in self.methods if m.method == name)


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
    comparison: Optional[Comparison] = None  # None until the compared methods ran

    @property
    def trace(self) -> gtp.Trace:
        return self.run.trace

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
    """GMACs per image by method name (PyTorch FLOP counter / 2); None where not counted yet."""
    gmacs: Mapping[str, Optional[float]]

    def of(self, method: str) -> Optional[float]:
        return self.gmacs.get(method)

    def gmacs_json(self) -> Optional[dict]:
        """The `explore` endpoint's "gmacs" entry."""
        full, reduced = self.of("full"), self.of("gtp")
        if full is None or reduced is None:
            return None
        return {"full": round(full, 4), "gtp": round(reduced, 4),
                "reduction_percent": round(100 * (1 - reduced / full), 2)}


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
    mode: str = "eager"                      # how each model's forwards were launched (CUDA graphs where faster)

    @property
    def speed_up(self) -> float:
        return self.gtp_img_per_s / self.full_img_per_s

    def json(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "batch_size": self.batch_size,
                "timed_batches": self.timed_batches, "full_img_per_s": round(self.full_img_per_s, 2),
                "gtp_img_per_s": round(self.gtp_img_per_s, 2), "speed_up": round(self.speed_up, 3),
                "seconds": round(self.seconds, 3), "mode": self.mode}
