"""What explains GTP's fidelity on a model: GTP with ONE part changed at a time.

`python -m gtp fidelity --ablation --model M [--weights F] [--num-prop 8 14]` measures, at each P,
the published setting (`gtp.PUBLISHED`) and every single-part change below, beside pruning,
random drop and ToMe at the same P, with the fidelity bench's records (`gtp.measure.fidelity`).

For the runs that propagate along the graph it also says WHERE the propagated features land:
`landing_high_norm` is the share of the propagation weight (alpha W[K, R], summed over blocks
and views) received by the patches that end the FULL model as high-norm tokens (final-block
norm above `HIGH_NORM` times that view's median: the artefact tokens of Darcet et al.,
"Vision Transformers Need Registers", ICLR 2024), and `high_norm_share` the share of patches
that are such tokens: a landing share well above it means the graph feeds those tokens.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .. import methods
from ..trace import trace

HIGH_NORM = 2.0
"""A patch is a high-norm token when its final-block norm exceeds this many times its view's median."""
LANDING_VIEWS = 16
"""Views traced for the landing shares (a trace keeps every block's edges)."""

# (row name, options changed from the published setting)
CHANGES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("gtp (published)", {}),
    ("selection=cls_attn_mean", dict(selection="cls_attn_mean")),
    ("selection=cls_attn_max", dict(selection="cls_attn_max")),
    ("selection=diag_attn_max", dict(selection="diag_attn_max")),
    ("selection=img_attn_max", dict(selection="img_attn_max")),
    ("selection=mixed_attn_mean", dict(selection="mixed_attn_mean")),
    ("propagation=mean", dict(propagation="mean")),
    ("propagation=none", dict(propagation="none")),
    ("sparsity=1 (no theta)", dict(sparsity=1.0)),
    ("token_scale=off", dict(token_scale=False)),
    ("alpha=0.03", dict(alpha=0.03)),
    ("alpha=0.3", dict(alpha=0.3)),
    ("graph=spatial", dict(graph="spatial")),
    ("graph=semantic", dict(graph="semantic")),
    ("cls_attn_mean + sparsity=1", dict(selection="cls_attn_mean", sparsity=1.0)),
)
BASELINES = ("pruning", "random", "tome")


def ablation_runs(amounts: list[int]) -> list[tuple[str, str, int, dict]]:
    """(name, method, P, options) of every change at every P, then the baselines."""
    runs = [("full", "full", 0, {})]
    for p in amounts:
        runs += [(name, "gtp", p, options) for name, options in CHANGES]
        runs += [(name, name, p, {}) for name in BASELINES]
    return runs


def high_norm_patches(model: nn.Module, x: Tensor, factor: float = HIGH_NORM) -> Tensor:
    """BoolTensor [V, N]: the patches whose output of the unpatched model's last block has a
    norm above `factor` times the view's median patch norm."""
    out = {}
    methods.reset(model)
    hook = model.blocks[-1].register_forward_hook(lambda mod, args, y: out.__setitem__("y", y))
    try:
        with torch.inference_mode():
            model.forward_features(x)
    finally:
        hook.remove()
    norms = out["y"][:, model.num_prefix_tokens:].float().norm(dim=-1)      # [V, N]
    return norms > factor * norms.median(dim=-1, keepdim=True).values


def landing_share(model: nn.Module, x: Tensor, flagged: Tensor) -> float:
    """Share of the propagation weight that lands on flagged patches ([V, N] bool), one traced forward."""
    with torch.inference_mode(), trace(model) as rec:
        model(x)
    total = onto = 0.0
    for layer in rec.layers:
        for view, edges in enumerate(layer.edges):
            if edges.weight.numel():
                total += float(edges.weight.sum())
                onto += float(edges.weight[flagged[view, edges.dst]].sum())
    return onto / total if total else float("nan")


def ablation_extra(model: nn.Module, x: Tensor) -> Callable[[nn.Module, str, int], dict]:
    """The `extra` of `fidelity.measure`: landing shares for the graph-propagating runs."""
    views = x[:LANDING_VIEWS]
    flagged = high_norm_patches(model, views)
    share = round(float(flagged.double().mean()), 4)

    def extra(patched: nn.Module, name: str, p: int) -> dict:
        from ..patch import config_of
        cfg = config_of(patched)
        if cfg is None or cfg.propagation != "graph":
            return {}
        return dict(landing_high_norm=round(landing_share(patched, views, flagged), 4), high_norm_share=share)
    return extra
