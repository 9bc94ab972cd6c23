"""The fused kernels on a real GPU, for scripts/gpu_checks.py: their first-use check and a profile beside SDPA.

- `self_check` (part A): each fused op's check of `gtp.self_check` (the same zeroed entries and
  selected ids as the PyTorch path, outputs close) run on this GPU, and what it decided.
- `kernel_profile` (part B): the profiler's CUDA times of the fused attention (theta 1 and 0.6)
  and PyTorch's SDPA at the same shape (deit_base's block 0: n = 197, 12 heads of 64, bf16), with
  the times the cost model derives for them from the compiled code (modelled) beside the measured.
"""
from __future__ import annotations

import torch


def self_check(args) -> dict:
    from gtp import self_check as checks
    if args.device == "cpu":
        return dict(lines=["the first-use checks run the compiled kernels: CUDA only (the tests run them interpreted)"])
    out, lines = {}, []
    for op, check in checks.CHECKS.items():
        try:
            reason = check(torch.device(args.device))
        except Exception as error:  # noqa: BLE001 - a build or launch failure is a result here
            reason = f"build or launch failure: {type(error).__name__}: {error}"
        out[op] = reason or "checked"
        lines.append(f"{op}: {'matches the PyTorch path' if reason is None else 'FAILED: ' + reason}")
    return dict(checks=out, lines=lines)


FUSED = ("_lse_kernel", "_radix_kernel", "_attention_kernel", "_sum_tiles_kernel", "_column_kernel",
         "fmha_cutlass")  # the fused op's kernels (theta = 1: PyTorch's memory-efficient attention too)


def _cuda_ms(prof, name_part: str) -> float:
    """Total CUDA time (ms) of the profiled kernels whose name contains `name_part`."""
    total = 0.0
    for event in prof.key_averages():
        if name_part in event.key:
            total += getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0.0))
    return total / 1000


def kernel_profile(args) -> dict:
    from torch.nn import functional as F
    from torch.profiler import ProfilerActivity, profile
    from gtp import kernels
    from gtp.kernels.fused_attention import fused_attention
    if args.device == "cpu":
        return dict(lines=["the kernel profile times CUDA kernels: CUDA only"])
    B = args.batch_sizes[-1]
    H, n, d = 12, 197, 64
    q, k, v = (torch.randn(B, H, n, d, device=args.device, dtype=torch.bfloat16) for _ in range(3))
    size = torch.ones(B, n, device=args.device)
    runs = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, scale=d ** -0.5)}
    for theta in (1.0, 0.6):
        runs[f"fused theta={theta:g}"] = (lambda t=theta: fused_attention(
            q, k, v, size, d ** -0.5, kernels.num_zeroed(n, t), statistics=True))
    measured, tables = {}, []
    for label, fn in runs.items():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        keys = FUSED if label.startswith("fused") else ("flash", "attention")
        measured[label] = sum(_cuda_ms(prof, key) for key in keys) / 5
        tables.append(f"== {label}\n" + prof.key_averages().table(sort_by="device_time_total", row_limit=8))
    (args.out / "kernel_profile.txt").write_text("\n".join(tables))
    modelled = _modelled(B, H, n, d)
    lines = [f"block-0 shape B={B} H={H} n={n} d={d} bf16, CUDA time per call (profiler; modelled from the code beside):"]
    for label, ms in measured.items():
        ratio = f", {ms / measured['sdpa']:.2f}x SDPA" if label != "sdpa" else ""
        lines.append(f"{label}: measured {ms:.3f} ms{ratio} (modelled {modelled.get(label, float('nan')):.3f} ms)")
    return dict(batch=B, measured_ms=measured, modelled_ms=modelled, lines=lines)


def _modelled(B: int, H: int, n: int, d: int) -> dict:
    """The cost model's times (ms) for the same calls on the GPU kind this is (H100 when unknown)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from gtp import kernels
    from gtp.kernels.fused_attention import fused_attention
    from gtp.measure import cuda_cost
    from gtp.measure.gpu_model import GPUS
    kind = "rtxpro6000" if "RTX PRO 6000" in torch.cuda.get_device_name().upper() else "h100"
    from gtp.measure.gpu_model import Kernel, launch_seconds
    out = {}
    calls = {"sdpa": None, "fused theta=1": 1.0, "fused theta=0.6": 0.6}
    try:
        for label, theta in calls.items():
            with FakeTensorMode(allow_non_fake_inputs=True):
                q = torch.empty(B, H, n, d, device="cuda", dtype=torch.bfloat16)
                size = torch.ones(B, n, device="cuda")
                log = cuda_cost.CostLog(GPUS[kind], torch.bfloat16)
                with torch.no_grad(), log, cuda_cost.WholeAttention(log):
                    if theta is None:
                        torch.nn.functional.scaled_dot_product_attention(q, q, q)
                    else:
                        fused_attention(q, q, q, size, d ** -0.5, kernels.num_zeroed(n, theta), statistics=True)
            log.derive()
            out[label] = sum(launch_seconds(e, GPUS[kind]) * 1e3 for e in log.events if isinstance(e, Kernel))
    except Exception as error:  # noqa: BLE001 - the measured table stands without it
        out["error"] = f"{type(error).__name__}: {error}"
    return out
