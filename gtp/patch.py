"""Patch a vision transformer (timm, or transformers: `gtp.adapters`) in place with GTP.

Like ToMe, each transformer block's class is swapped for a subclass whose forward
runs attention -> selection -> propagation -> MLP; the weights are untouched.
Every block of one timm class gets the same subclass, so torch.compile sees one
forward function. State shared by the blocks of one forward (token sizes, the
graph W, original patch ids) lives in one `GTPState` object on the model. What
the forward needs from the model comes from its family's adapter (`gtp.adapters`:
`gtp.timm_adapter` or `gtp.hf_adapter`); each step runs on the
fastest implementation for its tensors (`gtp.steps`).
"""
from __future__ import annotations

import functools
import sys
from types import ModuleType
from typing import Any, Optional

import torch
from torch import Tensor, nn

from . import adapters, block_swap, steps
from . import functional as G
from .config import GTPConfig, make_config, settings_of
from .trace import Trace, record_block, record_start


def _cache_key(t: Tensor) -> Optional[tuple]:
    """What a tensor built on `t`'s device may be kept under across forwards, or None when it
    may not: while torch.compile traces, or on the meta device. Under fake tensors (a cost
    model) it is kept per fake mode, so fake and real tensors never mix."""
    if torch.compiler.is_compiling() or t.device.type == "meta":
        return None
    return (t.device, torch._guards.detect_fake_mode())


class GTPState:
    """Per-model, per-forward state shared by the patched blocks."""

    def __init__(self, config: GTPConfig, num_prefix: int, grid_size: tuple[int, int], adapter: Any = None):
        self.config = config
        # The model family's adapter module, held by name: a module object cannot be deep-copied,
        # and `bench` and `cost` copy patched models.
        self.adapter_name = (adapter or adapters.timm_adapter).__name__
        self.num_prefix = num_prefix
        self.grid_size = grid_size          # set again by the patch-embed hook on every forward
        self.recorder: Optional[Trace] = None
        self.seed: Optional[int] = None     # seeds selection="random" afresh on every forward (None: global RNG)
        self.generator: Optional[torch.Generator] = None
        # Per forward:
        self.size: Optional[Tensor] = None  # [B, n] token sizes
        self.graph: Optional[Tensor] = None  # [B, N0, N0] W over the original patch tokens ([1, N0, N0] if spatial)
        self.ids: Optional[Tensor] = None   # [B, N] original id of each current patch token
        # Across forwards: the grid graph depends only on the grid and the device.
        self._spatial: dict[tuple, tuple[Tensor, Tensor]] = {}

    @property
    def adapter(self) -> ModuleType:
        """The model family's adapter module (`gtp.timm_adapter` or `gtp.hf_adapter`)."""
        return sys.modules[self.adapter_name]

    def spatial(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The grid adjacency A [N0, N0] and its normalised W [1, N0, N0], kept per grid and device."""
        key = _cache_key(x)
        if key is not None and (self.grid_size, key) in self._spatial:
            return self._spatial[self.grid_size, key]
        adjacency = G.spatial_adjacency(*self.grid_size, device=x.device)
        graph = (adjacency, G.normalise_adjacency(adjacency).unsqueeze(0))
        if key is not None:
            self._spatial[self.grid_size, key] = graph
        return graph

    def start(self, x: Tensor) -> None:
        """Called by block 0 with its input x: [B, n, C] (after pos-embed and norm_pre)."""
        cfg, p0 = self.config, self.num_prefix
        B, n, _ = x.shape
        N = n - p0
        if self.grid_size[0] * self.grid_size[1] != N:
            raise RuntimeError(f"patch grid {self.grid_size} does not match the {N} patch tokens")
        self.size = torch.ones(B, n, device=x.device, dtype=torch.float32)
        patches = x[:, p0:]
        parts, self.graph = None, None
        if cfg.propagation == "graph" and any(cfg.num_prop):
            adjacency, normalised = self.spatial(x) if cfg.graph != "semantic" else (None, None)
            if cfg.graph == "spatial":  # the same W for every image: one [1, N0, N0], never copied per image
                parts, self.graph = G.GraphParts(adjacency, None, None), normalised
            else:
                similarity = G.cosine_similarity(patches)
                semantic = G.semantic_adjacency(similarity, cfg.num_neighbours)
                parts = G.GraphParts(adjacency, semantic, similarity)
                self.graph = G.graph_from_parts(parts, B)
        self.ids = torch.arange(N, device=x.device).expand(B, N)
        if self.seed is not None:  # the same draws on every forward: a seeded baseline is repeatable
            self.generator = torch.Generator(device=x.device).manual_seed(self.seed)
        if self.recorder is not None:
            record_start(self.recorder, self.grid_size, p0, cfg, patches, parts)


@functools.lru_cache(maxsize=None)
def _gtp_block_class(block_cls: type) -> type:
    """The subclass of a block class whose forward runs GTP (one per block class, any family)."""

    class GTPBlock(block_cls):
        _gtp_state: GTPState
        _gtp_index: int

        def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            state = self._gtp_state
            cfg, p0, rec, A = state.config, state.num_prefix, state.recorder, state.adapter
            block_swap.no_mask("GTP", args, kwargs)
            if self._gtp_index == 0:
                state.start(x)
            num_prop = cfg.num_prop[self._gtp_index]
            n = x.shape[1]
            if n - p0 <= num_prop:
                num_prop = 0  # a block with no more than P patch tokens left propagates none
            if rec is None and num_prop == 0 and cfg.sparsity >= 1.0 and not cfg.token_scale:
                return super().forward(x, *args, **kwargs)  # exactly the model's own block

            # Selection names what it reads; attention computes just that (and the maps for a trace).
            attn = A.attention(self)
            heads = A.heads(attn, A.attention_input(self, x))
            attended = steps.attend(heads.q, heads.k, heads.v, state.size if cfg.token_scale else None,
                                    cfg.sparsity, A.scale(attn),
                                    G.selection_input(cfg.selection) if num_prop > 0 else "none", rec is not None)
            x = A.add_attention(self, x, A.output(attn, attended.out, heads.gate))

            candidates = state.ids
            choice = weights = None
            if num_prop > 0:
                choice = steps.choose(attended, candidates, p0, cfg.selection, num_prop, state.generator)
                x, state.size, state.ids, weights = steps.propagate(
                    x, state.size, state.graph, candidates, choice, p0, cfg.propagation, cfg.alpha, rec is not None)
            if rec is not None:
                record_block(rec, block=self._gtp_index, tokens_in=n, candidates=candidates, attended=attended,
                             choice=choice, weights=weights, kept=state.ids, sizes=state.size)
            return A.add_mlp(self, x)

    GTPBlock.__name__ = f"GTP{block_cls.__name__}"
    GTPBlock.__qualname__ = GTPBlock.__name__
    return GTPBlock


def patch(model: nn.Module, config: Optional[GTPConfig] = None, *, seed: Optional[int] = None,
          **overrides: Any) -> nn.Module:
    """Apply GTP to a vision transformer in place and return it: a timm VisionTransformer or a
    transformers model of a class `gtp.hf_adapter.SUPPORTED` lists (ViT, DeiT, DINOv2, CLIP, SigLIP).

    config: a `gtp.GTPConfig` (default: the published setting, `gtp.PUBLISHED`).
    overrides: any of its fields by keyword (num_prop, sparsity, ...; gtp/config.py gives
    each one's meaning and valid range), replacing the config's value, e.g.
        gtp.patch(model, num_prop=8, sparsity=0.6)

    seed: with selection="random", draw the scores from a generator seeded with it at the
    start of every forward (so each forward of the same batch drops the same tokens);
    None draws from PyTorch's global generator.

    Bad values raise ValueError naming the valid range. Calling it again reconfigures
    the model; `gtp.unpatch` restores it.
    """
    A = adapters.of(model)
    A.check_model(model, "gtp.patch")
    grid = A.grid_size(model)
    config = make_config(depth=len(A.blocks(model)), num_patches=grid[0] * grid[1],
                         num_prefix=A.num_prefix(model), **settings_of(config, **overrides))
    state = getattr(model, "_gtp_state", None)
    if state is not None:
        state.config, state.seed, state.generator = config, seed, None
        return model
    state = GTPState(config, A.num_prefix(model), grid, A)
    state.seed = seed
    model._gtp_state = state
    model._gtp_hook = A.on_grid_change(model, lambda grid: setattr(state, "grid_size", grid))
    A.swap_block_classes(model, _gtp_block_class, state, "gtp")
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `gtp.patch`: the model behaves exactly as before it was patched."""
    if getattr(model, "_gtp_state", None) is None:
        return model
    model._gtp_hook.remove()
    adapters.of(model).restore_block_classes(model, "gtp")
    del model._gtp_state, model._gtp_hook
    return model


def config_of(model: nn.Module) -> Optional[GTPConfig]:
    """The GTP configuration of a patched model, or None."""
    state = getattr(model, "_gtp_state", None)
    return None if state is None else state.config
