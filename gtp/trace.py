"""What one GTP forward did, block by block, in ORIGINAL patch coordinates.

Patch ids are row-major positions on the patch grid (0 .. N-1). A token made by
`propagation="mean"` stands for several patches and has id -1.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Optional

import torch
from torch import Tensor

from . import functional as G


class Edges(NamedTuple):
    """Directed edges of one image: src[e] -> dst[e] with weight[e] ([E] each)."""
    src: Tensor
    dst: Tensor
    weight: Tensor


@dataclass
class LayerTrace:
    """Block `block` of one forward. B images; N_in patch tokens enter, N_out leave."""
    block: int
    tokens_in: int                      # tokens entering the block, prefix included
    tokens_out: int                     # tokens leaving the block, prefix included
    candidates: Tensor                  # [B, N_in] original ids of the patch tokens entering
    score: Optional[Tensor]             # [B, N_in] selection score (low = propagated); None if P = 0
    regeneration: Optional[Tensor]      # [B, N_in] max_h A[j, j] (mean_h for *_mean), when used
    broadcasting: Optional[Tensor]      # [B, N_in] max_h sum_i A[i, j], when used
    propagated: Tensor                  # [B, P_i] original ids of the tokens leaving here
    kept: Tensor                        # [B, N_out] original ids of the patch tokens after the block
    sizes: Tensor                       # [B, N_out] their token sizes after the block
    edges: list[Edges]                  # per image: propagated id -> receiving id, weight alpha * W
    zeroed_fraction: Tensor             # [B, H] share of attention entries zeroed by sparsification
    mass_removed: Tensor                # [B, H] share of the attention mass those entries held
    attn_before: Optional[Tensor] = None  # [B, H, n, n] map before sparsification (on request)
    attn_after: Optional[Tensor] = None   # [B, H, n, n] map after sparsification (on request)


@dataclass
class Trace:
    """The record of the last forward run inside `gtp.trace(model)`."""
    grid_size: tuple[int, int] = (0, 0)
    num_prefix: int = 0
    config: dict = field(default_factory=dict)
    spatial_edges: Optional[Edges] = None          # the grid graph, the same for every image
    semantic_edges: list[Edges] = field(default_factory=list)  # per image: i -> its M most similar
    similarity: Optional[Tensor] = None            # [B, N, N] cosine similarity of the patch tokens
    layers: list[LayerTrace] = field(default_factory=list)
    record_attention: bool = False

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def tokens_per_block(self) -> list[int]:
        """Tokens (prefix included) leaving each block."""
        return [layer.tokens_out for layer in self.layers]

    def summary(self, image: int = 0) -> dict:
        """A JSON-ready record of one image: ids, sizes, edges and sparsity per block."""
        def lst(t: Optional[Tensor]):
            return None if t is None else t[image].tolist()

        def edge_list(e: Edges):
            return [[int(s), int(d), round(float(w), 6)] for s, d, w in zip(e.src, e.dst, e.weight)]

        return {
            "grid_size": list(self.grid_size),
            "num_prefix": self.num_prefix,
            "config": self.config,
            "spatial_edges": edge_list(self.spatial_edges) if self.spatial_edges else [],
            "semantic_edges": edge_list(self.semantic_edges[image]) if self.semantic_edges else [],
            "layers": [
                {
                    "block": layer.block,
                    "tokens_in": layer.tokens_in,
                    "tokens_out": layer.tokens_out,
                    "propagated": lst(layer.propagated),
                    "kept": lst(layer.kept),
                    "sizes": [round(float(s), 5) for s in layer.sizes[image]],
                    "score": None if layer.score is None else [round(float(s), 7) for s in layer.score[image]],
                    "edges": edge_list(layer.edges[image]) if layer.edges else [],
                    "zeroed_fraction": lst(layer.zeroed_fraction),
                    "mass_removed": lst(layer.mass_removed),
                }
                for layer in self.layers
            ],
        }

    def to_json(self, image: int = 0) -> str:
        return json.dumps(self.summary(image))


def edges_from_adjacency(adj: Tensor) -> Edges:
    """Nonzero entries of an [N, N] matrix as edges i -> j."""
    i, j = adj.nonzero(as_tuple=True)
    return Edges(i, j, adj[i, j])


def record_start(
        record: Trace,
        grid_size: tuple[int, int],
        num_prefix: int,
        config: Any,
        patches: Tensor,
        parts: Optional[G.GraphParts] = None,
) -> None:
    """Start the record of a forward: its settings and the graphs over the original patches.

    patches: [B, N, C] block 0's patch tokens; config: the model's `GTPConfig`;
    parts: the graph the forward built (None when it built none). The parts it
    lacks (the semantic kNN of a spatial graph, or every part when propagation
    needs no graph) are computed here, for display only.
    """
    record.grid_size, record.num_prefix, record.config = grid_size, num_prefix, dataclasses.asdict(config)
    record.layers = []
    parts = parts or G.GraphParts(None, None, None)
    patches = patches.detach()
    spatial = parts.spatial if parts.spatial is not None else G.spatial_adjacency(*grid_size, device=patches.device)
    similarity = parts.similarity if parts.similarity is not None else G.cosine_similarity(patches)
    semantic = parts.semantic
    if semantic is None:
        semantic = G.semantic_adjacency(similarity, min(config.num_neighbours, patches.shape[1] - 1))
    record.spatial_edges = edges_from_adjacency(spatial.detach())
    record.similarity = similarity.detach()
    record.semantic_edges = [edges_from_adjacency(a) for a in semantic.detach()]


def record_block(
        record: Trace,
        *,
        block: int,
        tokens_in: int,
        candidates: Tensor,
        attended: G.Attention,
        choice: Optional[Any],
        weights: Optional[Tensor],
        kept: Tensor,
        sizes: Tensor,
) -> None:
    """Append what block `block` did to the record, from the tensors the block used.

    candidates: [B, N_in] original ids of the patch tokens entering; attended:
    the block's attention, with its maps; choice: the block's `steps.Choice`
    (prop [B, P] / keep [B, N_in-P] index candidates; score and its factors), or
    None when it propagated nothing; weights: the propagation weights
    [B, N_in-P, P] or None; kept [B, N_out], sizes [B, n_out]: the ids and token
    sizes (prefix included) after the block.
    """
    p0 = record.num_prefix
    prop = candidates.new_empty(candidates.shape[0], 0) if choice is None else choice.prop
    propagated = candidates.gather(1, prop)             # [B, P]
    edges = []
    if weights is not None:
        receivers = candidates.gather(1, choice.keep)   # [B, N-P]
        for b in range(candidates.shape[0]):
            k_i, r_i = weights[b].nonzero(as_tuple=True)
            edges.append(Edges(propagated[b, r_i], receivers[b, k_i], weights[b, k_i, r_i].float()))
    before, after = attended.dense_map.float(), attended.sparse_map.float()
    zeroed = ((after == 0) & (before != 0)).float().mean((-2, -1))
    removed = (before - after).sum((-2, -1)) / before.sum((-2, -1))
    record.layers.append(LayerTrace(
        block=block,
        tokens_in=tokens_in,
        tokens_out=p0 + kept.shape[1],
        candidates=candidates,
        score=None if choice is None else choice.score,
        regeneration=None if choice is None else choice.regeneration,
        broadcasting=None if choice is None else choice.broadcasting,
        propagated=propagated,
        kept=kept,
        sizes=sizes[:, p0:].clone(),
        edges=edges,
        zeroed_fraction=zeroed,
        mass_removed=removed,
        attn_before=attended.dense_map if record.record_attention else None,
        attn_after=attended.sparse_map if record.record_attention else None,
    ))


@contextlib.contextmanager
def trace(model: torch.nn.Module, attention: bool = False) -> Iterator[Trace]:
    """Record every forward of a patched model run inside the block.

    `attention=True` also keeps each block's full attention maps (large).
    The record holds the LAST forward run inside the block.
    """
    state = getattr(model, "_gtp_state", None)
    if state is None:
        raise ValueError("gtp.trace needs a model patched with gtp.patch(model, ...)")
    record = Trace(record_attention=attention)
    state.recorder = record
    try:
        yield record
    finally:
        state.recorder = None
