"""Registers, spills and shared memory of every GTP Triton kernel variant, compiled for sm_90 and sm_120.

    python scripts/kernel_resources.py [--arch 90 120]

No GPU needed: each launch of each op's plan (`gtp.kernels.triton_support.PLANS`), built on fake
CUDA tensors at deit_base's shape (197 tokens, 12 heads of 64; batch 2), is compiled with Triton's own
ptxas and read back with its cuobjdump and nvdisasm, exactly as the cost model (`gtp.measure.compiled`)
reads it: spills are the bytes its STL instructions store, and a kernel whose SASS loops cannot be
mapped to its TTGIR loops says "not derived". One line per kernel variant and target; exit status 1
if any has more than 128 registers, a spill or is not derived.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"  # compile for a GPU, whatever the caller set
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from gtp.kernels import fused_attention, triton_support as S  # noqa: E402,F401  (registers the plans)
from gtp.kernels import triton_tokens  # noqa: E402,F401
from gtp.measure import compiled  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def variants(B: int = 2, H: int = 12, n: int = 197, d: int = 64):
    """(label, launches) of every variant the model forward uses, on fake CUDA tensors."""
    with FakeTensorMode():
        cuda = dict(device="cuda")
        bias = torch.empty(B, n, **cuda)
        for name, dtype in DTYPES.items():
            q, k, v = torch.empty(B, n, 3, H, d, dtype=dtype, **cuda).permute(2, 0, 3, 1, 4).unbind(0)
            for reads in ("statistics", "cls_row", "traced"):
                flags = (reads == "statistics" or reads == "traced", reads == "cls_row" or reads == "traced",
                         reads == "traced")
                yield (f"theta<1 {reads} {name}",
                       S.PLANS["gtp::fused_attention"]((q, k, v, bias, 0.125, 15000, *flags), {}))
                lse = torch.empty(B, H, 224, **cuda)
                yield (f"theta=1 {reads} {name}",
                       S.PLANS["gtp::attention_statistics"]((q, k, bias.to(dtype), lse, 0.125, *flags), {}))
        # a grid that fills the GPU (batch 256): 128-row tiles (`attention_plan._wide`; not with a CLS row)
        q, k, v = torch.empty(256, n, 3, H, d, dtype=torch.bfloat16, **cuda).permute(2, 0, 3, 1, 4).unbind(0)
        for reads in ("statistics", "cls_row", "statistics cls_row"):
            yield (f"theta<1 {reads} bf16 b256", S.PLANS["gtp::fused_attention"](
                (q, k, v, torch.empty(256, n, **cuda), 0.125, 15000, "statistics" in reads, "cls_row" in reads,
                 False), {}))
        for mean in (False, True):
            diag = torch.empty(B, H, n, **cuda)
            ids = torch.empty(B, n - 1, dtype=torch.int64, **cuda)
            yield (f"select statistics {'mean' if mean else 'max'}", S.PLANS["gtp::select_tokens"](
                (diag, diag, None, ids, 1, 8, "mean" if mean else "max", "mixed"), {}))
        yield ("select score", S.PLANS["gtp::select_tokens"](
            (None, None, torch.empty(B, n - 1, **cuda), ids, 1, 8, "max", "mixed"), {}))
        for name in ("fp32", "bf16"):  # the residual stream is float32 under autocast
            x = torch.empty(B, n, 768, dtype=DTYPES[name], **cuda)
            size = torch.empty(B, n, **cuda)
            prop, keep = torch.empty(B, 8, dtype=torch.int64, **cuda), torch.empty(B, n - 9, dtype=torch.int64, **cuda)
            graph = torch.empty(n - 1, n - 1, **cuda).expand(B, -1, -1)
            for weights in (False, True):  # the forward asks for none; the traced forward for the weights
                yield (f"propagate graph {name}{' weights' if weights else ''}", S.PLANS["gtp::propagate_tokens"](
                    (x, size, graph, ids, prop, keep, 1, 0.1, weights), {}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 120])
    parser.add_argument("--only", default="", help="only the variants whose label contains this")
    args = parser.parse_args()
    worst = 0
    seen = set()
    for label, launches in variants():
        if args.only not in label:
            continue
        for launch in launches:
            for arch in args.arch:
                key = (launch.kernel.__name__, arch, launch.num_stages,
                       tuple(sorted((k, str(v.dtype) if isinstance(v, torch.Tensor) else v)
                                    for k, v in launch.args.items())))
                if key in seen:
                    continue
                seen.add(key)
                try:  # as the cost model compiles and reads it (its loops mapped, or an error)
                    c, = compiled.compile_launches([launch], arch)
                except ValueError as error:
                    worst = max(worst, 10 ** 6)
                    print(f"{label:28s} {launch.kernel.__name__:18s} sm_{arch}: not derived ({error})", flush=True)
                    continue
                worst = max(worst, c.registers + 1000 * c.spill_bytes)
                print(f"{label:28s} {launch.kernel.__name__:18s} sm_{arch}: registers {c.registers}, "
                      f"spills {c.spill_bytes}, shared {c.shared_bytes / 1024:.1f} KB, warps {launch.num_warps}, "
                      f"grid {launch.grid}", flush=True)
    return 0 if worst <= 128 else 1  # a spill counts 1000


if __name__ == "__main__":
    sys.exit(main())
