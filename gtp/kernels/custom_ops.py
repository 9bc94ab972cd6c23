"""The numba kernel as a `torch.library` custom op, so `torch.compile` traces around it.

Dynamo cannot look inside numba: called directly, the kernel would split a
compiled forward at every block. Registered as an op with a fake (shape-only)
implementation, it is one opaque node of the graph instead; the op mutates the
maps in place and returns the statistics as new tensors.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import radix_select, torch_select


def _radix_sparsify(maps: Tensor, k: int, statistics: bool) -> tuple[Tensor, Tensor]:
    """Zero in place the k smallest entries of each square map (ties with the threshold too).

    maps: a contiguous float32 CPU tensor [R, n, n]; 0 <= k <= n * n (0 zeroes
    nothing). Returns (diagonal [R, n], column sums [R, n]) of the zeroed maps
    when `statistics`, else two empty [R, 0] tensors (an op returns a fixed
    number of tensors). A map holding a negative value, which the radix kernel
    leaves alone, is zeroed by `torch_select` (softmax maps hold none).
    """
    R, n, _ = maps.shape
    rows = maps.view(R, n * n)
    width = n if statistics else 0
    diagonal, column_sums = maps.new_empty(R, width), maps.new_empty(R, width)
    if statistics:
        thresholds = radix_select.zeroer(rows, k, statistics=True)(diagonal.numpy(), column_sums.numpy())
    elif k > 0:
        thresholds = radix_select.zeroer(rows, k)()
    else:
        return diagonal, column_sums
    if k > 0 and np.isnan(thresholds).any():
        skipped = torch.from_numpy(np.flatnonzero(np.isnan(thresholds)))
        redone = rows[skipped]
        torch_select.zero_smallest_(redone, k)
        rows[skipped] = redone
        if statistics:
            square = redone.view(-1, n, n)
            diagonal[skipped] = square.diagonal(dim1=-2, dim2=-1)
            column_sums[skipped] = square.sum(-2)
    return diagonal, column_sums


def _fake_radix_sparsify(maps: Tensor, k: int, statistics: bool) -> tuple[Tensor, Tensor]:
    R, n, _ = maps.shape
    width = n if statistics else 0
    return maps.new_empty(R, width), maps.new_empty(R, width)


if hasattr(torch.library, "custom_op"):  # torch >= 2.4
    radix_sparsify_ = torch.library.custom_op(
        "gtp::radix_sparsify_", _radix_sparsify, mutates_args=("maps",), device_types="cpu")
    radix_sparsify_.register_fake(_fake_radix_sparsify)
else:  # older torch: eager only (torch.compile splits the graph here)
    radix_sparsify_ = _radix_sparsify
