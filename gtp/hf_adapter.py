"""The one module that knows Hugging Face `transformers` vision transformers; GTP and ToMe patch them through it.

The same small interface as `gtp.timm_adapter` (which models are accepted, the blocks, the
attention's heads q, k, v, its output projection, the blocks' residual branches, the patch
grid, the class swap), so `gtp.patch`, `gtp.trace`, `gtp.tome`, `gtp.methods` and
`gtp.gmacs` run a transformers model exactly as they run a timm one. Written for
transformers 5.x, whose vision models name a block's parts per family:

  family                       blocks                        pre-norm / attention / residual scale
  ViT, DeiT                    `<tower>.layers`              layernorm_before / attention / dropout
  DINOv2 (+ registers)         `<tower>.encoder.layer`       norm1 / attention / layer_scale1, drop_path
  CLIP, SigLIP vision towers   `<tower>.encoder.layers`      layer_norm1 / self_attn / (none)

The attention modules hold q_proj, k_proj, v_proj and o_proj (ViT, DeiT, DINOv2) or
out_proj (CLIP, SigLIP). A patched block computes its own attention (`gtp.steps`), so the
model's attention implementation (eager, sdpa, ...) only matters where a block runs
unpatched (P = 0, theta = 1, no token scale: then the model's own forward runs, exactly).

`transformers` itself is imported only when a transformers model is checked.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

from torch import Tensor, nn

from . import block_swap
from .timm_adapter import Heads

# The classes accepted -> the attribute holding the vision tower ("" = the model is the tower).
SUPPORTED: dict[str, str] = {
    "ViTModel": "", "ViTForImageClassification": "vit",
    "DeiTModel": "", "DeiTForImageClassification": "deit", "DeiTForImageClassificationWithTeacher": "deit",
    "Dinov2Model": "", "Dinov2WithRegistersModel": "",
    "CLIPVisionModel": "", "CLIPModel": "vision_model",
    "SiglipVisionModel": "",
}


class Layout(NamedTuple):
    """Where one family's block keeps its parts (attribute names; None: the family has none)."""
    norm1: str
    attention: str
    norm2: str
    scale1: Optional[str]   # layer scale on the attention branch
    scale2: Optional[str]   # layer scale on the MLP branch
    drop: Optional[str]     # dropout / drop-path on both branches


_VIT = Layout("layernorm_before", "attention", "layernorm_after", None, None, "dropout")
_DINO = Layout("norm1", "attention", "norm2", "layer_scale1", "layer_scale2", "drop_path")
_CLIP = Layout("layer_norm1", "self_attn", "layer_norm2", None, None, None)
LAYOUTS: dict[str, Layout] = {
    "ViTLayer": _VIT, "DeiTLayer": _VIT,
    "Dinov2Layer": _DINO, "Dinov2WithRegistersLayer": _DINO,
    "CLIPEncoderLayer": _CLIP, "SiglipEncoderLayer": _CLIP,
}


def is_transformers(model: nn.Module) -> bool:
    """Whether `model` is a transformers model (read from its class's module: nothing is imported)."""
    return type(model).__module__.startswith("transformers.")


def tower(model: nn.Module) -> nn.Module:
    """The vision transformer inside `model` (itself for the bare models; `.vit`, `.deit`, `.vision_model`)."""
    attr = SUPPORTED.get(type(model).__name__, "")
    return getattr(model, attr) if attr else model


def blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks, in order."""
    t = tower(model)
    if hasattr(t, "layers"):
        return t.layers
    encoder = t.encoder
    return encoder.layer if hasattr(encoder, "layer") else encoder.layers


@functools.lru_cache(maxsize=None)
def _layout(cls: type) -> Layout:
    """The layout of a block class or of the patched subclass of one."""
    for base in cls.__mro__:
        if base.__name__ in LAYOUTS and base.__module__.startswith("transformers."):
            return LAYOUTS[base.__name__]
    raise ValueError(f"a {cls.__name__} block is not one of {', '.join(LAYOUTS)}")


def check_model(model: nn.Module, who: str) -> None:
    """Refuse what the patched forwards cannot run: ValueError naming the supported classes."""
    name = type(model).__name__
    if not is_transformers(model) or name not in SUPPORTED:
        raise ValueError(f"{who} supports these transformers models: {', '.join(SUPPORTED)} "
                         f"(and timm VisionTransformer models); got {name}")
    for i, blk in enumerate(blocks(model)):
        try:
            _layout(block_swap.original_class(blk))
        except ValueError as e:
            raise ValueError(f"{who}: block {i}: {e}") from None


def num_heads(model: nn.Module) -> int:
    """Attention heads per block."""
    attn = attention(blocks(model)[0])
    return int(getattr(attn, "num_attention_heads", None) or attn.num_heads)


def forward(model: nn.Module, x: Tensor):
    """One forward on images x [B, 3, H, W] (CLIPModel: its image features)."""
    if type(model).__name__ == "CLIPModel":
        return model.get_image_features(pixel_values=x)
    return model(pixel_values=x)


def has_head(model: nn.Module) -> bool:
    """Whether the model outputs class logits (the classification classes)."""
    return "ForImageClassification" in type(model).__name__


def features_and_logits(model: nn.Module, x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """(features [B, D], logits [B, C] or None) of one forward on images x [B, 3, H, W].

    Classifiers: the features are what the classifier reads (the class token of the
    normed last layer; with a teacher, the mean of the class and distillation tokens)
    and the logits come from the very operations of the model's forward. Backbones: the
    model's pooled output (DINOv2: the normed class token; CLIP: the post-normed class
    token, projected by CLIPModel; SigLIP: its attention-pooling head), or the class token
    of a ViT/DeiT built without a pooler.
    """
    name = type(model).__name__
    if has_head(model):
        tokens = tower(model)(pixel_values=x).last_hidden_state
        if name == "DeiTForImageClassificationWithTeacher":
            logits = (model.cls_classifier(tokens[:, 0]) + model.distillation_classifier(tokens[:, 1])) / 2
            return (tokens[:, 0] + tokens[:, 1]) / 2, logits
        return tokens[:, 0], model.classifier(tokens[:, 0])
    out = forward(model, x)
    if out.pooler_output is not None:
        return out.pooler_output, None
    tokens = out.last_hidden_state
    return (tokens[:, 0] if num_prefix(model) else tokens.mean(1)), None


# ------------------------------------------------------------------------ the grid
def patch_size(model: nn.Module) -> tuple[int, int]:
    """The patch size (rows, columns) in pixels."""
    p = tower(model).config.patch_size
    return (p, p) if isinstance(p, int) else tuple(p)


def grid_size(model: nn.Module) -> tuple[int, int]:
    """The patch grid (rows, columns) at the model's configured image size."""
    size = tower(model).config.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    ph, pw = patch_size(model)
    return h // ph, w // pw


def num_prefix(model: nn.Module) -> int:
    """Tokens before the patches: CLS (ViT, DINOv2, CLIP), + distillation (DeiT), + registers; 0 for SigLIP."""
    emb = tower(model).embeddings
    if getattr(emb, "distillation_token", None) is not None:
        return 2
    registers = getattr(emb, "register_tokens", None)
    cls = getattr(emb, "cls_token", None) is not None or getattr(emb, "class_embedding", None) is not None
    return int(cls) + (0 if registers is None else registers.shape[1])


def on_grid_change(model: nn.Module, set_grid: Callable[[tuple[int, int]], None]):
    """Call `set_grid(rows, columns)` before each forward with that input's patch grid
    (DINOv2 and interpolated position encodings take any image size). Returns the hook handle."""
    ph, pw = patch_size(model)

    def hook(embeddings: nn.Module, args: tuple, kwargs: dict) -> None:
        pixels = args[0] if args else kwargs["pixel_values"]
        set_grid((pixels.shape[-2] // ph, pixels.shape[-1] // pw))
    return tower(model).embeddings.register_forward_pre_hook(hook, with_kwargs=True)


# ------------------------------------------------------------------------ one block
def attention(block: nn.Module) -> nn.Module:
    """The block's attention module (what `heads`, `output` and `scale` take)."""
    return getattr(block, _layout(type(block)).attention)


def attention_input(block: nn.Module, x: Tensor) -> Tensor:
    """The block's input x [B, n, C] as its attention reads it (its first layer norm)."""
    return getattr(block, _layout(type(block)).norm1)(x)


def heads(attn: nn.Module, x: Tensor) -> Heads:
    """The start of the attention's forward: x [B, n, C] -> q, k, v [B, H, n, d] per head."""
    B, n, _ = x.shape
    shape = (B, n, -1, attn.head_dim)
    q = attn.q_proj(x).view(shape).transpose(1, 2)
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    return Heads(q, k, v, None)


def output(attn: nn.Module, out: Tensor, gate: Optional[Tensor]) -> Tensor:
    """The end of the attention's forward: per-head output [B, H, n, d] -> [B, n, C]."""
    B, _, n, _ = out.shape
    proj = attn.o_proj if hasattr(attn, "o_proj") else attn.out_proj
    return proj(out.transpose(1, 2).reshape(B, n, -1))


def scale(attn: nn.Module) -> float:
    """The factor on q k^T (1 / sqrt(head_dim))."""
    return float(attn.scaling if hasattr(attn, "scaling") else attn.scale)


def _branch(block: nn.Module, y: Tensor, scale_name: Optional[str], drop: Optional[str]) -> Tensor:
    if scale_name is not None:
        y = getattr(block, scale_name)(y)
    return getattr(block, drop)(y) if drop is not None else y


def add_attention(block: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The attention residual: x + drop(scale1(y)), y the attention output."""
    lay = _layout(type(block))
    return x + _branch(block, y, lay.scale1, lay.drop)


def add_mlp(block: nn.Module, x: Tensor) -> Tensor:
    """The MLP residual: x + drop(scale2(mlp(norm2(x))))."""
    lay = _layout(type(block))
    return x + _branch(block, block.mlp(getattr(block, lay.norm2)(x)), lay.scale2, lay.drop)


# ----------------------------------------------------------------------- class swap
def original_class(block: nn.Module) -> type:
    """The block's transformers class, whatever patch is installed."""
    return block_swap.original_class(block)


def swap_block_classes(model: nn.Module, subclass_of: Callable[[type], type], state: object, tag: str) -> None:
    """`gtp.block_swap.swap_block_classes` on the model's blocks (GTP: tag "gtp", ToMe: "tome")."""
    block_swap.swap_block_classes(blocks(model), subclass_of, state, tag)


def restore_block_classes(model: nn.Module, tag: str) -> None:
    """Undo `swap_block_classes(..., tag)`: every block is its original class again."""
    block_swap.restore_block_classes(blocks(model), tag)
