"""Trust no fused kernel untested: each fused op is checked once, on its first use, against the PyTorch path.

The Triton kernels (`gtp.kernels.triton_attention`, `triton_tokens`) are exact by the tests on
Triton's interpreter, but a GPU no test has touched may still build them wrongly, refuse them, or
fail a launch. So the first time a process uses a fused op on a device (`gtp.steps`), the op runs
once on a small random input beside the PyTorch path of the same step (`gtp.functional`):

  gtp::fused_attention   the same zeroed entries (the sparse map's zeros), outputs and statistics close;
  gtp::select_tokens     the same propagated and kept ids;
  gtp::propagate_tokens  outputs and sizes close.

A mismatch, a build failure or a launch error (then, or on any later call) switches THAT op to the
PyTorch path for the rest of the process, with a RuntimeWarning saying why, and
`triton_support.STATUS` records it ("checked" or "off: why"), which `bench`, `cost`, the app's
status line and the API's prediction show (`triton_support.status_line`). Never silent.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from . import functional as G
from . import kernels
from .kernels import triton_support

CHECK_SPARSITY = 0.7


def _random(shape: tuple, device: torch.device, seed: int, dtype=torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


def check_attention(device: torch.device) -> Optional[str]:
    """None if the fused attention matches `functional.attention` on a small random input, else why."""
    from .kernels.fused_attention import fused_attention
    B, H, n, d = 2, 2, 37, 16
    q, k, v = (_random((B, H, n, d), device, seed) for seed in (1, 2, 3))
    size = _random((B, n), device, 4).abs() + 0.5
    fused = fused_attention(q, k, v, size, 0.25, kernels.num_zeroed(n, CHECK_SPARSITY), statistics=True,
                            keep_maps=True)
    ref = G.attention(q, k, v, size, CHECK_SPARSITY, 0.25, statistics=True, keep_maps=True)
    if not torch.equal(fused.sparse_map == 0, ref.sparse_map == 0):
        wrong = int((fused.sparse_map == 0).ne(ref.sparse_map == 0).sum())
        return f"mismatch: {wrong} of {B * H * n * n} zeroed entries differ from the PyTorch path"
    # theta = 1 untraced takes another kernel (`triton_statistics`): checked as a forward calls it
    full = fused_attention(q, k, v, size, 0.25, 0, statistics=True)
    full_ref = G.attention(q, k, v, size, 1.0, 0.25, statistics=True)
    for name, a, b in (("output", fused.out, ref.out), ("diagonal", fused.statistics[0], ref.statistics[0]),
                       ("column sums", fused.statistics[1], ref.statistics[1]),
                       ("output at theta = 1", full.out, full_ref.out),
                       ("diagonal at theta = 1", full.statistics[0], full_ref.statistics[0]),
                       ("column sums at theta = 1", full.statistics[1], full_ref.statistics[1])):
        if not torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5):
            return f"mismatch: the {name} differs from the PyTorch path by {float((a - b).abs().max()):.3g}"
    return check_large_batch_attention(device) if device.type == "cuda" else None


def check_large_batch_attention(device: torch.device, pairs: int = 2048) -> Optional[str]:
    """None if the plan of large batches (`attention_plan._wide`: 128-row tiles, on wgmma on an H100),
    untraced, matches `functional.attention` on `pairs` image x head pairs of 20 bfloat16 tokens (2,048:
    the fewest that take it), else why. Integer q and k and sizes 1, 2, 4 keep every two distinct
    logits >= 1% apart, so both paths zero the same entries whatever their rounding; the diagonal
    and column sums (float32 in both) must then agree closely, the output (P in bfloat16) loosely."""
    from .kernels.fused_attention import fused_attention
    B, H, n, d = pairs // 2, 2, 20, 64
    q, k = (_random((B, H, n, d), device, seed).mul(0.7).round().clamp(-2, 2).to(torch.bfloat16) for seed in (11, 12))
    v = _random((B, H, n, d), device, 13, torch.bfloat16)
    size = 2.0 ** _random((B, n), device, 14).abs().round().clamp(0, 2)
    num_zero = kernels.num_zeroed(n, CHECK_SPARSITY)
    fused = fused_attention(q, k, v, size, 0.125, num_zero, statistics=True)
    ref = G.attention(q.float(), k.float(), v.float(), size, CHECK_SPARSITY, 0.125, statistics=True)
    for name, a, b, tolerance in (("diagonal", fused.statistics[0], ref.statistics[0], 1e-4),
                                  ("column sums", fused.statistics[1], ref.statistics[1], 1e-4),
                                  ("output", fused.out, ref.out, 2e-2)):
        if not torch.allclose(a.float(), b.float(), rtol=tolerance, atol=tolerance):
            return (f"mismatch: the {name} at a large batch differs from the PyTorch path by "
                    f"{float((a.float() - b.float()).abs().max()):.3g}")
    return None


def check_select(device: torch.device) -> Optional[str]:
    """None if the fused selection picks the ids `functional.selection_scores` + `split_tokens` pick."""
    from .kernels import triton_tokens
    B, H, p0, N, P = 2, 3, 1, 20, 6
    diagonal, column_sums = (_random((B, H, p0 + N), device, seed).abs() for seed in (5, 6))
    ids = torch.arange(N, device=device).repeat(B, 1)
    fused = triton_tokens.select_tokens(ids, P, (diagonal, column_sums), num_prefix=p0)
    attended = G.Attention(diagonal, (diagonal, column_sums), None, None)
    score, _, _ = G.selection_scores(attended, p0, "mixed_attn_max")
    prop, keep = G.split_tokens(score, P)
    if not (torch.equal(fused.prop, prop) and torch.equal(fused.keep, keep)):
        return "mismatch: the selected ids differ from the PyTorch path"
    return None


def check_propagate(device: torch.device) -> Optional[str]:
    """None if the fused propagation matches `functional.propagate` on a small random input, else why."""
    from .kernels import triton_tokens
    B, p0, N, P, C = 2, 1, 20, 6, 32
    x = _random((B, p0 + N, C), device, 7)
    size = _random((B, p0 + N), device, 8).abs() + 0.5
    graph = _random((1, N, N), device, 9).abs()
    ids = torch.arange(N, device=device).repeat(B, 1)
    order = torch.argsort(_random((B, N), device, 10), dim=1)
    prop, keep = order[:, :P].sort(1).values, order[:, P:].sort(1).values
    x_new, size_new, _ = triton_tokens.propagate_tokens(x, size, graph.expand(B, -1, -1), ids, prop, keep, p0)
    x_ref, size_ref, _, _ = G.propagate(x, size, graph, ids, prop, keep, p0, "graph", 0.1)
    for name, a, b in (("tokens", x_new, x_ref), ("sizes", size_new, size_ref)):
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            return f"mismatch: the propagated {name} differ from the PyTorch path by {float((a - b).abs().max()):.3g}"
    return None


CHECKS: dict[str, Callable[[torch.device], Optional[str]]] = {
    "gtp::fused_attention": check_attention, "gtp::select_tokens": check_select,
    "gtp::propagate_tokens": check_propagate}


def switch_off(op: str, reason: str) -> None:
    """Send `op` to the PyTorch path from now on, saying why (a RuntimeWarning and `STATUS`)."""
    triton_support.STATUS[op] = f"off: {reason}"
    warnings.warn(f"GTP's fused {op} is off on this machine ({reason}); using the PyTorch path for it",
                  RuntimeWarning, stacklevel=4)


def ready(op: str, sample: Tensor) -> bool:
    """Whether fused `op` may run on tensors like `sample`: checked once here on its first real use (on
    CUDA; on the CPU only inside `triton_support.self_checks_on_cpu()`), and not switched off. Fake
    and meta tensors (the cost model, shape checks) run nothing, so they are never checked."""
    from torch._subclasses.fake_tensor import FakeTensor
    if op in triton_support.STATUS:
        return triton_support.op_off(op) is None
    if isinstance(sample, FakeTensor) or sample.device.type == "meta":
        return True
    device = sample.device
    if device.type != "cuda" and not triton_support.checks_on_cpu():
        return True  # interpreted in a test that did not ask for the check: run the kernel as it is
    try:
        reason = CHECKS[op](device)
    except Exception as error:  # noqa: BLE001 - a build or launch failure: the PyTorch path is exact too
        reason = f"build or launch failure: {type(error).__name__}: {str(error).strip().splitlines()[-1][:200]}"
    if reason is None:
        triton_support.STATUS[op] = "checked"
        return True
    switch_off(op, reason)
    return False
