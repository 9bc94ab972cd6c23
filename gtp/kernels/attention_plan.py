"""The launch plans of `triton_attention`'s kernels: tile sizes, warps and stages per call, and the launches.

`attention_launches` is what `gtp.kernels.fused_attention` runs (and publishes as the op's plan, which
the cost model compiles). Importing this module imports Triton.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
from torch import Tensor

from .triton_attention import (BINS, LOG2E, PASSES, RADIX_BITS, _attention_kernel, _lse_kernel, _radix_kernel,
                               _sum_tiles_kernel, dot_kind)
from .triton_support import Launch


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
    """(BLOCK_N, num_warps) of the log-sum-exp and radix passes (where `_wide` does not apply). For
    untraced half inputs on a GPU with programs to fill every SM several times over (>= 2048: an H100
    has 132, an RTX Pro 6000 188), 32 keys per step and 2 warps: more blocks per SM, within 128
    registers at sm_90 and sm_120. With fewer programs (batch 1) 2 warps would leave issue slots idle:
    as the final pass. float32 inputs take 16 keys per step (their exact products are FMAs over d in
    order, the same per logit whatever the keys per step). Every pass keeps the final pass's row tiles:
    the same 16-row MMA instructions over d give each logit, so p has the same bits in every pass
    (what the threshold is compared with)."""
    if device.type == "cuda" and dtype == torch.float32:   # exact FMA products: 16 keys keep them within 128
        return 16, num_warps                               # registers (32: 168 in radix pass 0, 136 in the lse)
    if device.type == "cuda" and not keep_maps and programs >= 2048:
        return 32, 2
    return block_n, num_warps


def _wide(device: torch.device, dtype: torch.dtype, keep_maps: bool, output: bool, heads: int, n: int) -> bool:
    """Whether an untraced zeroing call on half inputs has programs enough (>= 2048) for the `WIDE` plan
    (`output`: it zeroes, multiplies P.V and reads no CLS row, whose final pass spills 8 bytes at sm_120).

    On sm_90 a 128-row tile of 4 warps (one warpgroup) takes its logits from wgmma (HGMMA.64x16x16),
    whose operands come from shared memory: no ldmatrix of q and k per key tile, the traffic that bound
    the 32-row passes (derived from their sm_90 code, deit_base block 0, batch 256, modelled: the five
    passes 767 -> 589 us; sm_120 394 -> 331). The final pass runs 8 warps, one 64-row half per
    warpgroup: within 128 registers at sm_120 too (its 32 keys per step would need 143). Every pass
    takes 16 keys per step, so each logit comes from the same instruction (HGMMA.64x16x16 on sm_90,
    HMMA.16816 on sm_120) over d in the same order: p has the same bits in every pass (what the
    threshold is compared with)."""
    return (device.type == "cuda" and dtype != torch.float32 and not keep_maps and output
            and heads * triton.cdiv(n, WIDE[0]) >= 2048)


WIDE = (128, 16, 8, 16, 4)   # BLOCK_M; the final pass's BLOCK_N and warps; the passes' BLOCK_N and warps


def _stages(kernel: str, dtype: torch.dtype, output: bool, statistics: bool, keep_maps: bool, stages: int) -> int:
    """One stage for the variants where a second one costs registers (read from ptxas for sm_90
    and sm_120 by `scripts/kernel_resources.py`, not timed): the float32 log-sum-exp pass (its
    FMA products hold their operands in registers), the traced zeroing pass with an output for half inputs (two map stores per tile), and the float32
    passes without an output (CLS row, statistics, maps)."""
    half = dtype != torch.float32
    if kernel == "lse" and not half:
        return 1
    if kernel == "attention" and ((half and output and keep_maps) or (not half and not output)):
        return 1
    return stages


def attention_launches(q: Tensor, k: Tensor, v: Optional[Tensor], bias: Optional[Tensor], scale: float,
                       num_zero: int, statistics: bool, cls_row: bool, keep_maps: bool,
                       lse: Optional[Tensor] = None) -> tuple[list[Launch], tuple[Tensor, ...]]:
    """The launches of one attention call and the tensors they write (allocated here, filled by them).

    q, k, v: [B, H, n, d], any strides; bias: [B, n] log2 s_j float32 where lse is None
    (`_lse_kernel` computes it, in base 2), else log s_j as PyTorch's attention took it (None: no
    token scale); v None: no output (theta = 1: `lse` [B, H, >= n] comes from PyTorch's attention).
    Returns (launches, (out [B, H, n, d] in [B, n, H, d] memory, or None; diagonal, column sums,
    CLS row [B, H, n]; the dense and the sparse map [2, B, H, n, n] (one tensor: a kernel stores
    both from one address); the outputs not asked for empty)).
    """
    B, H, n, d = q.shape
    block_m, block_n, block_d, num_warps, num_stages = blocks(q.device, q.dtype, d, keep_maps)
    sweep_n, sweep_warps = _sweep(q.device, q.dtype, keep_maps, triton.cdiv(n, block_m) * B * H, block_n, num_warps)
    if _wide(q.device, q.dtype, keep_maps, v is not None and num_zero > 0 and not cls_row, B * H, n):
        block_m, block_n, num_warps, sweep_n, sweep_warps = WIDE
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
    pad = num_tiles * block_m * triton.cdiv(n, sweep_n) * sweep_n - n * n   # padded entries the passes count
    if v is not None:
        launches.append(Launch(_lse_kernel, grid, dict(common, HIST=hist, CLEAR_HIST=zeroing, BINS=BINS, BLOCK_N=sweep_n,
                                                       SPREAD_SUM=q.dtype != torch.float32),
                               sweep_warps, _stages("lse", q.dtype, True, statistics, keep_maps, num_stages)))
    for r in range(PASSES if zeroing else 0):
        launches.append(Launch(_radix_kernel, grid, dict(common, HIST=hist, DIAG=diagonal, num_zero=int(num_zero), pad=pad,
                                                         PASS=r, TAKE_DIAGONAL=statistics and r == 0, BINS=BINS,
                                                         SPLIT=q.dtype != torch.float32,
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
