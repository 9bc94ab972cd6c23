"""GPUs on paper and how long a kernel takes on one: the time model of `gtp.measure.cuda_cost`.

Every time it gives is MODELLED, never measured. A kernel occupies the GPU for

    launch + max(flops / (peak * achievable_flops * fill), bytes / (bandwidth * achievable_bandwidth * fill))

  launch    `graph_launch_us`: the floor every kernel costs the GPU (what it costs inside a CUDA graph);
  peak      the tensor-core rate for GEMMs, attention and custom (Triton) kernels in fp16 / bf16 (V100:
            bf16 at the fp32 rate), the TF32 rate for fp32 ones when `tf32`, else the fp32 CUDA-core
            rate, which every other kernel (elementwise, reductions, sorts) gets; attention and custom
            kernels reach ATTENTION of it (ViT sequences are short);
  fill      min(1, programs / SMs): a kernel with fewer thread blocks than the GPU has SMs gets that
            share of its FLOP/s and bandwidth. Programs (counted by `cuda_cost`): one per 128 x 128
            output tile of a GEMM (per batch entry), one per 128 queries per head of attention, one per
            slice of kthvalue / median / sort (PyTorch gives each slice one block), one per 1024
            elements of the largest tensor of any other kernel; custom ops say their own.
  GEMMs     a GEMM with fewer rows (or columns) can always run as a bigger one, padded with zeros,
            so its time is the least of the rule above over itself and the bigger GEMMs of the same
            K (`padded_gemms`): it never rises as M or N falls. The fill rule alone broke this: at
            batch 1, deit_base's qkv GEMM of 125 token rows (one row of 18 tiles) was timed 1.7x
            slower than the 197-row one (two rows, 36 tiles: the weight's bytes spread over twice
            the SMs), and fc2 of 125 rows (6 tiles) 1.8x slower. Fused attention likewise over its
            queries (128 tokens were timed 1.5x slower than 129). Large GEMMs fill the GPU and are
            unchanged (the calibration below moved by < 0.4%, the head's small GEMM). Where the fill
            rule rewards more programs, the padded shape that fills the SMs is the cheapest: it
            stands for the smaller tiles or split-K a library picks there, extra traffic uncharged.

Eager, the host also spends `eager_launch_us` per kernel (HOST_VIEW_US per op that launches nothing).
Launches are asynchronous, so between two host syncs a forward takes max(host time, GPU time), and
each sync adds SYNC_US. With CUDA graphs: one replay (GRAPH_REPLAY_US) plus the GPU time (a forward
that syncs cannot be captured; `cuda_cost` flags it).

Constants: spec sheets (dense, no sparsity: H100 / H200 SXM 989 bf16, 495 TF32, 67 fp32 TFLOP/s, 3.35 /
4.8 TB/s, 132 SMs; A100 SXM 312 / 156 / 19.5, 2.04 TB/s, 108 SMs; RTX 4090 165 (fp16 with fp32
accumulate) / 83 / 83, 1.01 TB/s, 128 SMs; V100 SXM2 125 fp16 / 15.7 fp32, 0.9 TB/s, 80 SMs), and
round guesses: 0.7 of peak FLOP/s for a large GEMM, 5 us of host time per eager launch, 1.5 us of
GPU time per kernel. The bandwidth share was 0.7 at first; the RTX 4090 check below came out 22-28%
low, mostly in memory-bound kernels, so it is 0.9 (what large copies reach on these GPUs).

Calibration against published throughput (`tests/test_cuda_cost.py` keeps what must hold):
  timm results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv (AMP fp16, batch 1024; pt291-cu128
  in brackets): deit_tiny 17,674 (18,550), deit_small 7,688 (8,206), deit_base 2,848 (2,989) img/s.
  Modelled (full, fp16, batch 1024, rtx4090): 16,815, 6,542, 2,226 img/s: 0.91-0.95, 0.80-0.85,
  0.74-0.78 of published. The model is conservative where GEMMs dominate (a 4090 boosts above
  its spec clock; cuBLAS reaches more than 0.7 of spec on these shapes).
  ToMe's README (facebookresearch/ToMe, timm off the shelf on a V100, `tome.utils.benchmark`, whose
  default is fp32): ViT-S/16 953 -> 1,564 img/s at r=13 (1.64x), ViT-B/16 309 -> 511 (1.65x).
  Modelled (fp32, batch 256, v100, this project's ToMe): ViT-S 1,014 -> 1,649 (1.63x), ViT-B 286
  -> 474 (1.66x). No published batch-1 figure was found, so batch 1 (launch-bound) is unchecked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch


@dataclass(frozen=True)
class GPU:
    """Spec-sheet numbers and the modelling assumptions beside them."""
    name: str
    tensor_tflops: float      # fp16 / bf16 tensor cores, fp32 accumulate
    tf32_tflops: float        # fp32 matmuls with TF32 allowed
    fp32_tflops: float        # CUDA cores: fp32 matmuls without TF32, and every other kernel
    bandwidth_gbs: float      # DRAM bandwidth
    sms: int
    flash: bool               # PyTorch's FlashAttention kernels run (sm80 and later)
    bf16: bool = True         # bf16 tensor cores (V100: none)
    achievable_flops: float = 0.7      # share of peak FLOP/s a large, well-filled GEMM reaches
    achievable_bandwidth: float = 0.9  # share of peak bandwidth a large copy reaches
    eager_launch_us: float = 5.0       # host time per kernel launch in eager PyTorch
    graph_launch_us: float = 1.5       # GPU time every kernel costs, its work aside
    cc: int = 0                        # compute capability the Triton kernels compile for (0: not derived)
    clock_ghz: float = 0.0             # the clock the spec sheet's tensor figure is quoted at


GPUS: dict[str, GPU] = {
    "h100": GPU("H100 SXM", 989.0, 494.7, 66.9, 3350.0, 132, True, cc=90, clock_ghz=1.83),
    "h200": GPU("H200 SXM", 989.0, 494.7, 66.9, 4800.0, 132, True, cc=90, clock_ghz=1.83),
    "rtxpro6000": GPU("RTX Pro 6000 Blackwell", 503.8, 251.9, 125.0, 1792.0, 188, True, cc=120, clock_ghz=2.617),
    "a100": GPU("A100 SXM 80GB", 312.0, 156.0, 19.5, 2039.0, 108, True),
    "rtx4090": GPU("RTX 4090", 165.2, 82.6, 82.6, 1008.0, 128, True),
    "v100": GPU("V100 SXM2", 125.0, 15.7, 15.7, 900.0, 80, False, bf16=False),  # no TF32 either
}
ATTENTION = 0.5         # fused attention: about half the GEMM rate at ViT's short sequences
HOST_VIEW_US = 1.0      # eager host time of an op that launches nothing
SYNC_US = 10.0          # a host sync's round trip, once the GPU has drained
GRAPH_REPLAY_US = 10.0  # host time to replay one captured forward
TILE = 128              # GEMM output tile edge (rows and columns per program)


class GemmShape(NamedTuple):
    """A GEMM's output [batch, rows, cols] and the bytes of its operands: `a` scales with the rows
    (rows x K), `b` with the columns (K x cols, a bias), `c` with both (the output). Fused attention
    is one too, per image x head: its rows are the queries (tiled as a GEMM's), `a` q and the output,
    `b` k, v and a bias, its one column not tiled (`tiled_cols` False: the head dim is not split)."""
    batch: int
    rows: int
    cols: int
    a: float
    b: float
    c: float
    tiled_cols: bool = True


class Kernel(NamedTuple):
    """One launch (or `launches` launches of a custom op) as the model sees it."""
    op: str
    scope: str        # "stem", "block 3", "head"
    kind: str         # "gemm", "attention", "custom" or "vector" (everything else)
    dtype: torch.dtype
    flops: float
    bytes: float
    programs: int     # thread blocks of the (largest) launch
    launches: int = 1
    seconds: Optional[float] = None   # "derived" (Triton) kernels: the time derived from their compiled code
    gemm: Optional[GemmShape] = None  # GEMMs and convolutions (implicit GEMMs): their shape, see `gemm_seconds`


def gemm_programs(batch: int, rows: int, cols: int) -> int:
    """Thread blocks of a GEMM: one per TILE x TILE output tile, per batch entry (attention: per TILE
    queries of an image x head)."""
    return batch * math.ceil(rows / TILE) * math.ceil(cols / TILE)


def padded_gemms(k: Kernel, sms: int) -> list[tuple[float, float, int]]:
    """(FLOPs, bytes, programs) of `k` and of the bigger GEMMs it can run as (the same K, rows and
    columns padded with zeros, computed and moved like any others). For each count of row and column
    tiles, only the fewest rows and columns that need it (more only add work at the same fill), up
    to the first count whose tiles fill the SMs (beyond, work grows at full fill: never faster)."""
    g = k.gemm
    rows0, cols0 = math.ceil(g.rows / TILE), math.ceil(g.cols / TILE)
    out = []
    for r in range(rows0, max(rows0, math.ceil(sms / (g.batch * cols0))) + 1):
        for c in range(cols0, max(cols0, math.ceil(sms / (g.batch * r)) if g.tiled_cols else cols0) + 1):
            rows = g.rows if r == rows0 else (r - 1) * TILE + 1
            cols = g.cols if c == cols0 else (c - 1) * TILE + 1
            x, y = rows / g.rows, cols / g.cols
            out.append((k.flops * x * y, g.a * x + g.b * y + g.c * x * y, gemm_programs(g.batch, rows, cols)))
    return out


def work_seconds(flops: float, nbytes: float, programs: int, peak_tflops: float, gpu: GPU) -> float:
    """The busier of compute and memory, each at the share `fill` = min(1, programs / SMs) of the GPU."""
    fill = min(1.0, programs / gpu.sms)
    return max(flops / (peak_tflops * 1e12 * gpu.achievable_flops * fill),
               nbytes / (gpu.bandwidth_gbs * 1e9 * gpu.achievable_bandwidth * fill))


def kernel_seconds(k: Kernel, gpu: GPU, tf32: bool = False) -> float:
    """Modelled GPU time of one kernel's work, the per-launch floor not included. A GEMM takes the
    least time of itself and of the padded GEMMs it can run as (`padded_gemms`)."""
    if k.seconds is not None:
        return k.seconds
    if k.kind == "vector":
        peak = gpu.fp32_tflops
    elif k.dtype == torch.float16 or (k.dtype == torch.bfloat16 and gpu.bf16):
        peak = gpu.tensor_tflops
    else:
        peak = gpu.tf32_tflops if tf32 and k.dtype == torch.float32 else gpu.fp32_tflops
    if k.kind in ("attention", "custom"):
        peak *= ATTENTION
    if k.gemm is not None:  # GEMMs, convolutions and fused attention
        return min(work_seconds(f, b, p, peak, gpu) for f, b, p in padded_gemms(k, gpu.sms))
    return work_seconds(k.flops, k.bytes, k.programs, peak, gpu)


def launch_seconds(k: Kernel, gpu: GPU, tf32: bool = False) -> float:
    """Modelled GPU time of a kernel with its per-launch floor."""
    return k.launches * gpu.graph_launch_us * 1e-6 + kernel_seconds(k, gpu, tf32)


def modelled_seconds(events: list, gpu: GPU, tf32: bool = False,
                     cuda_graphs: bool = False) -> tuple[float, float, float]:
    """(modelled seconds per forward, host seconds, GPU seconds) of a forward's events, in order:
    `Kernel`s, ("host", op, scope) for an op that launches nothing, ("sync", op, scope)."""
    total = host = device = seg_host = seg_device = 0.0
    for e in events:
        if isinstance(e, Kernel):
            seg_device += launch_seconds(e, gpu, tf32)
            seg_host += e.launches * gpu.eager_launch_us * 1e-6
        elif e[0] == "host":
            seg_host += HOST_VIEW_US * 1e-6
        else:  # a sync: the host waits for the GPU to drain, then the GPU waits for the host
            total += max(seg_host, seg_device) + SYNC_US * 1e-6
            host, device, seg_host, seg_device = host + seg_host, device + seg_device, 0.0, 0.0
    host, device = host + seg_host, device + seg_device
    if cuda_graphs:
        return GRAPH_REPLAY_US * 1e-6 + device, GRAPH_REPLAY_US * 1e-6, device
    return total + max(seg_host, seg_device), host, device


# ---------------------------------------------------------------------- Triton kernels, from their code
class SM(NamedTuple):
    """Per-SM limits of a compute capability (CUDA C++ Programming Guide, "Technical Specifications per
    Compute Capability") and per-SM rates per clock ("Arithmetic Instructions" throughput table: results
    per clock per SM; tensor FLOPs from the spec sheet's dense rate / SMs / clock)."""
    registers: int          # 32-bit registers per SM
    warps: int              # resident warps per SM
    blocks: int             # resident blocks per SM
    shared: int             # shared memory per SM usable by blocks (bytes)
    shared_per_block: int   # the most one block may have
    rates: dict             # class -> thread results per clock per SM; "tensor": FLOPs per clock per SM


SMS = {
    # H100: 989.4 TFLOP/s / (132 SMs x 1.83 GHz) = 4096 FLOPs per clock per SM with wgmma (HGMMA);
    # mma.sync (HMMA) reaches about 2/3 of that on Hopper (FlashAttention-3 paper, arXiv 2407.08608, sec. 2.2).
    90: SM(65536, 64, 32, 233472, 232448, dict(tensor=4096.0, hmma=2731.0, fp32=128, int=64, mufu=16,
                                                convert=16, shuffle=32, memory=128.0, issue=4)),
    # RTX Pro 6000 Blackwell (GB202, sm_120): 503.8 TFLOP/s dense bf16 / (188 SMs x 2.617 GHz) = 1024;
    # 48 warps, 100 KB of shared memory per SM, 99 KB per block.
    120: SM(65536, 48, 32, 102400, 101376, dict(tensor=1024.0, hmma=1024.0, fp32=128, int=64, mufu=16,
                                                 convert=16, shuffle=32, memory=128.0, issue=4)),
}
RESERVED_SHARED = 1024   # shared memory the system reserves per block (sm_80 and later)


def blocks_per_sm(registers: int, num_warps: int, shared: int, cc: int) -> int:
    """Resident blocks of a kernel per SM: registers (allocated per warp in units of 256), warps, blocks
    and shared memory each limit it; 0 when one block does not fit (it cannot launch)."""
    sm = SMS[cc]
    per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    if shared > sm.shared_per_block or registers > 255:
        return 0
    return max(0, min(sm.blocks, sm.warps // num_warps, sm.registers // (per_warp * num_warps),
                      sm.shared // (shared + RESERVED_SHARED)))


def program_cycles(work: dict, num_warps: int, resident: int, cc: int) -> float:
    """SM clocks for `resident` programs of `work` (per program: warp instructions per class, "flops" on
    tensor cores, "hmma_flops" of them by mma.sync, "bytes" through L1 / shared memory) sharing one SM:
    the busiest pipe, or the four schedulers' issue slots (a program of w < 4 warps uses w of them).
    Latency is not modelled: with few warps per scheduler this is a lower bound."""
    rates = SMS[cc].rates
    lanes = {c: resident * work.get(c, 0.0) * 32 for c in ("fp32", "int", "mufu", "convert", "shuffle")}
    bounds = [lanes[c] / rates[c] for c in lanes]
    bounds.append(resident * (work.get("flops", 0.0) - work.get("hmma_flops", 0.0)) / rates["tensor"])
    bounds.append(resident * work.get("hmma_flops", 0.0) / rates["hmma"])
    bounds.append(resident * work.get("bytes", 0.0) / rates["memory"])
    bounds.append(resident * work.get("instructions", 0.0) / min(rates["issue"], resident * num_warps))
    return max(bounds)


def derived_seconds(work: dict, programs: int, num_warps: int, blocks: int, dram_bytes: float, gpu: GPU) -> float:
    """Modelled time of one launch of `programs` programs (per-launch floor not included): waves of
    `blocks` programs per SM over the SMs, each wave as long as its fullest SM; and never less than
    moving `dram_bytes` (its tensors, each once) at the achievable bandwidth."""
    if blocks == 0:
        return math.inf
    full, rest = divmod(programs, gpu.sms * blocks)
    cycles = full * program_cycles(work, num_warps, blocks, gpu.cc)
    if rest:
        cycles += program_cycles(work, num_warps, math.ceil(rest / gpu.sms), gpu.cc)
    return max(cycles / (gpu.clock_ghz * 1e9), dram_bytes / (gpu.bandwidth_gbs * 1e9 * gpu.achievable_bandwidth))
