"""Token selection and graph propagation, each as ONE Triton kernel (the GPU path of a GTP block).

Between a block's attention and its MLP, `gtp.functional` scores the patch tokens
(`selection_scores`), splits them (`split_tokens`) and propagates the leaving ones into
the kept ones (`propagate`): some thirty small PyTorch operations. Here they are two launches:

- `select_tokens`: one program per image, all its tokens in one tile, reduces the attention
  statistics over the heads, combines them into the score, finds the P lowest scores (ties to
  the lower index, as a stable sort: one sort of (score, index) keys gives the P-th smallest,
  the threshold) and writes the propagated / kept indices, each list ascending. Its work is
  O(N log^2 N) in one launch; more programs per image would need a second launch (a grid-wide
  step) to merge, which costs more at ViT sizes than the whole selection (modelled);
- `propagate_tokens`: one program per image x tile of output rows x tile of channels copies
  the prefix and kept rows and, for "graph", adds alpha * W[ids_keep, ids_prop] @ x_prop.

Both are `torch.library` custom ops ("gtp::select_tokens", "gtp::propagate_tokens") with fake
implementations, so torch.compile keeps one graph around them, and each registers its launch
plan (`triton_support.register_plan`): the launch its implementation makes, built by the same function. On CPU tensors they run only under Triton's
interpreter (`TRITON_INTERPRET=1`, see `triton_support`). This module imports triton: `gtp`
never imports it at load time.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import triton_support
from .triton_support import Launch

REDUCES = ("max", "mean")                    # over the heads
COMBINES = ("mixed", "sum", "diag", "img")   # regeneration x / + broadcasting, or one of them alone


# ------------------------------------------------------------------------------------ selection
@triton.jit
def _order_key(score, i):
    """int64 keys whose order is (score, index) order: -0.0 as 0.0, then the float's bits made
    sortable as signed integers (negatives' magnitude bits flipped), the index in the low 32 bits."""
    score = tl.where(score == 0.0, 0.0, score)
    bits = score.to(tl.int32, bitcast=True)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (bits.to(tl.int64) << 32) | i.to(tl.int64)


@triton.jit
def _select_kernel(
        diag_ptr, cols_ptr, src_ptr, ids_ptr,                               # inputs
        prop_ptr, keep_ptr, new_ids_ptr, score_ptr, regen_ptr, bcast_ptr,  # outputs
        N, H, num_heads_f, p0, P,
        s_db, s_dh, s_dn, s_cb, s_ch, s_cn, s_sb, s_sn, s_ib, s_in,
        FROM_STATS: tl.constexpr, MEAN: tl.constexpr, COMBINE: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per image, all N patch tokens in one tile (N <= BLOCK_N): no loop over token
    pairs. The P lowest (score, index) keys leave: the P-th smallest key, from one bitonic sort of
    the tile, is the threshold; a prefix sum places each token in its list."""
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_N)
    ok = i < N
    if FROM_STATS:  # the score of every patch token, from the statistics
        d_row = diag_ptr + b * s_db + (i + p0) * s_dn
        c_row = cols_ptr + b * s_cb + (i + p0) * s_cn
        regen = tl.load(d_row, mask=ok, other=0.0)
        bcast = tl.load(c_row, mask=ok, other=0.0)
        for h in range(1, H):  # the heads in order
            d = tl.load(d_row + h * s_dh, mask=ok, other=0.0)
            c = tl.load(c_row + h * s_ch, mask=ok, other=0.0)
            if MEAN:
                regen, bcast = regen + d, bcast + c
            else:
                regen, bcast = tl.maximum(regen, d), tl.maximum(bcast, c)
        if MEAN:  # IEEE division: Triton's `/` is approximate on NVIDIA GPUs
            regen = tl.math.div_rn(regen, num_heads_f)
            bcast = tl.math.div_rn(bcast, num_heads_f)
        if COMBINE == 0:
            score = regen * bcast
        elif COMBINE == 1:
            score = regen + bcast
        elif COMBINE == 2:
            score = regen
        else:
            score = bcast
        tl.store(regen_ptr + b * N + i, regen, mask=ok)
        tl.store(bcast_ptr + b * N + i, bcast, mask=ok)
        tl.store(score_ptr + b * N + i, score, mask=ok)
    else:
        score = tl.load(src_ptr + b * s_sb + i * s_sn, mask=ok, other=0.0)
    key = tl.where(ok, _order_key(score, i), 0x7FFFFFFFFFFFFFFF)  # padding sorts last
    kth = tl.sum(tl.where(i == P - 1, tl.sort(key), 0), axis=0)  # the P-th smallest (0 when P = 0)
    leaves = ok & (key <= kth) & (P > 0)
    stays = ok & ~leaves
    left = leaves.to(tl.int32)
    pos_prop = tl.cumsum(left, axis=0) - left  # exclusive prefix sums: both lists ascending
    pos_keep = i - pos_prop
    tl.store(prop_ptr + b * P + pos_prop, i.to(tl.int64), mask=leaves)
    tl.store(keep_ptr + b * (N - P) + pos_keep, i.to(tl.int64), mask=stays)
    ids = tl.load(ids_ptr + b * s_ib + i * s_in, mask=stays, other=0)
    tl.store(new_ids_ptr + b * (N - P) + pos_keep, ids, mask=stays)


def _select_launches(diagonal: Optional[Tensor], column_sums: Optional[Tensor], score: Optional[Tensor],
                     ids: Tensor, num_prefix: int, num_prop: int, reduce: str, combine: str
                     ) -> tuple[list[Launch], tuple[Tensor, ...]]:
    """The launch of one selection and the tensors it writes (allocated here, filled by it)."""
    B, N = ids.shape
    outputs = _fake_select(diagonal, column_sums, score, ids, num_prefix, num_prop, reduce, combine)
    prop, keep, new_ids, score_out, regen, bcast = outputs
    from_stats = score is None
    if from_stats:  # the kernel writes the score, then reads it back
        d, c, src, H = diagonal, column_sums, score_out, diagonal.shape[1]
    else:  # the statistics are not read: any tensor stands in for them
        d, c, src, H = score, score, score, 1
    strides = (*d.stride(), *c.stride(), 0, 0) if from_stats else (0,) * 6 + tuple(score.stride())
    names = ("s_db", "s_dh", "s_dn", "s_cb", "s_ch", "s_cn", "s_sb", "s_sn", "s_ib", "s_in")
    block_n = _select_block(N)
    args = dict(diag_ptr=d, cols_ptr=c, src_ptr=src, ids_ptr=ids, prop_ptr=prop, keep_ptr=keep, new_ids_ptr=new_ids,
                score_ptr=score_out, regen_ptr=regen, bcast_ptr=bcast, N=N, H=H, num_heads_f=float(H),
                p0=num_prefix, P=num_prop, **dict(zip(names, (*strides, *ids.stride()))),
                FROM_STATS=from_stats, MEAN=reduce == "mean", COMBINE=COMBINES.index(combine),
                BLOCK_N=block_n)
    return [Launch(_select_kernel, (B,), args, _select_warps(block_n), 1)], outputs


def _select_impl(diagonal: Optional[Tensor], column_sums: Optional[Tensor], score: Optional[Tensor],
                 ids: Tensor, num_prefix: int, num_prop: int, reduce: str, combine: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_runs(ids)
    launches, outputs = _select_launches(diagonal, column_sums, score, ids, num_prefix, num_prop, reduce, combine)
    triton_support.execute(launches)
    return outputs


def _fake_select(diagonal, column_sums, score, ids, num_prefix, num_prop, reduce, combine):
    B, N = ids.shape
    P = num_prop
    width = N if score is None else 0  # the score, when given, is the caller's own tensor
    index = dict(dtype=torch.int64)
    return (ids.new_empty(B, P, **index), ids.new_empty(B, N - P, **index), ids.new_empty(B, N - P),
            *(ids.new_empty(B, width, dtype=torch.float32) for _ in range(3)))


def _select_block(N: int) -> int:
    """BLOCK_N: the patch tokens of one image, all in one tile."""
    return max(16, triton.next_power_of_2(N))


def _select_warps(block_n: int) -> int:
    """Warps per selection program: at most 4 tokens per thread (int64 keys: <= 128 registers) up to
    8192 tokens; above that (32 warps, the most a block has) ptxas spills: still exact, slower."""
    return min(32, max(4, block_n // 128))


# ---------------------------------------------------------------------------------- propagation
@triton.jit
def _propagate_kernel(
        x_ptr, size_ptr, w_ptr, ids_ptr, prop_ptr, keep_ptr,   # inputs
        x_out_ptr, size_out_ptr, w_out_ptr,                    # outputs
        C, p0, P, M_out, alpha,
        s_xb, s_xn, s_xc, s_sb, s_sn, s_wb, s_wr, s_wc, s_ib, s_in, s_pb, s_pn, s_kb, s_kn,
        GRAPH: tl.constexpr, WEIGHTS: tl.constexpr, IEEE: tl.constexpr, INTERPRETED: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    first_tile = tl.program_id(2) == 0  # the programs of the first channel tile also write sizes and weights
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # output rows: p0 prefix, then the kept
    row_ok = rows < M_out
    k = rows - p0                                                # index among the kept tokens
    kept = row_ok & (k >= 0)
    keep_k = tl.load(keep_ptr + b * s_kb + k * s_kn, mask=kept, other=0)
    source = tl.where(kept, keep_k + p0, rows)                   # the input row each output row copies
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    x_rows = x_ptr + b * s_xb + cols[None, :] * s_xc
    rows_in = tl.load(x_rows + source[:, None] * s_xn, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    acc = rows_in.to(tl.float32)
    size = tl.load(size_ptr + b * s_sb + source * s_sn, mask=row_ok, other=0.0)
    if GRAPH:  # x_K += alpha W[ids_K, ids_R] x_R and s_K += alpha W[ids_K, ids_R] s_R, P tokens at a time
        id_k = tl.load(ids_ptr + b * s_ib + keep_k * s_in, mask=kept, other=0)
        size_in = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, P, BLOCK_P):
            j = start + tl.arange(0, BLOCK_P)
            j_ok = j < P
            prop_j = tl.load(prop_ptr + b * s_pb + j * s_pn, mask=j_ok, other=0)
            id_j = tl.load(ids_ptr + b * s_ib + prop_j * s_in, mask=j_ok, other=0)
            pair_ok = kept[:, None] & j_ok[None, :]
            w = alpha * tl.load(w_ptr + b * s_wb + id_k[:, None] * s_wr + id_j[None, :] * s_wc,
                                mask=pair_ok, other=0.0)
            if WEIGHTS:
                tl.store(w_out_ptr + (b * (M_out - p0) + k[:, None]) * P + j[None, :], w, mask=pair_ok & first_tile)
            x_prop = tl.load(x_rows + (prop_j + p0)[:, None] * s_xn, mask=j_ok[:, None] & col_ok[None, :], other=0.0)
            if IEEE:  # float32 tokens: full-precision products (tensor cores would round to tf32)
                acc = tl.dot(w, x_prop, acc, input_precision="ieee")
            elif INTERPRETED:  # the interpreter's half-precision tl.dot is wrong: the same products in float32
                acc = tl.dot(w.to(x_prop.dtype).to(tl.float32), x_prop.to(tl.float32), acc, input_precision="ieee")
            else:  # half-precision tokens: the weights in their dtype, as torch's product takes them
                acc = tl.dot(w.to(x_prop.dtype), x_prop, acc)
            size_prop = tl.load(size_ptr + b * s_sb + (prop_j + p0) * s_sn, mask=j_ok, other=0.0)
            size_in += tl.sum(w * size_prop[None, :], axis=1)
        size += size_in
    # Prefix rows are bit copies (-0.0 too, which adding the masked products would turn into +0.0): read
    # again here rather than held in registers through the loop (held, they spilled).
    prefix = row_ok & (k < 0)
    rows_again = tl.load(x_rows + rows[:, None] * s_xn, mask=prefix[:, None] & col_ok[None, :], other=0.0)
    out = tl.where(kept[:, None], acc.to(x_out_ptr.dtype.element_ty), rows_again)
    out_rows = x_out_ptr + (b * M_out + rows[:, None]) * C + cols[None, :]
    tl.store(out_rows, out, mask=row_ok[:, None] & col_ok[None, :])
    tl.store(size_out_ptr + b * M_out + rows, size, mask=row_ok & first_tile)


def _propagate_blocks(C: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_P, BLOCK_C): output rows, propagated tokens and channels per step (tl.dot needs >= 16).
    16 propagated tokens a step (P = 8 pads to 16, not 32) and 64 channels (each program gathers its
    W tile once for twice the channels): at deit_base, batch 256, the launch's derived time falls to
    its DRAM floor (modelled: 199.5 -> 101.1 us at sm_90) in 120 registers."""
    return 32, 16, min(64, max(16, triton.next_power_of_2(C)))


def _propagate_grid(B: int, rows_out: int, C: int) -> tuple[int, int, int]:
    block_m, _, block_c = _propagate_blocks(C)
    return B, triton.cdiv(rows_out, block_m), triton.cdiv(C, block_c)


def _propagate_launches(x: Tensor, size: Tensor, graph: Optional[Tensor], ids: Tensor, prop: Tensor,
                        keep: Tensor, num_prefix: int, alpha: float, weights: bool
                        ) -> tuple[list[Launch], tuple[Tensor, ...]]:
    """The launch of one propagation and the tensors it writes (allocated here, filled by it)."""
    outputs = _fake_propagate(x, size, graph, ids, prop, keep, num_prefix, alpha, weights)
    x_new, size_new, w_out = outputs
    B, rows_out, C = x_new.shape
    P = prop.shape[1]
    use_graph = graph is not None and P > 0
    w = graph if use_graph else size  # not read without a graph
    w_strides = ((0,) if graph.dim() == 2 else ()) + tuple(graph.stride()) if use_graph else (0, 0, 0)
    block_m, block_p, block_c = _propagate_blocks(C)
    names = ("s_xb", "s_xn", "s_xc", "s_sb", "s_sn", "s_wb", "s_wr", "s_wc", "s_ib", "s_in", "s_pb", "s_pn",
             "s_kb", "s_kn")
    strides = (*x.stride(), *size.stride(), *w_strides, *ids.stride(), *prop.stride(), *keep.stride())
    args = dict(x_ptr=x, size_ptr=size, w_ptr=w, ids_ptr=ids, prop_ptr=prop, keep_ptr=keep, x_out_ptr=x_new,
                size_out_ptr=size_new, w_out_ptr=w_out, C=C, p0=num_prefix, P=P, M_out=rows_out, alpha=alpha,
                **dict(zip(names, strides)),
                GRAPH=use_graph, WEIGHTS=weights and use_graph, IEEE=x.dtype == torch.float32,
                INTERPRETED=x.device.type == "cpu", BLOCK_M=block_m, BLOCK_P=block_p, BLOCK_C=block_c)
    return [Launch(_propagate_kernel, _propagate_grid(B, rows_out, C), args, 4, 2)], outputs


def _propagate_impl(x: Tensor, size: Tensor, graph: Optional[Tensor], ids: Tensor, prop: Tensor, keep: Tensor,
                    num_prefix: int, alpha: float, weights: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check_runs(x)
    launches, outputs = _propagate_launches(x, size, graph, ids, prop, keep, num_prefix, alpha, weights)
    triton_support.execute(launches)
    return outputs


def _fake_propagate(x, size, graph, ids, prop, keep, num_prefix, alpha, weights):
    B, _, C = x.shape
    P, K = prop.shape[1], keep.shape[1]
    w_shape = (B, K, P) if weights and graph is not None else (B, 0, 0)
    return (x.new_empty(B, num_prefix + K, C), size.new_empty(B, num_prefix + K),
            x.new_empty(w_shape, dtype=torch.float32))


def _check_runs(t: Tensor) -> None:
    if t.device.type != "cpu":
        return
    if not triton_support.interpreting():
        raise RuntimeError("the Triton token kernels take CPU tensors only under TRITON_INTERPRET=1")
    if type(tl.sum).__name__ != "InterpretedFunction":  # triton's library was jitted for the GPU
        raise RuntimeError("TRITON_INTERPRET=1 was set after triton was imported (timm and torch._dynamo "
                           "import it): set it before those imports")


# ----------------------------------------------------------------------- custom ops and their plans
# Opaque to torch.compile (one node each, no graph break); the fake implementations give the
# shapes, so a forward on fake or meta tensors runs. Outputs not asked for come back empty.
_select_op = torch.library.custom_op(
    "gtp::select_tokens", _select_impl, mutates_args=(), device_types=("cuda", "cpu"))
_select_op.register_fake(_fake_select)
_propagate_op = torch.library.custom_op(
    "gtp::propagate_tokens", _propagate_impl, mutates_args=(), device_types=("cuda", "cpu"))
_propagate_op.register_fake(_fake_propagate)


@triton_support.register_plan("gtp::select_tokens")
def select_plan(args: tuple, kwargs: dict) -> list[Launch]:
    """The launch of one `gtp::select_tokens` call (its own arguments; fake tensors will do)."""
    return _select_launches(**triton_support.bind(_select_impl, args, kwargs))[0]


@triton_support.register_plan("gtp::propagate_tokens")
def propagate_plan(args: tuple, kwargs: dict) -> list[Launch]:
    """The launch of one `gtp::propagate_tokens` call (its own arguments; fake tensors will do)."""
    return _propagate_launches(**triton_support.bind(_propagate_impl, args, kwargs))[0]


# ------------------------------------------------------------------------------------ entry points
class Selection(NamedTuple):
    """What `select_tokens` returns (B images, N current patch tokens, P = num_prop)."""
    prop: Tensor                    # [B, P] int64: propagated patch tokens (current indices), ascending
    keep: Tensor                    # [B, N-P] int64: kept patch tokens, ascending
    ids: Tensor                     # [B, N-P]: ids.gather(1, keep), the original ids of the kept
    score: Tensor                   # [B, N] float32: the lowest P scores leave
    regeneration: Optional[Tensor]  # [B, N] float32 (from the statistics only)
    broadcasting: Optional[Tensor]  # [B, N] float32 (from the statistics only)


def select_tokens(
        ids: Tensor,
        num_prop: int,
        statistics: Optional[tuple[Tensor, Tensor]] = None,
        num_prefix: int = 0,
        reduce: str = "max",
        combine: str = "mixed",
        score: Optional[Tensor] = None,
) -> Selection:
    """Score the patch tokens and split them in one launch: `functional.selection_scores` then `split_tokens`.

    ids: [B, N] int64, the original id of each current patch token. Give EITHER
    statistics = (diagonal, column sums), float32 [B, H, n] with n = num_prefix + N (the
    attention-statistic selections: heads reduced by `reduce` in REDUCES, factors combined
    by `combine` in COMBINES: "mixed" regeneration x broadcasting, "sum" +, "diag"
    regeneration, "img" broadcasting), OR score: float32 [B, N] computed by the caller
    (cls_attn, cos_sim, random); no NaN. The num_prop = P lowest scores leave; ties go to
    the lower index (-0.0 ties with 0.0). "max" equals torch's amax bit for bit; "mean" adds the heads in order
    0..H-1 and divides by H (torch's own mean may add them in another order: last bits).
    """
    if (statistics is None) == (score is None):
        raise ValueError("give either the attention statistics or a score")
    if reduce not in REDUCES or combine not in COMBINES:
        raise ValueError(f"reduce must be one of {REDUCES} and combine one of {COMBINES}; got {reduce!r}, {combine!r}")
    B, N = ids.shape
    if not 0 <= num_prop <= N:
        raise ValueError(f"num_prop must be in [0, {N}] for {N} patch tokens, got {num_prop}")
    diagonal = column_sums = None
    if statistics is not None:
        diagonal, column_sums = statistics
        if diagonal.shape != column_sums.shape or diagonal.shape[::2] != (B, num_prefix + N):
            raise ValueError(f"statistics must be [{B}, H, {num_prefix + N}], got {tuple(diagonal.shape)}"
                             f" and {tuple(column_sums.shape)}")
        diagonal, column_sums = diagonal.float(), column_sums.float()
    elif score.shape != (B, N):
        raise ValueError(f"score must be [{B}, {N}], got {tuple(score.shape)}")
    else:
        score = score.float()
    prop, keep, new_ids, score_out, regen, bcast = _select_op(
        diagonal, column_sums, score, ids, num_prefix, num_prop, reduce, combine)
    if score is not None:
        return Selection(prop, keep, new_ids, score, None, None)
    return Selection(prop, keep, new_ids, score_out, regen, bcast)


def propagate_tokens(
        x: Tensor,
        size: Tensor,
        graph: Optional[Tensor],
        ids: Tensor,
        prop: Tensor,
        keep: Tensor,
        num_prefix: int,
        propagation: str = "graph",
        alpha: float = 0.1,
        weights: bool = False,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Remove the propagated patch tokens in one launch: `functional.propagate` for "graph" and "none".

    x: [B, n, C] all tokens (any float dtype; sums in float32); size: [B, n] float32;
    graph: W float32 [B, N0, N0] or [N0, N0] (the same for every image; a batch stride 0
    will do) over the ORIGINAL patch ids, only read for "graph"; ids: [B, N] original id
    of each current patch token; prop [B, P] and keep [B, N-P] index the current patch
    tokens. Returns (x_new [B, p0 + N-P, C] in x's dtype: the prefix rows then the kept
    ones, plus alpha W[ids_keep, ids_prop] @ x_prop for "graph"; size_new [B, p0 + N-P]
    likewise; the weights alpha W[ids_keep, ids_prop] [B, N-P, P] float32 when `weights`
    and "graph", else None). The new ids are `select_tokens`'s.
    """
    if propagation not in ("graph", "none"):
        raise ValueError(f"propagation must be 'graph' or 'none' here, got {propagation!r}")
    if propagation == "graph" and graph is None:
        raise ValueError("graph propagation needs the graph W")
    B, n, _ = x.shape
    N = n - num_prefix
    if prop.shape[0] != B or keep.shape[0] != B or prop.shape[1] + keep.shape[1] != N or ids.shape != (B, N):
        raise ValueError(f"prop {tuple(prop.shape)}, keep {tuple(keep.shape)} and ids {tuple(ids.shape)} must "
                         f"split and name the {N} patch tokens of x {tuple(x.shape)}")
    if graph is not None and (graph.dim() not in (2, 3) or graph.shape[-1] != graph.shape[-2]
                              or graph.dim() == 3 and graph.shape[0] != B):
        raise ValueError(f"graph must be [N0, N0] or [{B}, N0, N0], got {tuple(graph.shape)}")
    graph = graph.float() if propagation == "graph" else None
    x_new, size_new, w = _propagate_op(x, size.float(), graph, ids, prop, keep, num_prefix, float(alpha),
                                       weights and graph is not None)
    return x_new, size_new, w if weights and graph is not None else None
