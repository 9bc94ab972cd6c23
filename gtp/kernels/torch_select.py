"""Exact per-row k-th smallest with zeroing in plain PyTorch: batched, static-shape, sync-free.

The path for every device but a float32 CPU tensor with numba (`radix_select`):
CUDA, autograd, reduced precision, and the CPU without numba. One selection over
all rows at once, then one comparison: a fixed handful of kernels whatever the
number of rows (images x heads), and no value ever read back by the host, so a
GPU never waits and the sequence compiles into one graph.

The zeroed set is exactly `values <= values.kthvalue(k).values` per row, the
numba kernel's (ties with the threshold are zeroed too).
"""
from __future__ import annotations

from torch import Tensor


def kth_smallest(values: Tensor, k: int) -> Tensor:
    """The k-th smallest (1-based) of each row: [R, L] -> [R], `values` untouched.

    On the CPU `topk` from the shorter side is several times cheaper than
    `kthvalue`; elsewhere `kthvalue` is one radix select per row that returns
    the value alone. Both give the same value (the k-th order statistic is unique).
    """
    L = values.shape[1]
    if values.device.type != "cpu":
        return values.kthvalue(k, dim=1).values
    if k > L // 2:  # select from the short side
        return values.topk(L - k + 1, dim=1, largest=True, sorted=False).values.amin(1)
    return values.topk(k, dim=1, largest=False, sorted=False).values.amax(1)


def zero_smallest_(values: Tensor, k: int) -> Tensor:
    """Zero, in place, the entries of each row not above its k-th smallest: [R, L] -> thresholds [R].

    values: any dtype and device, 1 <= k <= L; no NaN. Entries equal to the
    threshold are zeroed too.
    """
    threshold = kth_smallest(values, k)
    values.masked_fill_(values <= threshold.unsqueeze(1), 0.0)
    return threshold


def zeroed_mask(values: Tensor, k: int) -> Tensor:
    """The entries `zero_smallest_` would zero, as a bool mask [R, L] (for autograd: no in-place)."""
    ranked = values.detach()
    return ranked <= kth_smallest(ranked, k).unsqueeze(1)
