"""theta = 1: the selection's statistics from one Triton kernel over key tiles (gtp/kernels/triton_statistics.py).

Under Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1 without CUDA). The
column sums come from exp2 of prescaled logits and a key-bias factor, the diagonal from an O(d)
dot: the same map as the PyTorch path up to float32 rounding, and the same tokens chosen.
"""
from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("triton")

from gtp import functional as G  # noqa: E402
from gtp.kernels import fused_attention as FA  # noqa: E402
from gtp.kernels import triton_support  # noqa: E402
from conftest import attention_inputs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_support.interpreting():
    pytest.skip("no CUDA and TRITON_INTERPRET is not set", allow_module_level=True)


inputs = functools.partial(attention_inputs, device=DEVICE)   # q, k, v and sizes on DEVICE


def lowest(statistics, num_prop: int) -> torch.Tensor:
    """The patch tokens mixed_attn_max propagates: lowest max_h(diagonal) x max_h(column sums)."""
    diagonal, column_sums = statistics
    score = (diagonal.amax(1) * column_sums.amax(1))[:, 1:]
    return score.argsort(dim=1, stable=True)[:, :num_prop].sort(dim=1).values


@pytest.mark.parametrize("n, d, token_scale", [(17, 8, True), (50, 20, False), (64, 16, True), (260, 16, True)])
def test_statistics_of_the_map_and_the_same_tokens(n, d, token_scale):
    """The column kernel's diagonal and column sums are those of softmax(scale q k^T + log s) (the
    PyTorch path's float32 map); 17: a partial query step only; 50: a full step and a partial one;
    64: full steps only; 260: more keys than a 224-pixel grid, many ragged tiles."""
    B, H = (2, 3) if n < 256 else (1, 2)
    q, k, v, size = inputs(B, H, n, d, token_scale=token_scale, seed=n)
    seen = []
    run = triton_support.execute
    try:
        triton_support.execute = lambda launches: (seen.append([x.kernel.__name__ for x in launches]), run(launches))
        ours = FA.fused_attention(q, k, v, size, 0.3, 0, statistics=True)
    finally:
        triton_support.execute = run
    assert seen == [["_column_kernel"]]  # one launch: no partial sums summed again
    theirs = G.attention(q, k, v, size, 1.0, 0.3, statistics=True)
    torch.testing.assert_close(ours.out, theirs.out, atol=1e-4, rtol=1e-3)
    for a, b in zip(ours.statistics, theirs.statistics):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert torch.equal(lowest(ours.statistics, 8), lowest(theirs.statistics, 8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_and_timm_views(dtype):
    """q, k as timm slices them from one qkv tensor, in half precision: logits from the half values in
    float32, the token-scale bias rounded to the input dtype as PyTorch's attention takes it."""
    B, n, H, d = 2, 40, 3, 16
    g = torch.Generator().manual_seed(7)
    qkv = torch.randn(B, n, 3 * H * d, generator=g).to(DEVICE, dtype)
    q, k, v = qkv.reshape(B, n, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
    size = (1 + 3 * torch.rand(B, n, generator=g)).round().to(DEVICE)
    ours = FA.fused_attention(q, k, v, size, 0.25, 0, statistics=True)
    amap = torch.softmax(q.float() @ k.float().transpose(-2, -1) * 0.25
                         + size.log().to(dtype).float()[:, None, None, :], dim=-1)
    # (the lse of PyTorch's half attention: float32 rounding of its own order)
    torch.testing.assert_close(ours.statistics[0], amap.diagonal(dim1=-2, dim2=-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.statistics[1], amap.sum(-2), atol=1e-5, rtol=1e-4)


def test_the_size_bias_is_made_once_in_aligned_rows():
    """On (fake) CUDA the bias for PyTorch's memory-efficient attention is made by one kernel (the log
    written rounded into rows of 16-entry stride; the padding, which no reader touches, is not
    filled) and taken as it is: no fill, no pad, no copy."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace != "prim":
                self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    size = torch.rand(2, 37) + 0.5
    bias = FA.token_bias(size, torch.bfloat16)
    assert torch.equal(bias, size.log().bfloat16()) and bias.stride() == (48, 1)
    with FakeTensorMode():
        q = torch.empty(2, 37, 3, 4, 16, dtype=torch.bfloat16, device="cuda").permute(2, 0, 3, 1, 4)[0]
        with Ops() as ops:
            FA.fused_attention(q, q, q, torch.empty(2, 37, device="cuda"), 0.25, 0, statistics=True)
    launched = [name for name in ops.names if not any(view in name for view in (
        "slice", "unsqueeze", "expand", "view", "empty", "transpose", "permute", "unbind"))]
    assert launched == ["aten.log.out", "aten._scaled_dot_product_efficient_attention.default",
                        "gtp.attention_statistics.default"], launched
