"""The app's measurements, one implementation each: KL, cosine, top-1 agreement, device name,
timer, features and logits.

They come from `gtp.measure.metrics` (the library's single copy) when it exists; until then
the same API is defined here, so switching is a one-line import change at merge.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
from torch import Tensor, nn

try:  # the library's copy (gtp/measure/metrics.py)
    from gtp.measure.metrics import (  # type: ignore  # noqa: F401
        Timer, cosine, device_name, features_and_logits, kl_divergence, top1_agreement,
    )
except ImportError:  # pragma: no cover - replaced at merge
    def features_and_logits(model: nn.Module, x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """(pre-logits features [B, D], logits [B, C] or None for a headless model)."""
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        if getattr(model, "num_classes", 0) <= 0:
            return pre, None
        return pre, model.forward_head(feats)

    def top1_agreement(ref_logits: Tensor, logits: Tensor) -> Tensor:
        """[B] bool: the reduced model's top-1 equals the reference's."""
        return ref_logits.argmax(-1) == logits.argmax(-1)

    def kl_divergence(ref_logits: Tensor, logits: Tensor) -> Tensor:
        """[B] KL(softmax(ref) || softmax(logits)) in nats, computed in float64."""
        log_p = ref_logits.double().log_softmax(-1)
        log_q = logits.double().log_softmax(-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    def cosine(ref_features: Tensor, features: Tensor) -> Tensor:
        """[B] cosine similarity of flattened features."""
        return torch.nn.functional.cosine_similarity(
            ref_features.float().flatten(1), features.float().flatten(1))

    def device_name(device: torch.device) -> str:
        """The real card name on CUDA, 'CPU (N threads)' on CPU."""
        device = torch.device(device)
        if device.type == "cuda":
            return torch.cuda.get_device_name(device)
        return f"CPU ({torch.get_num_threads()} threads)"

    class Timer:
        """`with Timer(device) as t: ...` then `t.seconds` (CUDA synchronised either side)."""

        def __init__(self, device: torch.device):
            self.device = torch.device(device)
            self.seconds = 0.0

        def _sync(self) -> None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        def __enter__(self) -> "Timer":
            self._sync()
            self._start = time.perf_counter()
            return self

        def __exit__(self, *exc) -> None:
            self._sync()
            self.seconds = time.perf_counter() - self._start

__all__ = ["Timer", "cosine", "device_name", "features_and_logits", "kl_divergence", "top1_agreement"]
