"""GTP: Graph-based Token Propagation (Xu et al., WACV 2024) for pretrained ViTs: timm models, and
Hugging Face transformers ones (ViT, DeiT, DINOv2, CLIP and SigLIP vision towers) through `gtp.hf_adapter`."""
from .config import PUBLISHED, GTPConfig
from .flops import gmacs
from .functional import GRAPHS, PROPAGATIONS, SELECTIONS
from .patch import config_of, patch, unpatch
from .trace import Edges, LayerTrace, Trace, trace

__all__ = [
    "patch", "unpatch", "trace", "gmacs", "config_of",
    "GTPConfig", "PUBLISHED", "GRAPHS", "SELECTIONS", "PROPAGATIONS",
    "Trace", "LayerTrace", "Edges",
    "load_model", "LoadedModel", "SUPPORTED_MODELS", "preprocess",
]

_LAZY = {"load_model", "LoadedModel", "SUPPORTED_MODELS", "preprocess"}


def __getattr__(name: str):
    # gtp.models imports timm and PIL (seconds): load it only when asked for.
    if name in _LAZY:
        from . import models
        return getattr(models, name)
    raise AttributeError(f"module 'gtp' has no attribute {name!r}")
__version__ = "0.1.0"
