"""Hugging Face hub models GTP Explorer can load (`gtp.load_model("facebook/deit-small-patch16-224")`).

Each hub id keeps, here in code, its model class, its configuration and its image processor's
settings, as published on the hub: offline, where no configuration file can be fetched, the
model is built from them with seeded random weights (and says so, as timm models do). Weights
come from the local Hugging Face cache when there, else from the hub when it can be reached.
`transformers` is imported only when one of these models is loaded; `gtp.models` lists them
only where it is installed (requirements-transformers.txt).
"""
from __future__ import annotations

import importlib.util
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Optional

import torch
from PIL import Image
from torch import Tensor, nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
BICUBIC, BILINEAR = 3, 2


class HubModel(NamedTuple):
    """One hub id: what it is, and everything needed to build it offline."""
    about: str                    # the description the model list shows
    model_class: str              # the transformers class it is loaded as
    config_class: str
    config: dict[str, Any]        # the published configuration (the fields that differ from the defaults)
    processor_class: str
    processor: dict[str, Any]     # the published image-processor settings


_VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_VIT_S = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
_IMAGENET = dict(num_labels=1000)
_DEIT_PROCESSOR = dict(size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224},
                       resample=BICUBIC, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)

HUB_MODELS: "OrderedDict[str, HubModel]" = OrderedDict([
    ("facebook/deit-small-patch16-224", HubModel(
        "DeiT-Small/16 (transformers ViTForImageClassification), 224 px, ImageNet-1k",
        "ViTForImageClassification", "ViTConfig", dict(_VIT_S, **_IMAGENET),
        "DeiTImageProcessor", _DEIT_PROCESSOR)),
    ("facebook/deit-small-distilled-patch16-224", HubModel(
        "DeiT-Small/16 distilled (transformers DeiTForImageClassificationWithTeacher), ImageNet-1k",
        "DeiTForImageClassificationWithTeacher", "DeiTConfig", dict(_VIT_S, **_IMAGENET),
        "DeiTImageProcessor", _DEIT_PROCESSOR)),
    ("google/vit-base-patch16-224", HubModel(
        "ViT-B/16 (transformers ViTForImageClassification), ImageNet-21k -> 1k",
        "ViTForImageClassification", "ViTConfig", dict(_VIT_B, **_IMAGENET),
        "ViTImageProcessor", dict(size={"height": 224, "width": 224}, resample=BILINEAR,
                                  image_mean=HALF, image_std=HALF))),
    ("facebook/dinov2-small", HubModel(
        "DINOv2 ViT-S/14 (transformers Dinov2Model) backbone at 224 px (features only)",
        "Dinov2Model", "Dinov2Config",
        dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, image_size=518,
             patch_size=14, layerscale_value=1.0, layer_norm_eps=1e-6),
        "BitImageProcessor", dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                  resample=BICUBIC, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD))),
    ("openai/clip-vit-base-patch16", HubModel(
        "CLIP ViT-B/16 image tower (transformers CLIPVisionModel; features only)",
        "CLIPVisionModel", "CLIPVisionConfig",
        dict(_VIT_B, patch_size=16, image_size=224, hidden_act="quick_gelu", layer_norm_eps=1e-5,
             projection_dim=512),
        "CLIPImageProcessor", dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                   resample=BICUBIC, image_mean=CLIP_MEAN, image_std=CLIP_STD))),
    ("google/siglip-base-patch16-224", HubModel(
        "SigLIP B/16 image tower (transformers SiglipVisionModel, attention-pooled; features only)",
        "SiglipVisionModel", "SiglipVisionConfig",
        dict(_VIT_B, patch_size=16, image_size=224, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        "SiglipImageProcessor", dict(size={"height": 224, "width": 224}, resample=BICUBIC,
                                     image_mean=HALF, image_std=HALF))),
])


def available() -> bool:
    """Whether `transformers` is installed (looked up, not imported)."""
    return importlib.util.find_spec("transformers") is not None


class Built(NamedTuple):
    """A loaded hub model and how to feed it."""
    model: nn.Module
    source: str                                   # "hub" or "random"
    message: str
    transform: Callable[[Image.Image], Tensor]    # RGB PIL image -> [3, H, W]
    data_config: dict                             # input_size, mean, std (as timm's data config names them)


def _random(name: str, seed: int) -> nn.Module:
    """The published architecture with seeded random weights; the global RNG is left as it was."""
    import transformers
    spec = HUB_MODELS[name]
    config = getattr(transformers, spec.config_class)(**spec.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return getattr(transformers, spec.model_class)._from_config(config, attn_implementation="sdpa")


def _processor(name: str, cached: bool):
    import transformers
    spec = HUB_MODELS[name]
    if cached:
        try:
            return getattr(transformers, spec.processor_class).from_pretrained(name, local_files_only=True)
        except Exception:  # noqa: BLE001 - no cached processor: the published settings below
            pass
    return getattr(transformers, spec.processor_class)(**spec.processor)


def build(name: str, offline: Optional[str], seed: int, random_message: Callable[[str, str], str]) -> Built:
    """The model `name` (a key of HUB_MODELS) with the best weights to be had: the local cache,
    then the hub unless `offline` says why not, else seeded random weights (`random_message(name,
    why)` says so)."""
    import transformers
    cls = getattr(transformers, HUB_MODELS[name].model_class)
    model, source, message = None, "random", ""
    try:
        model = cls.from_pretrained(name, local_files_only=True)
        source, message = "hub", f"Loaded pretrained {name} weights from the local model-hub cache."
    except Exception:  # noqa: BLE001 - not cached (or a broken cache): no weights here
        why = offline or ""
        if offline is None:
            try:
                model = cls.from_pretrained(name)
                source, message = "hub", f"Downloaded pretrained {name} weights from the Hugging Face hub."
            except Exception as e:  # noqa: BLE001 - any hub failure: random weights, said so
                why = f"download failed: {type(e).__name__}"
        if model is None:
            model, message = _random(name, seed), random_message(name, why or "not cached")
    processor = _processor(name, source == "hub")
    crop = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    data_config = dict(input_size=(3, crop["height"], crop["width"]), mean=tuple(processor.image_mean),
                       std=tuple(processor.image_std))

    def transform(image: Image.Image) -> Tensor:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]
    return Built(model, source, message, transform, data_config)
