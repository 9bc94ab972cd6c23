"""Exact per-row k-th smallest with zeroing, compiled for the CPU with numba.

Sparsification (SPEC.md section 2) zeroes every entry of an attention map that
is not above its k-th smallest value. On the CPU, PyTorch's own selections
(`kthvalue`, `topk`) keep an index per entry and run one row per thread, which
makes them cost more than the attention itself. This kernel does the same in three
cache-friendly passes per row:

  1. a histogram of the top bits of each value (the bits of non-negative floats
     sort as integers) finds the bucket that holds the k-th smallest;
  2. the entries inside that bucket are collected; a radix step on their next
     bits narrows a large bucket, and a quickselect among the few entries left
     gives the exact k-th smallest t;
  3. entries <= t are zeroed; for square maps, the same pass can also take the
     diagonal and the column sums that GTP's selection reads.

The result is bit-identical to `values[values <= values.kthvalue(k).values] = 0`
(the tests check it against that). Rows are spread over as many numba threads as
PyTorch uses; numba's OpenMP threading layer is preferred (it measured fastest
next to PyTorch's own OpenMP workers) unless NUMBA_THREADING_LAYER(_PRIORITY) is
set. numba is optional: without it, `available()` is False and `gtp.kernels`
takes its pure-PyTorch path (`torch_select`). The first call compiles the kernel (a few seconds;
cached on disk afterwards).
"""
from __future__ import annotations

import math
import os
import threading
from typing import Callable

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


_forked_after_omp = False
"""True in a process forked after numba's OpenMP layer ran here: GNU OpenMP is not fork-safe,
and numba ends such a child at its first parallel launch ("fork() called from a process already
using GNU OpenMP"). The child then takes the PyTorch path (same zeroed entries)."""


def _after_fork_in_child() -> None:
    global _forked_after_omp, _launch_lock
    _forked_after_omp = _forked_after_omp or _layer() == "omp"
    _launch_lock = threading.Lock()   # another thread may have held it at the fork


def available() -> bool:
    """True when numba is installed and may launch threads here, so `zeroer` can be used."""
    return numba is not None and not _forked_after_omp


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

    @numba.njit(cache=True, nogil=True)
    def _kth_smallest(row_bits, k):  # pragma: no cover - compiled
        """The k-th smallest (1-based) of one row, given as its float32 bits; NaN when
        the row holds a negative value (or -0.0), whose bits do not sort as integers."""
        L = row_bits.size
        hist = np.zeros(1 << (31 - _SHIFT), np.int32)
        sign = np.int32(0)
        for i in range(L):
            b = row_bits[i]
            sign |= b
            hist[(b & 0x7FFFFFFF) >> _SHIFT] += 1
        if sign < 0:
            return np.float32(np.nan)
        rank, bucket = k - 1, 0  # rank: 0-based, among the entries of `bucket`
        while True:  # skip 64 buckets at a time (a vectorised sum): most leading ones are empty
            count = 0
            for b in range(bucket, bucket + 64):
                count += hist[b]
            if count > rank:
                break
            rank -= count
            bucket += 64
        while hist[bucket] <= rank:
            rank -= hist[bucket]
            bucket += 1
        # Collect the bucket's entries without a branch per entry: near-uniform maps
        # (e.g. untrained models) put a few percent of a row in one bucket, which
        # makes an `if` mispredict often.
        n = hist[bucket]
        inside = np.empty(n + 1, np.int32)
        j = 0
        for i in range(L):
            b = row_bits[i]
            inside[j] = b
            j += (b >> _SHIFT) == bucket
        # A large bucket is narrowed by the next 8 bits, and again, before the quickselect.
        shift = _SHIFT
        while n > 64 and shift > 0:
            width = min(8, shift)
            shift -= width
            mask = (1 << width) - 1
            digits = np.zeros(1 << width, np.int32)
            for i in range(n):
                digits[(inside[i] >> shift) & mask] += 1
            digit = 0
            while digits[digit] <= rank:
                rank -= digits[digit]
                digit += 1
            m = 0
            for i in range(n):
                b = inside[i]
                inside[m] = b
                m += ((b >> shift) & mask) == digit
            n = m
        return _quickselect(inside.view(np.float32)[:n], rank)

    @numba.njit(cache=True, nogil=True, parallel=True)
    def _zero_rows(values, k, thresholds):  # pragma: no cover - compiled
        """values: float32 [R, L] (C order), zeroed in place; thresholds: float32 [R] out.

        A row holding a negative value (or -0.0) is left alone with a NaN threshold.
        """
        R, L = values.shape
        bits = values.view(np.int32)
        for r in numba.prange(R):
            t = _kth_smallest(bits[r], k)
            thresholds[r] = t
            if np.isnan(t):
                continue
            row = values[r]
            if t == np.inf:
                row[:] = 0.0
            else:  # v * (v > t) rather than a conditional store, which compiles to slow masked stores
                for i in range(L):
                    v = row[i]
                    row[i] = v * np.float32(v > t)

    @numba.njit(cache=True, nogil=True, parallel=True)
    def _zero_maps_with_statistics(values, k, thresholds, diagonal, column_sums):  # pragma: no cover
        """`_zero_rows` for rows that are square maps [n * n], k = 0 zeroing nothing,
        also writing each zeroed map's diagonal and column sums (float32 [R, n] out).

        The column sums add the rows in order (one accumulator per column), so
        k = 0 on an already zeroed map gives bit-identical sums.
        """
        R = values.shape[0]
        n = diagonal.shape[1]
        bits = values.view(np.int32)
        for r in numba.prange(R):
            row, col = values[r], column_sums[r]
            t = _kth_smallest(bits[r], k) if k > 0 else np.float32(-np.inf)
            thresholds[r] = t
            col[:] = 0.0
            if t == np.inf:
                row[:] = 0.0
            elif k > 0 and not np.isnan(t):  # zero and sum in one pass
                for i in range(n):
                    base = i * n
                    for j in range(n):
                        v = row[base + j]
                        z = v * np.float32(v > t)
                        row[base + j] = z
                        col[j] += z
            else:
                for i in range(n):
                    base = i * n
                    for j in range(n):
                        col[j] += row[base + j]
            for i in range(n):
                diagonal[r, i] = row[i * n + i]


def zeroer(values: Tensor, k: int, statistics: bool = False) -> Callable[..., np.ndarray]:
    """A function that, on each call, zeroes in place the entries of each row of
    `values` not above that row's k-th smallest, and returns the thresholds [R].

    values: a contiguous float32 CPU tensor [R, L] (a buffer refilled between
    calls); 1 <= k <= L. Rows holding a negative value are left untouched with a
    NaN threshold (softmax maps have none). The checks and the thread setup are
    done once here, so a call costs the kernel and little else.

    With `statistics`, each row is a square map [n * n] and k may be 0 (zero
    nothing). Each call then takes two float32 arrays [R, n] that receive the
    zeroed maps' diagonals and column sums, read in the same pass as the zeroing.
    """
    if numba is None:
        raise RuntimeError("numba is not installed")
    if values.dtype != torch.float32 or values.device.type != "cpu" or not values.is_contiguous():
        raise ValueError("values must be a contiguous float32 CPU tensor")
    R, L = values.shape
    lowest = 0 if statistics else 1
    if not lowest <= k <= L:
        raise ValueError(f"k must be in [{lowest}, {L}], got {k}")
    n = math.isqrt(L)
    if statistics and n * n != L:
        raise ValueError(f"statistics need square maps; a row of {L} entries is not one")
    array, thresholds = values.detach().numpy(), np.empty(R, np.float32)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, R)))
    kernel = _zero_maps_with_statistics if statistics else _zero_rows
    expected = [(R, n), (R, n)] if statistics else []

    def launch(*out: np.ndarray) -> np.ndarray:
        if [a.shape for a in out] != expected:  # the kernel does not check its bounds
            raise ValueError(f"expected output arrays of shapes {expected}, got {[a.shape for a in out]}")
        if _threadsafe_layer():
            kernel(array, k, thresholds, *out)
        else:  # numba's workqueue layer aborts on concurrent launches (e.g. from an app's worker threads)
            with _launch_lock:
                kernel(array, k, thresholds, *out)
        return thresholds

    return launch


_launch_lock = threading.Lock()


def _layer() -> str:
    """numba's threading layer ("omp", "tbb", "workqueue"), known after the first launch; "" before."""
    try:
        return numba.threading_layer() if numba is not None else ""
    except ValueError:  # no launch yet: the layer is not chosen
        return ""


def _threadsafe_layer() -> bool:
    """Whether numba's threading layer (known after the first launch) takes concurrent launches."""
    return _layer() in ("omp", "tbb")


os.register_at_fork(after_in_child=_after_fork_in_child)


def warm_up() -> None:
    """Compile the kernels now (they are otherwise compiled by their first use)."""
    if numba is not None:
        zeroer(torch.rand(2, 64), 10)()
        zeroer(torch.rand(2, 64), 0, statistics=True)(np.empty((2, 8), np.float32), np.empty((2, 8), np.float32))
