"""KL and cosine recomputed by hand (numpy, float64) from fresh forwards: the independent values
the app's and the library's fidelity numbers are compared with (issue 30: `kl >= 0` and
`-1 <= cosine <= 1` hold by definition, so they check nothing)."""
from __future__ import annotations

import numpy as np
import torch

from gtp.methods import apply_method, reset


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(pre-logits features [B, D], logits [B, C]) in float64: what timm's head reads and gives."""
    tokens = model.forward_features(x)
    return (model.forward_head(tokens, pre_logits=True).double().numpy(),
            model.forward_head(tokens).double().numpy())


def fidelity_by_hand(model: torch.nn.Module, x: torch.Tensor, method: str, amount=8, **options) -> dict:
    """Per image [B]: KL(full || method) of the softmaxes in nats, the cosine of the features, and
    whether the top-1 classes agree; `model` is left unpatched."""
    with torch.inference_mode():
        reset(model)
        full_f, full_l = _outputs(model, x)
        apply_method(model, method, amount, **options)
        try:
            f, logits = _outputs(model, x)
        finally:
            reset(model)

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    log_p, log_q = log_softmax(full_l), log_softmax(logits)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    cos = (full_f * f).sum(-1) / (np.linalg.norm(full_f, axis=-1) * np.linalg.norm(f, axis=-1))
    return {"kl": kl, "cosine": cos, "agree": full_l.argmax(-1) == logits.argmax(-1)}
