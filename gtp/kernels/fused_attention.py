"""GTP attention on the Triton kernels as `torch.library` ops, their launch plans, and the entry point.

`fused_attention` is GTP's attention for one block (SPEC.md section 2: token scale,
sparsification, A @ V) and what the selections read (SPEC.md section 3). No n x n map
reaches GPU memory unless the maps are asked for (a trace). Two ops, one per case:

- `gtp::fused_attention` (entries zeroed, theta < 1): every step in the Triton kernels of
  `triton_attention` (log-sum-exp, three radix passes, zeroing with P @ V);
- `gtp::attention_statistics` (nothing zeroed, theta = 1): PyTorch's fused attention gives
  the output and each row's log-sum-exp (an aten op of its own, called beside the op), and
  one Triton pass takes only what the selection reads from q, k and that log-sum-exp
  (`triton_statistics`: the diagonal and the column sums, over key tiles; the CLS row or
  the maps of a trace: `triton_attention`'s `_attention_kernel` without P @ V).

Each op has a fake (shape-only) implementation, so `torch.compile` keeps a forward in one
graph and a forward on fake or meta tensors runs, and a launch plan
(`triton_support.PLANS`): the launches its implementation makes, built by the same
function. They run on CUDA tensors, and on CPU tensors under Triton's interpreter
(`TRITON_INTERPRET=1`; see `triton_support`). Importing this module does not import
Triton: the kernel module is imported on the first call or plan.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import triton_support

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
Outputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def _check_runs(q: Tensor, name: str) -> None:
    if q.device.type == "cpu" and not triton_support.interpreting():
        raise RuntimeError(f"{name} runs on CPU tensors only under Triton's interpreter "
                           "(TRITON_INTERPRET=1, set before Triton is imported)")


# ------------------------------------------------------------------ theta < 1: all in Triton
def _fused_launches(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], scale: float, num_zero: int,
                    statistics: bool, cls_row: bool, keep_maps: bool):
    from . import attention_plan  # imports Triton, so only when a kernel is planned
    return attention_plan.attention_launches(q, k, v, bias, scale, num_zero, statistics, cls_row, keep_maps)


def _run_fused(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], scale: float, num_zero: int,
               statistics: bool, cls_row: bool, keep_maps: bool) -> Outputs:
    """The op's real implementation: its plan's launches, run."""
    _check_runs(q, "gtp::fused_attention")
    launches, outputs = _fused_launches(q, k, v, bias, scale, num_zero, statistics, cls_row, keep_maps)
    triton_support.execute(launches)
    return outputs


def _fake_fused(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], scale: float, num_zero: int,
                statistics: bool, cls_row: bool, keep_maps: bool) -> Outputs:
    """Shapes, dtypes and strides of `_run_fused`'s outputs, without data."""
    B, H, n, d = q.shape
    return (v.new_empty(B, n, H, d).transpose(1, 2), *_fake_statistics(q, k, bias, q, scale, statistics,
                                                                        cls_row, keep_maps))


fused_attention_op = torch.library.custom_op("gtp::fused_attention", _run_fused, mutates_args=(),
                                             device_types=("cuda", "cpu"))
fused_attention_op.register_fake(_fake_fused)


@triton_support.register_plan("gtp::fused_attention")
def fused_attention_plan(args: tuple, kwargs: dict) -> list[triton_support.Launch]:
    """The launches of one `gtp::fused_attention` call (its own arguments; fake tensors will do)."""
    return _fused_launches(**triton_support.bind(_run_fused, args, kwargs))[0]


# -------------------------------------------- theta = 1: PyTorch's attention + the statistics
def _statistics_launches(q: Tensor, k: Tensor, bias: Optional[Tensor], lse: Tensor, scale: float,
                         statistics: bool, cls_row: bool, keep_maps: bool):
    if statistics and not (cls_row or keep_maps):  # what an untraced forward asks: one kernel over key tiles
        from . import triton_statistics
        launches, (diagonal, column_sums) = triton_statistics.statistics_launches(q, k, bias, lse, scale)
        B, H, n, _ = q.shape
        empty = dict(dtype=torch.float32, device=q.device)
        return launches, (diagonal, column_sums, torch.empty(B, H, 0, **empty), torch.empty(2, B, H, 0, 0, **empty))
    from . import attention_plan
    launches, outputs = attention_plan.attention_launches(q, k, None, bias, scale, 0, statistics, cls_row,
                                                            keep_maps, lse=lse)
    return launches, outputs[1:]


def _run_statistics(q: Tensor, k: Tensor, bias: Optional[Tensor], lse: Tensor, scale: float,
                    statistics: bool, cls_row: bool, keep_maps: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The op's real implementation: its plan's launches, run."""
    _check_runs(q, "gtp::attention_statistics")
    launches, outputs = _statistics_launches(q, k, bias, lse, scale, statistics, cls_row, keep_maps)
    triton_support.execute(launches)
    return outputs


def _fake_statistics(q: Tensor, k: Tensor, bias: Optional[Tensor], lse: Tensor, scale: float,
                     statistics: bool, cls_row: bool, keep_maps: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    B, H, n, _ = q.shape
    f32 = dict(dtype=torch.float32, device=q.device)
    width, side = (n if statistics else 0), (n if keep_maps else 0)
    return (torch.empty(B, H, width, **f32), torch.empty(B, H, width, **f32),
            torch.empty(B, H, n if cls_row else 0, **f32), torch.empty(2, B, H, side, side, **f32))


attention_statistics_op = torch.library.custom_op("gtp::attention_statistics", _run_statistics, mutates_args=(),
                                                  device_types=("cuda", "cpu"))
attention_statistics_op.register_fake(_fake_statistics)


@triton_support.register_plan("gtp::attention_statistics")
def attention_statistics_plan(args: tuple, kwargs: dict) -> list[triton_support.Launch]:
    """The launches of one `gtp::attention_statistics` call (its own arguments; fake tensors will do)."""
    return _statistics_launches(**triton_support.bind(_run_statistics, args, kwargs))[0]


def token_bias(size: Tensor, dtype: torch.dtype, log: bool = True) -> Tensor:
    """log s_j (or `size` itself, `log=False`) in `dtype`: [B, n], a view of rows padded to 16 entries
    (the memory-efficient attention's alignment for a bias, so it is taken as it is). One kernel:
    the log writing its float32 result rounded into the rows. The padding is left unwritten: no
    reader touches it (PyTorch's memory-efficient kernel loads the bias tile through a predicated
    iterator bounded by the key count and adds it only for keys < n; the Triton kernels load it
    masked), so filling it was a launch per block for nothing."""
    B, n = size.shape
    rows = size.new_empty(B, -(-n // 16) * 16, dtype=dtype)[:, :n]
    if log:
        return torch.log(size.float(), out=rows)
    return rows.copy_(size)


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], scale: float
                       ) -> tuple[Tensor, Tensor]:
    """softmax(scale q k^T + bias_j) v and each row's log-sum-exp, from PyTorch's fused attention.

    bias: [B, n] in q's dtype (the attention kernels add it in that dtype), or None.
    Returns (out [B, H, n, d]; lse [B, H, >= n] float32, row i at [..., i]). On CUDA the
    memory-efficient kernel (out in [B, n, H, d] memory, lse padded to 32; also on fake and
    meta tensors), which takes a bias broadcast over heads and queries from a row padded to
    16 entries (its alignment); on the CPU the flash kernel for the CPU.
    """
    B, H, n, _ = q.shape
    mask = None
    if q.device.type != "cpu":
        if bias is not None:
            if bias.stride(-1) != 1 or bias.stride(0) % 16 or bias.storage_offset() % 16:  # not `token_bias`'s rows
                bias = token_bias(bias, bias.dtype, log=False)
            mask = bias[:, None, None, :].expand(B, H, n, n)
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, mask, True, scale=scale)[:2]
        return out, lse
    if bias is not None:
        mask = bias[:, None, None, :].expand(B, H, n, n)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask, scale=scale)


# ------------------------------------------------------------------------------- entry point
class FusedAttention(NamedTuple):
    """What `fused_attention` computed; the first four fields are `gtp.functional.Attention`'s."""
    out: Tensor                                  # [B, H, n, d] A @ V, A sparsified
    statistics: Optional[tuple[Tensor, Tensor]]  # ([B, H, n] diagonal, [B, H, n] column sums) of A, float32
    dense_map: Optional[Tensor]                  # [B, H, n, n] float32 A before sparsification
    sparse_map: Optional[Tensor]                 # [B, H, n, n] float32 A as used for A @ V
    cls_row: Optional[Tensor]                    # [B, H, n] float32 A[0, :], sparsified


def fused_attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        size: Optional[Tensor],
        scale: float,
        num_zero: int,
        statistics: bool = False,
        cls_row: bool = False,
        keep_maps: bool = False,
) -> FusedAttention:
    """GTP attention: A = softmax(scale q k^T + log s_j), its num_zero smallest zeroed, A @ V.

    q, k, v: [B, H, n, d] float32, bfloat16 or float16 (one dtype), any strides (the
    views timm's `qkv(x).reshape(B, n, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)`
    gives are read in place); size: [B, n] token sizes (token scale) or None;
    num_zero: entries zeroed per head, `kernels.num_zeroed(n, theta)`: every entry
    <= the num_zero-th smallest of the head's n x n map (ties too), no
    renormalisation (0: none, and PyTorch's fused attention gives the output).
    Logits, softmax and sums in float32 (with num_zero = 0 and half inputs, the
    token-scale bias is rounded to the input dtype, as PyTorch's attention takes it).

    Returns `FusedAttention`: out in v's dtype (on CUDA, stored as [B, n, H, d] so
    `out.transpose(1, 2).reshape(B, n, H * d)` copies nothing); with `statistics` the
    diagonal and column sums of the zeroed map; with `cls_row` its row 0; with
    `keep_maps` the maps before and after zeroing (otherwise None each).
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must be [B, H, n, d] of one shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype of {_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, n, d = q.shape
    if size is not None and tuple(size.shape) != (B, n):
        raise ValueError(f"size must be [B, n] = {[B, n]}; got {list(size.shape)}")
    if not 0 <= num_zero <= n * n:
        raise ValueError(f"num_zero must be in [0, n^2 = {n * n}]; got {num_zero}")
    if num_zero == 0:
        bias = None if size is None else token_bias(size, q.dtype)  # log s_j as PyTorch's attention takes it
        out, lse = attention_with_lse(q, k, v, bias, float(scale))
        if not (statistics or cls_row or keep_maps):
            return FusedAttention(out, None, None, None, None)
        diagonal, column_sums, cls, maps = attention_statistics_op(
            q, k, bias, lse, float(scale), statistics, cls_row, keep_maps)
    else:
        bias = None if size is None else size.float().log2()  # log2 s_j (the kernels work in base 2), once per call
        out, diagonal, column_sums, cls, maps = fused_attention_op(
            q, k, v, bias, float(scale), int(num_zero), statistics, cls_row, keep_maps)
    dense, sparse = maps.unbind(0)
    return FusedAttention(out, (diagonal, column_sums) if statistics else None,
                          dense if keep_maps else None, sparse if keep_maps else None,
                          cls if cls_row else None)
