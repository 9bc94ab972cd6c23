"""Swapping a model's blocks for patched subclasses and back, whatever the model family.

GTP and ToMe keep a model's weights and give each transformer block the class
`subclass_of(its class)`, whose forward runs their step between the attention and
the MLP (as ToMe's authors do). Each family's adapter (`gtp.timm_adapter`,
`gtp.hf_adapter`) names the blocks; the swap itself is the same for all.
"""
from __future__ import annotations

from typing import Callable, Iterable

from torch import nn

TAGS = ("gtp", "tome")


def original_class(block: nn.Module) -> type:
    """The block's own class, whatever patch is installed."""
    for tag in TAGS:
        base = getattr(block, f"_{tag}_original_class", None)
        if base is not None:
            return base
    return type(block)


def swap_block_classes(blocks: Iterable[nn.Module], subclass_of: Callable[[type], type], state: object,
                       tag: str) -> None:
    """Give each block the class `subclass_of(its class)`; weights stay as they are.

    Each block keeps `_<tag>_original_class` (for `restore_block_classes`), `_<tag>_state`
    (shared by all blocks) and `_<tag>_index` (its depth). Used by GTP ("gtp") and ToMe ("tome").
    """
    for i, blk in enumerate(blocks):
        setattr(blk, f"_{tag}_original_class", blk.__class__)
        blk.__class__ = subclass_of(blk.__class__)
        setattr(blk, f"_{tag}_state", state)
        setattr(blk, f"_{tag}_index", i)


def restore_block_classes(blocks: Iterable[nn.Module], tag: str) -> None:
    """Undo `swap_block_classes(..., tag)`: every block is its original class again."""
    for blk in blocks:
        blk.__class__ = getattr(blk, f"_{tag}_original_class")
        for name in ("original_class", "state", "index"):
            delattr(blk, f"_{tag}_{name}")


def no_mask(who: str, args: tuple, kwargs: dict) -> None:
    """Refuse a block call with an attention mask (or causal attention): the patched
    forwards attend over every token. `args`/`kwargs`: the block's arguments after x
    (timm: attn_mask, is_causal; transformers: attention_mask; a vision model passes None)."""
    if any(v is not None and v is not False for v in (*args, *kwargs.values())):
        raise ValueError(f"{who}-patched models do not take an attention mask")
