"""GMACs counted by PyTorch's own FLOP counter, as the model is configured now."""
from __future__ import annotations

from typing import Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from . import adapters


def _baddbmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of x.baddbmm_(a, b), a: [B, m, k], b: [B, k, n]: the batched matmul, as for bmm."""
    batch, m, k = a_shape
    return 2 * batch * m * k * b_shape[2]


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU's fused attention kernel: q k^T and A V, as for the CUDA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# What the counter does not know: the in-place baddbmm of GTP's propagation (it knows
# the out-of-place one only) and the fused attention kernel of the CPU, which both
# timm's attention and GTP's token-scaled attention (an additive bias) run.
_UNKNOWN = {
    torch.ops.aten.baddbmm_: _baddbmm_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
}


def gmacs(model: nn.Module, img_size: Union[int, tuple[int, int]] = 224, seed: int = 0) -> float:
    """GMACs of one forward of one image (multiply-accumulates / 1e9).

    Counts every matmul, convolution and attention product the forward runs
    (FLOPs / 2), fused attention kernels included, so every path of a forward
    (explicit or fused attention, CPU or CUDA) gives the same count. Token reduction depends on the image only through which tokens
    leave, not how many, so any image gives the same count; a seeded one is used.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, h, w, generator=gen).to(device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_UNKNOWN)
        with torch.inference_mode(), counter:
            adapters.forward(model, x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2e9
