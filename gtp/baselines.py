"""The methods' old home: `gtp.measure.bench` and `scripts/gpu_checks.py` still import them from
here. Everything lives in `gtp.methods` (one `Method` description each)."""
from .methods import EVIT, GTP_OPTIONS, METHODS, PRUNING, apply_method, describe, method_fn, reset

__all__ = ["EVIT", "GTP_OPTIONS", "METHODS", "PRUNING", "apply_method", "describe", "method_fn", "reset"]
