"""The Python half of scripts/gpu_check.sh: GTP on a GPU, checked and timed, results in one folder.

    python3 scripts/gpu_checks.py --part A --out DIR [--device cuda] [--deadline EPOCH_S]
    python3 scripts/gpu_checks.py --part B --out DIR --device cpu --small --compile-backend aot_eager  # dry run

Part A: parity     CPU vs device on assets/chelsea.png (fp32, TF32 off, flags restored): the CPU's own
                   maps zeroed on the device vs the entries the CPU zeroed, and the logits (judged);
                   propagated ids (reported, not judged: random weights make near ties)
        sync       untraced GTP / ToMe / pruning forwards under torch.cuda.set_sync_debug_mode("error")
                   (on the CPU: the same forwards on fake CUDA tensors, `gtp.measure.cuda_cost`)
        kernels    kernels per block at bf16, batch 1 and 64: the profiler's count beside the cost
                   model's (`python -m gtp cost`)
        app        the app's explore, compare and throughput on the photo (`spaces` stood in for
                   where it is not installed)
        bench      full, GTP theta 1 and 0.6, ToMe r=8, pruning side by side, eager: models x dtypes
                   x batch sizes (the largest model, bf16, first)
        profile    the profiler's top kernels of GTP theta 0.6, bf16, batch 256 (what a shortfall is made of)
Part B: graphs     the same matrix, eager and replayed from CUDA graphs in the same rounds
        compiled   eager and torch.compile in the same rounds, one job per model, dtype and batch size,
                   the headline (largest model, bf16, batch 256, then 1) first, while time is left
Every section is guarded (a failure is written down and the next one runs) and starts only if the
deadline leaves it time. With --device cpu the "device" is the CPU's batched path (numba off).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import gtp  # noqa: E402
import gpu_kernel_checks  # noqa: E402 - beside this script
from gtp import kernels  # noqa: E402

PHOTO = ROOT / "assets" / "chelsea.png"
METHODS = {"full": ("full", {}), "gtp theta=1": ("gtp", dict(sparsity=1.0)),
           "gtp theta=0.6": ("gtp", dict(sparsity=0.6)), "tome": ("tome", {}), "pruning": ("pruning", {})}


class Report:
    """Each section's result to OUT/<name>.json (its traceback to <name>.error.txt), one line per
    section and its summary lines to OUT/summary.md."""

    def __init__(self, out: Path, deadline: float):
        self.out, self.deadline = out, deadline
        out.mkdir(parents=True, exist_ok=True)
        self.summary = out / "summary.md"

    def left(self) -> float:
        return self.deadline - time.time()

    def line(self, text: str) -> None:
        print(text, flush=True)
        with self.summary.open("a") as f:
            f.write(text + "\n")

    def section(self, name: str, fn: Callable[[], dict], needs_s: float = 0.0) -> None:
        if self.left() < needs_s:
            self.line(f"## {name}: SKIPPED ({self.left():.0f} s left, needs about {needs_s:.0f})")
            return
        start = time.time()
        try:
            result = fn()
            (self.out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
            self.line(f"## {name}: done in {time.time() - start:.0f} s")
            for text in result.get("lines", []):
                self.line(f"    {text}")
        except Exception as e:  # noqa: BLE001 - the next section must still run
            (self.out / f"{name}.error.txt").write_text(traceback.format_exc())
            self.line(f"## {name}: FAILED after {time.time() - start:.0f} s: {type(e).__name__}: {str(e)[:300]}")
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def model_and_photo(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model (cached hub weights, else timm's seeded random ones) and the photo [1, 3, H, W]."""
    from gtp.models import load_image, load_model, preprocess
    loaded = load_model(name, device="cpu")
    return loaded.model.eval(), preprocess(load_image(PHOTO), loaded).cpu()


@contextlib.contextmanager
def device_path(device: str):
    """On the CPU, numba off (the batched path every GPU takes); elsewhere nothing changes."""
    original = kernels.radix_select.available
    if device == "cpu":
        kernels.radix_select.available = lambda: False
    try:
        yield
    finally:
        kernels.radix_select.available = original


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 matmuls and convolutions on or off inside the block, the flags restored after."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def inference(device: str, dtype: str):
    """No autograd, and the autocast `gtp.measure.bench` times under (float32: none)."""
    from gtp.measure.bench import DTYPES, inference
    return inference(torch.device(device), DTYPES[dtype])


def gpu_kind(device: str) -> str:
    """The `gtp.measure.gpu_model.GPUS` entry this device is (h100 when unknown or the CPU)."""
    name = torch.cuda.get_device_name() if device == "cuda" else ""
    return next((kind for key, kind in (("H200", "h200"), ("H100", "h100"), ("A100", "a100"),
                                        ("4090", "rtx4090"), ("V100", "v100")) if key in name), "h100")


# ------------------------------------------------------------------------------------- part A
def parity(args) -> dict:
    model, x = model_and_photo(args.models[0])
    lines, runs = [], []
    with tf32(False):
        for sparsity in (1.0, 0.6):
            gtp.patch(model, num_prop=8, sparsity=sparsity)
            with torch.inference_mode(), gtp.trace(model, attention=True) as cpu:
                cpu_logits = model.cpu()(x)
            with torch.inference_mode(), device_path(args.device), gtp.trace(model, attention=True) as dev:
                dev_logits = model.to(args.device)(x.to(args.device)).cpu()
                ids_differ = [layer.block for layer, other in zip(cpu.layers, dev.layers)
                              if not torch.equal(layer.propagated, other.propagated.cpu())]
                zero_differ = 0
                for layer in cpu.layers:  # the CPU's own maps, zeroed on the device
                    again, _ = kernels.sparsify(layer.attn_before.to(args.device), sparsity)
                    zero_differ += int(((again == 0).cpu() != (layer.attn_after == 0)).sum())
            diff = float((dev_logits - cpu_logits).abs().max())
            tolerance = 1e-3 * (1.0 + float(cpu_logits.abs().max()))
            ok = zero_differ == 0 and diff <= tolerance
            runs.append(dict(sparsity=sparsity, ok=ok, zeroed_entries_differing=zero_differ,
                             max_logit_difference=diff, tolerance=tolerance, blocks_with_other_ids=ids_differ))
            lines.append(f"theta={sparsity}: {'PASS' if ok else 'FAIL'}: zeroed entries differing {zero_differ}, "
                         f"max |logit diff| {diff:.2e} (tolerance {tolerance:.1e}); blocks with other ids "
                         f"(near ties, not judged): {ids_differ or 'none'}")
    gtp.unpatch(model)
    return dict(model=args.models[0], device=args.device, runs=runs, lines=lines)


SYNC_CASES = {**{k: v for k, v in METHODS.items() if k != "full"},
              "gtp mean/cls_attn": ("gtp", dict(propagation="mean", selection="cls_attn_mean")),
              "gtp random": ("gtp", dict(selection="random"))}


def sync(args) -> dict:
    from gtp.methods import apply_method
    from gtp.measure import cuda_cost
    results, lines = {}, []
    model = model_and_photo(args.models[0])[0].to(args.device) if args.device != "cpu" else None
    for name, (method, options) in SYNC_CASES.items():
        if model is None:  # no GPU: the same forward on fake CUDA tensors
            syncs = cuda_cost.estimate(args.models[0], method, 8, 4, "float32", **options).syncs
            problem = ", ".join(syncs) or None
        else:
            apply_method(model, method, 8, **options)
            x = torch.randn(4, 3, 224, 224, device=args.device)
            with torch.inference_mode():
                model(x)  # lazy initialisation may synchronise once
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    model(x)
                    problem = None
                except RuntimeError as e:
                    problem = str(e).splitlines()[0][:200]
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        results[name] = problem
        lines.append(f"{name}: {'no host sync' if problem is None else 'SYNC: ' + problem}")
    return dict(results=results, lines=lines, how="fake CUDA (cuda_cost)" if model is None else "sync debug mode")


def count_kernels(model: torch.nn.Module, x: torch.Tensor, dtype: str) -> int:
    """CUDA kernels (and copies) one forward launches, by the profiler; on the CPU, aten operations."""
    from torch.profiler import ProfilerActivity, profile
    with inference(x.device.type, dtype):
        model(x)
        if x.device.type == "cpu":
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(x)
            return sum(1 for e in prof.events() if e.name.startswith("aten::"))
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(x)
            torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def kernel_counts(args) -> dict:
    from gtp.methods import apply_method
    from gtp.measure import cuda_cost
    name, dtype = args.models[-1], args.dtypes[-1]
    model = model_and_photo(name)[0].to(args.device)
    depth, kind = len(model.blocks), gpu_kind(args.device)
    unit = "aten ops (CPU, not comparable)" if args.device == "cpu" else "CUDA kernels"
    table, lines = {}, [f"{name} {dtype}, per block = whole forward / {depth}: measured {unit} | modelled"]
    for label, (method, options) in METHODS.items():
        apply_method(model, method, 8, **options)
        row = {}
        with device_path(args.device):
            for batch in args.kernel_batches:
                measured = count_kernels(model, torch.randn(batch, 3, 224, 224, device=args.device), dtype)
                modelled = cuda_cost.estimate(name, method, 8, batch, dtype, kind, **options).kernels
                row[batch] = dict(measured=measured / depth, modelled=modelled / depth)
        table[label] = row
        lines.append(f"{label:14} " + ", ".join(f"batch {b}: {c['measured']:.1f} | {c['modelled']:.1f}"
                                                for b, c in row.items()))
    apply_method(model, "full")
    return dict(model=name, dtype=dtype, unit=unit, per_block=table, lines=lines)


def stand_in_spaces(force: bool = False) -> str:
    """A no-op `spaces` module (`spaces.GPU` returns the function) where the package is missing."""
    if not force and importlib.util.find_spec("spaces") is not None:
        return "installed"
    stub = types.ModuleType("spaces")
    stub.GPU = lambda fn=None, **kw: fn if callable(fn) else (lambda f: f)
    sys.modules["spaces"] = stub
    return "stand-in"


def app_smoke(args) -> dict:
    """The app's API as it is today: explore, compare, throughput (gtp.measure.metrics.device_name)."""
    spaces = stand_in_spaces(args.spaces_stand_in)
    from app.core import inference, photos, settings
    from app.core.models import DEVICE
    from app.ui import api
    from gtp.measure.metrics import device_name
    name, out, lines = args.models[0], {}, [f"spaces: {spaces}; app device: {device_name(DEVICE)}"]
    calls = {
        "explore": lambda: api.explore(image=str(PHOTO), model=name)[0],
        "compare": lambda: api.compare(image=str(PHOTO), model=name),
        "throughput": lambda: inference.throughput(inference.explore_photo(
            photos.open_photo(str(PHOTO)), settings.make_settings(name, None, "")), batch_size=8),
    }
    for key, call in calls.items():
        start = time.time()
        try:
            result = call()
            out[key] = dict(ok=True, seconds=time.time() - start, result=result)
            detail = (f": full {result.full_img_per_s:.0f} img/s, GTP {result.gtp_img_per_s:.0f} img/s on "
                      f"{result.device}" if key == "throughput" else "")
            lines.append(f"{key}: ok in {time.time() - start:.1f} s{detail}")
        except Exception as e:  # noqa: BLE001
            out[key] = dict(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            lines.append(f"{key}: FAILED: {type(e).__name__}: {str(e)[:200]}")
    return dict(spaces=spaces, calls=out, lines=lines)


def profile_gtp(args) -> dict:
    """The profiler's top kernels of one GTP theta 0.6 forward (bf16, the largest batch)."""
    from torch.profiler import ProfilerActivity, profile
    name, batch, dtype = args.models[-1], args.batch_sizes[-1], args.dtypes[-1]
    model = gtp.patch(model_and_photo(name)[0], num_prop=8, sparsity=0.6).to(args.device)
    x = torch.randn(batch, 3, 224, 224, device=args.device)
    cuda = args.device != "cpu"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with inference(args.device, dtype), device_path(args.device):
        model(x)
        with profile(activities=activities) as prof:
            model(x)
            if cuda:
                torch.cuda.synchronize()
    sort = "device_time_total" if cuda else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30)
    (args.out / "profile_gtp.txt").write_text(table)
    return dict(model=name, batch=batch, dtype=dtype, sort=sort,
                lines=[f"{name} GTP theta=0.6 {dtype} batch {batch}, sorted by {sort} (profile_gtp.txt):"]
                + table.splitlines()[:16])


# ---------------------------------------------------------------------------- bench (A and B)
def bench(args, report: Report, mode: str) -> dict:
    """mode "eager": one run per model and dtype, all batch sizes; "graphs": the same with each method
    also replayed from a CUDA graph; "compiled": eager and compiled in the same rounds, one run per
    model, dtype and batch size, the headline first, while time is left."""
    from gtp.methods import method_fn
    from gtp.measure.bench import benchmark
    order = sorted(((m, d) for m in args.models for d in args.dtypes),
                   key=lambda j: (-args.models.index(j[0]), j[1] != "bf16"))
    jobs = [(m, d, list(args.batch_sizes)) for m, d in order]
    if mode == "compiled":  # batch 256 (throughput), then 1 (launch-bound), then the rest
        sizes = sorted(args.batch_sizes, key=lambda b: (b != max(args.batch_sizes), b != min(args.batch_sizes)))
        jobs = [(m, d, [b]) for m, d in order for b in sizes]
    extra = {"graphs": "+graphs", "compiled": "+compile"}.get(mode)
    needs = {"eager": 20, "graphs": 30, "compiled": 75}[mode]
    runs, lines = [], []
    for name, dtype, batches in jobs:
        if report.left() < needs:
            lines.append(f"{name} {dtype} batch {batches}: SKIPPED, {report.left():.0f} s left")
            continue
        methods = {label: method_fn(method, 8, **options) for label, (method, options) in METHODS.items()}
        result = benchmark(model_and_photo(name)[0], methods, batches, device=args.device, dtype=dtype,
                           repeats=args.repeats, warmup=1 if mode == "compiled" else 2, log=lambda s: None,
                           compile_backend=args.compile_backend if mode == "compiled" else None,
                           cuda_graphs=mode == "graphs")
        result["model"] = name
        runs.append(result)
        for failed, error in result["graph_errors"].items():
            lines.append(f"{name} {dtype}: CUDA graph capture FAILED for {failed}: {error}")
        for run in result["runs"]:
            t, cells = run["median_s"], []
            for k in run["img_per_s"]:
                base = k[:-len(extra)] if extra and k.endswith(extra) else None
                if extra and base is None:
                    continue
                ratio = f"{t['full'] / t[k]:.2f}x vs full"
                if base:
                    ratio = f"{t['full' + extra] / t[k]:.2f}x vs full{extra}, {t[base] / t[k]:.2f}x vs eager"
                cells.append(f"{k} {run['img_per_s'][k]:.0f} img/s ({ratio})")
            lines.append(f"{name} {dtype} batch {run['batch_size']}: " + "; ".join(cells))
        (report.out / f"bench_{mode}.partial.json").write_text(json.dumps(runs, indent=2, default=str))
    return dict(runs=runs, lines=lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["A", "B"], required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--deadline", type=float, default=None, help="epoch seconds to stop starting sections")
    p.add_argument("--small", action="store_true", help="dry-run sizes: deit_tiny, batches 1 and 2, fp32 and bf16")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--spaces-stand-in", action="store_true", help="use the no-op `spaces` even where it is installed")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu for a dry run", file=sys.stderr)
        return 2
    if args.small:
        args.models, args.batch_sizes, args.dtypes = ["deit_tiny_patch16_224"], [1, 2], ["float32", "bf16"]
        args.kernel_batches, args.repeats = [1, 2], 2
    else:
        args.models = ["deit_small_patch16_224", "deit_base_patch16_224"]
        args.batch_sizes, args.dtypes, args.kernel_batches, args.repeats = [1, 64, 256], ["float32", "bf16"], [1, 64], 5
    report = Report(args.out, args.deadline or time.time() + 260)
    triton = importlib.util.find_spec("triton")
    versions = (f"torch {torch.__version__}, timm {importlib.import_module('timm').__version__}, triton "
                f"{importlib.import_module('triton').__version__ if triton else 'not installed'}, python {sys.version.split()[0]}")
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    report.line(f"# part {args.part} on {device}: {versions}; numba {kernels.radix_select.available()}")
    if args.part == "A":
        report.section("parity", lambda: parity(args), needs_s=20)
        report.section("self_check", lambda: gpu_kernel_checks.self_check(args), needs_s=15)
        report.section("sync", lambda: sync(args), needs_s=15)
        report.section("kernels", lambda: kernel_counts(args), needs_s=30)
        report.section("app", lambda: app_smoke(args), needs_s=30)
        report.section("bench_eager", lambda: bench(args, report, "eager"), needs_s=30)
        report.section("profile", lambda: profile_gtp(args), needs_s=15)
    elif args.device == "cpu":
        report.line("## bench_graphs: SKIPPED (CUDA graphs need a CUDA device; --cuda-graphs refuses on the CPU)")
        report.section("bench_compiled", lambda: bench(args, report, "compiled"), needs_s=60)
    else:
        report.section("kernel_profile", lambda: gpu_kernel_checks.kernel_profile(args), needs_s=30)
        report.section("bench_graphs", lambda: bench(args, report, "graphs"), needs_s=45)
        report.section("bench_compiled", lambda: bench(args, report, "compiled"), needs_s=75)
    return 0


if __name__ == "__main__":
    sys.exit(main())
