"""Exact per-row k-th smallest with zeroing, compiled for the CPU with numba.

Sparsification (METHOD.md section 2) zeroes every entry of an attention map that
is not above its k-th smallest value. On the CPU, PyTorch's own selections
(`kthvalue`, `topk`) keep an index per entry and run one row per thread, which
makes them cost more than the attention itself. This kernel does the same in three
cache-friendly passes per row:

  1. a histogram of the top bits of each value (the bits of non-negative floats
     sort as integers) finds the bucket that holds the k-th smallest;
  2. the entries inside that bucket (a few hundred) are collected and a
     quickselect among them gives the exact k-th smallest t;
  3. entries <= t are zeroed.

The result is bit-identical to `values[values <= values.kthvalue(k).values] = 0`
(the tests check it against that). Rows are spread over as many numba threads as
PyTorch uses; numba's OpenMP threading layer is preferred (it measured fastest
next to PyTorch's own OpenMP workers) unless NUMBA_THREADING_LAYER(_PRIORITY) is
set. numba is optional: without it, `available()` is False and `gtp.functional`
takes its pure-PyTorch path. The first call compiles the kernel (a few seconds;
cached on disk afterwards).
"""
from __future__ import annotations

import os
import threading

import numpy as np
import torch
from torch import Tensor

try:
    import numba
except ImportError:  # the pure-PyTorch path is used instead
    numba = None

if numba is not None and not {"NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"} & set(os.environ):
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

_SHIFT = 18  # bits >> 18: 8192 buckets, 32 per octave of (non-negative) float values


def available() -> bool:
    """True when numba is installed, so `zero_smallest_` can be used."""
    return numba is not None


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _quickselect(a, r):  # pragma: no cover - compiled
        """The r-th smallest (0-based) of a 1-D array, reordering it in place."""
        lo, hi = 0, a.size - 1
        while lo < hi:
            pivot = a[(lo + hi) >> 1]
            i, j = lo, hi
            while i <= j:
                while a[i] < pivot:
                    i += 1
                while a[j] > pivot:
                    j -= 1
                if i <= j:
                    a[i], a[j] = a[j], a[i]
                    i += 1
                    j -= 1
            if r <= j:
                hi = j
            elif r >= i:
                lo = i
            else:
                return a[r]
        return a[r]

    @numba.njit(cache=True, nogil=True, parallel=True)
    def _zero_rows(values, k, thresholds):  # pragma: no cover - compiled
        """values: float32 [R, L] (C order), zeroed in place; thresholds: float32 [R] out.

        A row holding a negative value (or -0.0) is left alone with a NaN threshold:
        the float bits order non-negative floats only.
        """
        R, L = values.shape
        bits = values.view(np.int32)
        for r in numba.prange(R):
            row, row_bits = values[r], bits[r]
            hist = np.zeros(1 << (31 - _SHIFT), np.int32)
            sign = np.int32(0)
            for i in range(L):
                b = row_bits[i]
                sign |= b
                hist[(b & 0x7FFFFFFF) >> _SHIFT] += 1
            if sign < 0:
                thresholds[r] = np.nan
                continue
            below, bucket = 0, 0
            while below + hist[bucket] < k:
                below += hist[bucket]
                bucket += 1
            inside = np.empty(hist[bucket], np.float32)
            lo, hi = bucket << _SHIFT, (bucket + 1) << _SHIFT
            j = 0
            for i in range(L):
                b = row_bits[i]
                if lo <= b < hi:
                    inside[j] = row[i]
                    j += 1
            t = _quickselect(inside, k - below - 1)
            for i in range(L):
                if row[i] <= t:
                    row[i] = 0.0
            thresholds[r] = t


def zero_smallest_(values: Tensor, k: int) -> Tensor:
    """Zero, in place, the entries of each row not above its k-th smallest: [R, L] -> thresholds [R].

    values: a contiguous float32 CPU tensor; 1 <= k <= L. Rows holding a negative
    value are left untouched with a NaN threshold (softmax maps have none).
    """
    if numba is None:
        raise RuntimeError("numba is not installed")
    R, L = values.shape
    if not (1 <= k <= L):
        raise ValueError(f"k must be in [1, {L}], got {k}")
    thresholds = np.empty(R, np.float32)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, R)))
    if _threadsafe_layer():
        _zero_rows(values.detach().numpy(), k, thresholds)
    else:  # numba's workqueue layer aborts on concurrent launches (e.g. from an app's worker threads)
        with _launch_lock:
            _zero_rows(values.detach().numpy(), k, thresholds)
    return torch.from_numpy(thresholds)


_launch_lock = threading.Lock()


def _threadsafe_layer() -> bool:
    """Whether numba's threading layer (known after the first launch) takes concurrent launches."""
    try:
        return numba.threading_layer() in ("omp", "tbb")
    except ValueError:  # no launch yet: the layer is not chosen
        return False


def warm_up() -> None:
    """Compile the kernel now (it is otherwise compiled by its first use)."""
    if numba is not None:
        zero_smallest_(torch.rand(2, 64), 10)
