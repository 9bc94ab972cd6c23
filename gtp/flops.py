"""GMACs counted by PyTorch's own FLOP counter, as the model is configured now."""
from __future__ import annotations

import contextlib
from typing import Iterator, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _baddbmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of x.baddbmm_(a, b), a: [B, m, k], b: [B, k, n]: the batched matmul, as for bmm."""
    batch, m, k = a_shape
    return 2 * batch * m * k * b_shape[2]


# The counter knows the out-of-place baddbmm only; GTP's propagation runs it in place.
_IN_PLACE = {torch.ops.aten.baddbmm_: _baddbmm_flops}


@contextlib.contextmanager
def _unfused_attention(model: nn.Module) -> Iterator[None]:
    """The FLOP counter cannot see timm's fused attention kernel on CPU: run the explicit path."""
    changed = [m for m in model.modules() if getattr(m, "fused_attn", False)]
    for m in changed:
        m.fused_attn = False
    try:
        yield
    finally:
        for m in changed:
            m.fused_attn = True


def gmacs(model: nn.Module, img_size: Union[int, tuple[int, int]] = 224, seed: int = 0) -> float:
    """GMACs of one forward of one image (multiply-accumulates / 1e9).

    Counts every matmul, convolution and attention product the forward runs
    (FLOPs / 2). Token reduction depends on the image only through which tokens
    leave, not how many, so any image gives the same count; a seeded one is used.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, h, w, generator=gen).to(device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_IN_PLACE)
        with _unfused_attention(model), torch.inference_mode(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2e9
