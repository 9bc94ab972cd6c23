"""GTP attention in Triton kernels over row tiles: no n x n map is written to GPU memory.

`gtp.functional.attention` materialises each head's float32 map and walks it many
times. Here every kernel runs one program per (query row tile, image x head), so a
batch-1 forward of deit_base has 48 programs per launch (4 row tiles x 12 heads), and
each program holds one row tile's logits on chip, tile of keys by tile of keys:

  `_lse_kernel`        the log-sum-exp of each query row, one pass over all keys (online
                       max and sum): from then on p = exp(logit - lse) is the softmax entry.
  `_radix_kernel` x 3  only when entries are zeroed (k > 0): a radix select of the k-th
                       smallest p of each head's whole map. Non-negative float32 values
                       sort as their bit patterns and p <= ~1 leaves bits 31 and 30 zero, so
                       three passes read bits 29..20, 19..10 and 9..0. Each pass counts the
                       entries that share the prefix found so far into a 1024-bin histogram
                       per head in global memory (integer atomic adds: any order gives the
                       same counts); the next pass's programs each read the histograms and
                       name the bucket holding the k-th (a 1024-long cumulative sum).
                       After pass 0, few entries share the prefix: most atomics are masked off.
                       Pass 0 also stores the map's diagonal for the statistics.
  `_attention_kernel`  p again, zeroed where its bits are <= the threshold's (ties too,
                       SPEC.md section 2), then out = p @ v and, on request, the diagonal, the
                       column sums (per row tile; `_sum_tiles_kernel` adds the tiles in order,
                       so they are deterministic), the CLS row, and both maps for a trace.

With theta = 1 (nothing zeroed) PyTorch's own fused attention gives the output and the
log-sum-exp (`fused_attention`), and `_attention_kernel` without P @ V takes only what
the selection reads.

Every kernel computes p with one helper (`_probabilities`) whose logit is an explicit
fused multiply-add, so no compiler contraction can give p other bits in another kernel:
the zeroed set is exactly `p <= kthvalue(p, k)` of the map the kernel reports. Logits,
softmax and sums run in float32 whatever the input dtype; float32 inputs multiply
exactly (no TF32), as PyTorch's float32 matmul does. One warpgroup (4 warps) per program:
no work is duplicated across warpgroups.

Importing this module imports Triton: `gtp.kernels.fused_attention` does so lazily.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import triton_support
from .triton_support import Launch

RADIX_BITS = 10    # bits per radix pass
BINS = 1024        # 2 ** RADIX_BITS
PASSES = 3         # radix passes: bits 29..0
PASS_COUNT: tl.constexpr = tl.constexpr(PASSES)   # the same, as the kernels read it
LOG2E = 1.4426950408889634   # log2(e): logits and log-sum-exps in base 2, so p = exp2(.) is one MUFU.EX2


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
def _queries(Q, sq_b, sq_h, sq_n, sq_d, b, h, n, d, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's query row tile: (q [BLOCK_M, BLOCK_D] (rows past n: zeros), row index, row in range)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < n
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d,
                mask=row_ok[:, None] & (offs_d < d)[None, :], other=0.0)
    return q, offs_m, row_ok


@triton.jit
def _row_lse(LSE, sl_b, sl_h, sl_n, b, h, offs_m, row_ok, LSE_LOG2: tl.constexpr):
    """The rows' log-sum-exps in base 2 [BLOCK_M], +inf past the last row: there p = exp2(-inf) = 0, with no
    mask per score (LSE_LOG2: stored in base 2 by `_lse_kernel`; else natural, from PyTorch's attention)."""
    lse = tl.load(LSE + b * sl_b + h * sl_h + offs_m * sl_n, mask=row_ok, other=float("inf"))
    if not LSE_LOG2:
        lse = lse * 1.4426950408889634
    return lse


@triton.jit
def _logits(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2,
            HAS_BIAS: tl.constexpr, BIAS_LOG2: tl.constexpr, DOT: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_D: tl.constexpr):
    """Key tile start_n: (the logits in base 2, scale2 q k^T + log2 s_j [BLOCK_M, BLOCK_N] float32, key index).
    Keys past n get the bias -inf (a vector of BLOCK_N, not a select per score): logit -inf, p = 0."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    key_ok = offs_n < n
    kt = tl.load(K + b * sk_b + h * sk_h + offs_n[None, :] * sk_n + offs_d[:, None] * sk_d,
                 mask=key_ok[None, :] & (offs_d < d)[:, None], other=0.0)
    bias = tl.where(key_ok, 0.0, float("-inf"))
    if HAS_BIAS:
        bias = tl.load(BIAS + b * sb_b + offs_n * sb_n, mask=key_ok, other=float("-inf")).to(tl.float32)
        if not BIAS_LOG2:   # log s_j in the input dtype, as PyTorch's attention took it (theta = 1)
            bias = bias * 1.4426950408889634
    qk = _dot(q, kt, tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), DOT)
    return tl.fma(qk, scale2, bias[None, :]), offs_n


@triton.jit
def _probabilities(logits, lse):
    """The softmax entries exp2(logit - lse) of a tile (base 2): the one definition every kernel uses."""
    return tl.exp2(logits - lse[:, None])


@triton.jit
def _threshold(HIST, head, num_zero, pad, PASS: tl.constexpr, BINS: tl.constexpr, RADIX_BITS: tl.constexpr):
    """From the histograms of passes 0..PASS-1: (the threshold's bits found so far, the rank of the
    num_zero-th smallest entry among the entries sharing them). The passes also counted the `pad`
    entries of the padded tiles (p = 0: bin 0 while the prefix is 0); they are taken off here."""
    prefix = 0
    rank = num_zero
    bins = tl.arange(0, BINS)
    for r in tl.static_range(PASS):
        hist = tl.load(HIST + (head * PASS_COUNT + r) * BINS + bins)
        hist -= tl.where((bins == 0) & (prefix == 0), pad, 0)
        bucket = tl.sum((tl.cumsum(hist, 0) < rank).to(tl.int32), 0)   # the first bin reaching rank
        rank -= tl.sum(tl.where(bins < bucket, hist, 0), 0)
        prefix = (prefix << RADIX_BITS) | bucket
    return prefix, rank


@triton.jit
def _lse_kernel(Q, K, BIAS, LSE, HIST,
                sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d, sb_b, sb_n, sl_b, sl_h, sl_n,
                H, n, d, scale2,
                HAS_BIAS: tl.constexpr, CLEAR_HIST: tl.constexpr, DOT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BINS: tl.constexpr):
    """The log-sum-exp in base 2 of each row of this program's row tile (and, from row tile 0, the head's
    histograms cleared for the radix passes). Online max and sum; no mask per score (padded keys: -inf)."""
    head = tl.program_id(1).to(tl.int64)
    b, h = head // H, head % H
    q, offs_m, row_ok = _queries(Q, sq_b, sq_h, sq_n, sq_d, b, h, n, d, BLOCK_M, BLOCK_D)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, n, BLOCK_N):
        logits, _offs = _logits(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2,
                                HAS_BIAS, True, DOT, BLOCK_N, BLOCK_D)
        new_max = tl.maximum(row_max, tl.max(logits, 1))
        row_sum = row_sum * tl.exp2(row_max - new_max) + tl.sum(tl.exp2(logits - new_max[:, None]), 1)
        row_max = new_max
    tl.store(LSE + b * sl_b + h * sl_h + offs_m * sl_n, row_max + tl.log2(row_sum), mask=row_ok)
    if CLEAR_HIST:
        if tl.program_id(0) == 0:
            for r in tl.static_range(PASS_COUNT):
                tl.store(HIST + (head * PASS_COUNT + r) * BINS + tl.arange(0, BINS),
                         tl.zeros([BINS], dtype=tl.int32))


@triton.jit
def _count(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2, lse, hist, prefix,
           PASS: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_D: tl.constexpr, BINS: tl.constexpr, RADIX_BITS: tl.constexpr, ASM: tl.constexpr):
    """One key tile of a radix pass: its entries sharing the prefix counted by their next RADIX_BITS bits.
    Returns (p [BLOCK_M, BLOCK_N], key index)."""
    shift: tl.constexpr = (PASS_COUNT - 1 - PASS) * RADIX_BITS   # this pass reads bits shift + RADIX_BITS - 1 .. shift
    logits, offs_n = _logits(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2,
                             HAS_BIAS, True, DOT, BLOCK_N, BLOCK_D)
    p = _probabilities(logits, lse)
    bits = p.to(tl.int32, bitcast=True)
    digit = hist + ((bits >> shift) & (BINS - 1))
    # pass 0: every entry counts (padding too: `_threshold` takes it off), so no mask and no branch
    _add_one(digit, bits >> (shift + RADIX_BITS), prefix, PASS > 0, ASM)
    return p, offs_n


@triton.jit
def _add_one(address, key, wanted, MASKED: tl.constexpr, ASM: tl.constexpr):
    """HIST[address] += 1 where key == wanted (MASKED; else everywhere), as relaxed integer atomics (any
    order gives the same counts). ASM (on a GPU): one `red` per entry in the tile's own register layout;
    `tl.atomic_add` would first move the addresses and masks to another layout through shared memory
    (24 stores and loads per warp and key tile on sm_90, read from the SASS: most of a pass's traffic)."""
    if ASM:
        if MASKED:
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.eq.s32 p, $2, $3; @p red.relaxed.gpu.global.add.u32 [$1], 1; mov.u32 $0, 0; }",
                "=r,l,r,r", [address, key, wanted + tl.zeros_like(key)], dtype=tl.int32, is_pure=False, pack=1)
        else:
            tl.inline_asm_elementwise("red.relaxed.gpu.global.add.u32 [$1], 1; mov.u32 $0, 0;", "=r,l", [address],
                                      dtype=tl.int32, is_pure=False, pack=1)
    elif MASKED:
        tl.atomic_add(address, 1, mask=key == wanted, sem="relaxed")
    else:
        tl.atomic_add(address, 1, sem="relaxed")


@triton.jit
def _radix_kernel(Q, K, BIAS, LSE, HIST, DIAG,
                  sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d, sb_b, sb_n, sl_b, sl_h, sl_n,
                  H, n, d, scale2, num_zero, pad,
                  PASS: tl.constexpr, TAKE_DIAGONAL: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
                  ASM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  BINS: tl.constexpr, RADIX_BITS: tl.constexpr):
    """Radix pass PASS: count this row tile's entries sharing the prefix, by their next RADIX_BITS bits
    (and with TAKE_DIAGONAL, store the map's diagonal before zeroing: `_attention_kernel` zeroes it).
    The key tile holding the diagonal is taken out of the loop, so no other tile pays for it."""
    head = tl.program_id(1).to(tl.int64)
    b, h = head // H, head % H
    prefix, _rank = _threshold(HIST, head, num_zero, pad, PASS, BINS, RADIX_BITS)
    q, offs_m, row_ok = _queries(Q, sq_b, sq_h, sq_n, sq_d, b, h, n, d, BLOCK_M, BLOCK_D)
    lse = _row_lse(LSE, sl_b, sl_h, sl_n, b, h, offs_m, row_ok, True)
    hist = HIST + (head * PASS_COUNT + PASS) * BINS
    if TAKE_DIAGONAL:
        own = tl.program_id(0) * BLOCK_M // BLOCK_N * BLOCK_N   # the key tile holding the diagonal
        for start_n in range(0, own, BLOCK_N):
            _count(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2, lse, hist, prefix,
                   PASS, HAS_BIAS, DOT, BLOCK_N, BLOCK_D, BINS, RADIX_BITS, ASM)
        p, offs_n = _count(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, own, n, d, scale2, lse, hist,
                           prefix, PASS, HAS_BIAS, DOT, BLOCK_N, BLOCK_D, BINS, RADIX_BITS, ASM)
        tl.store(DIAG + head * n + offs_m, tl.sum(tl.where(offs_m[:, None] == offs_n[None, :], p, 0.0), 1),
                 mask=row_ok)
        for start_n in range(own + BLOCK_N, n, BLOCK_N):
            _count(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2, lse, hist, prefix,
                   PASS, HAS_BIAS, DOT, BLOCK_N, BLOCK_D, BINS, RADIX_BITS, ASM)
    else:
        for start_n in range(0, n, BLOCK_N):
            _count(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2, lse, hist, prefix,
                   PASS, HAS_BIAS, DOT, BLOCK_N, BLOCK_D, BINS, RADIX_BITS, ASM)


@triton.jit
def _attention_kernel(Q, K, V, BIAS, LSE, HIST, OUT, DIAG, COLSUM, CLS, MAPS,
                      sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d, sb_b, sb_n, sl_b, sl_h, sl_n,
                      sv_b, sv_h, sv_n, sv_d, so_b, so_h, so_n, so_d,
                      H, n, d, scale2, num_zero, pad, num_tiles, map_size,
                      HAS_BIAS: tl.constexpr, BIAS_LOG2: tl.constexpr, LSE_LOG2: tl.constexpr,
                      ZEROING: tl.constexpr, OUTPUT: tl.constexpr,
                      STATISTICS: tl.constexpr, CLS_ROW: tl.constexpr, KEEP_MAPS: tl.constexpr,
                      DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      BINS: tl.constexpr, RADIX_BITS: tl.constexpr):
    """p zeroed at the threshold, then out = p @ v and what the selection and the trace read."""
    tile, head = tl.program_id(0), tl.program_id(1).to(tl.int64)
    b, h = head // H, head % H
    threshold = -1   # bits of the num_zero-th smallest p; -1: nothing zeroed
    if ZEROING:
        threshold, _rank = _threshold(HIST, head, num_zero, pad, PASS_COUNT, BINS, RADIX_BITS)
    q, offs_m, row_ok = _queries(Q, sq_b, sq_h, sq_n, sq_d, b, h, n, d, BLOCK_M, BLOCK_D)
    lse = _row_lse(LSE, sl_b, sl_h, sl_n, b, h, offs_m, row_ok, LSE_LOG2)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < d
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    diagonal = tl.zeros([BLOCK_M], dtype=tl.float32)
    maps = MAPS + head * n * n   # the dense map; the sparse one map_size entries further on
    for start_n in range(0, n, BLOCK_N):
        logits, offs_n = _logits(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2,
                                 HAS_BIAS, BIAS_LOG2, DOT, BLOCK_N, BLOCK_D)
        key_ok = offs_n < n
        p = _probabilities(logits, lse)   # 0 past the last row and key: no mask per score
        if KEEP_MAPS:
            inside = row_ok[:, None] & key_ok[None, :]
            entries = maps + offs_m[:, None] * n + offs_n[None, :]
            tl.store(entries, p, mask=inside)
        if ZEROING:
            p = tl.where(p.to(tl.int32, bitcast=True) > threshold, p, 0.0)
        if KEEP_MAPS:
            tl.store(entries + map_size, p, mask=inside)
        if OUTPUT:
            v = tl.load(V + b * sv_b + h * sv_h + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d,
                        mask=key_ok[:, None] & d_ok[None, :], other=0.0)
            acc = _dot(p.to(V.dtype.element_ty), v, acc, DOT)
        if STATISTICS:
            if not ZEROING:
                if start_n == tile * BLOCK_M // BLOCK_N * BLOCK_N:  # the key tile holding the diagonal
                    diagonal = tl.sum(tl.where(offs_m[:, None] == offs_n[None, :], p, 0.0), 1)
            # this row tile's share of the column sums: `_sum_tiles_kernel` adds the tiles in order
            tl.store(COLSUM + (head * num_tiles + tile) * n + offs_n, tl.sum(p, 0), mask=key_ok)
        if CLS_ROW:
            if tile == 0:
                tl.store(CLS + head * n + offs_n, tl.sum(tl.where(offs_m[:, None] == 0, p, 0.0), 0), mask=key_ok)
    if OUTPUT:
        tl.store(OUT + b * so_b + h * so_h + offs_m[:, None] * so_n + offs_d[None, :] * so_d,
                 acc.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    if STATISTICS:
        if ZEROING:  # the diagonal radix pass 0 stored (in registers here, it would cost ~30 more): zeroed
            diagonal = tl.load(DIAG + head * n + offs_m, mask=row_ok, other=0.0)
            diagonal = tl.where(diagonal.to(tl.int32, bitcast=True) > threshold, diagonal, 0.0)
        tl.store(DIAG + head * n + offs_m, diagonal, mask=row_ok)


@triton.jit
def _sum_tiles_kernel(PARTS, SUMS, n, num_tiles, BLOCK: tl.constexpr):
    """SUMS[head, j] = sum over row tiles t, in order, of PARTS[head, t, j]."""
    head = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(0, num_tiles):
        total += tl.load(PARTS + (head * num_tiles + t) * n + cols, mask=ok, other=0.0)
    tl.store(SUMS + head * n + cols, total, mask=ok)


# ------------------------------------------------------------------------------------ plans
def blocks(device: torch.device, dtype: torch.dtype, d: int, keep_maps: bool = False
           ) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages). tl.dot needs every side >= 16.

    Under the interpreter, whose cost is per operation, 32 x 32 tiles keep the CPU tests fast
    (a test model's 17-token map is one tile; 50 and 260 tokens span several ragged ones). On a GPU, chosen by compiling every variant for sm_90 and sm_120 and reading
    the registers ptxas gave it (`scripts/kernel_resources.py`; not timed): 4 warps on 32-row
    tiles, 64 keys per step for half inputs and 32 for float32 (exact FMA products), keep each
    thread's share of a tile at 16 values and so the kernels within 128 registers without
    spills; more row tiles also mean more programs (7 per head at 197 tokens). Two stages: the
    next key tile loads while this one is used, within sm_120's 99 KB of shared memory per
    block (but see `_stages`).
    A traced forward (`keep_maps`, one photo) stores both maps too: 16-row tiles. The row tiling
    changes no bit of p: each logit is the same sequence of 16-row MMA instructions over d.
    """
    block_d = max(16, triton.next_power_of_2(d))
    if device.type != "cuda":
        return 32, 32, block_d, 4, 1
    return (16 if keep_maps else 32), (32 if dtype == torch.float32 else 64), block_d, 4, 2


def _sweep(device: torch.device, dtype: torch.dtype, keep_maps: bool, programs: int, block_n: int,
           num_warps: int) -> tuple[int, int]:
    """(BLOCK_N, num_warps) of the log-sum-exp and radix passes. For untraced half inputs on a GPU with
    programs to fill every SM several times over (>= 2048: an H100 has 132, an RTX Pro 6000 188), 32 keys
    per step and 2 warps: more blocks per SM, within 128 registers at sm_90 and sm_120 (the final pass
    at 2 warps would save a fifth of its modelled time but needs 134 registers at sm_120). With fewer
    programs (batch 1) 2 warps would leave issue slots idle: as the final pass.
    Every pass keeps the final pass's 32-row tiles: the same 16-row MMA instructions over d give each
    logit, so p has the same bits in every pass (what the threshold is compared with)."""
    if device.type == "cuda" and dtype != torch.float32 and not keep_maps and programs >= 2048:
        return 32, 2
    return block_n, num_warps


def _stages(kernel: str, dtype: torch.dtype, output: bool, statistics: bool, keep_maps: bool, stages: int) -> int:
    """One stage for the variants where a second one costs registers (read from ptxas for sm_90
    and sm_120 by `scripts/kernel_resources.py`, not timed): the float32 log-sum-exp pass (its
    FMA products hold their operands in registers), the float32 CLS-row pass without an output,
    and the traced zeroing pass with an output for half inputs (two map stores per tile)."""
    half = dtype != torch.float32
    if kernel == "lse" and not half:
        return 1
    if kernel == "attention" and ((half and output and keep_maps) or
                                  (not half and not output and not statistics and not keep_maps)):
        return 1
    return stages


def dot_kind(dtype: torch.dtype, device: torch.device) -> str:
    """The `_dot` variant for inputs of this dtype on this device. Only CPU tensors are interpreted:
    a CUDA tensor (real or fake, as the cost model's) gets the GPU's variant even in a process
    that has the interpreter on, so the cost model compiles what a GPU runs."""
    if dtype == torch.float32:
        return "ieee"
    return "upcast" if dtype == torch.bfloat16 and device.type == "cpu" else "native"


def attention_launches(q: Tensor, k: Tensor, v: Optional[Tensor], bias: Optional[Tensor], scale: float,
                       num_zero: int, statistics: bool, cls_row: bool, keep_maps: bool,
                       lse: Optional[Tensor] = None) -> tuple[list[Launch], tuple[Tensor, ...]]:
    """The launches of one attention call and the tensors they write (allocated here, filled by them).

    q, k, v: [B, H, n, d], any strides; bias: [B, n] log2 s_j float32 where lse is None
    (`_lse_kernel` computes it, in base 2), else log s_j as PyTorch's attention took it (None: no
    token scale); v None: no output (theta = 1: `lse` [B, H, >= n] comes from PyTorch's attention). Returns (launches, (out [B, H, n, d] in
    [B, n, H, d] memory, or None; diagonal, column sums, CLS row [B, H, n]; the dense and
    the sparse map [2, B, H, n, n] (one tensor: a kernel stores both from one address);
    the outputs not asked for empty)).
    """
    B, H, n, d = q.shape
    block_m, block_n, block_d, num_warps, num_stages = blocks(q.device, q.dtype, d, keep_maps)
    num_tiles = triton.cdiv(n, block_m)
    f32 = dict(dtype=torch.float32, device=q.device)
    zeroing = num_zero > 0
    computed_lse = lse is None   # then in base 2 by `_lse_kernel`, and the bias log2 s_j (else natural logs)
    if computed_lse:
        lse = torch.empty(B, H, n, **f32)
    hist = torch.empty(B * H * PASSES * BINS if zeroing else 1, dtype=torch.int32, device=q.device)
    out = v.new_empty(B, n, H, d).transpose(1, 2) if v is not None else None
    width, side = (n if statistics else 0), (n if keep_maps else 0)
    diagonal, column_sums = torch.empty(B, H, width, **f32), torch.empty(B, H, width, **f32)
    parts = torch.empty(B * H * num_tiles * width, **f32)
    cls = torch.empty(B, H, n if cls_row else 0, **f32)
    maps = torch.empty(2, B, H, side, side, **f32)   # the dense and the sparse map, one after the other
    common = dict(Q=q, K=k, BIAS=bias if bias is not None else lse, LSE=lse,
                  **{f"sq_{a}": s for a, s in zip("bhnd", q.stride())},
                  **{f"sk_{a}": s for a, s in zip("bhnd", k.stride())},
                  **{f"sb_{a}": s for a, s in zip("bn", bias.stride() if bias is not None else (0, 0))},
                  **{f"sl_{a}": s for a, s in zip("bhn", lse.stride())},
                  H=H, n=n, d=d, scale2=float(scale) * LOG2E, HAS_BIAS=bias is not None, DOT=dot_kind(q.dtype, q.device),
                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    grid = (num_tiles, B * H)
    launches = []
    sweep_n, sweep_warps = _sweep(q.device, q.dtype, keep_maps, num_tiles * B * H, block_n, num_warps)
    pad = num_tiles * block_m * triton.cdiv(n, sweep_n) * sweep_n - n * n   # padded entries the passes count
    if v is not None:
        launches.append(Launch(_lse_kernel, grid, dict(common, HIST=hist, CLEAR_HIST=zeroing, BINS=BINS, BLOCK_N=sweep_n),
                               sweep_warps, _stages("lse", q.dtype, True, statistics, keep_maps, num_stages)))
    for r in range(PASSES if zeroing else 0):
        launches.append(Launch(_radix_kernel, grid, dict(common, HIST=hist, DIAG=diagonal, num_zero=int(num_zero), pad=pad,
                                                         PASS=r, TAKE_DIAGONAL=statistics and r == 0, BINS=BINS,
                                                         ASM=q.device.type == "cuda",
                                                         RADIX_BITS=RADIX_BITS, BLOCK_N=sweep_n),
                               sweep_warps, num_stages))
    values, output = (v, out) if v is not None else (q, q)  # without an output, q stands in (never read)
    launches.append(Launch(_attention_kernel, grid, dict(
        common, V=values, HIST=hist, OUT=output, DIAG=diagonal, COLSUM=parts, CLS=cls, MAPS=maps, map_size=B * H * side * side,
        **{f"sv_{a}": s for a, s in zip("bhnd", values.stride())},
        **{f"so_{a}": s for a, s in zip("bhnd", output.stride())},
        num_zero=int(num_zero), pad=pad, num_tiles=num_tiles, ZEROING=zeroing,
        BIAS_LOG2=computed_lse, LSE_LOG2=computed_lse, OUTPUT=v is not None, STATISTICS=statistics,
        CLS_ROW=cls_row, KEEP_MAPS=keep_maps, BINS=BINS, RADIX_BITS=RADIX_BITS),
        num_warps, _stages("attention", q.dtype, v is not None, statistics, keep_maps, num_stages)))
    if statistics:
        sum_block = 128 if q.device.type == "cuda" else 32
        launches.append(Launch(_sum_tiles_kernel, (triton.cdiv(n, sum_block), B * H),
                               dict(PARTS=parts, SUMS=column_sums, n=n, num_tiles=num_tiles, BLOCK=sum_block), 4, 1))
    return launches, (out, diagonal, column_sums, cls, maps)
