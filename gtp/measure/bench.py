"""Throughput of the unpatched and the reduced models, measured side by side in one run.

Machines are noisy, so the models are timed interleaved (round-robin, the order
rotated each round) and each one's median is reported; the ratios come from
those medians, never from separate runs. Each round also gives one ratio per
model (the reference's time over the model's, taken a moment apart); their
median and middle half show how far the machine's noise moves a ratio, so a
difference inside that spread is not a difference.

Two more columns per method can join the same rounds: `--compile` (torch.compile:
fusion and fewer launches) and, on CUDA, `--cuda-graphs` (the same eager kernels,
captured once per batch size with `torch.cuda.CUDAGraph` and replayed: no launch
overhead, no fusion). Manual capture rather than `torch.compile(mode="reduce-overhead")`
because it keeps the kernels exactly those of eager (what `python -m gtp cost` counts)
and fails loudly where a forward cannot be captured (a host sync), where
reduce-overhead would add inductor's fusion and quietly skip graphs on a graph break.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..flops import gmacs
from .metrics import device_name
from .metrics import synchronize as _sync

DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def inference(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """How every method runs when timed: no autograd, and autocast for a reduced `dtype`.

    Reduced precision runs under `no_grad` rather than `inference_mode`: autocast keeps the
    bf16/fp16 copies of the weights from one forward to the next only outside inference
    mode (PyTorch #158232), and re-casting every weight on every forward would add ten
    kernels to each block of every method.
    """
    if dtype == torch.float32:
        return torch.inference_mode()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(torch.autocast(device_type=device.type, dtype=dtype))
    return stack


def time_interleaved(
        models: dict[str, nn.Module],
        x: torch.Tensor,
        repeats: int = 10,
        warmup: int = 2,
        dtype: torch.dtype = torch.float32,
) -> dict[str, list[float]]:
    """Seconds per forward of each model on x, measured round-robin.

    Returns name -> list of `repeats` timings.
    """
    device = x.device
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    with inference(device, dtype):
        for name in names:
            for _ in range(warmup):
                models[name](x)
        _sync(device)
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                _sync(device)
                start = time.perf_counter()
                models[name](x)
                _sync(device)
                times[name].append(time.perf_counter() - start)
    return times


class CudaGraphed(nn.Module):
    """`model`'s forward captured in a CUDA graph per input shape, then replayed.

    The first call with a shape runs the forward twice on a side stream (lazy initialisation,
    cuBLAS workspaces), then captures it; every call copies x into the captured input and
    replays. The output is the graph's own tensor, overwritten by the next call. Captured in
    the caller's autocast and grad mode (autocast's weight cache off: cached casts would be
    made outside the graph). A forward that reads a value back to the host cannot be captured:
    the first call raises.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def _capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_in = x.clone()
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                  enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), autocast:
            for _ in range(2):
                self.model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), autocast:
            static_out = self.model(static_in)
        return graph, static_in, static_out


def refuse_graphs_off_cuda(device: torch.device) -> None:
    """ValueError unless `device` is a CUDA device (CUDA graphs capture CUDA kernel launches)."""
    if device.type != "cuda":
        raise ValueError(f"--cuda-graphs captures CUDA kernel launches and needs a CUDA device; this run is on "
                         f"{device.type}{'' if torch.cuda.is_available() else ' (CUDA is not available here)'}")


def benchmark(
        model: nn.Module,
        methods: dict[str, Callable[[nn.Module], nn.Module]],
        batch_sizes: Sequence[int] = (32,),
        img_size: int = 224,
        device: Optional[str] = None,
        dtype: str = "float32",
        repeats: int = 10,
        warmup: int = 2,
        log: Callable[[str], None] = print,
        compile_backend: Optional[str] = None,
        cuda_graphs: bool = False,
) -> dict:
    """Throughput of `model` reduced by each method, the first method being the reference.

    methods: name -> function that patches a copy of the model in place
    (e.g. {"full": lambda m: m, "gtp": lambda m: gtp.patch(m, num_prop=8)}).
    compile_backend: also time `torch.compile(backend=...)` of each model
    ("<name>+compile") in the same rounds; compilation happens in the untimed warm-up.
    cuda_graphs: also time each (eager) model replayed from a CUDA graph ("<name>+graphs"), captured
    in the untimed warm-up; a model whose capture fails is left out of that batch size's rounds
    and its error recorded under "graph_errors". CUDA only.
    Returns a JSON-ready dict with img/s, ratios to the first method and GMACs.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = DTYPES[dtype]
    if dev.type == "cpu" and torch_dtype == torch.float16:
        raise ValueError("fp16 autocast is for CUDA; use bf16 on CPU")
    if cuda_graphs:
        refuse_graphs_off_cuda(dev)
    models = {}
    for name, apply in methods.items():
        m = apply(copy.deepcopy(model)).eval()
        models[name] = m
    macs = {name: gmacs(getattr(m, "model", m), img_size) for name, m in models.items()}
    for m in models.values():
        m.to(dev)
    if compile_backend:
        # Each model and batch size (static shapes) is one more compiled entry of the same
        # forward code, and a model with graph breaks compiles block by block; past dynamo's
        # limit (8) a code object runs uncompiled in every model that shares it.
        torch._dynamo.reset()
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        depth = len(getattr(model, "blocks", ()))
        setattr(torch._dynamo.config, limit, max(8, len(models) * len(batch_sizes) * (depth + 2)))
        models.update({f"{name}+compile": torch.compile(m, backend=compile_backend, dynamic=False)
                       for name, m in list(models.items())})
        macs.update({f"{name}+compile": macs[name] for name in list(macs)})
        warmup = max(warmup, 1)
    if cuda_graphs:
        eager = [name for name in models if not name.endswith("+compile")]
        models.update({f"{name}+graphs": CudaGraphed(models[name]) for name in eager})
        macs.update({f"{name}+graphs": macs[name] for name in eager})
    reference = next(iter(models))
    result = {
        "device": device_name(dev),
        "dtype": dtype, "img_size": img_size, "repeats": repeats, "compile": compile_backend,
        "cuda_graphs": cuda_graphs, "torch": torch.__version__, "gmacs": macs, "runs": [], "graph_errors": {},
    }
    for batch in batch_sizes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, img_size, img_size, generator=gen).to(dev)
        timed = dict(models)
        for name, m in models.items():  # capture now, so a forward that cannot be captured is left out
            if isinstance(m, CudaGraphed):
                try:
                    with inference(dev, torch_dtype):
                        m(x)
                except RuntimeError as e:
                    result["graph_errors"][f"{name} batch {batch}"] = str(e).splitlines()[0][:300]
                    del timed[name]
                    torch.cuda.synchronize(dev)
        times = time_interleaved(timed, x, repeats, warmup, torch_dtype)
        medians = {name: statistics.median(t) for name, t in times.items()}
        run = {
            "batch_size": batch,
            "img_per_s": {name: batch / med for name, med in medians.items()},
            "speedup": {name: medians[reference] / med for name, med in medians.items()},
            "per_round_speedup": {name: paired_ratios(times[reference], t) for name, t in times.items()},
            "median_s": medians,
            "times_s": times,
        }
        result["runs"].append(run)
        log(format_run(run, macs, reference))
    return result


def paired_ratios(reference: Sequence[float], times: Sequence[float]) -> dict[str, float]:
    """Round-by-round ratios reference / model: their median and quartiles (q1, q3)."""
    ratios = [r / t for r, t in zip(reference, times)]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3}


def format_run(run: dict, macs: dict[str, float], reference: str) -> str:
    lines = [f"batch {run['batch_size']}:"]
    for name, ips in run["img_per_s"].items():
        rounds = run["per_round_speedup"][name]
        lines.append(
            f"  {name:<16} {ips:9.1f} img/s  {run['speedup'][name]:5.3f}x vs {reference}"
            f" (rounds: {rounds['q1']:5.3f}-{rounds['q3']:5.3f}x)"
            f"   {macs[name]:6.3f} GMACs ({macs[reference] / macs[name]:5.3f}x fewer)")
    return "\n".join(lines)


class Traced(nn.Module):
    """A patched model whose every forward runs inside `gtp.trace` (to time the trace's cost)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..trace import trace
        with trace(self.model):
            return self.model(x)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..options import add_gtp_arguments  # the GTP options, shared with `predict`
    from ..methods import METHODS
    parser.add_argument("--model", default="deit_small_patch16_224", help="a supported model name")
    parser.add_argument("--weights", default=None, help="local .safetensors/.pth file")
    parser.add_argument("--methods", nargs="+", default=["full", "gtp"], choices=list(METHODS) + ["gtp-traced"],
                        help="methods timed side by side, the first being the reference; tome, pruning "
                             "and evit remove as many tokens per block as GTP (--num-prop), so GMACs match; "
                             "gtp-traced runs GTP inside gtp.trace")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="autocast dtype (float32 = no autocast)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of every method, side by side with eager")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also time every method's eager forward replayed from a CUDA graph (CUDA only)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--plot", default=None, metavar="FILE", help="draw the ratios and their spread (.pdf/.svg/.png)")
    add_gtp_arguments(parser)


def method_functions(names: Sequence[str], gtp_options: dict) -> dict[str, Callable[[nn.Module], nn.Module]]:
    """name -> function patching a model copy, at the token budget of `gtp_options["num_prop"]`."""
    from ..methods import method_fn
    options = dict(gtp_options)
    amount = options.pop("num_prop")
    functions = {}
    for name in names:
        if name == "gtp-traced":
            functions[name] = lambda m: Traced(method_fn("gtp", amount, **options)(m))
        else:
            functions[name] = method_fn(name, amount, **options)
    return functions


def main(args: argparse.Namespace) -> int:
    from ..options import gtp_kwargs
    from ..models import load_model
    if args.plot:
        from ..figures.results import check_plot_path
        check_plot_path(args.plot)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cuda_graphs:  # before the model is loaded
        refuse_graphs_off_cuda(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    loaded = load_model(args.model, weights=args.weights, device="cpu")
    kwargs = gtp_kwargs(args)
    methods = method_functions(args.methods, kwargs)
    print(f"model {args.model} ({loaded.source} weights), GTP {kwargs}", file=sys.stderr)
    result = benchmark(loaded.model, methods, args.batch_size, args.img_size, args.device,
                       args.dtype, args.repeats, args.warmup,
                       compile_backend="inductor" if args.compile else None, cuda_graphs=args.cuda_graphs)
    from ..kernels import triton_support
    result["model"] = args.model
    result["gtp"] = kwargs
    result["kernels"] = dict(triton_support.STATUS)  # each fused op: "checked" or "off: why" (gtp.self_check)
    print(f"device {result['device']}, dtype {result['dtype']}, "
          f"median of {args.repeats} interleaved repeats per method and batch size; "
          f"'rounds' is the middle half of the per-round ratios (the machine's noise)")
    print(triton_support.status_line())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.plot:
        from ..figures.results import plot_bench
        print(f"plot: {plot_bench(result, args.plot)}", file=sys.stderr)
    return 0
