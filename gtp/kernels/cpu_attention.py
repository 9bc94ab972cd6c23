"""GTP attention on the CPU one image at a time, with the numba kernel: the fast eager CPU path.

The same operations as `gtp.functional.attention` (map, softmax, sparsification,
A @ V), image by image: one image's map [H, n, n] stays in the CPU cache between
the steps, which roughly halves their cost, one map buffer serves every image,
and the per-image views are taken once. The sparsification kernel takes the
selection statistics in its zeroing pass. Eager only: under torch.compile the
batched path runs (this loop would unroll over the batch).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import radix_select


def applies(q: Tensor, k: Tensor, v: Tensor, size: Optional[Tensor]) -> bool:
    """Whether `attention` may run: float32 CPU tensors, no autograd, numba, eager mode."""
    tensors = [t for t in (q, k, v, size) if t is not None]
    return (radix_select.available() and q.device.type == "cpu"
            and all(t.dtype == torch.float32 for t in (q, k, v))
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and not torch.compiler.is_compiling())


def attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        size: Optional[Tensor],
        num_zero: int,
        scale: float,
        statistics: bool,
        keep_maps: bool,
) -> tuple[Tensor, Optional[tuple[Tensor, Tensor]], Optional[Tensor], Optional[Tensor]]:
    """softmax(scale q k^T + log s) with the num_zero smallest entries of each head's map zeroed, @ v.

    q, k, v: [B, H, n, d] float32 CPU; size: [B, n] or None. Returns (output
    [B, H, n, d], (diagonal, column sums) [B, H, n] of the zeroed maps when
    `statistics`, and the maps [B, H, n, n] before and after zeroing when `keep_maps`).
    """
    B, H, n, d = q.shape
    out = v.new_empty(B, H, n, d)
    amap = q.new_empty(H, n, n)  # the map of the current image
    rows = amap.view(H, n * n)
    zero = None
    if statistics or num_zero > 0:
        zero = radix_select.zeroer(rows, num_zero, statistics=statistics)
    stats = dense = sparse = None
    if statistics:
        stats = (q.new_empty(B, H, n), q.new_empty(B, H, n))
        diagonals, sums = stats[0].numpy(), stats[1].numpy()
    if keep_maps:
        dense, sparse = q.new_empty(B, H, n, n), q.new_empty(B, H, n, n)
    bias = None if size is None else size.log().unsqueeze(1)  # [B, 1, n]: + log s_j on key j
    keys = k.transpose(-2, -1).unbind(0)
    for i, (q_i, v_i, out_i) in enumerate(zip(q.unbind(0), v.unbind(0), out.unbind(0))):
        if bias is None:
            torch.bmm(q_i, keys[i], out=amap)
            if scale != 1.0:
                amap.mul_(scale)
        else:
            torch.baddbmm(bias[i], q_i, keys[i], alpha=scale, out=amap)
        torch.softmax(amap, dim=-1, out=amap)
        if keep_maps:
            dense[i].copy_(amap)
        if statistics:
            zero(diagonals[i], sums[i])
        elif zero is not None:
            zero()
        if keep_maps:
            sparse[i].copy_(amap)
        torch.bmm(amap, v_i, out=out_i)
    return out, stats, dense, sparse
