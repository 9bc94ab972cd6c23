"""Measure what token reduction costs on real images: `python -m gtp eval`.

The data folder (--data DIR, --labels FILE, --limit N) is read by `gtp.measure.data`,
whose docstring gives the layouts: class subfolders, a flat folder with a label file,
or a flat folder of unlabelled images (then only the label-free fidelity is reported).

Metrics, per run of the full model and the reduced one on the same images:
  top1 / top5 (and full_top1 / full_top5): accuracy in percent (labelled data, models with a head);
  agreement: percent of images whose top-1 class equals the full model's;
  kl: mean over images of KL(p_full || p_reduced) of the softmax outputs, in nats;
  cosine / cosine_min: mean / lowest cosine similarity of the final features
    (pre-logits: the pooled, normed token the head reads; a headless model's output);
  gmacs / full_gmacs: `gtp.gmacs` of one image at the model's input size.
A result is one flat record (the same record `gtp.measure.sweep` keeps a list of; its fields
are documented there) with every timing field inside record["timing"], so two runs on
the same data give identical records apart from "timing". `--out BASE` writes
BASE.json (the record) and BASE.csv (one row, timing columns prefixed "timing.").

Distributed: under `torchrun` each rank measures its share of the images
(`gtp.measure.distributed`); counts are all-reduced, per-image KL / cosine values are
gathered and summed exactly (math.fsum), and rank 0 alone prints and writes: the record
equals the one-process record.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn
from tqdm import tqdm

from .. import methods
from ..flops import gmacs as count_gmacs
from ..options import add_data_arguments, gtp_kwargs
from .data import ImageDataset, ImageSet, imagenet_classes, scan_folder
from .distributed import Dist, close_distributed, gather, init_distributed, shard_batches, sum_counts
from .metrics import (Timer, cosine, device_name, features_and_logits, kl_divergence, top1_agreement,
                      top_k_hits)
from .records import format_record, write_csv, write_json


# ------------------------------------------------------------------------- evaluation
class Evaluator:
    """Runs the full model once (cached) and any number of reduced configurations
    against it on the images of an `ImageSet`, distributed when under torchrun.

    The full model's logits [n, K] and features [n, C] of this rank's images are kept
    in memory (CPU, float32) for the comparisons.
    """

    def __init__(
            self,
            model: nn.Module,
            images: ImageSet,
            transform: Callable,
            has_head: bool,
            img_size: Union[int, tuple[int, int]] = 224,
            batch_size: int = 32,
            workers: int = 0,
            dist_info: Optional[Dist] = None,
            progress: bool = True,
            meta: Optional[dict] = None,
    ):
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1; got {batch_size}")
        self.dist = dist_info or Dist(device=next(model.parameters()).device)
        self.model = model.to(self.dist.device).eval()
        self.images, self.has_head, self.img_size = images, has_head, img_size
        self.batch_size, self.progress = batch_size, progress
        self.meta = dict(meta or {})
        self.batches = shard_batches(len(images), batch_size, self.dist.rank, self.dist.world_size)
        self.indices = [i for b in self.batches for i in b]
        self._loader = torch.utils.data.DataLoader(
            ImageDataset(images.paths, transform), batch_sampler=self.batches, num_workers=workers)
        labels = images.labels if images.labelled and has_head else None
        self._labels = None if labels is None else torch.tensor([labels[i] for i in self.indices])
        self._ref: Optional[dict[str, Any]] = None
        self._gmacs: dict[str, float] = {}

    @property
    def labelled(self) -> bool:
        return self._labels is not None

    def _gmacs_of(self, key: str) -> float:
        if key not in self._gmacs:
            self._gmacs[key] = round(count_gmacs(self.model, self.img_size), 6)
        return self._gmacs[key]

    def _forward_all(self, method: Optional[str], amount: Any, options: dict,
                     with_ref: bool) -> tuple[Optional[dict], Optional[dict]]:
        """One pass over this rank's batches running the full model (when `with_ref`) and
        `method` (unless None). Returns ({logits, features, seconds} or None) for each.

        Each model first runs once, untimed, on the first batch (one-off kernel
        set-up, first allocations), so img/s is the steady rate even for one batch.
        """
        runs = ([("full", None)] if with_ref else []) + ([(method, amount)] if method else [])
        out = {name: dict(logits=[], features=[]) for name, _ in runs}
        timers = {name: Timer(self.dist.device) for name, _ in runs}
        timed_images = {name: 0 for name, _ in runs}
        bar = tqdm(total=len(self.images), desc=" + ".join(f"{m} {a}" if a is not None else m for m, a in runs),
                   unit="img", file=sys.stderr, leave=False, dynamic_ncols=True,
                   disable=not (self.progress and self.dist.is_main))
        for step, (x, _) in enumerate(self._loader):
            x = x.to(self.dist.device, non_blocking=True)
            for name, amt in runs:
                methods.get(name).apply(self.model, amt, **options)
                timer = timers[name]
                if step == 0:  # warm-up, untimed
                    features_and_logits(self.model, x, self.has_head)
                with timer:
                    feats, logits = features_and_logits(self.model, x, self.has_head)
                timed_images[name] += x.shape[0]
                out[name]["logits"].append(None if logits is None else logits.float().cpu())
                out[name]["features"].append(feats.float().cpu())
            bar.update(x.shape[0] * self.dist.world_size)
        bar.close()
        methods.reset(self.model)
        result = []
        for name, _ in runs:
            o = out[name]
            result.append(dict(
                logits=torch.cat(o["logits"]) if self.has_head and o["logits"] else None,
                features=torch.cat(o["features"]) if o["features"] else torch.empty(0),
                seconds=timers[name].seconds, timed_images=timed_images[name]))
        ref = result.pop(0) if with_ref else None
        red = result.pop(0) if method else None
        return ref, red

    @torch.inference_mode()
    def reference(self) -> dict:
        """The full model's outputs on this rank's images (computed once, then cached)."""
        if self._ref is None:
            self._ref, _ = self._forward_all(None, None, {}, with_ref=True)
        return self._ref

    def _compare(self, ref: dict, red: dict) -> tuple[list[int], list[float], list[float]]:
        """Per image, on this rank: comparisons with the full model, hits against the labels.

        Returns (counts [images, full top-1, full top-5, reduced top-1, reduced top-5,
        top-1 agreements], KL per image, cosine per image).
        """
        counts = [len(self.indices), 0, 0, 0, 0, 0]
        if not self.indices:  # a rank left without a batch
            return counts, [], []
        cos = cosine(ref["features"], red["features"]).tolist()
        kl: list[float] = []
        if self.has_head and ref["logits"] is not None:
            kl = kl_divergence(ref["logits"], red["logits"]).tolist()
            counts[5] = int(top1_agreement(ref["logits"], red["logits"]).sum())
            if self._labels is not None:
                for j, logits in ((1, ref["logits"]), (3, red["logits"])):
                    top1, top5 = top_k_hits(logits, self._labels, 5)
                    counts[j], counts[j + 1] = int(top1.sum()), int(top5.sum())
        return counts, kl, cos

    @torch.inference_mode()
    def measure(self, method: str = "gtp", amount: Union[int, list[int]] = 8, **options: Any) -> dict:
        """Run `method` at `amount` tokens per block on every image; returns the flat record.

        The first call also runs the full model, in the same pass over the data.
        """
        chosen = methods.get(method)
        config = chosen.describe(amount, **options)
        chosen.apply(self.model, amount, **options)  # validates before any work
        methods.reset(self.model)
        if self._ref is None:
            self._ref, red = self._forward_all(None if method == "full" else method, amount, options, True)
        elif method != "full":
            _, red = self._forward_all(method, amount, options, False)
        ref = self._ref
        red = ref if method == "full" else red

        counts, kl, cos = self._compare(ref, red)
        n, full_top1, full_top5, red_top1, red_top5, agree = sum_counts(counts, self.dist)
        gathered = gather(dict(kl=kl, cos=cos, full=(ref["timed_images"], ref["seconds"]),
                                red=(red["timed_images"], red["seconds"])), self.dist)
        all_kl = [v for g in gathered for v in g["kl"]]
        all_cos = [v for g in gathered for v in g["cos"]]

        gm_red = gm_full = None
        if self.dist.is_main:  # only rank 0 writes them
            chosen.apply(self.model, amount, **options)
            gm_red = self._gmacs_of(chosen.cost_key(amount, **options))
            methods.reset(self.model)
            gm_full = self._gmacs_of("full")

        def pct(c: int) -> Optional[float]:
            return round(100.0 * c / n, 6) if self.labelled else None

        def rate(key: str) -> Optional[float]:
            per_rank = [g[key] for g in gathered if g[key][1] > 0]
            return round(sum(k / s for k, s in per_rank), 3) if per_rank else None

        full_rate, red_rate = rate("full"), rate("red")
        return {
            **{k: self.meta.get(k) for k in ("model", "weights", "data")},
            "limit": self.images.limit,
            "images": n,
            "labelled": self.labelled,
            "method": method,
            **config,
            "gmacs": gm_red,
            "full_gmacs": gm_full,
            "top1": pct(red_top1),
            "top5": pct(red_top5),
            "full_top1": pct(full_top1),
            "full_top5": pct(full_top5),
            "agreement": round(100.0 * agree / n, 6) if self.has_head else None,
            "kl": round(math.fsum(all_kl) / n, 8) if self.has_head else None,
            "cosine": round(math.fsum(all_cos) / n, 8),
            "cosine_min": round(min(all_cos), 8),
            "timing": {
                "device": device_name(self.dist.device),
                "world_size": self.dist.world_size,
                "batch_size": self.batch_size,
                "img_per_s": red_rate,
                "full_img_per_s": full_rate,
                "speedup": round(red_rate / full_rate, 4) if red_rate and full_rate else None,
            },
        }


# ------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `eval` options besides the model and GTP ones: data options, --method, --out."""
    add_data_arguments(parser)
    parser.add_argument("--method", choices=list(methods.METHODS), default="gtp",
                        help="reduction compared with the full model; --num-prop gives its P (r for tome); "
                             "only gtp reads the other GTP options (default gtp): "
                             + "; ".join(f"{m.name}: {m.about}" for m in methods.METHODS.values()))
    parser.add_argument("--out", default=None, metavar="BASE",
                        help="write BASE.json and BASE.csv")


def make_evaluator(args: argparse.Namespace, d: Dist) -> tuple[Evaluator, Any]:
    """Load the model and the images named by the CLI options."""
    from ..models import load_model
    loaded = load_model(args.model, weights=args.weights, device=d.device)
    if d.is_main:
        print(loaded.message, file=sys.stderr, flush=True)
    wnids, descriptions = imagenet_classes()
    images = scan_folder(args.data, loaded.class_names or descriptions, wnids, args.limit, args.labels)
    if images.labelled and not loaded.has_head and d.is_main:
        print(f"{args.model} has no classifier head: reporting feature fidelity only", file=sys.stderr)
    data = str(images.root.resolve())
    if args.labels:
        data += f" (labels: {Path(args.labels).expanduser().resolve()})"
    meta = dict(model=args.model, weights=loaded.source, data=data)
    ev = Evaluator(loaded.model, images, loaded.transform, loaded.has_head, loaded.img_size,
                   args.batch_size, args.workers, d, not args.no_progress, meta)
    return ev, loaded


def main(args: argparse.Namespace) -> int:
    """`python -m gtp eval` (arguments from `add_arguments`, the model options and the GTP options)."""
    kwargs = gtp_kwargs(args)
    amount = kwargs.pop("num_prop")
    d = init_distributed(args.device)
    try:
        ev, _ = make_evaluator(args, d)
        record = ev.measure(args.method, amount, **kwargs)
        if d.is_main:
            print(format_record(record))
            if args.out:
                base = Path(args.out)
                base = base.with_suffix("") if base.suffix.lower() in (".json", ".csv") else base
                base.parent.mkdir(parents=True, exist_ok=True)
                write_json(record, base.with_name(base.name + ".json"))
                write_csv([record], base.with_name(base.name + ".csv"))
                print(f"wrote {base}.json and {base}.csv", file=sys.stderr)
    finally:
        close_distributed(d)
    return 0
