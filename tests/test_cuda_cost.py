"""The GPU cost model (`gtp.measure.cuda_cost`, `gtp.measure.gpu_model`), run without a GPU.

What is asserted are facts the model must get right whatever its constants: which operations
launch kernels, what a GEMM reads and computes, that a host read is a sync, that fused attention
launches fewer kernels than the explicit softmax path, that a bigger batch costs less per image.
Its calibration against published throughput is in gpu_model's docstring, not asserted here.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from gtp.kernels import triton_support
from gtp.measure import cuda_cost
from gtp.measure.gpu_model import GPUS, Kernel, kernel_seconds, launch_seconds, modelled_seconds
from conftest import ROOT

H100 = GPUS["h100"]


class Probe(nn.Module):
    """Runs fn(module, x) on a fake CUDA tensor x of `shape` (the image batch itself is ignored)."""

    def __init__(self, fn, shape):
        super().__init__()
        self.linear = nn.Linear(shape[-1], 32)
        self.fn, self.shape = fn, shape

    def forward(self, images):
        return self.fn(self, images.new_empty(self.shape))


def run(fn, shape=(4, 16), dtype="float32", **kwargs) -> cuda_cost.Estimate:
    """One logged forward of Probe(fn, shape) (batch = shape[0])."""
    return cuda_cost.estimate_module(Probe(fn, shape), batch=shape[0], dtype=dtype, img_size=(8, 8), **kwargs)


def test_views_launch_nothing_fills_and_copies_do():
    views = run(lambda m, x: x.view(2, 2, 16).permute(2, 0, 1).transpose(0, 1).unsqueeze(0)[..., 1].squeeze(0))
    assert views.kernels == 0 and views.bytes == 0
    fills = run(lambda m, x: (torch.zeros(5, device=x.device), torch.arange(7, device=x.device), x.clone()))
    assert fills.kernels == 3
    assert fills.bytes == 5 * 4 + 7 * 8 + 2 * 4 * 16 * 4  # zeros writes, arange writes, clone reads and writes


def test_gemm_flops_bytes_and_programs():
    est = run(lambda m, x: m.linear(x), shape=(300, 16))
    (op, launches, _), = est.top_ops
    assert op == "aten.addmm.default" and launches == 1
    assert est.flops == 2 * 300 * 16 * 32
    assert est.bytes == (300 * 16 + 16 * 32 + 32 + 300 * 32) * 4  # input, weight, bias read; output written


@pytest.mark.parametrize("gpu", ["h100", "rtxpro6000"])
def test_a_gemm_with_fewer_rows_or_columns_never_takes_longer(gpu):
    """A GEMM with fewer rows (or columns) can run as the padded bigger one, so its modelled time never
    rises as M (or N) falls at fixed K: e.g. deit_base's qkv and fc2 at batch 1 with 125 rows (GTP's
    late blocks) against 197 (full). The fill rule alone broke this: half the programs, half the GPU.
    Fused attention likewise in its tokens (its query tiles are programs too)."""
    def seconds(rows, cols, inner, batched=False):
        def gemm(m, x):
            a = x.new_empty((2, rows, inner) if batched else (rows, inner), dtype=torch.bfloat16)
            b = x.new_empty((2, inner, cols) if batched else (inner, cols), dtype=torch.bfloat16)
            return torch.bmm(a, b) if batched else a @ b
        (_, _, t), = run(gemm, dtype="bf16", gpu=gpu).top_ops
        return t
    def rising(times):  # never falls (to rounding)
        return all(b >= a * (1 - 1e-12) for a, b in zip(times, times[1:]))
    sizes = (1, 64, 117, 125, 128, 129, 189, 197, 256, 300, 512, 1024, 4096)
    for cols, inner, batched in ((2304, 768, False), (768, 3072, False), (768, 768, False), (197, 64, True)):
        by_rows = [seconds(m, cols, inner, batched) for m in sizes]
        assert rising(by_rows), (cols, inner, by_rows)
    by_cols = [seconds(197, n, 768) for n in sizes]
    assert rising(by_cols), by_cols
    assert seconds(125, 2304, 768) < seconds(4096, 2304, 768)  # not flat: big GEMMs still cost more

    def attention(tokens, bias=False):  # one image, 12 heads: 12 or 24 programs of 128 queries
        def sdpa(m, x):
            q = x.new_empty(1, 12, tokens, 64, dtype=torch.bfloat16)
            mask = x.new_empty(1, 1, 1, tokens, dtype=torch.bfloat16).expand(1, 12, tokens, tokens) if bias else None
            return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
        return next(t for op, _, t in run(sdpa, dtype="bf16", gpu=gpu).top_ops if "attention" in op)
    for bias in (False, True):  # flash; memory-efficient with a bias (GTP's token scale)
        by_tokens = [attention(n, bias) for n in (64, 117, 125, 128, 129, 189, 197, 256, 577)]
        assert rising(by_tokens), (bias, by_tokens)


def test_a_host_read_in_the_forward_is_a_sync():
    synced = run(lambda m, x: x * x.sum().item())
    assert synced.syncs == ["aten._local_scalar_dense.default (stem)"] and not synced.capturable
    clean = run(lambda m, x: x * x.sum())
    assert clean.syncs == [] and clean.capturable
    masked = run(lambda m, x: x[x > 0])  # a boolean mask: the output size comes from the data
    assert len(masked.syncs) == 1 and masked.syncs[0].startswith("aten.index.Tensor")
    upload = run(lambda m, x: x + torch.ones(16).to(x.device))  # a host tensor copied in the forward
    assert any("_to_copy" in s for s in upload.syncs)


def test_fused_attention_launches_fewer_kernels_per_block_than_the_explicit_softmax():
    fused, explicit = cuda_cost.meta_model("deit_tiny_patch16_224"), cuda_cost.meta_model("deit_tiny_patch16_224")
    for block in explicit.blocks:
        block.attn.fused_attn = False
    a = cuda_cost.estimate_module(fused, batch=2, dtype="bf16")
    b = cuda_cost.estimate_module(explicit, batch=2, dtype="bf16")
    assert a.kernels_per_block < b.kernels_per_block
    assert ("flash attention", 12) in [(op, n) for op, n, _ in a.top_ops]
    assert a.bytes < b.bytes  # no n x n map is written and read back
    assert set(a.per_scope) == {"stem", "head"} | {f"block {i}" for i in range(12)}


def test_a_bigger_batch_costs_less_per_image_and_graphs_cost_less_than_eager():
    one = cuda_cost.estimate("deit_tiny_patch16_224", "full", batch=1)
    many = cuda_cost.estimate("deit_tiny_patch16_224", "full", batch=64)
    assert many.modelled_s / 64 < one.modelled_s
    assert many.kernels == one.kernels  # the same launches, more work each
    graphs = cuda_cost.estimate("deit_tiny_patch16_224", "full", batch=1, cuda_graphs=True)
    assert graphs.modelled_s < one.modelled_s and graphs.modelled_gpu_s == pytest.approx(one.modelled_gpu_s)


def test_gtp_on_fake_cuda_never_syncs_and_drops_work():
    full = cuda_cost.estimate("deit_tiny_patch16_224", "full", batch=4)
    reduced = cuda_cost.estimate("deit_tiny_patch16_224", "pruning", amount=8, batch=4)
    gtp = cuda_cost.estimate("deit_tiny_patch16_224", "gtp", amount=8, batch=4, sparsity=0.6)
    assert gtp.syncs == [] and reduced.syncs == []
    assert reduced.flops < full.flops and gtp.flops < full.flops


def test_custom_op_without_a_plan_moves_its_tensors_once():
    lib_op = "gtp::_cost_model_probe"
    if not hasattr(torch.ops.gtp, "_cost_model_probe"):  # registered once per process
        @torch.library.custom_op(lib_op, mutates_args=())
        def probe(x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @probe.register_fake
        def _(x):
            return torch.empty_like(x)
    est = run(lambda m, x: torch.ops.gtp._cost_model_probe(x))
    assert est.kernels == 1 and est.uncosted == [lib_op] and est.bytes == 2 * 4 * 16 * 4


def test_triton_kernels_are_derived_from_their_compiled_code():
    """Every GTP launch is compiled for sm_90 and read: registers, shared memory, blocks per SM; its
    time follows the launches and trip counts the arguments give (theta < 1 adds the radix passes)."""
    one = cuda_cost.estimate("deit_tiny_patch16_224", "gtp", amount=8, batch=4, sparsity=1.0)
    sparse = cuda_cost.estimate("deit_tiny_patch16_224", "gtp", amount=8, batch=4, sparsity=0.6)
    assert one.uncosted == [] and {"_column_kernel", "_select_kernel", "_propagate_kernel"} <= {
        d.kernel for d in one.derived}
    assert ("memory-efficient attention", 12) in [(op, n) for op, n, _ in one.top_ops]  # priced as SDPA
    for d in one.derived + sparse.derived:
        assert 0 < d.registers <= 255 and d.blocks_per_sm >= 1 and 0 < d.seconds < 1e-2
    block0 = lambda est: sum(d.seconds for d in est.derived if d.scope == "block 0")  # noqa: E731
    assert {"_lse_kernel", "_radix_kernel"} <= {d.kernel for d in sparse.derived} and block0(sparse) > block0(one)


def test_trip_counts_come_from_the_arguments():
    """The attention kernel's loops run more often over a longer sequence: the trip counts are
    evaluated from the launch's own `n`, not declared."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from gtp.kernels import fused_attention  # noqa: F401 - registers the plan
    from gtp.measure import compiled, kernel_time
    runs = {}
    with FakeTensorMode(allow_non_fake_inputs=True):
        for n in (197, 600):
            q = torch.empty(2, 3, n, 64, device="cuda", dtype=torch.bfloat16)
            launches = triton_support.PLANS["gtp::fused_attention"]((q, q, q, None, 0.125, 100, True, False, False), {})
            launch = next(x for x in launches if x.kernel.fn.__name__ == "_attention_kernel")
            c, = compiled.compile_launches([launch], 90)
            runs[n] = kernel_time.executions(c, launch.args, launch.grid)
    assert runs[197] and all(r >= 0 for r in runs[197]) and sum(runs[600]) > sum(runs[197])


def test_modelled_sdpa_matches_the_published_flashattention_2_time():
    """FlashAttention-3 paper (Shah et al. 2024, arXiv 2407.08608), forward, head dim 64, non-causal,
    H100 SXM5: FlashAttention-2 (what PyTorch's SDPA runs there) 282 TFLOP/s at sequence 512, batch
    x sequence 16k, 2048 channels (32 heads). The modelled time must be within 30% of it."""
    B, H, n, d = 32, 32, 512, 64
    def sdpa(m, x):
        q = x.new_empty(x.shape, dtype=torch.bfloat16)  # an allocation: no kernel
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)
    est = run(sdpa, shape=(B, H, n, d), dtype="bf16", gpu="h100")
    assert [op for op, _, _ in est.top_ops] == ["flash attention"]
    published = 4 * B * H * n * n * d / 282e12
    assert abs(est.modelled_gpu_s - H100.graph_launch_us * 1e-6 - published) / published < 0.30


def test_a_directly_called_attention_kernel_is_priced_as_sdpa():
    """`gtp.kernels.fused_attention` calls aten's memory-efficient attention itself (for the lse): one
    attention kernel, FLOPs from torch's counter (its own value head dim), timed as SDPA is; not an
    elementwise op over its output (what it was, 0.3% of these FLOPs). Batch 8: its programs fill the
    GPU, so no padded shape is cheaper (`gpu_model.padded_gemms`)."""
    B, H, n, d = 8, 12, 197, 64

    def direct(m, x):
        q, v = x.new_empty(x.shape, dtype=torch.bfloat16), x.new_empty(B, H, n, 8, dtype=torch.bfloat16)
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, q, v, None, True, scale=0.125)[0]
    est = run(direct, shape=(B, H, n, d), dtype="bf16", gpu="h100")
    (op, launches, seconds), = est.top_ops
    assert (op, launches) == ("memory-efficient attention", 1)
    assert est.flops == 2 * B * H * n * n * (d + 8)
    kernel = Kernel(op, "stem", "attention", torch.bfloat16, est.flops, est.bytes, B * H * 2)
    assert seconds == pytest.approx(H100.graph_launch_us * 1e-6 + kernel_seconds(kernel, H100))


def test_time_model_fill_rule_and_syncs():
    big = Kernel("k", "stem", "vector", torch.float32, 0.0, 1e9, H100.sms)
    half = big._replace(programs=H100.sms // 2)
    assert kernel_seconds(big, H100) == pytest.approx(1e9 / (H100.bandwidth_gbs * 1e9 * H100.achievable_bandwidth))
    assert kernel_seconds(half, H100) == pytest.approx(2 * kernel_seconds(big, H100))
    gemm = Kernel("mm", "stem", "gemm", torch.bfloat16, 1e12, 1.0, 10 * H100.sms)
    assert kernel_seconds(gemm, H100) == pytest.approx(1 / (H100.tensor_tflops * H100.achievable_flops))
    assert kernel_seconds(gemm._replace(dtype=torch.float32), H100, tf32=True) < kernel_seconds(
        gemm._replace(dtype=torch.float32), H100)
    tiny = Kernel("k", "stem", "vector", torch.float32, 0.0, 4.0, 1)
    eager, host, device = modelled_seconds([tiny] * 10, H100)
    assert eager == host == pytest.approx(10 * H100.eager_launch_us * 1e-6) and device < host  # launch-bound
    split, _, _ = modelled_seconds([tiny] * 5 + [("sync", "item", "stem")] + [tiny] * 5, H100)
    assert split > eager  # the sync adds its round trip


def test_cost_command_prints_modelled_rows_and_json(tmp_path):
    out = tmp_path / "cost.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gtp", "cost", "--model", "deit_tiny_patch16_224", "--methods", "gtp", "tome",
         "--batch-size", "2", "--sparsity", "1", "0.6", "--device-kind", "a100", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "MODELLED A100" in lines[0] and "modelled" in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("gtp", "theta=1", "2"), ("gtp", "theta=0.6", "2"), ("tome", "r=8", "2")]
    data = json.loads(out.read_text())
    assert [r["setting"] for r in data["rows"]] == ["-", "theta=1", "theta=0.6", "r=8"]  # full: the reference
    assert data["rows"][0]["modelled_speedup_vs_full"] == 1.0
    assert all(r["modelled_s"] > 0 and r["syncs"] == [] for r in data["rows"])


@pytest.mark.parametrize("argv, message", [
    (["--model", "no_such_model"], "unknown timm model"),
    (["--device-kind", "tpu"], "invalid choice"),
    (["--batch-size", "0"], "--batch-size"),
    (["--sparsity", "1.5"], "sparsity"),
])
def test_cost_command_bad_input_exits_2(argv, message, capsys):
    from gtp import cli
    try:
        code = cli.main(["cost", "--methods", "full", *argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------ issue 24: the GPU verdict from the compiled kernels (MODELLED)
def test_gtp_on_a_modelled_h100_from_the_compiled_kernels(monkeypatch):
    """deit_base, bf16, P = 8, H100, Triton kernels costed from their sm_90 code. The issue's targets
    (batch 256: theta 0.6 >= 1.10x and ahead of ToMe, theta 1 >= 1.15x; batch 1 with CUDA graphs
    >= 0.9x; the fused attention of block 0 at batch 256, theta 1, within 1.5x of SDPA) are NOT all
    met. Derived now: 1.18x at theta 1 (met) and 0.99x at theta 0.6 (behind ToMe's 1.02x; 0.90x
    before the passes' 128-row wgmma tiles, base-2 softmax and PTX `red` counts: block 0's five
    passes 1.07 -> 0.58 ms) at batch 256; 0.82x / 0.72x at batch 1 with graphs (GTP first beats full
    at batch 16, theta 1; theta 0.6 at no batch size up to 256). At block 0, theta 1, the statistics
    kernel (`_column_kernel`) takes 0.517x SDPA's time: its floor, reading q and k once from DRAM
    (its compiled code alone would take 0.48x); the whole op (the size bias's log, PyTorch's
    memory-efficient attention priced as SDPA, the statistics) 1.558x (before: 0.555x and 1.596x;
    1.78x and 2.8x with that attention priced as an elementwise op). 1.5x needs the statistics in
    the attention's own pass over q and k: a second pass costs >= (|q| + |k|) / (|q| + |k| + |v| +
    |out|) = 0.5x SDPA at SDPA's own DRAM floor. Asserted: theta 1 at its target, the rest what is
    true now, a little below (0.985x: 0.992x now, 0.977x with 32-row tiles; 0.79x; the statistics
    kernel <= 0.52x SDPA, the op <= 1.56x), so a regression fails; no sync; no spill; <= 22 kernels
    per block (17.6 at theta 1, 21.6 at theta 0.6)."""
    events = {}
    model = cuda_cost.modelled_seconds

    def keep(log_events, *args, **kwargs):  # the forward's kernels, to price block 0's attention op
        events["last"] = list(log_events)
        return model(log_events, *args, **kwargs)

    monkeypatch.setattr(cuda_cost, "modelled_seconds", keep)

    def speed(method, batch, graphs=False, **options):
        est = cuda_cost.estimate("deit_base_patch16_224", method, amount=8, batch=batch, dtype="bf16",
                                 cuda_graphs=graphs, **options)
        return est, batch / est.modelled_s

    full_est, full = speed("full", 256)
    for sparsity, floor in ((1.0, 1.15), (0.6, 0.985)):
        est, img_s = speed("gtp", 256, sparsity=sparsity)
        assert est.syncs == [] and est.kernels_per_block <= 22 and est.uncosted == []
        assert img_s / full >= floor, (sparsity, img_s / full)
        if sparsity == 1.0:
            statistics = sum(d.seconds for d in est.derived if d.scope == "block 0" and d.kernel == "_column_kernel")
            sdpa = next(t / n for op, n, t in full_est.top_ops if op == "flash attention")
            assert 0 < statistics / sdpa <= 0.52, statistics / sdpa
            # the whole op at block 0: every kernel between the qkv GEMM and the projection's (the size
            # bias's log, the attention giving out and lse, the statistics)
            block = [k for k in events["last"] if isinstance(k, Kernel) and k.scope == "block 0"]
            at = next(i for i, k in enumerate(block) if k.kind == "attention")
            first = max(i for i, k in enumerate(block[:at]) if k.kind == "gemm") + 1
            op = block[first:next(i for i in range(at, len(block)) if block[i].kind == "gemm")]
            assert {"memory-efficient attention", "gtp::attention_statistics"} <= {k.op for k in op}, op
            whole = sum(launch_seconds(k, GPUS["h100"]) for k in op)
            assert whole / sdpa <= 1.56, ([k.op for k in op], whole / sdpa)
            assert all(d.registers <= 128 and d.spill_bytes == 0 for d in est.derived)
    # Batch 1, CUDA graphs: the selection sorts one tile per image (0.71x with its N^2 rank loop,
    # 6.0 us a block, now 1.0 us); GEMMs are no longer timed slower for fewer rows (0.76x -> 0.79x;
    # gpu_model.padded_gemms), the size bias is one kernel, not two (0.81x), the statistics kernel
    # 0.7 us a block, not 1.2 (0.82x). The 0.9x of the issue is still far: at batch 1 a GEMM of 125
    # rows costs what one of 197 does (a fraction of one wave), so removing tokens saves little
    # there, while GTP adds the semantic graph in block 0 (19 kernels) and 5-6 small kernels a block
    # beyond full's twelve (1.5 us each at least).
    _, full_1 = speed("full", 1, graphs=True)
    _, gtp_1 = speed("gtp", 1, graphs=True, sparsity=1.0)
    assert gtp_1 / full_1 >= 0.79
    # What the app says (assets/modelled_crossover.json, `python -m gtp.measure.crossover`) is what the
    # model gives now: GTP theta 1 faster from the batch size it names, not at the one before.
    from gtp.measure import crossover
    record = json.loads(crossover.FILE.read_text())
    first = crossover.first_faster(next(g["rows"] for g in record["gpus"] if g["kind"] == "h100"))[1.0]
    before = max(b for b in crossover.BATCHES if b < first)
    ratios = [speed("gtp", b, graphs=True, sparsity=1.0)[1] / speed("full", b, graphs=True)[1] for b in (before, first)]
    assert ratios[0] <= 1 < ratios[1], (before, first, ratios)


def test_cost_kernels_lines(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gtp", "cost", "--model", "deit_tiny_patch16_224", "--methods", "gtp",
         "--batch-size", "2", "--sparsity", "0.6", "--kernels"], cwd=ROOT, capture_output=True, text=True, timeout=900,
        # The cost model compiles for the GPU: the interpreter (on in this test process) only slows it down (4x).
        env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if " sm_90: registers " in line]
    assert {"_attention_kernel", "_radix_kernel", "_select_kernel", "_propagate_kernel"} <= {l.split()[0] for l in lines}
    assert all(re.search(r"registers \d+, spills \d+, shared [\d.]+ KB, blocks per SM \d+, derived [\d.]+ us", line)
               for line in lines)
    # every launch derived at both targets (sm_120's loops are read as well as sm_90's)
    assert "not derived" not in proc.stdout
    sm120 = {line.split()[0] for line in proc.stdout.splitlines() if " sm_120: registers " in line}
    assert sm120 == {line.split()[0] for line in lines}


def test_untraced_gtp_writes_no_attention_map_on_cuda():
    """On fake CUDA tensors no op of an untraced GTP forward returns a [B, H, n, n] tensor."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    import gtp.steps

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.square: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] == 3 and t.shape[2] == t.shape[3] > 3:
                    self.square.append(f"{func} {tuple(t.shape)}")
            return out

    model = gtp.patch(cuda_cost.meta_model("deit_tiny_patch16_224"), num_prop=8, sparsity=0.6)  # 3 heads
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cuda").eval()
        x = torch.empty(2, 3, 224, 224, device="cuda")
        with torch.no_grad(), Shapes() as shapes:
            model(x)
            assert shapes.square == []
            q = torch.empty(2, 3, 50, 64, device="cuda")  # a trace asks for the maps: they are for one photo
            gtp.steps.attend(q, q, q, None, 0.6, 0.125, "statistics", keep_maps=True)
    assert shapes.square  # the check can see a map
