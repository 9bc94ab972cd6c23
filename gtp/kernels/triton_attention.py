"""GTP attention fused into one Triton kernel: no n x n map is written to GPU memory.

`gtp.functional.attention` materialises each head's float32 map and walks it many
times (logits, softmax, the k-th smallest, zeroing, statistics, A @ V). Here one
Triton program per (image, head) recomputes the logits tile by tile instead,
flash-attention style, in up to five passes over its query x key tiles:

  0. the log-sum-exp of every query row (online max and sum), kept in a float32
     scratch of n values: from then on p = exp(logit - lse) is the softmax entry;
  1-3. when entries are to be zeroed (k > 0): a radix select of the k-th smallest p
     of the whole map. Non-negative float32 values sort as their bit patterns, and
     p <= ~1 leaves bits 31 and 30 zero, so three passes over bits 29..20, 19..10
     and 9..0 each build a 1024-bin histogram of the entries that share the prefix
     found so far, and its cumulative sum names the bucket holding the k-th;
  4. p again, zeroed where its bits are <= the threshold's (ties are zeroed too,
     SPEC.md section 2), then out += p @ v and, on request, the diagonal, the column
     sums and the CLS row of the zeroed map, and both maps for a trace.

Every pass computes p with the same helper (`_probabilities`), and the kernel is
compiled without floating-point contraction, so p has the same bits in every pass
and the zeroed set is exactly `p <= kthvalue(p, k)` of the map the kernel reports.
Logits, softmax and accumulation run in float32 whatever the input dtype; float32
inputs multiply exactly (no TF32), as PyTorch's float32 matmul does.

Importing this module imports Triton: `gtp.kernels.fused_attention` does so lazily.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import triton_support

_RADIX_BITS = 10    # bits per radix pass: 3 passes cover bits 29..0
_BINS = 1024        # 2 ** _RADIX_BITS


@triton.jit
def _load_keys(k_base, sk_n, sk_d, size_base, ss_n, start_n, n, offs_d, d_ok,
               BLOCK_N: tl.constexpr, HAS_SIZE: tl.constexpr):
    """Key tile start_n: (k^T [BLOCK_D, BLOCK_N], log s [BLOCK_N], key index, key in range)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    key_ok = offs_n < n
    kt = tl.load(k_base + offs_n[None, :] * sk_n + offs_d[:, None] * sk_d,
                 mask=key_ok[None, :] & d_ok[:, None], other=0.0)
    log_size = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_SIZE:
        log_size = tl.log(tl.load(size_base + offs_n * ss_n, mask=key_ok, other=1.0).to(tl.float32))
    return kt, log_size, offs_n, key_ok


@triton.jit
def _dot(a, b, acc, DOT: tl.constexpr):
    """acc + a @ b in float32. DOT: "ieee" for float32 inputs (exact products, no TF32, as
    PyTorch), "native" for half inputs, "upcast" for bfloat16 under the interpreter, which
    holds bfloat16 as raw uint16 and would multiply the bit patterns (widening is exact)."""
    if DOT == "upcast":
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif DOT == "ieee":
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _logits(q, kt, log_size, key_ok, scale, HAS_SIZE: tl.constexpr, DOT: tl.constexpr):
    """scale * q k^T + log s_j [BLOCK_M, BLOCK_N] float32; keys out of range get -inf."""
    logits = _dot(q, kt, tl.zeros([q.shape[0], kt.shape[1]], dtype=tl.float32), DOT) * scale
    if HAS_SIZE:
        logits = logits + log_size[None, :]
    return tl.where(key_ok[None, :], logits, float("-inf"))


@triton.jit
def _probabilities(q, kt, log_size, key_ok, lse, scale, HAS_SIZE: tl.constexpr, DOT: tl.constexpr):
    """The softmax entries exp(logit - lse) of a tile: the one definition every pass uses."""
    return tl.exp(_logits(q, kt, log_size, key_ok, scale, HAS_SIZE, DOT) - lse[:, None])


@triton.jit
def _gtp_attention_kernel(
        Q, K, V, SIZE, OUT, LSE, DIAG, COLSUM, CLS, DENSE, SPARSE,
        sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
        ss_b, ss_n, so_b, so_h, so_n, so_d,
        H, n, d, scale, num_zero,
        HAS_SIZE: tl.constexpr, STATISTICS: tl.constexpr, CLS_ROW: tl.constexpr,
        KEEP_MAPS: tl.constexpr, DOT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BINS: tl.constexpr,
        RADIX_BITS: tl.constexpr):
    """One program per (image, head): see the module docstring for the passes."""
    pid = tl.program_id(0).to(tl.int64)
    b, h = pid // H, pid % H
    q_base, k_base, v_base = Q + b * sq_b + h * sq_h, K + b * sk_b + h * sk_h, V + b * sv_b + h * sv_h
    out_base, size_base = OUT + b * so_b + h * so_h, SIZE + b * ss_b
    rows = pid * n          # this head's [n] slice of the [B, H, n] outputs and scratch
    maps = pid * n * n      # this head's [n, n] slice of the maps
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < d

    # Pass 0: the log-sum-exp of every query row.
    for start_m in range(0, n, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < n
        q = tl.load(q_base + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start_n in range(0, n, BLOCK_N):
            kt, log_size, offs_n, key_ok = _load_keys(k_base, sk_n, sk_d, size_base, ss_n, start_n, n,
                                                      offs_d, d_ok, BLOCK_N, HAS_SIZE)
            logits = _logits(q, kt, log_size, key_ok, scale, HAS_SIZE, DOT)
            new_max = tl.maximum(row_max, tl.max(logits, 1))
            row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), 1)
            row_max = new_max
        tl.store(LSE + rows + offs_m, row_max + tl.log(row_sum), mask=row_ok)
    tl.debug_barrier()  # the scratch is read back by other threads of this program

    # Passes 1-3: the bits of the num_zero-th smallest p of the whole map (-1: none zeroed).
    threshold = -1
    if num_zero > 0:
        prefix = 0          # the threshold's bits found so far
        rank = num_zero     # the rank of the threshold among the entries sharing that prefix
        for r in tl.static_range(3):
            shift = (2 - r) * RADIX_BITS  # this pass reads bits shift + RADIX_BITS - 1 .. shift
            hist = tl.zeros([BINS], dtype=tl.int32)
            for start_m in range(0, n, BLOCK_M):
                offs_m = start_m + tl.arange(0, BLOCK_M)
                row_ok = offs_m < n
                q = tl.load(q_base + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d,
                            mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                lse = tl.load(LSE + rows + offs_m, mask=row_ok, other=0.0)
                for start_n in range(0, n, BLOCK_N):
                    kt, log_size, offs_n, key_ok = _load_keys(k_base, sk_n, sk_d, size_base, ss_n, start_n, n,
                                                              offs_d, d_ok, BLOCK_N, HAS_SIZE)
                    p = _probabilities(q, kt, log_size, key_ok, lse, scale, HAS_SIZE, DOT)
                    bits = p.to(tl.int32, bitcast=True)
                    counted = (row_ok[:, None] & key_ok[None, :]) & ((bits >> (shift + RADIX_BITS)) == prefix)
                    digit = (bits >> shift) & (BINS - 1)
                    hist += tl.histogram(tl.reshape(digit, [BLOCK_M * BLOCK_N]), BINS,
                                         mask=tl.reshape(counted, [BLOCK_M * BLOCK_N]))
            # The bucket holding the rank-th entry: the first whose cumulative count reaches rank.
            bucket = tl.sum((tl.cumsum(hist, 0) < rank).to(tl.int32), 0)
            rank -= tl.sum(tl.where(tl.arange(0, BINS) < bucket, hist, 0), 0)
            prefix = (prefix << RADIX_BITS) | bucket
        threshold = prefix

    # Pass 4: zero, then A @ V and what the selection and the trace read.
    for start_m in range(0, n, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < n
        q = tl.load(q_base + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        lse = tl.load(LSE + rows + offs_m, mask=row_ok, other=0.0)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        diagonal = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start_n in range(0, n, BLOCK_N):
            kt, log_size, offs_n, key_ok = _load_keys(k_base, sk_n, sk_d, size_base, ss_n, start_n, n,
                                                      offs_d, d_ok, BLOCK_N, HAS_SIZE)
            p = _probabilities(q, kt, log_size, key_ok, lse, scale, HAS_SIZE, DOT)
            inside = row_ok[:, None] & key_ok[None, :]
            entries = maps + offs_m[:, None] * n + offs_n[None, :]
            if KEEP_MAPS:
                tl.store(DENSE + entries, p, mask=inside)
            p = tl.where(inside & (p.to(tl.int32, bitcast=True) > threshold), p, 0.0)
            if KEEP_MAPS:
                tl.store(SPARSE + entries, p, mask=inside)
            v = tl.load(v_base + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d,
                        mask=key_ok[:, None] & d_ok[None, :], other=0.0)
            acc = _dot(p.to(v.dtype), v, acc, DOT)
            if STATISTICS:
                diagonal += tl.sum(tl.where(offs_m[:, None] == offs_n[None, :], p, 0.0), 1)
                # This program alone owns its column sums: added query tile after query tile,
                # in a fixed order, so they are deterministic.
                sums = tl.load(COLSUM + rows + offs_n, mask=key_ok & (start_m > 0), other=0.0)
                tl.store(COLSUM + rows + offs_n, sums + tl.sum(p, 0), mask=key_ok)
            if CLS_ROW:
                tl.store(CLS + rows + offs_n, tl.sum(tl.where(offs_m[:, None] == 0, p, 0.0), 0),
                         mask=key_ok & (start_m == 0))
        tl.store(out_base + offs_m[:, None] * so_n + offs_d[None, :] * so_d, acc.to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
        if STATISTICS:
            tl.store(DIAG + rows + offs_m, diagonal, mask=row_ok)
            tl.debug_barrier()  # the column sums stored here are read back for the next query tile


def _blocks(device: torch.device, dtype: torch.dtype, d: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps). tl.dot needs every side >= 16.

    Small tiles under the interpreter keep the CPU tests fast and give small maps
    several ragged tiles. On a GPU, chosen by compiling for sm_90 and reading ptxas's
    spill counts (not timed): 8 warps, 64 x 64 tiles for half inputs; float32's exact
    (FMA) products need narrower key tiles to stay in registers.
    """
    block_d = max(16, triton.next_power_of_2(d))
    if device.type != "cuda":
        return 16, 16, block_d, 4
    return 64, (32 if dtype == torch.float32 else 64), block_d, 8


def _dot_kind(dtype: torch.dtype) -> str:
    """The `_dot` variant for inputs of this dtype."""
    if dtype == torch.float32:
        return "ieee"
    return "upcast" if dtype == torch.bfloat16 and triton_support.interpreting() else "native"


def plan(q: Tensor, k: Tensor, v: Tensor, size: Optional[Tensor], scale: float, num_zero: int,
         statistics: bool, cls_row: bool, keep_maps: bool) -> tuple[tuple[Tensor, ...], list[triton_support.Launch]]:
    """The outputs (allocated, not written) and the one launch that writes them: see `launch`."""
    B, H, n, d = q.shape
    out = v.new_empty(B, n, H, d).transpose(1, 2)
    f32 = dict(dtype=torch.float32, device=q.device)
    lse = torch.empty(B, H, n, **f32)
    diagonal = torch.empty(B, H, n if statistics else 0, **f32)
    column_sums = torch.empty(B, H, n if statistics else 0, **f32)
    cls = torch.empty(B, H, n if cls_row else 0, **f32)
    dense = torch.empty(B, H, *((n, n) if keep_maps else (0, 0)), **f32)
    sparse = torch.empty_like(dense)
    block_m, block_n, block_d, num_warps = _blocks(q.device, q.dtype, d)
    size_arg, size_strides = (size, size.stride()) if size is not None else (lse, (0, 0))
    values = (q, k, v, size_arg, out, lse, diagonal, column_sums, cls, dense, sparse,
              *q.stride(), *k.stride(), *v.stride(), *size_strides, *out.stride(), H, n, d, float(scale), int(num_zero),
              size is not None, statistics, cls_row, keep_maps, _dot_kind(q.dtype),
              block_m, block_n, block_d, _BINS, _RADIX_BITS)
    args = dict(zip(_gtp_attention_kernel.arg_names, values))
    launch_ = triton_support.Launch(_gtp_attention_kernel, (B * H,), args, num_warps, 2,
                                    dict(enable_fp_fusion=False))  # no fused multiply-adds: p has the same bits in every pass
    return (out, diagonal, column_sums, cls, dense, sparse), [launch_]


def launch(q: Tensor, k: Tensor, v: Tensor, size: Optional[Tensor], scale: float, num_zero: int,
           statistics: bool, cls_row: bool, keep_maps: bool) -> tuple[Tensor, ...]:
    """Run the kernel: see `gtp.kernels.fused_attention.fused_attention` for the arguments.

    Returns (out [B, H, n, d] in v's dtype, a view of [B, n, H, d] memory; diagonal,
    column sums, CLS row [B, H, n] float32; dense map, sparse map [B, H, n, n] float32),
    the ones not asked for empty ([B, H, 0] and [B, H, 0, 0]).
    """
    outputs, launches = plan(q, k, v, size, scale, num_zero, statistics, cls_row, keep_maps)
    triton_support.execute(launches)
    return outputs
