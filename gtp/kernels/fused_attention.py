"""The fused Triton attention as a `torch.library` op, its launch plan, and its entry point.

`fused_attention` is GTP's attention for one block (SPEC.md section 2: token scale,
sparsification, A @ V) and what the selections read (SPEC.md section 3), computed by
one Triton kernel (`triton_attention`) that never writes an n x n map to GPU memory
unless the maps are asked for (a trace).

The kernel is wrapped as the op `gtp::fused_attention`, with a fake (shape-only)
implementation, so `torch.compile` keeps a forward in one graph and a forward on
fake or meta tensors runs. It runs on CUDA tensors, and on CPU tensors under
Triton's interpreter (`TRITON_INTERPRET=1`; see `triton_support`). Importing this
module does not import Triton: the kernel module is imported on the first call.
"""
from __future__ import annotations

import inspect
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import triton_support

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _run(q: Tensor, k: Tensor, v: Tensor, size: Optional[Tensor], scale: float, num_zero: int,
         statistics: bool, cls_row: bool, keep_maps: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The op's real implementation: the Triton kernel (see `triton_attention.launch`)."""
    if q.device.type == "cpu" and not triton_support.interpreting():
        raise RuntimeError("gtp::fused_attention runs on CPU tensors only under Triton's interpreter "
                           "(TRITON_INTERPRET=1, set before gtp.kernels.triton_attention is imported)")
    from . import triton_attention  # imports Triton, so only when the kernel runs
    return triton_attention.launch(q, k, v, size, scale, num_zero, statistics, cls_row, keep_maps)


def _fake(q: Tensor, k: Tensor, v: Tensor, size: Optional[Tensor], scale: float, num_zero: int,
          statistics: bool, cls_row: bool, keep_maps: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Shapes, dtypes and strides of `_run`'s outputs, without data."""
    B, H, n, d = q.shape
    f32 = dict(dtype=torch.float32, device=q.device)
    width, side = (n if statistics else 0), (n if keep_maps else 0)
    return (v.new_empty(B, n, H, d).transpose(1, 2),
            torch.empty(B, H, width, **f32), torch.empty(B, H, width, **f32),
            torch.empty(B, H, n if cls_row else 0, **f32),
            torch.empty(B, H, side, side, **f32), torch.empty(B, H, side, side, **f32))


fused_attention_op = torch.library.custom_op("gtp::fused_attention", _run, mutates_args=(),
                                             device_types=("cuda", "cpu"))
fused_attention_op.register_fake(_fake)


class FusedAttention(NamedTuple):
    """What `fused_attention` computed; the first four fields are `gtp.functional.Attention`'s."""
    out: Tensor                                  # [B, H, n, d] A @ V, A sparsified; [B, n, H, d] memory
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
    """GTP attention in one kernel: A = softmax(scale q k^T + log s_j), its num_zero smallest zeroed, A @ V.

    q, k, v: [B, H, n, d] float32, bfloat16 or float16 (one dtype), any strides (the
    views timm's `qkv(x).reshape(B, n, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)`
    gives are read in place); size: [B, n] token sizes (token scale) or None;
    num_zero: entries zeroed per head, `kernels.num_zeroed(n, theta)`: every entry
    <= the num_zero-th smallest of the head's n x n map (ties too), no
    renormalisation (0: none). Logits, softmax and sums in float32.

    Returns `FusedAttention`: out in v's dtype, stored as [B, n, H, d] so
    `out.transpose(1, 2).reshape(B, n, H * d)` copies nothing; with `statistics` the
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
    out, diagonal, column_sums, cls, dense, sparse = fused_attention_op(
        q, k, v, size, float(scale), int(num_zero), statistics, cls_row, keep_maps)
    return FusedAttention(out, (diagonal, column_sums) if statistics else None,
                          dense if keep_maps else None, sparse if keep_maps else None,
                          cls if cls_row else None)


@triton_support.register_plan("gtp::fused_attention")
def fused_attention_plan(args: tuple, kwargs: dict) -> list[triton_support.Launch]:
    """The launches one `gtp::fused_attention` call makes (its own arguments; fake tensors will do)."""
    from . import triton_attention
    bound = inspect.signature(_run).bind(*args, **kwargs).arguments
    return triton_attention.plan(**bound)[1]
