"""`python -m gtp figure PHOTO`: one photo, one setting (predict's options), the five run figures
as PDF, SVG and PNG.

The model runs once per method, as the app runs it (`app.core.inference.run_photo` and the
Compare tab): GTP traced with its attention maps, then each other compared method recording what
left per block at the same token budget; GMACs counted by `gtp.gmacs`. The figures only read
that record (`gtp.figures.RunFigures`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .. import facts, methods
from ..flops import gmacs
from ..images import load_image, preprocess
from ..options import add_gtp_arguments, add_model_arguments, gtp_kwargs
from ..patch import config_of, patch
from ..trace import trace
from . import VIEWS, Choice, RunFigures, write_all


def shown_photo(x: torch.Tensor, data_config: dict) -> Image.Image:
    """The model input [1, 3, H, W] back to the RGB picture it shows (the crop the model saw)."""
    mean = torch.tensor(data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(data_config["std"]).view(3, 1, 1)
    rgb = (x[0].detach().float().cpu() * std + mean).clamp(0, 1)
    return Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")


@torch.inference_mode()
def collect(image_path: str, model_name: str, options: dict, weights: Optional[str] = None,
            device: Optional[str] = None, sweep: Sequence[dict] = ()) -> RunFigures:
    """Run the photo through GTP (traced, with attention maps) and the other compared methods."""
    from ..models import load_model
    image = load_image(image_path)
    loaded = load_model(model_name, weights=weights, device=device)
    model, x = loaded.model, preprocess(image, loaded)
    patch(model, **options)                     # validates the hyper-parameters first
    with trace(model, attention=True) as rec:
        model(x)
    counted = {"gtp": gmacs(model, loaded.img_size)}
    amount = config_of(model).num_prop          # the tokens every compared method removes per block
    budget = list(amount) if isinstance(amount, (list, tuple)) else [int(amount)] * len(model.blocks)
    removed = {"gtp": methods.records_of_trace(rec)}
    others = {k: v for k, v in options.items() if k != "num_prop"}
    mapped = [m for m in methods.compared(model) if m.mapped]   # the methods whose maps Compare draws
    for method in mapped:
        if method.name != "gtp":
            _, blocks = method.run_recorded(model, lambda m: m(x), budget, **others)
            removed[method.name] = blocks
    methods.reset(model)
    counted["full"] = gmacs(model, loaded.img_size)
    for layer in rec.layers:                    # the maps as the app keeps them: on the CPU
        layer.attn_before = layer.attn_before.float().cpu()
        layer.attn_after = layer.attn_after.float().cpu()
    return RunFigures(photo=shown_photo(x, loaded.data_config), trace=rec, model=loaded.name,
                      removed={m.name: removed[m.name] for m in mapped if m.name in removed},
                      gmacs=counted, published=facts.published_results(), pretrained=loaded.pretrained,
                      sweep=tuple(sweep))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="PHOTO", help="an image file (any format PIL reads)")
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for figure_<view>.pdf/.svg/.png")
    parser.add_argument("--style", choices=("paper", "slide"), default="paper",
                        help="paper: a two-column paper's column (3.3 in) or page width (7 in), 8-9 pt text; "
                             "slide: 16:9 (default paper)")
    parser.add_argument("--dpi", type=int, default=300, metavar="N", help="PNG resolution (default 300)")
    parser.add_argument("--png-colours", type=int, default=0, metavar="N",
                        help="palette PNGs of at most N colours (2-256; about a third of the bytes, for a README "
                             "or a web page; default 0: full colour)")
    parser.add_argument("--block", type=int, default=1, metavar="B", help="attention: block, 1-based (default 1)")
    parser.add_argument("--head", type=int, default=0, metavar="H", help="attention: head, 0-based (default 0)")
    parser.add_argument("--token", type=int, default=None, metavar="T",
                        help="graphs: patch id, 0-based row-major (default: the middle of the grid)")
    parser.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS), help="figures to draw (default all)")
    parser.add_argument("--sweep", default=None, metavar="FILE.json",
                        help="a `python -m gtp sweep` result file to add to the trade-off chart")
    add_gtp_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if not 20 <= args.dpi <= 1200:
        raise ValueError(f"--dpi must be from 20 to 1200; got {args.dpi}")
    if args.png_colours and not 2 <= args.png_colours <= 256:
        raise ValueError(f"--png-colours must be from 2 to 256 (or 0: full colour); got {args.png_colours}")
    start = time.perf_counter()
    sweep: Sequence[dict] = ()
    if args.sweep:
        from ..measure.sweep import load_records
        if not Path(args.sweep).is_file():
            raise FileNotFoundError(f"no sweep file at {args.sweep}")
        sweep = load_records(args.sweep)
    run = collect(args.image, args.model, gtp_kwargs(args), args.weights, args.device, sweep)
    depth, heads = len(run.trace.layers), run.trace.layers[0].attn_before.shape[1]
    if not 1 <= args.block <= depth:
        raise ValueError(f"--block must be from 1 to {depth} for {run.model}; got {args.block}")
    if not 0 <= args.head < heads:
        raise ValueError(f"--head must be from 0 to {heads - 1} for {run.model}; got {args.head}")
    if args.token is not None and not 0 <= args.token < run.trace.num_patches:
        raise ValueError(f"--token must be a patch id from 0 to {run.trace.num_patches - 1}; got {args.token}")
    ran = time.perf_counter() - start
    files = write_all(run, Path(args.out), args.style, args.dpi, Choice(args.block - 1, args.head, args.token),
                      views=args.views, png_colours=args.png_colours)
    for path in files:
        print(path)
    print(f"{len(files)} files in {args.out} ({args.style}, PNG at {args.dpi} dpi): models {ran:.1f} s, "
          f"drawing {time.perf_counter() - start - ran:.1f} s"
          + ("" if run.pretrained else "; random weights: the figures say so"), file=sys.stderr)
    return 0
