"""Which token reduction keeps a pretrained model's features best: `python -m gtp fidelity`.

For every method of `gtp.methods` at each P (equal token counts, so matched GMACs; `downsample`
picks the input grid closest to GTP's GMACs), the cosine similarity of the final features (what
the head reads) with the unpatched model's, and top-1 agreement and KL divergence where the
model has a head: mean and standard deviation over the views, with the counted GMACs.

    python -m gtp fidelity --model vit_small_patch14_dinov2 --weights FILE \
        --methods full gtp tome pruning random downsample --num-prop 4 8 12 16 --json fid.json

Without --data it runs on the bundled photos (`bundled_photos`: assets/ and the public-domain
photo matplotlib ships) as seeded views: the model's own centre crop of each photo, then
random resized crops (40-100% of the area) with random horizontal flips, at least 48 views in
all; the records say how many distinct photos the views come from. `--ablation` runs GTP with
one part changed at a time instead (`gtp.measure.ablation`).

Under `torchrun` each process measures its share of the views, cut into the same batches as
in one process (`gtp.measure.distributed`), and the per-view values are gathered into their
places before the statistics: the records equal a one-process run's. Rank 0 alone prints and
writes. The ablation runs in one process (its landing fractions are not gathered).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from PIL import Image
from torch import Tensor, nn

from .. import downsample, methods
from ..flops import gmacs
from .distributed import Dist, close_distributed, gather, init_distributed, shard_batches
from .metrics import cosine, features_and_logits, kl_divergence, top1_agreement

ROOT = Path(__file__).resolve().parent.parent.parent
ASSET_PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")
MIN_VIEWS = 48


def bundled_photos() -> list[Path]:
    """The public-domain photos at hand offline: the four of assets/ (scikit-image's, see
    assets/CREDITS.md) and, when matplotlib is installed, its sample photo of Grace Hopper
    (a U.S. Navy photograph, public domain)."""
    photos = [ROOT / "assets" / name for name in ASSET_PHOTOS]
    try:
        from matplotlib import cbook
        photos.append(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    except (ImportError, OSError, ValueError):
        pass
    return [p for p in photos if p.is_file()]


def folder_photos(folder: Union[str, Path]) -> list[Path]:
    """The image files under `folder` (any depth), sorted; ValueError if there are none."""
    from .data import _is_image
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"--data: no such folder: {root}")
    found = sorted(p for p in root.rglob("*") if _is_image(p))
    if not found:
        raise ValueError(f"--data: no images found under {root}")
    return found


def _random_crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """A crop of 40-100% of the area, aspect ratio 3/4 to 4/3, flipped with probability 1/2."""
    w, h = image.size
    for _ in range(20):
        area = rng.uniform(0.4, 1.0) * w * h
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            image = image.crop((left, top, left + cw, top + ch))
            break
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def make_views(photos: Sequence[Path], transform: Callable[[Image.Image], Tensor],
               min_views: int = MIN_VIEWS, seed: int = 0) -> tuple[Tensor, list[int]]:
    """(views [V, 3, H, W], the photo index of each view): every photo once as the model sees it,
    then seeded random crops and flips until there are at least `min_views` (the same per photo)."""
    per_photo = max(1, math.ceil(min_views / len(photos)))
    rng = random.Random(seed)
    views, owner = [], []
    for i, path in enumerate(photos):
        image = Image.open(path).convert("RGB")
        for v in range(per_photo):
            views.append(transform(image if v == 0 else _random_crop(image, rng)))
            owner.append(i)
    return torch.stack(views), owner


def _forward(model: nn.Module, x: Tensor, has_head: bool, batch: int) -> tuple[Tensor, Optional[Tensor]]:
    feats, logits = [], []
    for start in range(0, x.shape[0], batch):
        f, lg = features_and_logits(model, x[start:start + batch], has_head)
        feats.append(f.float())
        if lg is not None:
            logits.append(lg.float())
    return torch.cat(feats), (torch.cat(logits) if logits else None)


def _stats(values: Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std(unbiased=False)) if values.numel() > 1 else 0.0


def _in_place(values: Tensor, mine: Sequence[int], views: int, d: Dist) -> Tensor:
    """Per-view values [len(mine)] of this process, with every other process's, at their
    views' places: [views] (one process: `values` itself)."""
    if not d.active:
        return values
    out = torch.empty(views, dtype=values.dtype)
    for where, part in gather((list(mine), values.cpu()), d):
        out[where] = part
    return out


def measure(model: nn.Module, x: Tensor, runs: Sequence[tuple[str, str, int, dict]], has_head: bool,
            photos: int, batch: int = 16, progress: bool = True,
            extra: Optional[Callable[[nn.Module, str, int], dict]] = None,
            on_row: Optional[Callable[[list[dict]], None]] = None, d: Dist = Dist()) -> list[dict[str, Any]]:
    """One record per run (row name, method, P, options) on the views x [V, 3, H, W]; under
    torchrun (`d`) this process runs only its batches of them.

    Each record: name, method, num_prop, options, gmacs, cosine_mean, cosine_std, cosine_min,
    views, photos (and agreement / kl_mean / kl_std with a head; grid for downsample; whatever
    `extra(model, name, P)` adds, e.g. the ablation's landing fractions). `on_row(rows so far)`
    is called after each run (the CLI rewrites its JSON then, so a long run keeps what it did)."""
    from tqdm.auto import tqdm
    img_size, views = tuple(x.shape[-2:]), int(x.shape[0])
    mine = [i for b in shard_batches(views, batch, d.rank, d.world_size) for i in b]
    x = x[mine] if d.active else x

    def everyone(values: Tensor) -> Tensor:
        return _in_place(values, mine, views, d)
    with torch.inference_mode():
        methods.reset(model)
        ref_feats, ref_logits = _forward(model, x, has_head, batch)
        rows = []
        for name, method, p, options in tqdm(runs, desc="fidelity", unit="run", disable=not progress or not d.is_main):
            methods.apply_method(model, method, p, **options)
            feats, logits = _forward(model, x, has_head, batch)
            cos = everyone(cosine(ref_feats, feats))
            mean, std = _stats(cos)
            row = dict(name=name, method=method, num_prop=p if method != "full" else 0, options=options,
                       gmacs=round(gmacs(model, img_size), 6), cosine_mean=round(mean, 6),
                       cosine_std=round(std, 6), cosine_min=round(float(cos.min()), 6),
                       views=views, photos=photos)
            if logits is not None:
                row["agreement"] = round(float(everyone(top1_agreement(ref_logits, logits)).double().mean()), 6)
                kl_mean, kl_std = _stats(everyone(kl_divergence(ref_logits, logits)))
                row.update(kl_mean=round(kl_mean, 6), kl_std=round(kl_std, 6))
            if downsample.grid_of(model) is not None:
                row["grid"] = list(downsample.grid_of(model))
            if extra is not None:
                row.update(extra(model, name, p))
            rows.append(row)
            if on_row is not None and d.is_main:
                on_row(rows)
        methods.reset(model)
    return rows


def method_runs(names: Sequence[str], amounts: Sequence[int]) -> list[tuple[str, str, int, dict]]:
    """(name, method, P, options) for each method at each P; "full" once."""
    runs = [("full", "full", 0, {})] if "full" in names else []
    for p in amounts:
        runs += [(n, n, p, {}) for n in names if n != "full"]
    return runs


CSV_FIELDS = ("name", "method", "num_prop", "gmacs", "cosine_mean", "cosine_std", "cosine_min", "agreement",
              "kl_mean", "kl_std", "views", "photos", "grid", "landing_high_norm", "high_norm_share", "options")


def write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "options": json.dumps(row.get("options", {}), sort_keys=True)})


def format_table(rows: Sequence[dict]) -> str:
    """The records as a text table, one line per run, with the GMACs gap to GTP at the same P."""
    gtp_cost = {r["num_prop"]: r["gmacs"] for r in rows if r["name"] == "gtp"}
    head = f"{'run':34} {'P':>3} {'GMACs':>7} {'vs GTP':>7} {'cosine':>8} {'± std':>7} {'min':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        gap = (f"{100 * (r['gmacs'] / gtp_cost[r['num_prop']] - 1):+6.1f}%" if r["num_prop"] in gtp_cost
               and r["name"] != "full" else "")
        extra = f"  grid {r['grid'][0]}x{r['grid'][1]}" if "grid" in r else ""
        if "agreement" in r:
            extra += f"  agree {r['agreement']:.3f}  KL {r['kl_mean']:.4f}"
        if "landing_high_norm" in r:
            extra += f"  on high-norm {r['landing_high_norm']:.3f} (share {r['high_norm_share']:.3f})"
        lines.append(f"{r['name'][:34]:34} {r['num_prop']:3d} {r['gmacs']:7.3f} {gap:>7} {r['cosine_mean']:8.4f} "
                     f"{r['cosine_std']:7.4f} {r['cosine_min']:7.4f}{extra}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..options import add_model_arguments
    add_model_arguments(parser)
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="a folder of photos (default: the bundled public-domain photos)")
    parser.add_argument("--methods", nargs="+", default=["full", "gtp", "tome", "pruning", "random", "downsample"],
                        metavar="M", help="methods of gtp.methods (default: full gtp tome pruning random downsample)")
    parser.add_argument("--num-prop", type=int, nargs="+", default=None, metavar="P",
                        help="tokens removed per block (default 4 8 12 16; the ablation's default 8 14)")
    parser.add_argument("--views", type=int, default=MIN_VIEWS, metavar="V",
                        help=f"at least this many views in all (default {MIN_VIEWS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops and flips (default 0)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads (default: the cores not already busy, at least 1)")
    parser.add_argument("--ablation", action="store_true",
                        help="GTP with one part changed at a time (gtp/measure/ablation.py) instead of --methods")
    parser.add_argument("--changes", nargs="+", default=None, metavar="ROW",
                        help="with --ablation: only these rows (names as printed, e.g. graph=spatial tome)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the records here")
    parser.add_argument("--csv", type=Path, default=None, metavar="FILE", help="and/or here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _threads(asked: Optional[int]) -> int:
    """One decision for the whole run: the cores the load average leaves free (at least one)."""
    if asked:
        return asked
    cores = os.cpu_count() or 1
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def main(args: argparse.Namespace) -> int:
    d = init_distributed(args.device)
    try:
        return _main(args, d)
    finally:
        close_distributed(d)


def _main(args: argparse.Namespace, d: Dist) -> int:
    from ..models import load_model
    for name in args.methods:
        methods.get(name)  # ValueError naming the choices
    if args.ablation and d.active:
        raise ValueError("--ablation runs in one process: run it without torchrun")
    threads = _threads(args.threads)
    torch.set_num_threads(threads)
    loaded = load_model(args.model, weights=args.weights, device=d.device)
    photos = folder_photos(args.data) if args.data else bundled_photos()
    if not photos:
        raise ValueError("no photos: pass --data DIR")
    x, _ = make_views(photos, loaded.transform, args.views, args.seed)
    x = x.to(loaded.device)
    if args.ablation:
        from .ablation import ablation_extra, ablation_runs
        runs = [r for r in ablation_runs(args.num_prop or [8, 14]) if not args.changes or r[0] in args.changes]
        runs, extra = runs, ablation_extra(loaded.model, x)
    else:
        runs, extra = method_runs(args.methods, args.num_prop or [4, 8, 12, 16]), None
    if not d.is_main:   # rank 0 alone speaks and writes
        measure(loaded.model, x, runs, loaded.has_head, len(photos), args.batch_size, progress=False, d=d)
        return 0
    print(f"{loaded.message}\n{args.model}: {x.shape[0]} views of {len(photos)} distinct photos, "
          f"{x.shape[-2]}x{x.shape[-1]} px, {threads} CPU thread(s)"
          + (f" in each of {d.world_size} processes" if d.active else "") if loaded.device.type == "cpu" else
          f"{args.model}: {x.shape[0]} views of {len(photos)} photos on {loaded.device}", file=sys.stderr)
    meta = dict(model=args.model, weights=str(args.weights) if args.weights else None, source=loaded.source,
                views=int(x.shape[0]), photos=[p.name for p in photos], seed=args.seed,
                img_size=list(x.shape[-2:]))

    def save(rows: list[dict]) -> None:
        if args.json:
            args.json.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    rows = measure(loaded.model, x, runs, loaded.has_head, len(photos), args.batch_size,
                   progress=not args.no_progress, extra=extra, on_row=save, d=d)
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
    return 0
