"""Which adapter runs a model: `gtp.timm_adapter` for timm ViTs, `gtp.hf_adapter` for transformers ones.

Both expose the same functions (check_model, blocks, grid_size, num_prefix, on_grid_change,
attention, attention_input, heads, output, scale, add_attention, add_mlp, num_heads,
forward, swap_block_classes, restore_block_classes), so GTP, ToMe, the trace and the
GMACs count never ask which family a model is. `transformers` is imported only for its models.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional

from torch import Tensor, nn

from . import timm_adapter


def is_transformers(model: nn.Module) -> bool:
    """Whether `model` is a Hugging Face transformers model (read from its class: nothing is imported)."""
    return type(model).__module__.startswith("transformers.")


def of(model: nn.Module) -> ModuleType:
    """The adapter module for `model`'s family."""
    if is_transformers(model):
        from . import hf_adapter
        return hf_adapter
    return timm_adapter


def depth(model: nn.Module) -> int:
    """Transformer blocks in the model."""
    return len(of(model).blocks(model))


def num_heads(model: nn.Module) -> int:
    """Attention heads per block."""
    return of(model).num_heads(model)


def grid_size(model: nn.Module, img_size: Optional[tuple[int, int]] = None) -> tuple[int, int]:
    """The patch grid (rows, columns) at `img_size` (H, W), by default the model's configured one
    (a timm model is built for one size; a transformers DINOv2 takes any, e.g. 224 px where it was
    configured at 518)."""
    if img_size is None or not is_transformers(model):
        return of(model).grid_size(model)
    from .hf_adapter import patch_size
    (h, w), (ph, pw) = img_size, patch_size(model)
    return h // ph, w // pw


def num_prefix(model: nn.Module) -> int:
    """Tokens before the patches (CLS, distillation, registers)."""
    return of(model).num_prefix(model)


def forward(model: nn.Module, x: Tensor):
    """One forward of the model on images x [B, 3, H, W]."""
    return of(model).forward(model, x)
