"""The one module that knows timm's VisionTransformer internals; GTP and ToMe patch models through it.

Both methods keep timm's weights and swap each block's class for a subclass whose
forward runs their own step between the attention and the MLP (as ToMe's authors do).
What those forwards need from timm is here: which models they accept, the attention's
heads (q, k, v), its output projection, the block's residual branches, the patch grid
and the class swap. A new timm release that renames a layer is fixed in this file.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from torch import Tensor, nn

from . import block_swap


def check_model(model: nn.Module, who: str) -> None:
    """Refuse what the patched forwards cannot run: `who` (e.g. "gtp.patch") names the caller.

    Accepted: a timm `VisionTransformer` whose blocks are timm `Block`s (or a
    subclass one of the patches installed) with the standard `Attention`. An attention-pool
    head (`global_pool="map"`, e.g. SigLIP) pools the tokens that leave the last block, each
    counted once, as timm's `AttentionPoolLatent` does with any token count. Raises ValueError otherwise.
    """
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{who} supports timm VisionTransformer models; got {type(model).__name__}")
    for i, blk in enumerate(model.blocks):
        base = original_class(blk)
        if not issubclass(base, Block) or not isinstance(blk.attn, Attention):
            raise ValueError(f"block {i} is a {base.__name__} with {type(blk.attn).__name__}; "
                             f"{who} supports timm's Block with its standard Attention")


def blocks(model: nn.Module) -> nn.Sequential:
    """The transformer blocks, in order."""
    return model.blocks


def num_heads(model: nn.Module) -> int:
    """Attention heads per block."""
    return int(model.blocks[0].attn.num_heads)


def forward(model: nn.Module, x: Tensor) -> Tensor:
    """One forward on images x [B, 3, H, W] (what `gtp.gmacs` and the benchmarks run)."""
    return model(x)


def grid_size(model: nn.Module) -> tuple[int, int]:
    """The patch grid (rows, columns) at the model's configured image size."""
    return tuple(model.patch_embed.grid_size)


def num_prefix(model: nn.Module) -> int:
    """Tokens before the patches: CLS, distillation, registers (0 for average pooling)."""
    return int(model.num_prefix_tokens)


def on_grid_change(model: nn.Module, set_grid: Callable[[tuple[int, int]], None]):
    """Call `set_grid(rows, columns)` before each forward with that input's patch grid
    (models built with dynamic image sizes change it). Returns the hook handle."""
    def hook(patch_embed: nn.Module, args) -> None:
        if hasattr(patch_embed, "dynamic_feat_size"):
            set_grid(tuple(patch_embed.dynamic_feat_size(args[0].shape[-2:])))
    return model.patch_embed.register_forward_pre_hook(hook)


# ------------------------------------------------------------------------ one block
class Heads(NamedTuple):
    """timm `Attention`'s projections of one block input, split into heads."""
    q: Tensor               # [B, H, n, d] after q_norm (views into one qkv tensor)
    k: Tensor               # [B, H, n, d] after k_norm
    v: Tensor               # [B, H, n, d]
    gate: Optional[Tensor]  # [B, n, C] output gate of gated-attention models, else None


def attention(block: nn.Module) -> nn.Module:
    """The block's attention module (what `heads`, `output` and `scale` take)."""
    return block.attn


def attention_input(block: nn.Module, x: Tensor) -> Tensor:
    """The block's input x [B, n, C] as its attention reads it: norm1(x)."""
    return block.norm1(x)


def heads(attn: nn.Module, x: Tensor) -> Heads:
    """The start of timm's `Attention.forward`: x [B, n, C] -> q, k, v per head."""
    B, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return Heads(attn.q_norm(q), attn.k_norm(k), v, gate)


def output(attn: nn.Module, out: Tensor, gate: Optional[Tensor]) -> Tensor:
    """The end of timm's `Attention.forward`: per-head output [B, H, n, d] -> [B, n, C].

    The reshape is free when `out` lies in memory as [B, n, H, d] (the fused kernels write it so).
    """
    B, _, n, _ = out.shape
    out = attn.norm(out.transpose(1, 2).reshape(B, n, attn.attn_dim))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def scale(attn: nn.Module) -> float:
    """The factor on q k^T (1 / sqrt(head_dim) unless the model sets another)."""
    return float(attn.scale)


def add_attention(block: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The attention residual of timm's `Block`: x + drop_path1(ls1(y)), y the attention output."""
    return x + block.drop_path1(block.ls1(y))


def add_mlp(block: nn.Module, x: Tensor) -> Tensor:
    """The MLP residual of timm's `Block`: x + drop_path2(ls2(mlp(norm2(x))))."""
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


# ----------------------------------------------------------------------- class swap
def original_class(block: nn.Module) -> type:
    """The block's timm class, whatever patch is installed."""
    return block_swap.original_class(block)


def swap_block_classes(model: nn.Module, subclass_of: Callable[[type], type], state: object, tag: str) -> None:
    """`gtp.block_swap.swap_block_classes` on the model's blocks (GTP: tag "gtp", ToMe: "tome")."""
    block_swap.swap_block_classes(model.blocks, subclass_of, state, tag)


def restore_block_classes(model: nn.Module, tag: str) -> None:
    """Undo `swap_block_classes(..., tag)`: every block is its original class again."""
    block_swap.restore_block_classes(model.blocks, tag)
