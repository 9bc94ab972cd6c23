"""Command line: `python -m gtp predict|bench|eval|sweep|cost|figure|models ...`.

Bad input (unknown model, bad hyper-parameters, unreadable image or weights) ends
with one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch

from .config import describe_config, effective_num_prop
from .options import add_gtp_arguments, add_model_arguments, gtp_kwargs

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "~"


def _banner(message: str, pretrained: bool) -> str:
    if pretrained:
        return message
    bar = "!" * 78
    return f"{bar}\n!! WARNING: {message}\n{bar}"


@torch.inference_mode()
def _run_predict(args: argparse.Namespace) -> int:
    import gtp
    from . import adapters
    from .measure.metrics import cosine, features_and_logits, top1_agreement
    from .models import load_image, load_model, preprocess

    image = load_image(args.image)                  # ValueError on an unreadable file
    loaded = load_model(args.model, weights=args.weights, device=args.device)
    model = loaded.model
    gtp.patch(model, **gtp_kwargs(args))            # validates the hyper-parameters first
    print(_banner(loaded.message, loaded.pretrained), flush=True)
    cfg = gtp.config_of(model)
    x = preprocess(image, loaded)
    feats_gtp, logits_gtp = features_and_logits(model, x, loaded.has_head)
    gmacs_gtp = gtp.gmacs(model, loaded.img_size)
    gtp.unpatch(model)
    feats_base, logits_base = features_and_logits(model, x, loaded.has_head)
    gmacs_base = gtp.gmacs(model, loaded.img_size)

    grid = adapters.grid_size(model, loaded.img_size)
    n_patch, n_prefix = grid[0] * grid[1], adapters.num_prefix(model)
    actual = effective_num_prop(cfg.num_prop, n_patch, cfg.propagation)
    n_in, n_out = n_patch + n_prefix, n_patch + n_prefix - sum(actual)
    n_out += sum(p > 0 for p in actual) if cfg.propagation == "mean" else 0  # one average token each
    print(f"model: {loaded.name} ({loaded.source} weights) | image: {args.image} | input "
          f"{loaded.img_size[0]}x{loaded.img_size[1]}")
    print(f"GTP: {describe_config(cfg)}")
    if actual != cfg.num_prop:  # a block with no more than P patch tokens left propagates none
        print(f"P per block as run (a block with no more than P patch tokens left propagates none): "
              f"{', '.join(map(str, actual))}")
    print(f"tokens: {n_in} in, {n_out} after the last block (baseline keeps {n_in})")
    print()
    if loaded.has_head:
        _print_top_k(logits_base[0].float().cpu(), logits_gtp[0].float().cpu(), loaded.class_names, args.top_k)
        agree = bool(top1_agreement(logits_base, logits_gtp)[0])
        print(f"top-1 agrees: {'yes' if agree else 'no'}")
    else:
        cos = float(cosine(feats_base, feats_gtp)[0])
        print(f"headless model: final feature {tuple(feats_base.shape)}; "
              f"cosine similarity baseline vs GTP: {cos:.4f}")
    print()
    reduction = 100.0 * (1.0 - gmacs_gtp / gmacs_base) if gmacs_base > 0 else 0.0
    print(f"GMACs: baseline {gmacs_base:.3f} | GTP {gmacs_gtp:.3f} | reduction {reduction:.1f}%")
    if not loaded.pretrained:
        print("(random weights: the classes above carry no meaning)")
    return 0


def _print_top_k(base_logits: torch.Tensor, gtp_logits: torch.Tensor, class_names, k: int) -> None:
    """The two top-k lists side by side: class name and probability."""
    from .models import top_k
    base, red = top_k(base_logits, class_names, k), top_k(gtp_logits, class_names, k)
    w = 36
    print(f"     {'baseline top-' + str(k):<{w}} {'prob':>6}   | {'GTP top-' + str(k):<{w}} {'prob':>6}")
    for i, ((_, nb, pb), (_, ng, pg)) in enumerate(zip(base, red), 1):
        print(f"  {i}. {_short(nb, w):<{w}} {pb:6.1%}   | {_short(ng, w):<{w}} {pg:6.1%}")


def _run_models(args: argparse.Namespace) -> int:
    from .models import SUPPORTED_MODELS
    w = max(map(len, SUPPORTED_MODELS))
    for name, desc in SUPPORTED_MODELS.items():
        print(f"{name:<{w}}  {desc}")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from .measure import bench
    rc = bench.main(args)
    return int(rc or 0)


def _add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    from .methods import METHODS
    from .measure.bench import DTYPES
    from .measure.gpu_model import GPUS
    parser.add_argument("--model", default="deit_base_patch16_224", metavar="NAME",
                        help="any timm model name (no weights are read; default deit_base_patch16_224)")
    parser.add_argument("--methods", nargs="+", default=["full", "gtp", "tome", "pruning"], choices=list(METHODS),
                        help="methods, each removing --num-prop tokens per block (ToMe: r = P); "
                             "ratios are to full, which is always modelled")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 256], metavar="B")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="autocast dtype (float32: none)")
    parser.add_argument("--device-kind", choices=list(GPUS), default="h100", help="the GPU modelled (default h100)")
    parser.add_argument("--cuda-graphs", action="store_true", help="model CUDA-graph replay, not eager launches")
    parser.add_argument("--tf32", action="store_true", help="fp32 matmuls on TF32 tensor cores")
    parser.add_argument("--json", default=None, metavar="FILE", help="write every estimate to this JSON file")
    parser.add_argument("--kernels", action="store_true",
                        help="also one line per Triton kernel and target (sm_90 H100, sm_120 RTX Pro 6000): "
                             "registers, spills, shared memory, blocks per SM and the time derived from its code")
    add_gtp_arguments(parser, many=("sparsity",))


def _print_kernels(args: argparse.Namespace, amount: int, options: dict, sparsities: list) -> None:
    """`<kernel> sm_90: registers N, spills N, shared N KB, blocks per SM N, derived N us` for each GTP
    kernel variant at block 0, per target, batch size and theta (the time is modelled)."""
    from .measure.cuda_cost import estimate
    print("Triton kernels compiled for each target (block 0; derived times are modelled):")
    for kind in ("h100", "rtxpro6000"):
        for batch in args.batch_size:
            for sparsity in sparsities:
                e = estimate(args.model, "gtp", amount, batch, args.dtype, kind, args.cuda_graphs, args.tf32,
                             **{**options, "sparsity": sparsity})
                for d in (d for d in e.derived if d.scope == "block 0"):
                    if d.note:
                        print(f"{d.kernel} sm_{d.cc}: not derived ({d.note})", flush=True)
                        continue
                    print(f"{d.kernel} sm_{d.cc}: registers {d.registers}, spills {d.spill_bytes}, shared "
                          f"{d.shared_bytes / 1024:.1f} KB, blocks per SM {d.blocks_per_sm}, derived "
                          f"{d.seconds * 1e6:.1f} us (modelled; batch {batch}, theta={sparsity:g}, {d.programs} programs)",
                          flush=True)


def _run_cost(args: argparse.Namespace) -> int:
    """One row per method, setting and batch size. Every time is modelled (gtp.measure.gpu_model)."""
    import dataclasses
    import json
    from .config import GTPConfig
    from .measure.cuda_cost import estimate, meta_model
    from .measure.gpu_model import GPUS
    if min(args.batch_size) < 1:
        raise ValueError("--batch-size must be >= 1")
    meta_model(args.model)  # an unknown name fails here
    options = gtp_kwargs(args)
    amount, sparsities = options.pop("num_prop"), options.pop("sparsity")
    GTPConfig(num_prop=amount, sparsity=sparsities[0], **options)  # bad options fail before any model is built
    rows = [("full", "-", {})] + [(m, f"r={amount}" if m == "tome" else f"P={amount}", {})
                                  for m in args.methods if m not in ("full", "gtp")]
    if "gtp" in args.methods:
        rows[1:1] = [("gtp", f"theta={s:g}", dict(sparsity=s)) for s in sparsities]
    gpu = GPUS[args.device_kind]
    print(f"{args.model} on a MODELLED {gpu.name} ({args.dtype}{', TF32' if args.tf32 else ''}, "
          f"{'CUDA graphs' if args.cuda_graphs else 'eager'}); P={amount}; no GPU was used: "
          f"every time below is modelled, not measured")
    print(f"{'method':<8} {'setting':<10} {'batch':>5} {'kern/blk':>9} {'syncs':>5} {'GB/batch':>9}"
          f" {'ms (mod.)':>10} {'img/s(mod)':>10} {'vs full':>8}")
    results = []
    for batch in args.batch_size:
        full = None
        for method, setting, extra in rows:
            e = estimate(args.model, method, amount, batch, args.dtype, args.device_kind, args.cuda_graphs,
                         args.tf32, **{**options, **extra})
            full = full or e
            ratio = full.modelled_s / e.modelled_s
            results.append(dict(dataclasses.asdict(e), setting=setting, modelled_img_per_s=e.modelled_img_per_s,
                                modelled_speedup_vs_full=ratio))
            if method not in args.methods:
                continue
            flag = "" if e.capturable or not args.cuda_graphs else " (not capturable: it syncs)"
            print(f"{method:<8} {setting:<10} {batch:>5} {e.kernels_per_block:9.1f} {len(e.syncs):5d} "
                  f"{e.bytes / 1e9:9.3f} {e.modelled_s * 1e3:10.3f} {e.modelled_img_per_s:10.0f} {ratio:7.2f}x{flag}",
                  flush=True)
    if args.kernels:
        _print_kernels(args, amount, options, sparsities)
    from .kernels import triton_support
    print(f"on this machine: {triton_support.status_line()}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=args.model, gpu=dataclasses.asdict(gpu), dtype=args.dtype, cuda_graphs=args.cuda_graphs,
                           tf32=args.tf32, num_prop=amount, gtp=options, rows=results), f, indent=2, default=str)
    return 0


def build_parser(with_bench: bool = False) -> argparse.ArgumentParser:
    """The `python -m gtp` parser. gtp.measure.bench is imported only when `with_bench` (the bench
    subcommand is being run), so predict works whatever state that module is in."""
    parser = _Parser(prog="python -m gtp",
                     description="GTP Explorer: Graph-based Token Propagation on pretrained timm ViTs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    pr = sub.add_parser("predict", help="top-5 (or feature similarity) and GMACs with and without GTP",
                        description="Run a model with and without GTP on one image and compare.")
    pr.add_argument("image", metavar="IMAGE", help="an image file (any format PIL reads)")
    add_model_arguments(pr)
    pr.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to show (default 5)")
    add_gtp_arguments(pr)
    pr.set_defaults(func=_run_predict)

    be = sub.add_parser("bench", help="accuracy / speed / GMACs benchmark (gtp.measure.bench)",
                        description="Benchmark GTP settings (see gtp/measure/bench.py).")
    if with_bench:
        from .measure import bench
        bench.add_arguments(be)
    be.set_defaults(func=_run_bench)

    from .measure import evaluate, sweep  # the eval and sweep subcommands
    ev = sub.add_parser("eval", help="top-1/top-5, agreement, KL, cosine, GMACs, img/s on an image folder",
                        description="Evaluate the full and the reduced model on an image folder "
                                    "(see gtp/measure/evaluate.py; runs under torchrun too).")
    add_model_arguments(ev)
    evaluate.add_arguments(ev)
    add_gtp_arguments(ev)
    ev.set_defaults(func=evaluate.main)

    sw = sub.add_parser("sweep", help="resumable grid / random search over P, theta, alpha, M",
                        description="Sweep GTP settings and baselines on an image folder (see gtp/measure/sweep.py).")
    add_model_arguments(sw)
    sweep.add_arguments(sw)
    sw.set_defaults(func=sweep.main)

    from .measure import fidelity  # the fidelity subcommand
    fi = sub.add_parser("fidelity", help="how close each method keeps the full model's features, at matched GMACs",
                        description="Cosine of the final features (and top-1 agreement / KL with a head) to the "
                                    "unpatched model's, per method and P, on photos (see gtp/measure/fidelity.py).")
    fidelity.add_arguments(fi)
    fi.set_defaults(func=fidelity.main)

    co = sub.add_parser("cost", help="modelled GPU cost (kernels, syncs, bytes, time) on fake CUDA tensors, no GPU",
                        description="Model one forward per method on a GPU without using one (see "
                                    "gtp/measure/cuda_cost.py and gpu_model.py); every time printed is modelled.")
    _add_cost_arguments(co)
    co.set_defaults(func=_run_cost)

    from .figures import command as figure_command  # matplotlib is imported only when it draws
    fi = sub.add_parser("figure", help="the run's figures for a paper or a slide: PDF, SVG and PNG (matplotlib)",
                        description="Draw the layer walk, the token graphs, attention before and after "
                                    "sparsification, the compared methods and the trade-off chart of one photo "
                                    "(see gtp/figures/).")
    figure_command.add_arguments(fi)
    fi.set_defaults(func=figure_command.main)

    mo = sub.add_parser("models", help="list the supported models")
    mo.set_defaults(func=_run_models)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(with_bench=command == "bench")
    except ImportError as e:
        print(f"python -m gtp bench: error: the benchmark is not available ({e})", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if getattr(args, "top_k", 1) < 1:
        parser.error("--top-k must be >= 1")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"python -m gtp {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
