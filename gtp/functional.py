"""The GTP method as pure functions on tensors (METHOD.md sections 1-4).

Shapes: B images, H heads, n tokens in a block (prefix included), N patch tokens,
C channels, p0 prefix tokens (CLS, distillation, registers) that come first.
Nothing here knows about timm; `gtp.patch` wires these functions into a model.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import radix_select

GRAPHS = ("spatial", "semantic", "mixed")
SELECTIONS = (
    "mixed_attn_max", "mixed_attn_mean",
    "diag_attn_max", "diag_attn_mean",
    "img_attn_max", "img_attn_mean",
    "sum_attn_max", "sum_attn_mean",
    "cls_attn_max", "cls_attn_mean",
    "cos_sim_max", "cos_sim_mean",
    "random",
)
PROPAGATIONS = ("graph", "mean", "none")


# --------------------------------------------------------------------------- graph
def spatial_adjacency(grid_h: int, grid_w: int, device=None) -> Tensor:
    """8-neighbour grid adjacency, no self loops: [N, N] float with N = grid_h * grid_w."""
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=device).repeat(grid_h)
    dr = (rows[:, None] - rows[None, :]).abs()
    dc = (cols[:, None] - cols[None, :]).abs()
    adj = (dr <= 1) & (dc <= 1)
    adj.fill_diagonal_(False)
    return adj.float()


def semantic_adjacency(x: Tensor, num_neighbours: int) -> Tensor:
    """Directed kNN graph on cosine similarity, no self loops.

    x: [B, N, C] patch tokens. Returns [B, N, N] float, row i has ones at the
    `num_neighbours` tokens most similar to token i.
    """
    x = F.normalize(x.float(), dim=-1)
    sim = x @ x.transpose(1, 2)
    sim.diagonal(dim1=1, dim2=2).fill_(-math.inf)
    nbrs = sim.topk(num_neighbours, dim=-1).indices
    return torch.zeros_like(sim).scatter_(-1, nbrs, 1.0)


def normalise_adjacency(adj: Tensor) -> Tensor:
    """W = D^-1/2 A D^-1/2 with D the row sums of A: [..., N, N] -> [..., N, N]."""
    d = adj.sum(-1).clamp(min=1e-12).rsqrt()  # a token with no edge keeps a zero row
    return d.unsqueeze(-1) * adj * d.unsqueeze(-2)


def build_graph(
        x: Tensor,
        grid_size: tuple[int, int],
        graph: str = "mixed",
        num_neighbours: int = 8,
) -> Tensor:
    """The normalised token graph W of METHOD.md section 1.

    x: [B, N, C] patch tokens after the position embedding. Returns W: [B, N, N] float32.
    """
    B = x.shape[0]
    adj = None
    if graph in ("spatial", "mixed"):
        adj = spatial_adjacency(*grid_size, device=x.device).expand(B, -1, -1)
    if graph in ("semantic", "mixed"):
        sem = semantic_adjacency(x, num_neighbours)
        adj = sem if adj is None else torch.maximum(adj, sem)
    if adj is None:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    return normalise_adjacency(adj)


# ------------------------------------------------------------------------ attention
def _needs_grad(t: Tensor) -> bool:
    """Whether autograd records ops on t (then no in-place or out= shortcuts)."""
    return t.requires_grad and torch.is_grad_enabled()


def _kth_of_rows(values: Tensor, k: int) -> Tensor:
    """k-th smallest (1-based) of each row: [R, L] -> [R]; topk is far cheaper than kthvalue on CPU."""
    L = values.shape[1]
    if k > L // 2:  # select from the short side
        return values.topk(L - k + 1, dim=1, largest=True, sorted=False).values.amin(1)
    return values.topk(k, dim=1, largest=False, sorted=False).values.amax(1)


def _bracket(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-row bounds lo <= hi that very likely enclose the k-th smallest: [R, L] -> 2 x [R, 1].

    Taken from a strided sample, 4 standard deviations of a sample quantile's rank apart.
    """
    R, L = values.shape
    sample = values[:, :: max(1, L // 2048)]
    S = sample.shape[1]
    p = (k - 0.5) / L
    margin = 4.0 * math.sqrt(S * p * (1.0 - p)) + 2.0
    lo_rank, hi_rank = max(1, int(p * S - margin)), min(S, int(p * S + margin) + 1)
    smallest = sample.topk(hi_rank, dim=1, largest=False, sorted=False).values  # [R, hi_rank]
    hi = smallest.amax(1, keepdim=True)
    lo = _kth_of_rows(smallest, lo_rank).unsqueeze(1)
    return lo, hi


def _zero_upto_(values: Tensor, threshold: Tensor) -> None:
    """values[r, values[r] <= threshold[r]] = 0 for every row r, in place.

    A per-row `torch.threshold_` needs no mask: several times cheaper than
    masked_fill_ on CPU for the few rows (images x heads) an attention map has.
    """
    for r, t in enumerate(threshold.tolist()):
        torch.threshold_(values[r], t, 0.0)


def zero_smallest_(values: Tensor, k: int) -> Tensor:
    """Zero, in place, the entries of each row not above its k-th smallest value.

    values: [R, L] with no NaN. Returns the per-row threshold [R]. Exactly
    `values[values <= values.kthvalue(k, dim=1, keepdim=True).values] = 0`, for a
    fraction of its cost: float32 CPU rows go to the compiled radix select
    (`gtp.radix_select`, when numba is installed), everything else to
    `zero_smallest_torch_`.
    """
    if (radix_select.available() and values.device.type == "cpu" and values.dtype == torch.float32
            and values.is_contiguous() and not _needs_grad(values)):
        threshold = radix_select.zero_smallest_(values, k)
        if bool(np.isnan(threshold.numpy()).any()):  # rows with negative values were skipped
            skipped = threshold.isnan().nonzero(as_tuple=True)[0]
            rows = values[skipped]
            threshold[skipped] = zero_smallest_torch_(rows, k)
            values[skipped] = rows
        return threshold
    return zero_smallest_torch_(values, k)


def zero_smallest_torch_(values: Tensor, k: int) -> Tensor:
    """`zero_smallest_` in PyTorch operations only (any device and dtype, autograd-safe).

    A sample brackets the threshold, the entries below the bracket are counted in
    one pass, and only the entries inside it (a few percent) are ranked. Rows whose
    bracket misses take the plain path.
    """
    R, L = values.shape
    if L < 4096:
        threshold = _kth_of_rows(values, k)
        _zero_upto_(values, threshold)
        return threshold
    lo, hi = _bracket(values, k)
    below = values < lo
    n_below = below.view(torch.uint8).sum(1, dtype=torch.int32)
    inside = (values <= hi).logical_xor_(below)  # lo <= v <= hi
    flat = inside.view(-1).nonzero().squeeze(1)
    row = flat // L
    n_inside = torch.bincount(row, minlength=R).to(torch.int32)
    rank = k - n_below  # the threshold's rank among the row's entries inside the bracket
    hit = (rank >= 1) & (rank <= n_inside)
    rank = torch.where(hit, rank, torch.ones_like(rank))
    # Pack each row's bracketed entries into one [R, width] block behind
    # (max_rank - rank) entries of -inf, so that one selection at max_rank
    # finds every row's own rank.
    max_rank = int(rank.max())
    shift = max_rank - rank
    offset = shift - (torch.cumsum(n_inside, 0) - n_inside)  # per row: block column - packed index
    pos = torch.arange(row.numel(), device=values.device).add_(offset[row])
    width = max(max_rank, int((shift + n_inside).max()))
    block = values.new_full((R, width), math.inf)
    block[:, :max_rank] = -math.inf
    block[row, pos] = values.view(-1)[flat]
    threshold = _kth_of_rows(block, max_rank)
    if not bool(hit.all()):
        missed = (~hit).nonzero(as_tuple=True)[0]
        threshold[missed] = _kth_of_rows(values[missed], k)
    _zero_upto_(values, threshold)
    return threshold


def kth_smallest(values: Tensor, k: int) -> Tensor:
    """The k-th smallest value (1-based) of each row: [R, L] -> [R] (`values` is left untouched)."""
    return zero_smallest_(values.clone(), k)


def num_zeroed(n: int, sparsity: float) -> int:
    """floor(n^2 (1 - theta)): entries zeroed per head in an n x n attention map."""
    return int(n * n * (1.0 - sparsity))


def sparsify_attention(attn: Tensor, sparsity: float) -> Tensor:
    """Zero the floor(n^2 (1 - theta)) smallest entries of each head's map.

    attn: [B, H, n, n] softmax output. No renormalisation (METHOD.md section 2).
    Entries equal to the threshold value are zeroed too. In place, except where
    autograd records attn (then a new tensor, so the softmax can be differentiated).
    """
    B, H, n, _ = attn.shape
    k = num_zeroed(n, sparsity)
    if sparsity >= 1.0 or k <= 0:
        return attn
    if attn.dtype == torch.float32 and attn.is_contiguous() and not _needs_grad(attn):
        zero_smallest_(attn.view(B * H, n * n), k)
        return attn
    flat = attn.detach().reshape(B * H, n * n).to(torch.float32, copy=True)  # rank in float32
    zero_smallest_(flat, k)
    zeroed = flat.view_as(attn) == 0
    return attn.masked_fill(zeroed, 0.0) if _needs_grad(attn) else attn.masked_fill_(zeroed, 0.0)


def attention_map(
        q: Tensor,
        k: Tensor,
        size: Optional[Tensor] = None,
        scale: float = 1.0,
) -> Tensor:
    """Softmax attention with proportional attention (+ log s_j on key j).

    q, k: [B, H, n, d]. size: [B, n] token sizes or None (no token scale).
    Returns the float32 map [B, H, n, n]: softmax(scale * q k^T + log s).
    """
    B, H, n, d = q.shape
    q3, k3 = q.reshape(B * H, n, d), k.reshape(B * H, n, d)  # views when B == 1
    if size is None:
        logits = torch.bmm(q3, k3.transpose(1, 2))
        if scale != 1.0:
            logits.mul_(scale)
    else:  # one fused multiply-add: log s + scale * q k^T
        bias = size.log().to(q.dtype).repeat_interleave(H, dim=0).unsqueeze(1)  # [B*H, 1, n]
        logits = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)
    logits = logits.float()  # the softmax runs in float32 under autocast too
    if _needs_grad(logits):
        return logits.softmax(dim=-1).view(B, H, n, n)
    torch.softmax(logits, dim=-1, out=logits)  # in place: the map is the largest tensor here
    return logits.view(B, H, n, n)


def attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        size: Optional[Tensor] = None,
        sparsity: float = 1.0,
        reduce: Optional[Callable[[Tensor], tuple]] = None,
        keep_maps: bool = False,
        chunk: int = 0,
        scale: float = 1.0,
) -> tuple[Tensor, Optional[tuple], Optional[tuple[Tensor, Tensor]]]:
    """GTP attention: token scale, sparsification, the map used for A @ V (METHOD.md section 2).

    q, k, v: [B, H, n, d]; size: [B, n] or None; scale multiplies q k^T. `reduce`
    maps a (sparsified) map [b, H, n, n] to a tuple of per-image tensors [b, ...]
    (or None), e.g. the selection scores, so the full map need not be kept.
    Images are processed `chunk` at a time (0 = all at once): one image's maps
    stay in the CPU cache between the steps, which roughly halves their cost.
    Float32 CPU tensors without autograd, maps not kept, always go image by image
    (`_attention_image_by_image`, same operations, less overhead).
    Returns (output [B, H, n, d], the reductions concatenated over images,
    (map before, map after sparsification) when keep_maps).
    """
    B, H, n, d = q.shape
    grad = any(t is not None and _needs_grad(t) for t in (q, k, v, size))
    if (q.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.float32
            and not (grad or keep_maps)):
        return _attention_image_by_image(q, k, v, size, sparsity, reduce, scale)
    step = B if chunk <= 0 else chunk
    out = None if grad else v.new_empty(B, H, n, d)  # chunks write into it (out= cannot be differentiated)
    outs, reduced, before, after = [], [], [], []
    for i in range(0, B, step):
        sl = slice(i, i + step)
        amap = attention_map(q[sl], k[sl], None if size is None else size[sl], scale)
        if keep_maps:
            before.append(amap.clone())
        amap = sparsify_attention(amap, sparsity)
        if keep_maps:
            after.append(amap)
        if reduce is not None:
            reduced.append(reduce(amap))
        if out is None:
            outs.append(amap.to(v.dtype) @ v[sl])
        else:
            b = amap.shape[0]
            torch.bmm(amap.view(b * H, n, n).to(v.dtype), v[sl].reshape(b * H, n, d),
                      out=out[sl].view(b * H, n, d))
    if out is None:
        out = torch.cat(outs)
    parts = None
    if reduce is not None:
        parts = tuple(None if r[0] is None else torch.cat(r) for r in zip(*reduced))
    maps = (torch.cat(before), torch.cat(after)) if keep_maps else None
    return out, parts, maps


def _attention_image_by_image(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        size: Optional[Tensor],
        sparsity: float,
        reduce: Optional[Callable[[Tensor], tuple]],
        scale: float,
) -> tuple[Tensor, Optional[tuple], None]:
    """`attention` for float32 CPU tensors without autograd, one image at a time.

    Per image, the operations of `attention_map`, `sparsify_attention` and A @ V
    with chunk = 1, so the results are identical (a traced forward, which keeps
    the maps, takes that path). One map buffer serves every image and the
    per-image tensors are views taken once, which saves a few dozen small
    operations per image (several milliseconds per block at batch 32). When
    `reduce` is `diagonal_and_column_sums`, the kernel takes them in its zeroing
    pass, the same sums `reduce` would compute from the zeroed map.
    """
    B, H, n, d = q.shape
    out = v.new_empty(B, H, n, d)
    amap = q.new_empty(1, H, n, n)  # the map of the current image
    flat = amap.view(H, n, n)
    num_zero = num_zeroed(n, sparsity) if sparsity < 1.0 else 0
    # The kernel zeroes and, for the attention-based selections, sums the columns in one pass.
    # A softmax map has no negative entries, so it never leaves a row to the torch path.
    fused = reduce is diagonal_and_column_sums and radix_select.available()
    zero = None
    if fused or (num_zero > 0 and radix_select.available()):
        zero = radix_select.zeroer(amap.view(H, n * n), num_zero, statistics=fused)
    if fused:
        diagonal, column_sums = q.new_empty(B, H, n), q.new_empty(B, H, n)
        diagonals, sums = diagonal.numpy(), column_sums.numpy()
    bias = None if size is None else size.log().unsqueeze(1)  # [B, 1, n]: + log s_j on key j
    keys = k.transpose(-2, -1).unbind(0)
    reduced = []
    for i, (q_i, v_i, out_i) in enumerate(zip(q.unbind(0), v.unbind(0), out.unbind(0))):
        if bias is None:
            torch.bmm(q_i, keys[i], out=flat)
            if scale != 1.0:
                flat.mul_(scale)
        else:
            torch.baddbmm(bias[i], q_i, keys[i], alpha=scale, out=flat)
        torch.softmax(flat, dim=-1, out=flat)
        if fused:
            zero(diagonals[i], sums[i])
        elif zero is not None:
            zero()
        elif num_zero > 0:
            sparsify_attention(amap, sparsity)
        if reduce is not None and not fused:
            reduced.append(reduce(amap))
        torch.bmm(flat, v_i, out=out_i)
    if fused:
        return out, (diagonal, column_sums), None
    parts = None
    if reduce is not None:
        parts = tuple(None if r[0] is None else torch.cat(r) for r in zip(*reduced))
    return out, parts, None


# ------------------------------------------------------------------------ selection
def _parse_selection(selection: str) -> tuple[str, str]:
    """"mixed_attn_max" -> ("mixed_attn", "max"), "random" -> ("random", ""); raises on an unknown strategy."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "random":
        return "random", ""
    kind, _, reduce = selection.rpartition("_")
    return kind, reduce


def _over_heads(t: Tensor, reduce: str) -> Tensor:
    """[B, H, ...] -> [B, ...]: max or mean over the heads."""
    return t.amax(1) if reduce == "max" else t.mean(1)


def selection_statistics(attn: Tensor, selection: str = "mixed_attn_max") -> tuple[Tensor, ...]:
    """What a selection strategy reads from the attention map, image by image.

    attn: [B, H, n, n]. Returns per-image tensors (so they can be taken chunk by
    chunk and concatenated, while the map itself is overwritten):
    ([B, H, n] diagonal, [B, H, n] column sums) for the regeneration and
    broadcasting strategies, ([B, H, n] CLS row,) for cls_attn, ([B, n, n] map
    reduced over heads,) for cos_sim, and ([B, n] placeholder,) for random,
    which needs the shape only. `scores_from_statistics` turns them into scores.
    """
    return statistics_function(selection)(attn)


def statistics_function(selection: str) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """`selection_statistics` for one strategy, as a function of the map alone.

    For the strategies that read the diagonal and the column sums, this is
    `diagonal_and_column_sums` itself, which `attention` recognises and takes
    inside the sparsification pass.
    """
    kind, reduce = _parse_selection(selection)
    if kind in ("mixed_attn", "diag_attn", "img_attn", "sum_attn"):
        return diagonal_and_column_sums
    if kind == "random":
        return lambda attn: (attn.new_empty(attn.shape[0], attn.shape[-1], dtype=torch.float32),)
    if kind == "cls_attn":
        return lambda attn: (attn[:, :, 0].to(torch.float32, copy=True),)  # the map's buffer is reused
    return lambda attn: (_over_heads(attn.float(), reduce),)  # cos_sim


def diagonal_and_column_sums(attn: Tensor) -> tuple[Tensor, Tensor]:
    """[B, H, n, n] -> ([B, H, n] diagonal, [B, H, n] column sums), in float32.

    Per head, the regeneration difficulty and the broadcasting ability of every
    token (METHOD.md section 3). Float32 CPU maps are summed by the compiled
    kernel, row after row, exactly as the sparsification pass sums them.
    """
    if (radix_select.available() and attn.device.type == "cpu" and attn.dtype == torch.float32
            and attn.is_contiguous() and not _needs_grad(attn)):
        return radix_select.diagonal_and_column_sums(attn)
    attn = attn.float()
    return attn.diagonal(dim1=-2, dim2=-1).clone(), attn.sum(-2)


def scores_from_statistics(
        stats: tuple[Tensor, ...],
        num_prefix: int,
        selection: str = "mixed_attn_max",
        generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Scores from `selection_statistics`; see `selection_scores` for what they are."""
    p0 = num_prefix
    kind, reduce = _parse_selection(selection)
    if kind == "random":
        B, n = stats[0].shape
        return torch.rand(B, n - p0, device=stats[0].device, generator=generator), None, None
    if kind == "cls_attn":
        if p0 == 0:
            raise ValueError(f"selection {selection!r} needs a CLS token; this model has none")
        return _over_heads(stats[0][:, :, p0:], reduce), None, None
    if kind == "cos_sim":
        rows = F.normalize(stats[0][:, p0:, :], dim=-1)  # [B, N, n] attention rows of the patches
        return -(rows @ rows.transpose(1, 2)).sum(-1), None, None
    diagonal, column_sums = stats
    regeneration = _over_heads(diagonal[:, :, p0:], reduce)
    broadcasting = _over_heads(column_sums[:, :, p0:], reduce)
    if kind == "mixed_attn":
        score = regeneration * broadcasting
    elif kind == "sum_attn":
        score = regeneration + broadcasting
    elif kind == "diag_attn":
        score = regeneration
    else:  # img_attn
        score = broadcasting
    return score, regeneration, broadcasting


def selection_scores(
        attn: Tensor,
        num_prefix: int,
        selection: str = "mixed_attn_max",
        generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Score every patch token; the lowest scores are propagated (METHOD.md section 3).

    attn: [B, H, n, n]; patch tokens are columns num_prefix.. of it. Returns
    (score [B, N], regeneration difficulty [B, N] or None, broadcasting ability
    [B, N] or None); the factors are returned for the strategies that use them.
    """
    return scores_from_statistics(selection_statistics(attn, selection), num_prefix, selection, generator)


def split_tokens(score: Tensor, num_prop: int) -> tuple[Tensor, Tensor]:
    """Indices of the propagated and of the kept patch tokens: score [B, N] -> ([B, P], [B, N-P]).

    Ties go to the lower index (a stable sort), so the choice is deterministic even
    where sparsification zeroes whole factors. Both index lists are sorted
    ascending, so kept tokens keep their relative order.
    """
    order = score.sort(dim=1, stable=True).indices
    return order[:, :num_prop].sort(dim=1).values, order[:, num_prop:].sort(dim=1).values


# ---------------------------------------------------------------------- propagation
def _rows(idx: Tensor, n: int) -> Tensor:
    """Per-image row indices [B, m] -> indices [B*m] into the B*n rows of all images.

    Rows are then copied with one index_select: several times cheaper on the CPU
    than a gather with an expanded index.
    """
    return (idx + torch.arange(idx.shape[0], device=idx.device).unsqueeze(1) * n).flatten()


def propagate(
        x: Tensor,
        size: Tensor,
        graph: Optional[Tensor],
        ids: Tensor,
        prop: Tensor,
        keep: Tensor,
        num_prefix: int,
        propagation: str = "graph",
        alpha: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Remove the propagated patch tokens, pushing their features into the kept ones.

    x: [B, n, C] all tokens; size: [B, n]; graph: W [B, N0, N0] over the ORIGINAL
    patch tokens (only needed for "graph"); ids: [B, N] the original id of each
    current patch token; prop [B, P] and keep [B, N-P] index the current patch
    tokens. Restricting W to the survivors (W <- W[K, K]) is the same as indexing
    the original W by their ids, so W itself is never gathered.
    Returns (x, size, ids, weights): the reduced tokens, sizes and ids (the
    "mean" token gets id -1), and the propagation weights alpha * W[K, R]
    [B, N-P, P] for "graph" (None otherwise).
    """
    if propagation not in PROPAGATIONS:
        raise ValueError(f"propagation must be one of {PROPAGATIONS}, got {propagation!r}")
    p0 = num_prefix
    B, n, C = x.shape
    rows_x, rows_s = x.reshape(B * n, C), size.reshape(B * n)
    prefix = torch.arange(p0, device=keep.device).expand(B, p0)
    survivors = _rows(torch.cat([prefix, keep + p0], dim=1), n)
    x_new = rows_x.index_select(0, survivors).view(B, -1, C)
    s_new = rows_s.index_select(0, survivors).view(B, -1)
    ids_keep = ids.gather(1, keep)
    weights = None
    if propagation != "none":
        propagated = _rows(prop + p0, n)
        x_prop = rows_x.index_select(0, propagated).view(B, -1, C)
        s_prop = rows_s.index_select(0, propagated).view(B, -1)
    if propagation == "graph":
        N0 = graph.shape[-1]
        pairs = ids_keep.unsqueeze(2) * N0 + ids.gather(1, prop).unsqueeze(1)  # [B, N-P, P] flat into W
        weights = alpha * graph.flatten(1).gather(1, pairs.flatten(1)).view_as(pairs)
        # In place on the kept rows: x_K += alpha W[K, R] x_R, s_K += alpha W[K, R] s_R.
        # (A batched product into the [B, N-P, 1] view of s falls back to one tiny
        # product per image, so s takes a plain product and an add.)
        x_new[:, p0:].baddbmm_(weights.to(x.dtype), x_prop)
        s_new[:, p0:] += torch.bmm(weights.to(s_new.dtype), s_prop.unsqueeze(-1)).squeeze(-1)
    elif propagation == "mean":
        x_new = torch.cat([x_new, x_prop.mean(1, keepdim=True)], dim=1)
        s_new = torch.cat([s_new, s_prop.sum(1, keepdim=True)], dim=1)  # it stands for all of them
        ids_keep = torch.cat([ids_keep, ids_keep.new_full((B, 1), -1)], dim=1)
    return x_new, s_new, ids_keep, weights
