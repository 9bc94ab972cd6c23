"""The token-reduction methods compared side by side, each applied in place at a given P.

`METHODS` maps a name to a function `(model, amount, **options) -> model` that first
restores the unpatched model, then applies the method with `amount` tokens removed
per block (P for GTP and its presets, r for ToMe), so equal amounts mean equal token
counts and (nearly) equal GMACs:

  full     the unpatched model (amount ignored)
  gtp      GTP (`gtp.patch(num_prop=P, **options)`; defaults: the published setting)
  tome     ToMe, our implementation (`gtp.tome.patch(r=P)`)
  pruning  GTP's own switches as pure pruning: attention from CLS (mean over heads)
           picks the P tokens, which are dropped (propagation="none")
  evit     EViT-style fusion: the same selection, the P tokens are fused into one
           average token (propagation="mean")

The pruning and EViT presets use neither sparsification (theta = 1) nor token
scale, as those methods do not have them. Only "gtp" reads the GTP options.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from torch import nn

from . import tome
from .config import PUBLISHED, GTPConfig
from .patch import patch as gtp_patch
from .patch import unpatch as gtp_unpatch

# The options a GTP record carries besides P: the other fields of `GTPConfig`.
GTP_OPTIONS = tuple(f.name for f in dataclasses.fields(GTPConfig) if f.name != "num_prop")

PRUNING = dict(propagation="none", selection="cls_attn_mean", sparsity=1.0, token_scale=False)
EVIT = dict(propagation="mean", selection="cls_attn_mean", sparsity=1.0, token_scale=False)


def reset(model: nn.Module) -> nn.Module:
    """Undo any GTP or ToMe patch: the model is the unpatched one again."""
    return tome.unpatch(gtp_unpatch(model))


def _full(model: nn.Module, amount: int = 0, **options: Any) -> nn.Module:
    return reset(model)


def _gtp(model: nn.Module, amount: int = PUBLISHED["num_prop"], **options: Any) -> nn.Module:
    reset(model)
    return gtp_patch(model, num_prop=amount, **{k: v for k, v in options.items() if k in GTP_OPTIONS})


def _tome(model: nn.Module, amount: int = 8, **options: Any) -> nn.Module:
    reset(model)
    return tome.patch(model, r=amount)


def _pruning(model: nn.Module, amount: int = 8, **options: Any) -> nn.Module:
    reset(model)
    return gtp_patch(model, num_prop=amount, **PRUNING)


def _evit(model: nn.Module, amount: int = 8, **options: Any) -> nn.Module:
    reset(model)
    return gtp_patch(model, num_prop=amount, **EVIT)


METHODS: dict[str, Callable[..., nn.Module]] = {
    "full": _full,
    "gtp": _gtp,
    "tome": _tome,
    "pruning": _pruning,
    "evit": _evit,
}


def apply_method(model: nn.Module, method: str, amount: int = 8, **options: Any) -> nn.Module:
    """Apply METHODS[method] at `amount` tokens per block, in place; returns the model."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return METHODS[method](model, amount, **options)


def method_fn(method: str, amount: int = 8, **options: Any) -> Callable[[nn.Module], nn.Module]:
    """A one-argument function applying the method (the form `gtp.measure.bench.benchmark` takes)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return lambda model: apply_method(model, method, amount, **options)


def describe(method: str, amount: int = 8, **options: Any) -> dict[str, Optional[Any]]:
    """The hyper-parameters a method really runs with, for result records.

    Keys: the fields of `GTPConfig` (num_prop first); None where the method has no
    such parameter, or where GTP's setting leaves it unread.
    """
    none = dict.fromkeys(("num_prop",) + GTP_OPTIONS)
    if method == "full":
        return {**none, "num_prop": 0}
    if method == "tome":
        return {**none, "num_prop": amount, "token_scale": True}
    if method in ("pruning", "evit"):
        preset = PRUNING if method == "pruning" else EVIT
        return {**none, "num_prop": amount, **preset}
    if method == "gtp":
        cfg = {k: options.get(k, PUBLISHED[k]) for k in GTP_OPTIONS}
        if cfg["propagation"] != "graph":  # no graph is built: these have no effect
            cfg["alpha"] = cfg["graph"] = cfg["num_neighbours"] = None
        elif cfg["graph"] == "spatial":
            cfg["num_neighbours"] = None
        return {"num_prop": amount, **cfg}
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
