"""GTP: Graph-based Token Propagation (Xu et al., WACV 2024) for pretrained timm ViTs."""
from .config import PUBLISHED, GTPConfig
from .flops import gmacs
from .functional import GRAPHS, PROPAGATIONS, SELECTIONS
from .patch import config_of, patch, unpatch
from .trace import Edges, LayerTrace, Trace, trace

__all__ = [
    "patch", "unpatch", "trace", "gmacs", "config_of",
    "GTPConfig", "PUBLISHED", "GRAPHS", "SELECTIONS", "PROPAGATIONS",
    "Trace", "LayerTrace", "Edges",
]
__version__ = "0.1.0"
