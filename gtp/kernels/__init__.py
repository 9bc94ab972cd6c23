"""Sparsification of attention maps (SPEC.md section 2) behind one entry point, `sparsify`.

Two implementations give bit-identical zeroed entries:

- `radix_select`: a numba radix select for float32 CPU maps (fast; an opaque
  `torch.library` op, `custom_ops`, so torch.compile traces around it);
- `torch_select`: batched PyTorch operations for everything else (CUDA,
  autograd, other dtypes, no numba): static shapes, no host synchronisation.

`cpu_attention` is the eager CPU attention that runs the numba kernel image by
image; `gtp.functional.attention` chooses it where it applies.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import cpu_attention, radix_select, torch_select
from .custom_ops import radix_sparsify_

__all__ = ["sparsify", "num_zeroed", "cpu_attention", "radix_select", "torch_select", "warm_up"]


def num_zeroed(n: int, sparsity: float) -> int:
    """floor(n^2 (1 - theta)): entries zeroed per head in an n x n attention map (0 when theta >= 1)."""
    return max(0, int(n * n * (1.0 - sparsity)))


def _needs_grad(t: Tensor) -> bool:
    """Whether autograd records ops on t (then nothing is changed in place)."""
    return t.requires_grad and torch.is_grad_enabled()


def _numba_applies(t: Tensor) -> bool:
    return (radix_select.available() and t.device.type == "cpu" and t.dtype == torch.float32
            and t.is_contiguous() and not _needs_grad(t))


def sparsify(
        attn: Tensor,
        sparsity: float,
        statistics: bool = False,
) -> tuple[Tensor, Optional[tuple[Tensor, Tensor]]]:
    """Zero the floor(n^2 (1 - theta)) smallest entries of each head's attention map.

    attn: [B, H, n, n] softmax output (no negative entries, no NaN); theta =
    `sparsity` in (0, 1], 1 zeroing nothing. Entries equal to the threshold (the
    k-th smallest value) are zeroed too; the rows are not renormalised. In place,
    except where autograd records attn (then a new tensor, so the softmax can be
    differentiated). The zeroed entries are the same on every path and device.

    With `statistics`, also returns what the attention-based selections read
    (SPEC.md section 3), from the map AFTER zeroing, both float32 [B, H, n]:
      - diagonal[b, h, j] = A[j, j] (regeneration difficulty, per head);
      - column_sums[b, h, j] = sum_i A[i, j] (broadcasting ability, per head).
    The numba kernel takes them in its zeroing pass.

    Returns (the sparsified map [B, H, n, n], (diagonal, column_sums) or None).
    """
    B, H, n, _ = attn.shape
    k = num_zeroed(n, sparsity)
    if _numba_applies(attn):
        if k > 0 or statistics:
            diagonal, column_sums = radix_sparsify_(attn.view(B * H, n, n), k, statistics)
            if statistics:
                return attn, (diagonal.view(B, H, n), column_sums.view(B, H, n))
        return attn, None
    if k > 0:
        if attn.is_contiguous() and not _needs_grad(attn):
            torch_select.zero_smallest_(attn.view(B * H, n * n), k)
        else:
            zeroed = torch_select.zeroed_mask(attn.reshape(B * H, n * n), k).view_as(attn)
            attn = attn.masked_fill(zeroed, 0.0) if _needs_grad(attn) else attn.masked_fill_(zeroed, 0.0)
    if not statistics:
        return attn, None
    maps = attn.float()
    return attn, (maps.diagonal(dim1=-2, dim2=-1).clone(), maps.sum(-2))


def warm_up() -> None:
    """Compile the numba kernels now (they are otherwise compiled by their first use)."""
    radix_select.warm_up()
