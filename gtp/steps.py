"""The three steps of a GTP block, attend -> choose -> propagate, each on the fastest path for its tensors.

`gtp.functional` holds the maths in plain PyTorch: the reference every path is tested
against. Here each step picks an implementation of the same semantics (SPEC.md
sections 2-4):

- CUDA tensors (and CPU tensors under Triton's interpreter, for tests): the Triton
  kernels of `gtp.kernels.triton_attention` / `triton_tokens`. The attention map never
  reaches GPU memory, and a block between its attention and its MLP launches three
  kernels (attention, selection, propagation) instead of dozens.
- Eager float32 CPU tensors: the numba kernels (`gtp.kernels.cpu_attention`), through
  `functional.attention`.
- Anything else (meta tensors, autograd, no Triton): the batched PyTorch functions.

Whatever the path, a step that needs no map does not build one: with nothing to read
the attention is PyTorch's fused `scaled_dot_product_attention`, and CLS-attention
selection without sparsification reads one query row beside it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from . import functional as G
from . import kernels, self_check
from .kernels import triton_support

T = TypeVar("T")


def _triton(t: Tensor) -> bool:
    """Whether the Triton kernels take this step's tensors (never under autograd: they have no backward)."""
    return triton_support.runs_on(t) and not (torch.is_grad_enabled() and t.requires_grad)


def _guarded(op: str, sample: Tensor, fused: Callable[[], T], fallback: Callable[[], T]) -> T:
    """Run fused op `op` only if it has passed its first-use check on this device (`gtp.self_check`):
    a mismatch there, a build failure or a launch error (then or later) switches THAT op to the
    PyTorch path with a warning saying why. Under the interpreter (tests) a failure outside a
    check is raised: a fallback there would hide a broken kernel."""
    if torch.compiler.is_compiling():
        return fused()
    if not self_check.ready(op, sample):
        return fallback()
    if triton_support.interpreting():
        return fused()
    try:
        return fused()
    except Exception as error:  # noqa: BLE001 - any build or launch failure: the fallback is exact too
        self_check.switch_off(op, f"launch failure: {type(error).__name__}: {str(error).strip()[:200]}")
        return fallback()


# ------------------------------------------------------------------------ attention
def sdpa(q: Tensor, k: Tensor, v: Tensor, size: Optional[Tensor], scale: float) -> Tensor:
    """softmax(scale q k^T + log s_j) v with PyTorch's fused kernel: [B, H, n, d] -> [B, H, n, d]."""
    bias = None if size is None else size.log().to(q.dtype)[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def attend(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        size: Optional[Tensor],
        sparsity: float,
        scale: float,
        needs: str = "none",
        keep_maps: bool = False,
) -> G.Attention:
    """GTP attention (SPEC.md section 2) with what the selection reads (`functional.selection_input`).

    q, k, v: [B, H, n, d]; size: [B, n] token sizes or None (no token scale);
    needs: "statistics", "cls_row", "map" or "none"; keep_maps: also the maps before
    and after sparsification (the trace). Returns `functional.Attention`; its
    dense/sparse maps are set only when `keep_maps` or `needs == "map"`.
    """
    if sparsity >= 1.0 and needs in ("none", "cls_row") and not keep_maps:
        row = G.cls_attention_row(q, k, size, scale) if needs == "cls_row" else None
        return G.Attention(sdpa(q, k, v, size, scale), None, None, None, row)
    if sparsity >= 1.0 and needs == "cls_row":  # traced: the same row and output, the maps for display
        amap = G.attention_map(q, k, size, scale)
        return G.Attention(sdpa(q, k, v, size, scale), None, amap, amap, G.cls_attention_row(q, k, size, scale))
    maps = keep_maps or needs == "map"
    if _triton(q) and triton_support.op_off("gtp::fused_attention") is None:
        from .kernels.fused_attention import fused_attention
        num_zero = kernels.num_zeroed(q.shape[2], sparsity)
        return _guarded(
            "gtp::fused_attention", q,
            lambda: G.Attention(*fused_attention(q, k, v, size, scale, num_zero, needs == "statistics",
                                                 needs == "cls_row", maps)),
            lambda: attend(q, k, v, size, sparsity, scale, needs, keep_maps))
    attended = G.attention(q, k, v, size, sparsity, scale, needs == "statistics", maps or needs == "cls_row")
    if needs == "cls_row":
        attended = attended._replace(cls_row=attended.sparse_map[:, :, 0])
        if not maps:
            attended = attended._replace(dense_map=None, sparse_map=None)
    return attended


# ------------------------------------------------------------------------ selection
class Choice(NamedTuple):
    """Which patch tokens leave a block (indices into the block's current patch tokens)."""
    prop: Tensor                    # [B, P] propagated, ascending
    keep: Tensor                    # [B, N-P] kept, ascending
    kept_ids: Tensor                # [B, N-P] original patch ids of the kept tokens
    score: Tensor                   # [B, N] selection score (low = propagated)
    regeneration: Optional[Tensor]  # [B, N] the score's factors, for the strategies that use them
    broadcasting: Optional[Tensor]


def choose(attended: G.Attention, ids: Tensor, num_prefix: int, selection: str, num_prop: int,
           generator: Optional[torch.Generator] = None) -> Choice:
    """The `num_prop` patch tokens with the lowest score leave (SPEC.md section 3).

    attended: the block's attention with what `functional.selection_input(selection)`
    names; ids: [B, N] original patch ids of the current patch tokens; generator: draws
    the scores of selection="random" (None: PyTorch's global generator).
    """
    if _triton(attended.out):
        from .kernels import triton_tokens
        kind, reduce = G.parse_selection(selection)
        factors = kind != "cls_attn"
        if attended.statistics is not None:  # mixed / sum / diag / img _attn: scored inside the kernel
            inputs = dict(statistics=attended.statistics, reduce=reduce, combine=kind.split("_")[0])
        elif attended.cls_row is not None:  # cls_attn: row 0 over the heads, as "img" reduces column sums
            inputs = dict(statistics=(attended.cls_row, attended.cls_row), reduce=reduce, combine="img")
        else:  # cos_sim, random: scored in PyTorch
            inputs = dict(score=G.selection_scores(attended, num_prefix, selection, generator)[0])

        def fused() -> Choice:
            chosen = Choice(*triton_tokens.select_tokens(ids, num_prop, num_prefix=num_prefix, **inputs))
            return chosen if factors else chosen._replace(regeneration=None, broadcasting=None)

        return _guarded("gtp::select_tokens", ids, fused,
                        lambda: _choose_torch(attended, ids, num_prefix, selection, num_prop, generator))
    return _choose_torch(attended, ids, num_prefix, selection, num_prop, generator)


def _choose_torch(attended: G.Attention, ids: Tensor, num_prefix: int, selection: str, num_prop: int,
                  generator: Optional[torch.Generator] = None) -> Choice:
    score, regeneration, broadcasting = G.selection_scores(attended, num_prefix, selection, generator)
    prop, keep = G.split_tokens(score, num_prop)
    return Choice(prop, keep, ids.gather(1, keep), score, regeneration, broadcasting)


# ---------------------------------------------------------------------- propagation
def propagate(
        x: Tensor,
        size: Tensor,
        graph: Optional[Tensor],
        ids: Tensor,
        choice: Choice,
        num_prefix: int,
        propagation: str,
        alpha: float,
        weights: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Remove the chosen tokens and push their features into the kept ones (SPEC.md section 4).

    x: [B, n, C]; size: [B, n]; graph: W [B or 1, N0, N0] over the original patch
    ids (for "graph"); ids: [B, N] current original ids. Returns (x, size, ids, the
    weights alpha W[K, R] [B, N-P, P] for "graph" when `weights` is asked, else None)
    as `functional.propagate` does.
    """
    if graph is not None:  # a spatial graph is one [1, N0, N0] for every image: a stride-0 view, no copy
        graph = graph.expand(x.shape[0], -1, -1)
    if propagation != "mean" and _triton(x):
        from .kernels import triton_tokens

        def fused() -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
            x_new, size_new, w = triton_tokens.propagate_tokens(
                x, size, graph, ids, choice.prop, choice.keep, num_prefix, propagation, alpha, weights)
            return x_new, size_new, choice.kept_ids, w

        return _guarded("gtp::propagate_tokens", x, fused,
                        lambda: _propagate_torch(x, size, graph, ids, choice, num_prefix, propagation, alpha, weights))
    return _propagate_torch(x, size, graph, ids, choice, num_prefix, propagation, alpha, weights)


def _propagate_torch(x: Tensor, size: Tensor, graph: Optional[Tensor], ids: Tensor, choice: Choice,
                     num_prefix: int, propagation: str, alpha: float, weights: bool,
                     ) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    x, size, kept, w = G.propagate(x, size, graph, ids, choice.prop, choice.keep, num_prefix, propagation, alpha)
    return x, size, kept, w if weights else None
