"""What a forward gives back, made ready to leave a GPU function: outputs and top-5 on the CPU,
the final patch tokens seen by a hook, and a recorded trace compacted and copied to the CPU.
Used by the GPU functions of `app.core.inference`; pure helpers, no model state."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import torch

import gtp
from gtp.measure.metrics import Timer, features_and_logits

from .results import Outputs, TopClass


def top5(logits: Optional[torch.Tensor], class_names: Optional[list[str]]) -> Optional[tuple[TopClass, ...]]:
    if logits is None:
        return None
    probs = logits[0].detach().float().softmax(-1)
    p, idx = probs.topk(min(5, probs.numel()))
    return tuple(TopClass(int(i), class_names[int(i)] if class_names else f"class {int(i)}", round(float(q), 6))
                 for q, i in zip(p, idx))


def outputs_of(model: torch.nn.Module, x: torch.Tensor) -> tuple[Outputs, float]:
    """(the model's outputs on x, moved to the CPU as float32; the seconds the forward took)."""
    with Timer(x.device) as timer:
        feats, logits = features_and_logits(model, x)
    return Outputs(feats.float().cpu(), None if logits is None else logits.float().cpu()), timer.seconds


@contextlib.contextmanager
def final_tokens(model: torch.nn.Module, keep: bool):
    """A list that receives the output of `model.norm` (the last tokens, [1, n, C]) in each
    forward run inside, when `keep` (a hook: no extra forward, nothing copied while timed)."""
    seen: list[torch.Tensor] = []
    norm = getattr(model, "norm", None)
    handle = norm.register_forward_hook(lambda m, i, out: seen.append(out)) if keep and norm is not None else None
    try:
        yield seen
    finally:
        if handle is not None:
            handle.remove()


def with_patches(out: Outputs, seen: list[torch.Tensor], num_prefix: int) -> Outputs:
    """`out` with the patch tokens of the last forward seen by `final_tokens` ([n, C], float16, CPU)."""
    if not seen:
        return out
    return dataclasses.replace(out, patches=seen[-1][0, num_prefix:].to(torch.float16).cpu())


def to_cpu(value):
    """A trace (or any part of one) copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, gtp.Edges):
        return gtp.Edges(*(t.detach().cpu() for t in value))
    if isinstance(value, list):
        return [to_cpu(v) for v in value]
    return value


def compact(rec: gtp.Trace) -> gtp.Trace:
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
            setattr(obj, name, to_cpu(getattr(obj, name)))
    return rec
