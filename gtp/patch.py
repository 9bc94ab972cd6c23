"""Patch a timm VisionTransformer in place with GTP. The one module that knows timm's internals.

Like ToMe, each transformer block's class is swapped for a subclass whose forward
runs attention -> selection -> propagation -> MLP; the weights are untouched.
State shared by the blocks of one forward (token sizes, the graph W, original
patch ids while tracing) lives in one `GTPState` object on the model.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as G
from .config import GTPConfig, make_config, settings_of
from .trace import Edges, LayerTrace, Trace, edges_from_adjacency

# Images per attention chunk on CPU (see `functional.attention`); CUDA takes the batch at once.
CPU_CHUNK = 1


class GTPState:
    """Per-model, per-forward state shared by the patched blocks."""

    def __init__(self, config: GTPConfig, num_prefix: int, grid_size: tuple[int, int]):
        self.config = config
        self.num_prefix = num_prefix
        self.grid_size = grid_size          # set again by the patch-embed hook on every forward
        self.recorder: Optional[Trace] = None
        # Per forward:
        self.size: Optional[Tensor] = None  # [B, n] token sizes
        self.graph: Optional[Tensor] = None  # [B, N0, N0] W over the original patch tokens
        self.ids: Optional[Tensor] = None   # [B, N] original id of each current patch token

    def start(self, x: Tensor) -> None:
        """Called by block 0 with its input x: [B, n, C] (after pos-embed and norm_pre)."""
        cfg, p0, rec = self.config, self.num_prefix, self.recorder
        B, n, _ = x.shape
        N = n - p0
        if self.grid_size[0] * self.grid_size[1] != N:
            raise RuntimeError(f"patch grid {self.grid_size} does not match the {N} patch tokens")
        self.size = torch.ones(B, n, device=x.device, dtype=torch.float32)
        patches = x[:, p0:]
        needs_graph = cfg.propagation == "graph" and any(cfg.num_prop)
        self.graph = G.build_graph(patches, self.grid_size, cfg.graph, cfg.num_neighbours) if needs_graph else None
        self.ids = torch.arange(N, device=x.device).expand(B, N)
        if rec is not None:
            rec.grid_size, rec.num_prefix, rec.config = self.grid_size, p0, cfg.as_dict()
            rec.layers = []
            rec.spatial_edges = edges_from_adjacency(G.spatial_adjacency(*self.grid_size, device=x.device))
            unit = F.normalize(patches.detach().float(), dim=-1)
            rec.similarity = unit @ unit.transpose(1, 2)
            semantic = G.semantic_adjacency(patches.detach(), min(cfg.num_neighbours, N - 1))
            rec.semantic_edges = [edges_from_adjacency(a) for a in semantic]


def _attend(attn: nn.Module, x: Tensor, size: Optional[Tensor], sparsity: float,
            reduce=None, keep_maps: bool = False) -> tuple[Tensor, Optional[tuple], Optional[tuple]]:
    """timm `Attention.forward` with GTP's attention (token scale, sparsification).

    x: [B, n, C]. Returns (output [B, n, C], reduce's per-image results or None,
    (map before, map after sparsification) [B, H, n, n] when keep_maps).
    """
    B, n, C = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    reduced = maps = None
    if reduce is not None or keep_maps or sparsity < 1.0:
        chunk = 0 if x.is_cuda else CPU_CHUNK
        out, reduced, maps = G.attention(q, k, v, size, sparsity, reduce, keep_maps, chunk, attn.scale)
    else:  # no map needed: the fused kernel, with token scale as an additive bias
        bias = None if size is None else size.log().to(q.dtype)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out = out.transpose(1, 2).reshape(B, n, attn.attn_dim)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), reduced, maps


def _gtp_block_class(block_cls: type) -> type:
    """A subclass of a timm Block whose forward runs GTP."""

    class GTPBlock(block_cls):
        _gtp_state: GTPState
        _gtp_index: int

        def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
            state = self._gtp_state
            cfg, p0, rec = state.config, state.num_prefix, state.recorder
            if attn_mask is not None or is_causal:
                raise ValueError("GTP-patched models do not take an attention mask")
            if self._gtp_index == 0:
                state.start(x)
            num_prop = cfg.num_prop[self._gtp_index]
            n = x.shape[1]
            if n - p0 <= num_prop:
                num_prop = 0  # a block with no more than P patch tokens left propagates none
            if rec is None and num_prop == 0 and cfg.sparsity >= 1.0 and not cfg.token_scale:
                return super().forward(x)  # exactly timm's block

            size = state.size if cfg.token_scale else None

            select = G.statistics_function(cfg.selection) if num_prop > 0 else None  # taken chunk by chunk
            y, stats, maps = _attend(self.attn, self.norm1(x), size, cfg.sparsity, select, keep_maps=rec is not None)
            x = x + self.drop_path1(self.ls1(y))

            score = regeneration = broadcasting = None
            prop = x.new_empty(x.shape[0], 0, dtype=torch.long)
            weights = None
            keep = None
            candidates = state.ids
            if num_prop > 0:
                score, regeneration, broadcasting = G.scores_from_statistics(stats, p0, cfg.selection)
                prop, keep = G.split_tokens(score, num_prop)
                x, state.size, state.ids, weights = G.propagate(
                    x, state.size, state.graph, state.ids, prop, keep, p0, cfg.propagation, cfg.alpha)
            if rec is not None:
                self._record(rec, state, n, x.shape[1], maps, score, regeneration,
                             broadcasting, candidates, prop, keep, weights)
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

        def _record(self, rec, state, n_in, n_out, maps, score, regeneration,
                    broadcasting, candidates, prop, keep, weights) -> None:
            p0 = state.num_prefix
            propagated = candidates.gather(1, prop)             # [B, P]
            edges = []
            if weights is not None:
                receivers = candidates.gather(1, keep)          # [B, N-P]
                for b in range(candidates.shape[0]):
                    k_i, r_i = weights[b].nonzero(as_tuple=True)
                    edges.append(Edges(propagated[b, r_i], receivers[b, k_i], weights[b, k_i, r_i].float()))
            before, amap = maps
            after_f, before_f = amap.float(), before.float()
            zeroed = ((after_f == 0) & (before_f != 0)).float().mean((-2, -1))
            removed = (before_f - after_f).sum((-2, -1)) / before_f.sum((-2, -1))
            rec.layers.append(LayerTrace(
                block=self._gtp_index,
                tokens_in=n_in,
                tokens_out=n_out,
                candidates=candidates,
                score=score,
                regeneration=regeneration,
                broadcasting=broadcasting,
                propagated=propagated,
                kept=state.ids,
                sizes=state.size[:, p0:].clone(),
                edges=edges,
                zeroed_fraction=zeroed,
                mass_removed=removed,
                attn_before=before if rec.record_attention else None,
                attn_after=amap if rec.record_attention else None,
            ))

    GTPBlock.__name__ = f"GTP{block_cls.__name__}"
    GTPBlock.__qualname__ = GTPBlock.__name__
    return GTPBlock


def swap_block_classes(model: nn.Module, subclass_of: Callable[[type], type], state: object, tag: str) -> None:
    """Give each block of `model` the class `subclass_of(its class)`; weights stay as they are.

    Each block keeps `_<tag>_original_class` (for `restore_block_classes`), `_<tag>_state`
    (shared by all blocks) and `_<tag>_index` (its depth). Used by GTP ("gtp") and ToMe ("tome").
    """
    for i, blk in enumerate(model.blocks):
        setattr(blk, f"_{tag}_original_class", blk.__class__)
        blk.__class__ = subclass_of(blk.__class__)
        setattr(blk, f"_{tag}_state", state)
        setattr(blk, f"_{tag}_index", i)


def restore_block_classes(model: nn.Module, tag: str) -> None:
    """Undo `swap_block_classes(..., tag)`: every block is its original class again."""
    for blk in model.blocks:
        blk.__class__ = getattr(blk, f"_{tag}_original_class")
        for name in ("original_class", "state", "index"):
            delattr(blk, f"_{tag}_{name}")


def _grid_hook(state: GTPState):
    def hook(patch_embed: nn.Module, args) -> None:
        img = args[0]
        if hasattr(patch_embed, "dynamic_feat_size"):
            state.grid_size = tuple(patch_embed.dynamic_feat_size(img.shape[-2:]))
    return hook


def _check_model(model: nn.Module) -> None:
    from timm.models.vision_transformer import Block, VisionTransformer
    from timm.layers import Attention
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"gtp.patch supports timm VisionTransformer models; got {type(model).__name__}")
    for i, blk in enumerate(model.blocks):
        base = getattr(blk, "_gtp_original_class", type(blk))
        if not issubclass(base, Block) or not isinstance(blk.attn, Attention):
            raise ValueError(f"block {i} is a {base.__name__} with {type(blk.attn).__name__}; "
                             "gtp.patch supports timm's Block with its standard Attention")
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError("gtp.patch does not support attention-pool heads")


def patch(model: nn.Module, config: Optional[GTPConfig] = None, **overrides: Any) -> nn.Module:
    """Apply GTP to a timm VisionTransformer in place and return it.

    config: a `gtp.GTPConfig` (default: the published setting, `gtp.PUBLISHED`).
    overrides: any of its fields by keyword (num_prop, sparsity, ...; gtp/config.py gives
    each one's meaning and valid range), replacing the config's value, e.g.
        gtp.patch(model, num_prop=8, sparsity=0.6)

    Bad values raise ValueError naming the valid range. Calling it again reconfigures
    the model; `gtp.unpatch` restores it.
    """
    _check_model(model)
    grid = tuple(model.patch_embed.grid_size)
    config = make_config(depth=len(model.blocks), num_patches=grid[0] * grid[1],
                         num_prefix=model.num_prefix_tokens, **settings_of(config, **overrides))
    state = getattr(model, "_gtp_state", None)
    if state is not None:
        state.config = config
        return model
    state = GTPState(config, model.num_prefix_tokens, grid)
    model._gtp_state = state
    model._gtp_hook = model.patch_embed.register_forward_pre_hook(_grid_hook(state))
    swap_block_classes(model, _gtp_block_class, state, "gtp")
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `gtp.patch`: the model behaves exactly as before it was patched."""
    if getattr(model, "_gtp_state", None) is None:
        return model
    model._gtp_hook.remove()
    restore_block_classes(model, "gtp")
    del model._gtp_state, model._gtp_hook
    return model


def config_of(model: nn.Module) -> Optional[GTPConfig]:
    """The GTP configuration of a patched model, or None."""
    state = getattr(model, "_gtp_state", None)
    return None if state is None else state.config
