"""What a reduced model is compared on, written once: the forward that gives features and
logits, top-1 agreement, KL divergence, cosine similarity, a device-synchronised timer and
the device's name. Used by `python -m gtp eval|sweep|predict|bench|fidelity`
and the app.

The comparisons are per image and computed in float64, so sums over many images (the
evaluator adds them with math.fsum) do not depend on the batch size.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
from torch import Tensor, nn

from ..adapters import is_transformers


def features_and_logits(model: nn.Module, x: Tensor,
                        has_head: Optional[bool] = None) -> tuple[Tensor, Optional[Tensor]]:
    """(features [B, D], logits [B, C] or None) of one forward on images x [B, 3, H, W].

    The features are what the head reads (timm's pre-logits: the pooled, normed token);
    for a headless model they are its output and the logits are None. has_head defaults
    to `model.num_classes > 0`. The logits are computed by the very operations of `model(x)`.
    """
    if is_transformers(model):  # transformers models: their adapter reads their outputs
        from ..hf_adapter import features_and_logits as hf_features_and_logits
        return hf_features_and_logits(model, x)
    if has_head is None:
        has_head = getattr(model, "num_classes", 0) > 0
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        tokens = model.forward_features(x)
        # The head runs on the tokens, not on the features: a distilled DeiT averages two heads.
        return (model.forward_head(tokens, pre_logits=True),
                model.forward_head(tokens) if has_head else None)
    out = model(x)
    return out, (out if has_head else None)


def top1_agreement(ref_logits: Tensor, logits: Tensor) -> Tensor:
    """BoolTensor [B]: True where the top-1 class of `logits` [B, C] equals that of `ref_logits` [B, C]."""
    return ref_logits.argmax(-1) == logits.argmax(-1)


def kl_divergence(ref_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(p_ref || p) [B] in nats, of the softmax of ref_logits and logits [B, C] (float64)."""
    log_p = ref_logits.double().log_softmax(-1)
    log_q = logits.double().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def cosine(ref_features: Tensor, features: Tensor) -> Tensor:
    """Cosine similarity [B] of ref_features and features [B, ...] (flattened per image; float64)."""
    return torch.nn.functional.cosine_similarity(
        ref_features.double().flatten(1), features.double().flatten(1), dim=-1)


def top_k_hits(logits: Tensor, labels: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """(top-1 hit, top-k hit) BoolTensors [B] of logits [B, C] against class labels [B]."""
    top = logits.topk(min(k, logits.shape[-1]), -1).indices
    y = labels[:, None]
    return (top[:, :1] == y).any(-1), (top == y).any(-1)


def device_name(device: torch.device) -> str:
    """The card's name on CUDA (e.g. "NVIDIA H100 80GB HBM3"), "CPU (N threads)" on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Adds up the seconds spent inside `with timer:`, the device synchronised on entry
    and exit so queued CUDA work is counted where it is done. While `active` is False
    a `with` block is not timed (e.g. a warm-up batch). `.count` is the number of timed blocks.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.seconds, self.count, self.active = 0.0, 0, True
        self._start = 0.0

    def __enter__(self) -> "Timer":
        if self.active:
            synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            synchronize(self.device)
            self.seconds += time.perf_counter() - self._start
            self.count += 1
