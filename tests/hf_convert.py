"""Tiny seeded timm ViTs and the same networks as transformers models, by our own weight mapping (no hub).

One pair per family timm also has: ViT, DeiT (distilled), DINOv2 (with and without
registers), CLIP's and SigLIP's vision towers. Each pair computes the same function, so
GTP and ToMe must give the same answers on both (tests/test_hf_adapter.py).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

IMG, PATCH, DIM, DEPTH, HEADS, CLASSES = 32, 8, 32, 3, 2, 5   # a 4 x 4 grid: 16 patch tokens


def _timm(seed: int, **kwargs) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, **kwargs)
    with torch.no_grad():  # timm zero-initialises some tokens: random values show a wrong mapping
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def _blocks(timm_model: nn.Module, prefix: str, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """The blocks' weights under transformers' names (`names`: timm part -> transformers part)."""
    out = {}
    for i, blk in enumerate(timm_model.blocks):
        q, k, v = blk.attn.qkv.weight.chunk(3)
        qb, kb, vb = blk.attn.qkv.bias.chunk(3)
        attn, proj = names["attn"], names["proj"]
        out.update({f"{prefix}.{i}.{attn}.q_proj.weight": q, f"{prefix}.{i}.{attn}.k_proj.weight": k,
                    f"{prefix}.{i}.{attn}.v_proj.weight": v, f"{prefix}.{i}.{attn}.q_proj.bias": qb,
                    f"{prefix}.{i}.{attn}.k_proj.bias": kb, f"{prefix}.{i}.{attn}.v_proj.bias": vb})
        for timm_name, hf_name in [("attn.proj", f"{attn}.{proj}"), ("norm1", names["norm1"]),
                                   ("norm2", names["norm2"]), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]:
            for p in ("weight", "bias"):
                out[f"{prefix}.{i}.{hf_name}.{p}"] = blk.get_submodule(timm_name).get_parameter(p)
        if "ls1" in names:
            out[f"{prefix}.{i}.{names['ls1']}"] = blk.ls1.gamma
            out[f"{prefix}.{i}.{names['ls2']}"] = blk.ls2.gamma
    return out


def _load(hf_model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    missing, unexpected = hf_model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if "mask_token" not in k]  # masked-image-modelling only
    assert not missing and not unexpected, (missing, unexpected)
    return hf_model.eval()


def _lin(timm_module: nn.Module, name: str) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": timm_module.weight, f"{name}.bias": timm_module.bias}


_VIT_NAMES = dict(attn="attention", proj="o_proj", norm1="layernorm_before", norm2="layernorm_after")


def vit(cls_name: str = "ViTForImageClassification", attn: str = "sdpa", seed: int = 0):
    """(timm ViT with a class token and a head, transformers ViTModel / ViTForImageClassification)."""
    import transformers
    t = _timm(seed, num_classes=CLASSES if cls_name.endswith("Classification") else 0)
    cfg = transformers.ViTConfig(image_size=IMG, patch_size=PATCH, hidden_size=DIM, num_hidden_layers=DEPTH,
                                 num_attention_heads=HEADS, intermediate_size=4 * DIM, layer_norm_eps=1e-6,
                                 hidden_act="gelu", num_labels=CLASSES)
    pre = "vit." if cls_name != "ViTModel" else ""
    state = {f"{pre}embeddings.cls_token": t.cls_token, f"{pre}embeddings.position_embeddings": t.pos_embed,
             **_lin(t.patch_embed.proj, f"{pre}embeddings.patch_embeddings.projection"),
             **_blocks(t, f"{pre}layers", _VIT_NAMES), **_lin(t.norm, f"{pre}layernorm")}
    if pre:
        state.update(_lin(t.head, "classifier"))
        hf = transformers.ViTForImageClassification._from_config(cfg, attn_implementation=attn)
    else:
        hf = transformers.ViTModel._from_config(cfg, attn_implementation=attn, add_pooling_layer=False)
    return t, _load(hf, state)


def deit(cls_name: str = "DeiTForImageClassificationWithTeacher", attn: str = "sdpa", seed: int = 0):
    """(timm distilled DeiT, transformers DeiT of `cls_name`): class and distillation tokens."""
    import transformers
    from timm.models.deit import VisionTransformerDistilled
    torch.manual_seed(seed)
    t = VisionTransformerDistilled(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                                   num_classes=CLASSES).eval()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    cfg = transformers.DeiTConfig(image_size=IMG, patch_size=PATCH, hidden_size=DIM, num_hidden_layers=DEPTH,
                                  num_attention_heads=HEADS, intermediate_size=4 * DIM, layer_norm_eps=1e-6,
                                  hidden_act="gelu", num_labels=CLASSES)
    pre = "" if cls_name == "DeiTModel" else "deit."
    state = {f"{pre}embeddings.cls_token": t.cls_token, f"{pre}embeddings.distillation_token": t.dist_token,
             f"{pre}embeddings.position_embeddings": t.pos_embed,
             **_lin(t.patch_embed.proj, f"{pre}embeddings.patch_embeddings.projection"),
             **_blocks(t, f"{pre}layers", _VIT_NAMES), **_lin(t.norm, f"{pre}layernorm")}
    kwargs = dict(add_pooling_layer=False) if cls_name == "DeiTModel" else {}
    if cls_name == "DeiTForImageClassificationWithTeacher":
        state.update({**_lin(t.head, "cls_classifier"), **_lin(t.head_dist, "distillation_classifier")})
    elif cls_name == "DeiTForImageClassification":
        state.update(_lin(t.head, "classifier"))
    hf = getattr(transformers, cls_name)._from_config(cfg, attn_implementation=attn, **kwargs)
    return t, _load(hf, state)


def dinov2(registers: int = 0, attn: str = "sdpa", seed: int = 0):
    """(timm DINOv2-style ViT: layer scale, features only, transformers Dinov2Model / Dinov2WithRegistersModel).

    With registers, timm's layout is DINOv2's own (`no_embed_class`: no position embedding on
    the class and register tokens); transformers adds position 0 to the class token, so it is 0 here.
    """
    import transformers
    t = _timm(seed, num_classes=0, init_values=0.5, reg_tokens=registers, no_embed_class=bool(registers))
    common = dict(image_size=IMG, patch_size=PATCH, hidden_size=DIM, num_hidden_layers=DEPTH,
                  num_attention_heads=HEADS, mlp_ratio=4, layer_norm_eps=1e-6, hidden_act="gelu")
    pos = t.pos_embed
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
        cls = transformers.Dinov2WithRegistersModel
        pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    else:
        cfg, cls = transformers.Dinov2Config(**common), transformers.Dinov2Model
    names = dict(attn="attention", proj="o_proj", norm1="norm1", norm2="norm2",
                 ls1="layer_scale1.lambda1", ls2="layer_scale2.lambda1")
    state = {"embeddings.cls_token": t.cls_token, "embeddings.position_embeddings": pos,
             **_lin(t.patch_embed.proj, "embeddings.patch_embeddings.projection"),
             **_blocks(t, "encoder.layer", names), **_lin(t.norm, "layernorm")}
    if registers:
        state["embeddings.register_tokens"] = t.reg_token
    return t, _load(cls._from_config(cfg, attn_implementation=attn), state)


_CLIP_NAMES = dict(attn="self_attn", proj="out_proj", norm1="layer_norm1", norm2="layer_norm2")


def clip(whole: bool = False, attn: str = "sdpa", seed: int = 0):
    """(timm CLIP-style ViT: pre-norm, quick GELU, no patch bias, CLIPVisionModel or CLIPModel)."""
    import transformers
    from timm.layers import QuickGELU
    t = _timm(seed, num_classes=0, pre_norm=True, norm_layer=partial(nn.LayerNorm, eps=1e-5), act_layer=QuickGELU)
    vision = dict(image_size=IMG, patch_size=PATCH, hidden_size=DIM, num_hidden_layers=DEPTH,
                  num_attention_heads=HEADS, intermediate_size=4 * DIM, hidden_act="quick_gelu")
    pre = "vision_model." if whole else ""
    state = {f"{pre}embeddings.class_embedding": t.cls_token[0, 0],
             f"{pre}embeddings.position_embedding.weight": t.pos_embed[0],
             f"{pre}embeddings.patch_embedding.weight": t.patch_embed.proj.weight,
             **_lin(t.norm_pre, f"{pre}pre_layrnorm"), **_blocks(t, f"{pre}encoder.layers", _CLIP_NAMES),
             **_lin(t.norm, f"{pre}post_layernorm")}
    if not whole:
        cfg = transformers.CLIPVisionConfig(**vision)
        return t, _load(transformers.CLIPVisionModel._from_config(cfg, attn_implementation=attn), state)
    cfg = transformers.CLIPConfig(vision_config=vision, text_config=dict(
        hidden_size=DIM, num_hidden_layers=1, num_attention_heads=HEADS, intermediate_size=DIM, vocab_size=50,
        bos_token_id=0, eos_token_id=1, pad_token_id=1),
        projection_dim=DIM)
    hf = transformers.CLIPModel._from_config(cfg, attn_implementation=attn)
    text = {k: v for k, v in hf.state_dict().items() if not k.startswith("vision_model.")}
    text["visual_projection.weight"] = torch.eye(DIM)  # timm's tower has no projection: the identity
    return t, _load(hf, {**text, **state})


def siglip(attn: str = "sdpa", seed: int = 0):
    """(timm SigLIP-style ViT: no class token, attention-pooling head `global_pool="map"`, SiglipVisionModel)."""
    import transformers
    t = _timm(seed, num_classes=0, class_token=False, global_pool="map")
    cfg = transformers.SiglipVisionConfig(image_size=IMG, patch_size=PATCH, hidden_size=DIM, num_hidden_layers=DEPTH,
                                          num_attention_heads=HEADS, intermediate_size=4 * DIM, hidden_act="gelu",
                                          layer_norm_eps=1e-6)
    pool = t.attn_pool
    state = {"embeddings.position_embedding.weight": t.pos_embed[0],
             **_lin(t.patch_embed.proj, "embeddings.patch_embedding"),
             **_blocks(t, "encoder.layers", _CLIP_NAMES), **_lin(t.norm, "post_layernorm"),
             "head.probe": pool.latent,
             "head.attention.in_proj_weight": torch.cat([pool.q.weight, pool.kv.weight]),
             "head.attention.in_proj_bias": torch.cat([pool.q.bias, pool.kv.bias]),
             **_lin(pool.proj, "head.attention.out_proj"), **_lin(pool.norm, "head.layernorm"),
             **_lin(pool.mlp.fc1, "head.mlp.fc1"), **_lin(pool.mlp.fc2, "head.mlp.fc2")}
    return t, _load(transformers.SiglipVisionModel._from_config(cfg, attn_implementation=attn), state)


PAIRS = {"vit": vit, "deit": deit, "dinov2": dinov2, "dinov2_registers": partial(dinov2, 2),
         "clip": clip, "clip_whole": partial(clip, True), "siglip": siglip}
