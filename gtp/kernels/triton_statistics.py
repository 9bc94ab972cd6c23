"""What GTP's selection reads when nothing is zeroed (theta = 1), in one Triton kernel over key tiles.

With theta = 1, PyTorch's fused attention gives the output and each row's log-sum-exp lse_i
(`fused_attention.attention_with_lse`). The selection reads two things of the map
p_ij = exp(scale q_i . k_j + b_j - lse_i) (b_j = log s_j, SPEC.md sections 2-3):

  the column sums  sum_i p_ij = exp(b_j) * sum_i exp2(c q_i . k_j - lse_i log2 e),  c = scale log2 e;
  the diagonal     p_jj = exp(scale q_j . k_j + b_j - lse_j): an O(d) dot per token.

`_column_kernel` runs one program per (tile of keys j, image x head). Its keys are the rows of
its tile, so a column sum is a row sum of the tile: it loops over the queries i, adds
exp2(c s + u_i) (u_i = -lse_i log2 e) into a register accumulator, and reduces it once at the end;
the key bias is a factor outside the sum. Per score that is one MMA share, one FMA, one exp2 and
one add: no row maximum, no comparison, no partial sums written and summed again. The full steps
of queries are loaded with no mask; only the last, partial one is masked (its missing queries get
u = -inf and add 0); rows past the last key re-read the last key (never stored), so the tile's
loads need no mask either. The diagonal is taken before the loop from the tile's own q and k rows
(not from the map: no select per score).

Modelled (deit_base, bf16, batch 256, block 0, sm_90): a step is 86 instructions a warp (its 32
keys x 16 queries: per lane 16 exp2, 16 FMA, 16 adds; 8 for the wgmma; the rest the step's loads
and the loop), 5.4 a score per lane (a mask on every step, 32 queries a step: 213 for twice the
scores, 6.7). Its code alone would take 50 us; it takes 53.9 us, the time to read q and k once
from DRAM (0.52x SDPA, which reads q, k, v and writes its output once): a second pass over q and k
cannot take less.

Importing this module imports Triton: `gtp.kernels.fused_attention` does so lazily.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_attention import _dot, dot_kind
from .triton_support import Launch

LOG2E = 1.4426950408889634


@triton.jit
def _step(acc, keys, Qh, Lh, offs_i, offs_d, sq_n, sq_d, sl_n, n, d_ok, c, DOT: tl.constexpr,
          MASKED: tl.constexpr):
    """acc + exp2(c k_j . q_i + u_i) for one step of queries i (u_i = -lse_i log2 e; Qh, Lh: the
    head's first query and lse). Only the last, partial step is MASKED: its missing queries get
    u = -inf, so they add exp2(-inf) = 0. (The pointers are made here, from the offsets: a tile
    of pointers kept across the loop holds 2 registers per element.)"""
    q_ptrs = Qh + offs_i[None, :] * sq_n + offs_d[:, None] * sq_d
    l_ptrs = Lh + offs_i * sl_n
    if MASKED:
        query_ok = offs_i < n
        queries = tl.load(q_ptrs, mask=query_ok[None, :] & d_ok[:, None], other=0.0)
        u = tl.load(l_ptrs, mask=query_ok, other=float("inf")) * -1.4426950408889634
    else:
        queries = tl.load(q_ptrs, mask=d_ok[:, None], other=0.0)
        u = tl.load(l_ptrs) * -1.4426950408889634
    s = _dot(keys, queries, tl.zeros(acc.shape, dtype=tl.float32), DOT)
    return acc + tl.exp2(tl.fma(s, c, u[None, :]))


@triton.jit
def _column_kernel(Q, K, BIAS, LSE, DIAG, COLSUM,
                   sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d, sb_b, sb_n, sl_b, sl_h, sl_n,
                   H, n, d, scale,
                   HAS_BIAS: tl.constexpr, DOT: tl.constexpr, EVEN_D: tl.constexpr, SPLIT: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """DIAG[head, j] = p_jj and COLSUM[head, j] = sum_i p_ij for the keys j of this program's tile."""
    head = tl.program_id(1).to(tl.int64)
    b, h = head // H, head % H
    offs_j = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    key_ok = offs_j < n
    # rows past the last key read the last key again (what they compute is never stored), so the
    # loads of the tile need no mask per element
    rows = tl.minimum(offs_j, n - 1)
    d_ok = offs_d < d
    if EVEN_D:  # every lane of a row is in range: no mask per element, so the loads vectorise
        d_ok = offs_d < BLOCK_D
    keys = tl.load(K + b * sk_b + h * sk_h + rows[:, None] * sk_n + offs_d[None, :] * sk_d, mask=d_ok[None, :],
                   other=0.0)
    bias = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + b * sb_b + rows * sb_n).to(tl.float32)
    lse_base = LSE + b * sl_b + h * sl_h
    # the diagonal: the same tile's query rows, one float32 dot per row
    own = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_n + offs_d[None, :] * sq_d, mask=d_ok[None, :],
                  other=0.0)
    own_dot = tl.sum(own.to(tl.float32) * keys.to(tl.float32), 1)
    diagonal = tl.exp(own_dot * scale + bias - tl.load(lse_base + rows * sl_n))
    # the column sums: a row sum of exp2(c k_j . q_i + u_i) over the queries i, the full steps
    # first (no mask), then the partial one
    c = scale * 1.4426950408889634
    offs_i = tl.arange(0, BLOCK_N)
    Qh = Q + b * sq_b + h * sq_h
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    full = n - n % BLOCK_N
    if not SPLIT:  # float32 on a GPU: every step masked, one dot in the code (two: 255 registers, spills)
        full = 0
    for start in range(0, full, BLOCK_N):
        acc = _step(acc, keys, Qh, lse_base, start + offs_i, offs_d, sq_n, sq_d, sl_n, n, d_ok, c, DOT, False)
    for start in range(full, n, BLOCK_N):
        acc = _step(acc, keys, Qh, lse_base, start + offs_i, offs_d, sq_n, sq_d, sl_n, n, d_ok, c, DOT, True)
    column_sums = tl.sum(acc, 1) * tl.exp(bias)
    tl.store(DIAG + head * n + offs_j, diagonal, mask=key_ok)
    tl.store(COLSUM + head * n + offs_j, column_sums, mask=key_ok)


def blocks(device: torch.device, dtype: torch.dtype, d: int, programs: int
           ) -> tuple[int, int, int, int, int]:
    """(BLOCK_M keys per program, BLOCK_N queries per step, BLOCK_D, num_warps, num_stages);
    `programs`: images x heads x 128-key tiles.

    On a GPU, chosen by compiling the variants for sm_90 and sm_120 and costing them with
    `gtp.measure` (modelled, not timed; deit_base, bf16): for half inputs 128 keys per program
    read each query tile once for 128 keys (64 keys: 1.3x its code's time at batch 256), 16
    queries per step pad a 197-token map to 256 x 208 (32: 256 x 224, and 128 registers at
    sm_120, the limit), one stage (two: 1.2x the time at sm_90, the copies into shared memory waited on
    anyway); 4 warps, within 128 registers at sm_90 and sm_120. Where twice the programs of 128-key
    tiles still leave an H100's SMs one each, 64 keys halve a program's work (batch 1: 0.7 us
    against 1.1, batch 2 likewise; batch 4, 96 programs: 1.4 us against 1.1, so 128 there).
    float32 (exact FMA products) spills at 64 keys: 32 x 32, every step masked (`SPLIT`). Under the interpreter 32 x 32 (a
    50-token map spans two ragged tiles).
    """
    block_d = max(16, triton.next_power_of_2(d))
    if device.type != "cuda" or dtype == torch.float32:
        return 32, 32, block_d, 4, (2 if device.type == "cuda" else 1)
    return (64 if 2 * programs <= 132 else 128), 16, block_d, 4, 1  # 132: the H100's SMs


def statistics_launches(q: Tensor, k: Tensor, bias: Optional[Tensor], lse: Tensor, scale: float
                        ) -> tuple[list[Launch], tuple[Tensor, Tensor]]:
    """The launch taking the diagonal and the column sums of softmax(scale q k^T + bias_j) given each
    row's lse, and the tensors it writes.

    q, k: [B, H, n, d], any strides; bias: [B, n] (log s_j, any float dtype) or None;
    lse: [B, H, >= n] float32 (row i at [..., i]). Returns ([launch], (diagonal, column
    sums) [B, H, n] float32)."""
    B, H, n, d = q.shape
    block_m, block_n, block_d, num_warps, num_stages = blocks(q.device, q.dtype, d, B * H * triton.cdiv(n, 128))
    f32 = dict(dtype=torch.float32, device=q.device)
    diagonal, column_sums = torch.empty(B, H, n, **f32), torch.empty(B, H, n, **f32)
    args = dict(Q=q, K=k, BIAS=bias if bias is not None else lse, LSE=lse, DIAG=diagonal, COLSUM=column_sums,
                **{f"sq_{a}": s for a, s in zip("bhnd", q.stride())},
                **{f"sk_{a}": s for a, s in zip("bhnd", k.stride())},
                **{f"sb_{a}": s for a, s in zip("bn", bias.stride() if bias is not None else (0, 0))},
                **{f"sl_{a}": s for a, s in zip("bhn", lse.stride())},
                H=H, n=n, d=d, scale=float(scale), HAS_BIAS=bias is not None, DOT=dot_kind(q.dtype, q.device),
                EVEN_D=d == block_d, SPLIT=q.dtype != torch.float32 or q.device.type != "cuda",
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    launch = Launch(_column_kernel, (triton.cdiv(n, block_m), B * H), args, num_warps, num_stages)
    return [launch], (diagonal, column_sums)
