"""The Python half of scripts/gpu_check.sh: GTP on a GPU, checked and timed, results to a folder.

    python scripts/gpu_checks.py --out OUTDIR [--device cuda] [--deadline EPOCH_S]
    python scripts/gpu_checks.py --out /tmp/dry --device cpu --small   # a dry run on the CPU

Sections, each guarded (a failure is written down and the next one runs):
  parity   CPU vs DEVICE on assets/chelsea.png (fp32, TF32 off): propagated ids per block,
           and the entries zeroed on the device from the CPU's own maps vs those the CPU zeroed
  sync     an untraced GTP / ToMe / pruning forward under torch.cuda.set_sync_debug_mode("error")
           (on the CPU: the same forward's aten ops, searched for host reads)
  kernels  kernels per block at batch 1 and 64 (torch profiler; on the CPU: aten ops)
  app      the app's explore and compare on the photo, and its throughput
  bench    full (timm fused attention), GTP theta 1 and 0.6, ToMe, pruning, side by side:
           models x dtypes x batch sizes, eager; then the same compiled while time is left
With --device cpu the "device" is the CPU's batched path (numba off): what every GPU runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import gtp  # noqa: E402
from gtp import kernels  # noqa: E402

PHOTO = ROOT / "assets" / "chelsea.png"


class Report:
    """Writes each section's result to OUT/<name>.json and one line per section to OUT/summary.md."""

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

    def section(self, name: str, fn: Callable[[], Any], needs_s: float = 0.0) -> None:
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


def model_and_photo(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model (hub weights when cached, else timm's seeded random ones) and the photo [1, 3, H, W]."""
    from gtp.models import load_image, load_model, preprocess
    loaded = load_model(name, device="cpu")
    return loaded.model.eval(), preprocess(load_image(PHOTO), loaded).cpu()


def on_device_path(device: str):
    """Context: the device's path. On the CPU, numba off (the batched path a GPU takes)."""
    import contextlib
    if device != "cpu":
        return contextlib.nullcontext()
    original = kernels.radix_select.available

    @contextlib.contextmanager
    def no_numba():
        kernels.radix_select.available = lambda: False
        try:
            yield
        finally:
            kernels.radix_select.available = original
    return no_numba()


# ---------------------------------------------------------------------------- parity
def parity(args) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, x = model_and_photo(args.models[0])
    lines, runs = [], []
    for sparsity in (1.0, 0.6):
        gtp.patch(model, num_prop=8, sparsity=sparsity)
        with torch.inference_mode(), gtp.trace(model, attention=True) as cpu:
            cpu_logits = model.cpu()(x)
        with torch.inference_mode(), on_device_path(args.device), gtp.trace(model, attention=True) as dev:
            dev_logits = model.to(args.device)(x.to(args.device)).cpu()
            ids_differ = [layer.block for layer, other in zip(cpu.layers, dev.layers)
                          if not torch.equal(layer.propagated, other.propagated.cpu())]
            zero_differ = 0
            for layer in cpu.layers:  # the CPU's own maps, zeroed on the device
                again, _ = kernels.sparsify(layer.attn_before.to(args.device), sparsity)
                zero_differ += int(((again == 0).cpu() != (layer.attn_after == 0)).sum())
        run = dict(sparsity=sparsity, blocks_with_other_ids=ids_differ, zeroed_entries_differing=zero_differ,
                   max_logit_difference=float((dev_logits - cpu_logits).abs().max()),
                   top1_cpu=int(cpu_logits.argmax()), top1_device=int(dev_logits.argmax()))
        runs.append(run)
        lines.append(f"theta={sparsity}: blocks with other ids {ids_differ or 'none'}, zeroed entries differing "
                     f"{zero_differ}, max |logit diff| {run['max_logit_difference']:.2e}")
    gtp.unpatch(model)
    return dict(model=args.models[0], device=args.device, runs=runs, lines=lines)


# ------------------------------------------------------------------------------ sync
SYNC_CASES = {
    "gtp theta=0.6": ("gtp", dict(sparsity=0.6)),
    "gtp theta=1": ("gtp", dict(sparsity=1.0)),
    "gtp mean/cls_attn": ("gtp", dict(propagation="mean", selection="cls_attn_mean")),
    "gtp random": ("gtp", dict(selection="random")),
    "tome": ("tome", {}),
    "pruning": ("pruning", {}),
}


def sync(args) -> dict:
    from gtp.baselines import apply_method
    sys.path.insert(0, str(ROOT / "tests"))
    model = model_and_photo(args.models[0])[0].to(args.device)
    x = torch.randn(4, 3, 224, 224, device=args.device)
    results, lines = {}, []
    for name, (method, options) in SYNC_CASES.items():
        apply_method(model, method, 8, **options)
        with torch.inference_mode(), on_device_path(args.device):
            model(x)  # lazy initialisation may synchronise once
            if args.device == "cpu":
                from test_gpu_path import OpLog
                with OpLog() as log:
                    model(x)
                problem = ", ".join(sorted(set(log.syncs))) or None
            else:
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
    apply_method(model, "full")
    return dict(results=results, lines=lines)


# --------------------------------------------------------------------------- kernels
def count_kernels(model: torch.nn.Module, x: torch.Tensor) -> int:
    """CUDA kernels one forward launches (torch profiler); on the CPU, aten operations."""
    with torch.inference_mode():
        model(x)
        if x.device.type == "cpu":
            sys.path.insert(0, str(ROOT / "tests"))
            from test_gpu_path import OpLog
            with OpLog() as log:
                model(x)
            return sum(log.ops.values())
        from torch.profiler import ProfilerActivity, profile
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(x)
            torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def kernel_counts(args) -> dict:
    from gtp.baselines import apply_method
    model = model_and_photo(args.models[0])[0].to(args.device)
    depth = len(model.blocks)
    cases = {"full": ("full", {}), "gtp theta=1": ("gtp", dict(sparsity=1.0)),
             "gtp theta=0.6": ("gtp", dict(sparsity=0.6)), "tome": ("tome", {})}
    table, lines = {}, []
    for name, (method, options) in cases.items():
        apply_method(model, method, 8, **options)
        counts = {}
        with on_device_path(args.device):
            for batch in args.kernel_batches:
                counts[batch] = count_kernels(model, torch.randn(batch, 3, 224, 224, device=args.device))
        table[name] = {b: c / depth for b, c in counts.items()}
        lines.append(f"{name:14} per block: " + ", ".join(f"batch {b}: {c / depth:.1f}" for b, c in counts.items()))
    apply_method(model, "full")
    unit = "aten ops" if args.device == "cpu" else "CUDA kernels"
    return dict(unit=unit, per_block=table, lines=[f"({unit})"] + lines)


# ------------------------------------------------------------------------------- app
def app_smoke(args) -> dict:
    """The app's public functions, whichever of them this version has."""
    import importlib
    out, lines = {}, []
    for module_name, fn_name, call in [
            ("app.api", "explore", lambda f: f(image=str(PHOTO), model=args.models[0])),
            ("app.layout", "explore", lambda f: f(image=str(PHOTO), model=args.models[0])),
            ("app.api", "compare", lambda f: f(image=str(PHOTO), model=args.models[0])),
            ("app.layout", "compare_api", lambda f: f(image=str(PHOTO), model=args.models[0])),
            ("app.inference", "measure_throughput",
             lambda f: f(importlib.import_module("app.inference").Settings(model=args.models[0]), 8))]:
        key = f"{module_name}.{fn_name}"
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError):
            continue
        start = time.time()
        try:
            result = call(fn)
            out[key] = dict(ok=True, seconds=time.time() - start, result=result)
            lines.append(f"{key}: ok in {time.time() - start:.1f} s")
        except Exception as e:  # noqa: BLE001
            out[key] = dict(ok=False, error=f"{type(e).__name__}: {e}")
            lines.append(f"{key}: FAILED: {type(e).__name__}: {str(e)[:200]}")
    if not out:
        lines.append("no app entry point found")
    try:
        from app import inference
        lines.append(f"app device: {inference.device_name()}")
    except Exception as e:  # noqa: BLE001
        lines.append(f"app device: unknown ({type(e).__name__})")
    return dict(calls=out, lines=lines)


# ----------------------------------------------------------------------------- bench
def bench_methods() -> dict:
    from gtp.baselines import method_fn
    return {"full": method_fn("full"), "gtp theta=1": method_fn("gtp", 8, sparsity=1.0),
            "gtp theta=0.6": method_fn("gtp", 8, sparsity=0.6), "tome": method_fn("tome", 8),
            "pruning": method_fn("pruning", 8)}


def bench(args, report: Report, compiled: bool) -> dict:
    """Eager: one side-by-side run per model and dtype. Compiled: eager and compiled models in the
    same rounds, one run per model, dtype and batch size (the largest first), while time is left."""
    from gtp.measure.bench import benchmark
    kind = "compiled" if compiled else "eager"
    jobs = [(m, d, tuple(args.batch_sizes)) for d in args.dtypes for m in args.models]
    if compiled:  # the headline figure first: the largest model, bf16, the largest batch
        jobs = sorted([(m, d, (b,)) for m, d, _ in jobs for b in args.batch_sizes],
                      key=lambda j: (j[1] != "bf16", -args.models.index(j[0]), -j[2][0]))
    runs, lines = [], []
    for name, dtype, batches in jobs:
        if report.left() < (60 if compiled else 20):
            lines.append(f"{name} {dtype} batch {list(batches)}: SKIPPED, {report.left():.0f} s left")
            continue
        result = benchmark(model_and_photo(name)[0], bench_methods(), list(batches), device=args.device,
                           dtype=dtype, repeats=args.repeats, warmup=1 if compiled else 2, log=lambda s: None,
                           compile_backend=args.compile_backend if compiled else None)
        result["model"] = name
        runs.append(result)
        for run in result["runs"]:
            t = run["median_s"]
            cells = []
            for k in run["img_per_s"]:
                if k.endswith("+compile") != compiled:
                    continue
                ratio = f"{t['full'] / t[k]:.2f}x vs full"
                if compiled:
                    eager = k[:-len("+compile")]
                    ratio = f"{t['full+compile'] / t[k]:.2f}x vs full+compile, {t[eager] / t[k]:.2f}x vs eager"
                cells.append(f"{k} {run['img_per_s'][k]:.0f} img/s ({ratio})")
            lines.append(f"{name} {dtype} batch {run['batch_size']}: " + "; ".join(cells))
        (report.out / f"bench_{kind}.partial.json").write_text(json.dumps(runs, indent=2, default=str))
    return dict(runs=runs, lines=lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--deadline", type=float, default=None, help="epoch seconds to stop starting sections")
    p.add_argument("--small", action="store_true", help="dry run sizes: deit_tiny, batches 1 and 2, fp32")
    p.add_argument("--compile-backend", default="inductor")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu for a dry run", file=sys.stderr)
        return 2
    if args.small:
        args.models, args.batch_sizes, args.dtypes = ["deit_tiny_patch16_224"], [1, 2], ["float32"]
        args.kernel_batches, args.repeats = [1, 4], 2
    else:
        args.models = ["deit_small_patch16_224", "deit_base_patch16_224"]
        args.batch_sizes, args.dtypes, args.kernel_batches, args.repeats = [1, 64, 256], ["float32", "bf16"], [1, 64], 5
    report = Report(args.out, args.deadline or time.time() + 280)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    report.line(f"# GTP GPU check: {device}, torch {torch.__version__}, numba {kernels.radix_select.available()}")
    report.section("parity", lambda: parity(args))
    report.section("sync", lambda: sync(args))
    report.section("kernels", lambda: kernel_counts(args))
    report.section("app", lambda: app_smoke(args), needs_s=30)
    report.section("bench_eager", lambda: bench(args, report, compiled=False), needs_s=30)
    report.section("bench_compiled", lambda: bench(args, report, compiled=True), needs_s=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
