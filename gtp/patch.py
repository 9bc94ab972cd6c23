"""Patch a timm VisionTransformer in place with GTP. The one module that knows timm's internals.

Like ToMe, each transformer block's class is swapped for a subclass whose forward
runs attention -> selection -> propagation -> MLP; the weights are untouched.
Every block of one timm class gets the same subclass, so torch.compile sees one
forward function. State shared by the blocks of one forward (token sizes, the
graph W, original patch ids) lives in one `GTPState` object on the model.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as G
from .config import GTPConfig, make_config, settings_of
from .trace import Trace, record_block, record_start


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
        cfg, p0 = self.config, self.num_prefix
        B, n, _ = x.shape
        N = n - p0
        if self.grid_size[0] * self.grid_size[1] != N:
            raise RuntimeError(f"patch grid {self.grid_size} does not match the {N} patch tokens")
        self.size = torch.ones(B, n, device=x.device, dtype=torch.float32)
        patches = x[:, p0:]
        parts = None
        if cfg.propagation == "graph" and any(cfg.num_prop):
            parts = G.graph_parts(patches, self.grid_size, cfg.graph, cfg.num_neighbours)
            self.graph = G.graph_from_parts(parts, B)
        else:
            self.graph = None
        self.ids = torch.arange(N, device=x.device).expand(B, N)
        if self.recorder is not None:
            record_start(self.recorder, self.grid_size, p0, cfg, patches, parts)


def _attend(attn: nn.Module, x: Tensor, size: Optional[Tensor], sparsity: float,
            statistics: bool = False, keep_maps: bool = False) -> tuple[Tensor, G.Attention]:
    """timm `Attention.forward` with GTP's attention (token scale, sparsification).

    x: [B, n, C]. Returns (output [B, n, C], the `functional.attention` result
    with the statistics / maps asked for).
    """
    B, n, C = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if statistics or keep_maps or sparsity < 1.0:
        attended = G.attention(q, k, v, size, sparsity, attn.scale, statistics, keep_maps)
        out = attended.out
    else:  # no map needed: the fused kernel, with token scale as an additive bias
        bias = None if size is None else size.log().to(q.dtype)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        attended = G.Attention(out, None, None, None)
    out = out.transpose(1, 2).reshape(B, n, attn.attn_dim)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), attended


@functools.lru_cache(maxsize=None)
def _gtp_block_class(block_cls: type) -> type:
    """The subclass of a timm Block whose forward runs GTP (one per Block class)."""

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

            # Selection names what it reads; attention computes just that (and the maps for a trace).
            needs = G.selection_input(cfg.selection) if num_prop > 0 else "none"
            y, attended = _attend(self.attn, self.norm1(x), state.size if cfg.token_scale else None,
                                  cfg.sparsity, needs == "statistics", needs == "map" or rec is not None)
            x = x + self.drop_path1(self.ls1(y))

            candidates = state.ids
            score = regeneration = broadcasting = keep = weights = None
            prop = candidates.new_empty(x.shape[0], 0)
            if num_prop > 0:
                score, regeneration, broadcasting = G.selection_scores(attended, p0, cfg.selection)
                prop, keep = G.split_tokens(score, num_prop)
                x, state.size, state.ids, weights = G.propagate(
                    x, state.size, state.graph, state.ids, prop, keep, p0, cfg.propagation, cfg.alpha)
            if rec is not None:
                record_block(rec, block=self._gtp_index, tokens_in=n, candidates=candidates, attended=attended,
                             score=score, regeneration=regeneration, broadcasting=broadcasting, prop=prop,
                             keep=keep, weights=weights, kept=state.ids, sizes=state.size)
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

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
