"""The GTP method as pure functions on tensors (SPEC.md sections 1-4).

Shapes: B images, H heads, n tokens in a block (prefix included), N patch tokens,
C channels, p0 prefix tokens (CLS, distillation, registers) that come first.
Nothing here knows about timm; `gtp.patch` wires these functions into a model.
Sparsification and its fast paths live in `gtp.kernels`.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels

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


def cosine_similarity(x: Tensor) -> Tensor:
    """Cosine similarity of every pair of tokens: x [B, N, C] -> [B, N, N] float32."""
    x = F.normalize(x.float(), dim=-1)
    return x @ x.transpose(1, 2)


def semantic_adjacency(similarity: Tensor, num_neighbours: int) -> Tensor:
    """Directed kNN graph, no self loops: similarity [B, N, N] -> [B, N, N] float.

    Row i has ones at the `num_neighbours` tokens most similar to token i
    (`similarity` is left unchanged).
    """
    sim = similarity.clone()
    sim.diagonal(dim1=1, dim2=2).fill_(-math.inf)
    nbrs = sim.topk(num_neighbours, dim=-1).indices
    return torch.zeros_like(sim).scatter_(-1, nbrs, 1.0)


def normalise_adjacency(adj: Tensor) -> Tensor:
    """W = D^-1/2 A D^-1/2 with D the row sums of A: [..., N, N] -> [..., N, N]."""
    d = adj.sum(-1).clamp(min=1e-12).rsqrt()  # a token with no edge keeps a zero row
    return d.unsqueeze(-1) * adj * d.unsqueeze(-2)


class GraphParts(NamedTuple):
    """The adjacencies a graph is made of (None where the graph kind has no such part)."""
    spatial: Optional[Tensor]     # [N, N] 8-neighbour grid ("spatial", "mixed")
    semantic: Optional[Tensor]    # [B, N, N] kNN on cosine similarity ("semantic", "mixed")
    similarity: Optional[Tensor]  # [B, N, N] the cosine similarity the kNN was taken from


def graph_parts(x: Tensor, grid_size: tuple[int, int], graph: str = "mixed", num_neighbours: int = 8) -> GraphParts:
    """The adjacencies of the token graph of SPEC.md section 1, before normalisation.

    x: [B, N, C] patch tokens after the position embedding.
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    spatial = spatial_adjacency(*grid_size, device=x.device) if graph != "semantic" else None
    similarity = semantic = None
    if graph != "spatial":
        similarity = cosine_similarity(x)
        semantic = semantic_adjacency(similarity, num_neighbours)
    return GraphParts(spatial, semantic, similarity)


def graph_from_parts(parts: GraphParts, batch: int) -> Tensor:
    """W: the normalised union of the parts' edges, [B, N, N] float32."""
    spatial, semantic = parts.spatial, parts.semantic
    if semantic is None:
        adj = spatial.expand(batch, -1, -1)
    else:
        adj = semantic if spatial is None else torch.maximum(spatial, semantic)
    return normalise_adjacency(adj)


def build_graph(x: Tensor, grid_size: tuple[int, int], graph: str = "mixed", num_neighbours: int = 8) -> Tensor:
    """The normalised token graph W of SPEC.md section 1: x [B, N, C] -> W [B, N, N] float32."""
    return graph_from_parts(graph_parts(x, grid_size, graph, num_neighbours), x.shape[0])


# ------------------------------------------------------------------------ attention
def attention_map(q: Tensor, k: Tensor, size: Optional[Tensor] = None, scale: float = 1.0) -> Tensor:
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
        bias = size.log().to(q.dtype)[:, None, None, :].expand(B, H, 1, n).reshape(B * H, 1, n)
        logits = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)
    logits = logits.float()  # the softmax runs in float32 under autocast too
    if (logits.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
        return logits.softmax(dim=-1).view(B, H, n, n)
    torch.softmax(logits, dim=-1, out=logits)  # in place: the map is the largest tensor here
    return logits.view(B, H, n, n)


def cls_attention_row(q: Tensor, k: Tensor, size: Optional[Tensor] = None, scale: float = 1.0) -> Tensor:
    """Row 0 of the attention map (the CLS token's query) alone: [B, H, n] float32.

    What CLS-attention selection reads when nothing is sparsified: one query row
    instead of the n x n map (the output itself comes from the fused SDPA kernel).
    """
    logits = (q[:, :, :1] @ k.transpose(-2, -1)).float().squeeze(2) * scale  # [B, H, n]
    if size is not None:
        logits = logits + size.log()[:, None, :]
    return logits.softmax(dim=-1)


class Attention(NamedTuple):
    """What `attention` computed: the output and, on request, what selection and tracing read."""
    out: Tensor                                  # [B, H, n, d] A @ V, A sparsified
    statistics: Optional[tuple[Tensor, Tensor]]  # ([B, H, n] diagonal, [B, H, n] column sums) of A
    dense_map: Optional[Tensor]                  # [B, H, n, n] A before sparsification
    sparse_map: Optional[Tensor]                 # [B, H, n, n] A as used for A @ V
    cls_row: Optional[Tensor] = None             # [B, H, n] row 0 of A (CLS-attention selection)


def attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        size: Optional[Tensor] = None,
        sparsity: float = 1.0,
        scale: float = 1.0,
        statistics: bool = False,
        keep_maps: bool = False,
) -> Attention:
    """GTP attention: token scale, sparsification, the map used for A @ V (SPEC.md section 2).

    q, k, v: [B, H, n, d]; size: [B, n] or None; scale multiplies q k^T.
    `statistics`: also return the diagonal and column sums of the sparsified
    map (`kernels.sparsify`); `keep_maps`: also return the maps before and after
    sparsification. Eager float32 CPU tensors take `kernels.cpu_attention`
    (same operations, image by image); everything else one batched pass with
    static shapes and no host synchronisation.
    """
    B, H, n, d = q.shape
    if kernels.cpu_attention.applies(q, k, v, size):
        num_zero = kernels.num_zeroed(n, sparsity)
        return Attention(*kernels.cpu_attention.attention(q, k, v, size, num_zero, scale, statistics, keep_maps))
    amap = attention_map(q, k, size, scale)
    dense = amap.clone() if keep_maps else None
    amap, stats = kernels.sparsify(amap, sparsity, statistics)
    return Attention(amap.to(v.dtype) @ v, stats, dense, amap if keep_maps else None)


# ------------------------------------------------------------------------ selection
def parse_selection(selection: str) -> tuple[str, str]:
    """"mixed_attn_max" -> ("mixed_attn", "max"), "random" -> ("random", ""); raises on an unknown strategy."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "random":
        return "random", ""
    kind, _, reduce = selection.rpartition("_")
    return kind, reduce


def _over_heads(t: Tensor, reduce: str) -> Tensor:
    """[B, H, ...] -> [B, ...]: max or mean over the heads.

    The mean adds the heads in order 0..H-1, then divides by H: the Triton selection
    kernel does the same, so both paths give the same bits (torch's `mean` may
    interleave the additions, which moves the last bit and could flip a near-tie).
    """
    if reduce == "max":
        return t.amax(1)
    total = t[:, 0].clone()
    for h in range(1, t.shape[1]):
        total += t[:, h]
    return total / t.shape[1]


def selection_input(selection: str) -> str:
    """What a selection strategy reads from the block's attention.

    "statistics": the diagonal and column sums (mixed, diag, img, sum_attn);
    "cls_row": row 0 of the sparsified map (cls_attn); "map": the sparsified map
    itself (cos_sim); "none": nothing (random scores are noise).
    """
    kind, _ = parse_selection(selection)
    if kind in ("mixed_attn", "diag_attn", "img_attn", "sum_attn"):
        return "statistics"
    return {"random": "none", "cls_attn": "cls_row"}.get(kind, "map")


def selection_scores(
        attended: Attention,
        num_prefix: int,
        selection: str = "mixed_attn_max",
        generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Score every patch token; the lowest scores are propagated (SPEC.md section 3).

    attended: the block's `attention`, computed with what `selection_input`
    names; patch tokens are tokens num_prefix.. of it. Returns (score [B, N],
    regeneration difficulty [B, N] or None, broadcasting ability [B, N] or
    None); the factors are returned for the strategies that use them.
    """
    p0 = num_prefix
    kind, reduce = parse_selection(selection)
    if kind == "random":
        B, _, n, _ = attended.out.shape
        return torch.rand(B, n - p0, device=attended.out.device, generator=generator), None, None
    if kind == "cls_attn":
        if p0 == 0:
            raise ValueError(f"selection {selection!r} needs a CLS token; this model has none")
        row = attended.cls_row if attended.cls_row is not None else attended.sparse_map[:, :, 0]
        return _over_heads(row[:, :, p0:].float(), reduce), None, None
    if kind == "cos_sim":
        rows = F.normalize(_over_heads(attended.sparse_map.float(), reduce)[:, p0:, :], dim=-1)  # [B, N, n]
        return -(rows @ rows.transpose(1, 2)).sum(-1), None, None
    diagonal, column_sums = attended.statistics
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

    x: [B, n, C] all tokens; size: [B, n]; graph: W [B or 1, N0, N0] over the ORIGINAL
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
        graph = graph.expand(B, N0, N0)  # a spatial graph may be one [1, N0, N0] for all images
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
