"""Command line: `python -m gtp predict|bench|eval|sweep|models ...`.

Bad input (unknown model, bad hyper-parameters, unreadable image or weights) ends
with one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

import torch

from .config import PUBLISHED
from .functional import GRAPHS, PROPAGATIONS, SELECTIONS

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def add_gtp_arguments(parser: argparse.ArgumentParser) -> None:
    """The GTP hyper-parameters as options; defaults are the published setting (METHOD.md)."""
    g = parser.add_argument_group("GTP hyper-parameters (defaults: the published setting)")
    g.add_argument("--num-prop", type=int, nargs="+", default=[PUBLISHED["num_prop"]], metavar="P",
                   help="P, patch tokens propagated per block: one int, or one per block "
                        f"(default {PUBLISHED['num_prop']})")
    g.add_argument("--sparsity", type=float, default=PUBLISHED["sparsity"], metavar="THETA",
                   help="theta in (0, 1], share of attention entries kept; 1 = off "
                        f"(default {PUBLISHED['sparsity']})")
    g.add_argument("--alpha", type=float, default=PUBLISHED["alpha"], metavar="A",
                   help=f"weight of the propagated features (default {PUBLISHED['alpha']})")
    g.add_argument("--graph", choices=GRAPHS, default=PUBLISHED["graph"],
                   help=f"token graph (default {PUBLISHED['graph']})")
    g.add_argument("--num-neighbours", type=int, default=PUBLISHED["num_neighbours"], metavar="M",
                   help=f"M, neighbours per token in the semantic graph (default {PUBLISHED['num_neighbours']})")
    g.add_argument("--selection", choices=SELECTIONS, default=PUBLISHED["selection"],
                   help=f"token selection (default {PUBLISHED['selection']})")
    g.add_argument("--propagation", choices=PROPAGATIONS, default=PUBLISHED["propagation"],
                   help=f"how removed tokens are merged (default {PUBLISHED['propagation']})")
    g.add_argument("--no-token-scale", action="store_true",
                   help="turn off proportional attention on the token sizes")


def gtp_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `gtp.patch` from options added by `add_gtp_arguments`."""
    num_prop = list(args.num_prop)
    return dict(
        num_prop=num_prop[0] if len(num_prop) == 1 else num_prop,
        sparsity=args.sparsity, alpha=args.alpha, graph=args.graph,
        num_neighbours=args.num_neighbours, selection=args.selection,
        propagation=args.propagation, token_scale=not args.no_token_scale,
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from .models import SUPPORTED_MODELS
    parser.add_argument("--model", default="deit_small_patch16_224", metavar="NAME",
                        help="one of: " + ", ".join(SUPPORTED_MODELS) + " (default deit_small_patch16_224)")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="local .safetensors/.pth weights (default: local cache, hub, else random)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _tokens_left(num_prop: Sequence[int], num_patches: int, num_prefix: int) -> int:
    """Tokens after the last block, following the patched block's rule (P >= tokens left -> none)."""
    n = num_patches
    for p in num_prop:
        if n > p:
            n -= p
    return n + num_prefix


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
    from .models import load_image, load_model, preprocess, top_k

    image = load_image(args.image)                  # ValueError on an unreadable file
    loaded = load_model(args.model, weights=args.weights, device=args.device)
    model = loaded.model
    gtp.patch(model, **gtp_kwargs(args))            # validates the hyper-parameters first
    print(_banner(loaded.message, loaded.pretrained), flush=True)
    cfg = gtp.config_of(model)
    x = preprocess(image, loaded)
    out_gtp = model(x).float().cpu()
    gmacs_gtp = gtp.gmacs(model, loaded.img_size)
    gtp.unpatch(model)
    out_base = model(x).float().cpu()
    gmacs_base = gtp.gmacs(model, loaded.img_size)

    grid = model.patch_embed.grid_size
    n_patch, n_prefix = grid[0] * grid[1], model.num_prefix_tokens
    n_in, n_out = n_patch + n_prefix, _tokens_left(cfg.num_prop, n_patch, n_prefix)
    p = cfg.num_prop[0] if len(set(cfg.num_prop)) == 1 else "per-block"
    print(f"model: {loaded.name} ({loaded.source} weights) | image: {args.image} | input "
          f"{loaded.img_size[0]}x{loaded.img_size[1]}")
    print(f"GTP: P={p} theta={cfg.sparsity:g} alpha={cfg.alpha:g} graph={cfg.graph} M={cfg.num_neighbours} "
          f"selection={cfg.selection} propagation={cfg.propagation} token_scale={cfg.token_scale}")
    print(f"tokens: {n_in} in, {n_out} after the last block (baseline keeps {n_in})")
    print()
    if loaded.has_head:
        k = args.top_k
        base, red = top_k(out_base[0], loaded.class_names, k), top_k(out_gtp[0], loaded.class_names, k)
        w = 36
        print(f"     {'baseline top-' + str(k):<{w}} {'prob':>6}   | {'GTP top-' + str(k):<{w}} {'prob':>6}")
        for i, ((_, nb, pb), (_, ng, pg)) in enumerate(zip(base, red), 1):
            print(f"  {i}. {_short(nb, w):<{w}} {pb:6.1%}   | {_short(ng, w):<{w}} {pg:6.1%}")
        agree = base[0][0] == red[0][0]
        print(f"top-1 agrees: {'yes' if agree else 'no'}")
    else:
        cos = torch.nn.functional.cosine_similarity(out_base, out_gtp, dim=-1)[0].item()
        print(f"headless model: final feature {tuple(out_base.shape)}; "
              f"cosine similarity baseline vs GTP: {cos:.4f}")
    print()
    reduction = 100.0 * (1.0 - gmacs_gtp / gmacs_base) if gmacs_base > 0 else 0.0
    print(f"GMACs: baseline {gmacs_base:.3f} | GTP {gmacs_gtp:.3f} | reduction {reduction:.1f}%")
    if not loaded.pretrained:
        print("(random weights: the classes above carry no meaning)")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from .models import SUPPORTED_MODELS
    w = max(map(len, SUPPORTED_MODELS))
    for name, desc in SUPPORTED_MODELS.items():
        print(f"{name:<{w}}  {desc}")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from . import bench
    rc = bench.main(args)
    return int(rc or 0)


def build_parser(with_bench: bool = False) -> argparse.ArgumentParser:
    """The `python -m gtp` parser. gtp.bench is imported only when `with_bench` (the bench
    subcommand is being run), so predict works whatever state that module is in."""
    parser = _Parser(prog="python -m gtp",
                     description="GTP Explorer: Graph-based Token Propagation on pretrained timm ViTs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    pr = sub.add_parser("predict", help="top-5 (or feature similarity) and GMACs with and without GTP",
                        description="Run a model with and without GTP on one image and compare.")
    pr.add_argument("image", metavar="IMAGE", help="an image file (any format PIL reads)")
    _add_model_arguments(pr)
    pr.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to show (default 5)")
    add_gtp_arguments(pr)
    pr.set_defaults(func=_run_predict)

    be = sub.add_parser("bench", help="accuracy / speed / GMACs benchmark (gtp.bench)",
                        description="Benchmark GTP settings (see gtp/bench.py).")
    if with_bench:
        from . import bench
        bench.add_arguments(be)
    be.set_defaults(func=_run_bench)

    from . import evaluate, sweep  # the eval and sweep subcommands (gtp/evaluate.py, gtp/sweep.py)
    ev = sub.add_parser("eval", help="top-1/top-5, agreement, KL, cosine, GMACs, img/s on an image folder",
                        description="Evaluate the full and the reduced model on an image folder "
                                    "(see gtp/evaluate.py; runs under torchrun too).")
    _add_model_arguments(ev)
    evaluate.add_arguments(ev)
    add_gtp_arguments(ev)
    ev.set_defaults(func=evaluate.main)

    sw = sub.add_parser("sweep", help="resumable grid / random search over P, theta, alpha, M",
                        description="Sweep GTP settings and baselines on an image folder (see gtp/sweep.py).")
    _add_model_arguments(sw)
    sweep.add_arguments(sw)
    sw.set_defaults(func=sweep.main)

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
