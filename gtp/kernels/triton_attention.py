"""GTP attention in Triton kernels over row tiles: no n x n map is written to GPU memory.

`gtp.functional.attention` materialises each head's float32 map and walks it many
times. Here every kernel runs one program per (query row tile, image x head) (32 rows, or
128 where the grid fills the GPU: `attention_plan`), and each program holds one row tile's
logits on chip, tile of keys by tile of keys. Everything is in base 2: the logits are
scale log2(e) q.k + log2 s_j, the log-sum-exps log2 sum_j 2^logit, p = exp2(logit - lse)
(one MUFU.EX2 on a GPU, where exp costs five more instructions around it):

  `_lse_kernel`        the log-sum-exp of each query row, one pass over all keys (online
                       max; each row's sum reduced once, after the loop).
  `_radix_kernel` x 3  only when entries are zeroed (k > 0): a radix select of the k-th
                       smallest p of each head's whole map. Non-negative float32 values
                       sort as their bit patterns and p <= ~1 leaves bits 31 and 30 zero, so
                       three passes read bits 29..20, 19..10 and 9..0. Each pass counts the
                       entries that share the prefix found so far into a 1024-bin histogram
                       per head in global memory (integer atomic adds, one PTX `red` per entry
                       in the tile's own register layout: any order gives the same counts);
                       the next pass's programs each read the histograms and name the bucket
                       holding the k-th (a 1024-long cumulative sum). No mask per score: keys
                       past n have the bias -inf and rows past n the lse +inf, so p = 0 there,
                       and `_threshold` takes those padded entries off bin 0. Pass 0 counts
                       every entry (no branch), also stores the map's diagonal for the
                       statistics (the key tiles holding it in a loop of their own).
  `_attention_kernel`  p again, zeroed where its bits are <= the threshold's (ties too,
                       SPEC.md section 2), then out = p @ v and, on request, the diagonal, the
                       column sums (per row tile; `_sum_tiles_kernel` adds the tiles in order,
                       so they are deterministic), the CLS row, and both maps for a trace.

With theta = 1 (nothing zeroed) PyTorch's own fused attention gives the output and the
log-sum-exp (`fused_attention`, natural logs, converted per row), and `_attention_kernel`
without P @ V takes only what the selection reads.

Every kernel computes p with one helper (`_probabilities`) whose logit is an explicit
fused multiply-add, so no compiler contraction can give p other bits in another kernel,
and every pass of a call takes its logits from the same MMA instruction over d (the same
row tiles; `attention_plan`): the zeroed set is exactly `p <= kthvalue(p, k)` of the map
the kernel reports. Logits, softmax and sums run in float32 whatever the input dtype;
float32 inputs multiply exactly (no TF32), as PyTorch's float32 matmul does. No work is
duplicated across warpgroups.

Importing this module imports Triton: `gtp.kernels.fused_attention` does so lazily.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


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
                HAS_BIAS: tl.constexpr, CLEAR_HIST: tl.constexpr, DOT: tl.constexpr, SPREAD_SUM: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BINS: tl.constexpr):
    """The log-sum-exp in base 2 of each row of this program's row tile (and, from row tile 0, the head's
    histograms cleared for the radix passes). Online max; with SPREAD_SUM (half inputs) each row's sum stays
    spread over its tile (one FFMA per score) and is reduced once after the loop, not with shuffles every
    key tile (float32 inputs reduce per tile: the spread sum would need 130 registers at sm_120)."""
    head = tl.program_id(1).to(tl.int64)
    b, h = head // H, head % H
    q, offs_m, row_ok = _queries(Q, sq_b, sq_h, sq_n, sq_d, b, h, n, d, BLOCK_M, BLOCK_D)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    if SPREAD_SUM:
        sums = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)   # reduced once, after the loop
        for start_n in range(0, n, BLOCK_N):
            logits, _offs = _logits(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2,
                                    HAS_BIAS, True, DOT, BLOCK_N, BLOCK_D)
            new_max = tl.maximum(row_max, tl.max(logits, 1))
            sums = sums * tl.exp2(row_max - new_max)[:, None] + tl.exp2(logits - new_max[:, None])
            row_max = new_max
        row_sum = tl.sum(sums, 1)
    else:   # float32 inputs: their FMA products already hold many registers
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
                  PASS: tl.constexpr, TAKE_DIAGONAL: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
                  DOT: tl.constexpr, ASM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  BINS: tl.constexpr, RADIX_BITS: tl.constexpr):
    """Radix pass PASS: count this row tile's entries sharing the prefix, by their next RADIX_BITS bits
    (and with TAKE_DIAGONAL, store the map's diagonal before zeroing: `_attention_kernel` zeroes it).
    The key tiles holding the diagonal run in a loop of their own, so no other tile pays for it."""
    head = tl.program_id(1).to(tl.int64)
    b, h = head // H, head % H
    prefix, _rank = _threshold(HIST, head, num_zero, pad, PASS, BINS, RADIX_BITS)
    q, offs_m, row_ok = _queries(Q, sq_b, sq_h, sq_n, sq_d, b, h, n, d, BLOCK_M, BLOCK_D)
    lse = _row_lse(LSE, sl_b, sl_h, sl_n, b, h, offs_m, row_ok, True)
    hist = HIST + (head * PASS_COUNT + PASS) * BINS
    if TAKE_DIAGONAL and SPLIT:   # the key tiles holding the diagonal in a loop of their own: no other tile pays
        lo = tl.program_id(0) * BLOCK_M // BLOCK_N * BLOCK_N
        hi = tl.minimum((tl.program_id(0) * BLOCK_M + BLOCK_M + BLOCK_N - 1) // BLOCK_N,
                        (n + BLOCK_N - 1) // BLOCK_N) * BLOCK_N   # no key tile past the last key's
        for start_n in range(0, lo, BLOCK_N):
            _count(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2, lse, hist, prefix,
                   PASS, HAS_BIAS, DOT, BLOCK_N, BLOCK_D, BINS, RADIX_BITS, ASM)
        diagonal = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start_n in range(lo, hi, BLOCK_N):
            p, offs_n = _count(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2, lse, hist,
                               prefix, PASS, HAS_BIAS, DOT, BLOCK_N, BLOCK_D, BINS, RADIX_BITS, ASM)
            diagonal += tl.sum(tl.where(offs_m[:, None] == offs_n[None, :], p, 0.0), 1)
        tl.store(DIAG + head * n + offs_m, diagonal, mask=row_ok)
        for start_n in range(hi, n, BLOCK_N):
            _count(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2, lse, hist, prefix,
                   PASS, HAS_BIAS, DOT, BLOCK_N, BLOCK_D, BINS, RADIX_BITS, ASM)
    else:   # one loop (float32: three copies of its body would need 168 registers)
        diagonal = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start_n in range(0, n, BLOCK_N):
            p, offs_n = _count(q, K, sk_b, sk_h, sk_n, sk_d, BIAS, sb_b, sb_n, b, h, start_n, n, d, scale2, lse, hist,
                               prefix, PASS, HAS_BIAS, DOT, BLOCK_N, BLOCK_D, BINS, RADIX_BITS, ASM)
            if TAKE_DIAGONAL:
                if (start_n < tl.program_id(0) * BLOCK_M + BLOCK_M) & (start_n + BLOCK_N > tl.program_id(0) * BLOCK_M):
                    diagonal += tl.sum(tl.where(offs_m[:, None] == offs_n[None, :], p, 0.0), 1)
        if TAKE_DIAGONAL:
            tl.store(DIAG + head * n + offs_m, diagonal, mask=row_ok)


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
                if (start_n < tile * BLOCK_M + BLOCK_M) & (start_n + BLOCK_N > tile * BLOCK_M):  # holds diagonal entries
                    diagonal += tl.sum(tl.where(offs_m[:, None] == offs_n[None, :], p, 0.0), 1)
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


def dot_kind(dtype: torch.dtype, device: torch.device) -> str:
    """The `_dot` variant for inputs of this dtype on this device. Only CPU tensors are interpreted:
    a CUDA tensor (real or fake, as the cost model's) gets the GPU's variant even in a process
    that has the interpreter on, so the cost model compiles what a GPU runs."""
    if dtype == torch.float32:
        return "ieee"
    return "upcast" if dtype == torch.bfloat16 and device.type == "cpu" else "native"
