"""Measure what token reduction costs on real images: `python -m gtp eval`.

The data folder (--data DIR) is one of:
  * labelled, ImageFolder layout (also the usual ImageNet val layout): one subfolder per
    class, images anywhere below it. A folder name gives the ImageNet-1k class index as
      - a WordNet id, e.g. `n01440764` (tench)                 -> timm's ImageNet synsets;
      - an index number, e.g. `0` or `281`                     -> that class index;
      - a class name, e.g. `tabby` / `tabby cat` / `Egyptian_cat` (case, '_' and '-'
        ignored) matching the whole timm description or one of its comma-separated
        synonyms; a name shared by two classes (e.g. `crane`) is refused: use the wnid.
  * flat with a label file (`--labels FILE`), as ImageNet's validation set is shipped:
    image files directly in DIR, and FILE gives each one's class. FILE is either
      - Kaggle's `LOC_val_solution.csv` (ImageId,PredictionString; the first wnid counts), or
      - one line per image, "NAME LABEL" or "NAME,LABEL" (e.g. the common `val.txt`),
        LABEL being a wnid, an index number or a class name as for folders above.
    NAME may leave out the extension. Every image in DIR needs a label; extra lines are ignored.
  * unlabelled: image files directly in DIR (no subfolder) and no label file. Then only
    label-free fidelity is reported: top-1 agreement with the full model, KL(full || reduced), cosine.
Files PIL can open with the extensions in IMAGE_EXTENSIONS are used; the rest ignored.
`--limit N` takes N images chosen by a seeded (seed 0) random permutation, so a
small limit still spans the classes.

Metrics, per run of the full model and the reduced one on the same images:
  top1 / top5 (and full_top1 / full_top5): accuracy in percent (labelled data, models with a head);
  agreement: percent of images whose top-1 class equals the full model's;
  kl: mean over images of KL(p_full || p_reduced) of the softmax outputs, in nats;
  cosine / cosine_min: mean / lowest cosine similarity of the final features
    (pre-logits: the pooled, normed token the head reads; a headless model's output);
  gmacs / full_gmacs: `gtp.gmacs` of one image at the model's input size.
A result is one flat record (the same record `gtp.sweep` keeps a list of; its fields
are documented there) with every timing field inside record["timing"], so two runs on
the same data give identical records apart from "timing". `--out BASE` writes
BASE.json (the record) and BASE.csv (one row, timing columns prefixed "timing.").

Distributed: under `torchrun` (WORLD_SIZE > 1) the process group is initialised from
the environment (nccl on CUDA, gloo on CPU). The images are cut into the same global
batches as in one process and rank r takes batches r, r + W, r + 2W, ... (no padding, no
duplicates), so each image's outputs are bit-identical to a one-process run; counts are
all-reduced, per-image KL / cosine values are gathered and summed exactly (math.fsum),
and rank 0 alone prints and writes: the record equals the one-process record.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .baselines import METHODS, apply_method, describe, reset
from .flops import gmacs as count_gmacs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
LIMIT_SEED = 0
_WNID = re.compile(r"^n\d{8}$")


# ------------------------------------------------------------------------------- data
def imagenet_classes() -> tuple[list[str], list[str]]:
    """(wnids, descriptions) of the 1000 ImageNet-1k classes, from timm's offline tables."""
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    n = info.num_classes()
    return ([info.index_to_label_name(i) for i in range(n)],
            [info.index_to_description(i) for i in range(n)])


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def class_index(name: str, class_names: Sequence[str], wnids: Sequence[str] = ()) -> int:
    """The class index a folder name stands for (wnid, index number or class name).

    class_names: one description per class ("tabby, tabby cat"); wnids: one WordNet id
    per class (may be empty). ValueError for an unknown or ambiguous name.
    """
    if _WNID.match(name):
        if name in wnids:
            return list(wnids).index(name)
        raise ValueError(f"folder {name!r} looks like a WordNet id but is not an ImageNet-1k class")
    if name.isdigit():
        idx = int(name)
        if idx < len(class_names):
            return idx
        raise ValueError(f"folder {name!r}: class index out of range 0..{len(class_names) - 1}")
    key = _norm(name)
    hits = [i for i, desc in enumerate(class_names)
            if key == _norm(desc) or key in (_norm(s) for s in desc.split(","))]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ValueError(f"folder {name!r} matches no class name; name folders by wnid "
                         "(n01440764), index (0) or class name (tench)")
    raise ValueError(f"folder {name!r} is ambiguous (classes {', '.join(map(str, hits))}); "
                     "name it by wnid or index instead")


@dataclass
class ImageSet:
    """The images of a data folder, in a fixed order; labels[i] is image i's class or None."""
    root: Path
    paths: list[Path]
    labels: Optional[list[int]]
    folders: dict[str, int] = field(default_factory=dict)  # class folder -> class index
    limit: Optional[int] = None

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.paths)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def read_labels(path: Union[str, Path], class_names: Sequence[str], wnids: Sequence[str]) -> dict[str, int]:
    """Image name -> class index from a label file (the formats of the module docstring).

    Names are kept as written and also without their extension, so either matches.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"label file not found: {path}")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    kaggle = bool(lines) and lines[0].replace(" ", "").lower() == "imageid,predictionstring"
    labels: dict[str, int] = {}
    for number, line in enumerate(lines[1:] if kaggle else lines, start=2 if kaggle else 1):
        if kaggle:
            name, _, rest = line.partition(",")
            label = rest.split()[0] if rest.split() else ""
        else:
            name, _, label = line.replace(",", " ", 1).partition(" ")
            label = label.strip()
        if not label:
            raise ValueError(f"{path.name} line {number}: expected 'NAME LABEL', got {line!r}")
        try:
            index = class_index(label, class_names, wnids)
        except ValueError as e:
            if number == 1 and not kaggle:
                continue  # a header line such as "filename,label"
            raise ValueError(f"{path.name} line {number}: {e}") from None
        labels[name] = labels[Path(name).stem] = index
    if not labels:
        raise ValueError(f"{path.name} gives no labels")
    return labels


def scan_folder(
        root: Union[str, Path],
        class_names: Optional[Sequence[str]] = None,
        wnids: Optional[Sequence[str]] = None,
        limit: Optional[int] = None,
        labels_file: Union[str, Path, None] = None,
) -> ImageSet:
    """Find the images of a data folder (see the module docstring for the layouts).

    class_names / wnids default to ImageNet-1k's. limit: keep this many images,
    chosen by a seeded permutation, in their original order. labels_file: the
    labels of a flat folder.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"data folder not found: {root}")
    if class_names is None or wnids is None:
        w, d = imagenet_classes()
        wnids = w if wnids is None else wnids
        class_names = d if class_names is None else class_names
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    paths: list[Path] = []
    labels: Optional[list[int]] = None
    folders: dict[str, int] = {}
    class_dirs = [(d, sorted(p for p in d.rglob("*") if _is_image(p))) for d in subdirs]
    class_dirs = [(d, files) for d, files in class_dirs if files]
    if class_dirs:
        if labels_file is not None:
            raise ValueError(f"{root} has class subfolders: a label file is for a flat folder of images")
        if loose:
            raise ValueError(f"{root} has both class subfolders and loose images "
                             f"(e.g. {loose[0].name}); use one layout")
        labels = []
        for d, files in class_dirs:
            folders[d.name] = class_index(d.name, class_names, wnids)
            paths += files
            labels += [folders[d.name]] * len(files)
    else:
        paths = loose
    if not paths:
        raise ValueError(f"no images found in {root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    if labels_file is not None:
        table = read_labels(labels_file, class_names, wnids)
        missing = [p.name for p in paths if p.name not in table and p.stem not in table]
        if missing:
            raise ValueError(f"{len(missing)} image(s) have no label in {Path(labels_file).name} "
                             f"(e.g. {missing[0]})")
        labels = [table.get(p.name, table.get(p.stem)) for p in paths]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1; got {limit}")
        if limit < len(paths):
            gen = torch.Generator().manual_seed(LIMIT_SEED)
            keep = sorted(torch.randperm(len(paths), generator=gen)[:limit].tolist())
            paths = [paths[i] for i in keep]
            labels = None if labels is None else [labels[i] for i in keep]
    return ImageSet(root=root, paths=paths, labels=labels, folders=folders, limit=limit)


class _Images(torch.utils.data.Dataset):
    """(transformed image [3, H, W], index) for each path."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from .models import load_image
        return self.transform(load_image(self.paths[i])), i


# ------------------------------------------------------------------------ distribution
@dataclass
class Dist:
    """This process's place in a (possibly one-process) run."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owned: bool = False  # this module initialised the process group and must close it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: Union[str, torch.device, None] = None) -> Dist:
    """Join a torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owned = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owned = True
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), dev, owned)
    return Dist(0, 1, dev, False)


def close_distributed(d: Dist) -> None:
    if d.owned and dist.is_initialized():
        dist.destroy_process_group()


def shard_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """The global batches [0..B-1], [B..2B-1], ... that rank `rank` runs: every world_size-th."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return batches[rank::world_size]


def _gather(obj: Any, d: Dist) -> list[Any]:
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def _sum_counts(values: Sequence[int], d: Dist) -> list[int]:
    t = torch.tensor(list(values), dtype=torch.int64, device=d.device)
    if d.active:
        dist.all_reduce(t)
    return t.tolist()


# ------------------------------------------------------------------------- evaluation
def forward_outputs(model: nn.Module, x: Tensor, has_head: bool) -> tuple[Optional[Tensor], Tensor]:
    """(logits [B, K] or None for a headless model, final features [B, C]).

    The features are what the head reads (timm's pre-logits); for a headless model
    they are its output.
    """
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.get_classifier()(feats) if has_head else None
        return logits, feats
    out = model(x)
    return (out if has_head else None), out


class _Timer:
    """Accumulates the seconds spent inside `with timer:` (device-synchronised) while `active`."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.images, self.active = device, 0.0, 0, True

    def __enter__(self):
        if self.active and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.active:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds += time.perf_counter() - self._t


def _progress(total: int, desc: str, enabled: bool):
    """tqdm when installed (timm's huggingface_hub dependency brings it), else plain stderr lines."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)
    except ImportError:
        class _Plain:
            def __init__(self):
                self.n, self._last = 0, 0.0

            def update(self, k: int) -> None:
                self.n += k
                now = time.perf_counter()
                if now - self._last > 2.0 or self.n >= total:
                    print(f"{desc}: {self.n}/{total} images", file=sys.stderr, flush=True)
                    self._last = now

            def close(self) -> None:
                pass
        return _Plain()


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
            _Images(images.paths, transform), batch_sampler=self.batches, num_workers=workers)
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
        timers = {name: _Timer(self.dist.device) for name, _ in runs}
        bar = _progress(len(self.images), " + ".join(f"{m} {a}" if a is not None else m for m, a in runs),
                        self.progress and self.dist.is_main)
        for step, (x, _) in enumerate(self._loader):
            x = x.to(self.dist.device, non_blocking=True)
            for name, amt in runs:
                if name == "full":
                    reset(self.model)
                else:
                    apply_method(self.model, name, amt, **options)
                timer = timers[name]
                if step == 0:  # warm-up, untimed
                    forward_outputs(self.model, x, self.has_head)
                with timer:
                    logits, feats = forward_outputs(self.model, x, self.has_head)
                timer.images += x.shape[0]
                out[name]["logits"].append(None if logits is None else logits.float().cpu())
                out[name]["features"].append(feats.float().cpu())
            if bar is not None:
                bar.update(x.shape[0] * self.dist.world_size)
        if bar is not None:
            bar.close()
        reset(self.model)
        result = []
        for name, _ in runs:
            o = out[name]
            result.append(dict(
                logits=torch.cat(o["logits"]) if self.has_head and o["logits"] else None,
                features=torch.cat(o["features"]) if o["features"] else torch.empty(0),
                seconds=timers[name].seconds, timed_images=timers[name].images))
        ref = result.pop(0) if with_ref else None
        red = result.pop(0) if method else None
        return ref, red

    @torch.inference_mode()
    def reference(self) -> dict:
        """The full model's outputs on this rank's images (computed once, then cached)."""
        if self._ref is None:
            self._ref, _ = self._forward_all(None, None, {}, with_ref=True)
        return self._ref

    @torch.inference_mode()
    def measure(self, method: str = "gtp", amount: Union[int, list[int]] = 8, **options: Any) -> dict:
        """Run `method` at `amount` tokens per block on every image; returns the flat record.

        The first call also runs the full model, in the same pass over the data.
        """
        config = describe(method, amount, **options)
        apply_method(self.model, method, amount, **options)  # validates before any work
        reset(self.model)
        if self._ref is None:
            self._ref, red = self._forward_all(None if method == "full" else method, amount, options, True)
        elif method != "full":
            _, red = self._forward_all(method, amount, options, False)
        ref = self._ref
        red = ref if method == "full" else red

        # Per image, on this rank: comparisons with the full model, hits against the labels.
        cos = F.cosine_similarity(ref["features"].double(), red["features"].double(), dim=-1).tolist()
        kl: list[float] = []
        counts = [len(self.indices), 0, 0, 0, 0, 0]  # images, full top-1/5, reduced top-1/5, agreement
        if self.has_head and ref["logits"] is not None:
            logp_full = ref["logits"].double().log_softmax(-1)
            logp_red = red["logits"].double().log_softmax(-1)
            kl = (logp_full.exp() * (logp_full - logp_red)).sum(-1).tolist()
            counts[5] = int((ref["logits"].argmax(-1) == red["logits"].argmax(-1)).sum())
            if self._labels is not None:
                y = self._labels[:, None]
                k = min(5, ref["logits"].shape[-1])
                for j, lg in ((1, ref["logits"]), (3, red["logits"])):
                    top = lg.topk(k, -1).indices
                    counts[j] = int((top[:, :1] == y).sum())
                    counts[j + 1] = int((top == y).any(-1).sum())
        n, full_top1, full_top5, red_top1, red_top5, agree = _sum_counts(counts, self.dist)
        gathered = _gather(dict(kl=kl, cos=cos, full=(ref["timed_images"], ref["seconds"]),
                                red=(red["timed_images"], red["seconds"])), self.dist)
        all_kl = [v for g in gathered for v in g["kl"]]
        all_cos = [v for g in gathered for v in g["cos"]]

        gm_red = gm_full = None
        if self.dist.is_main:  # only rank 0 writes them
            apply_method(self.model, method, amount, **options)
            gm_red = self._gmacs_of(json.dumps([method, config], sort_keys=True))
            reset(self.model)
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
                "device": _device_name(self.dist.device),
                "world_size": self.dist.world_size,
                "batch_size": self.batch_size,
                "img_per_s": red_rate,
                "full_img_per_s": full_rate,
                "speedup": round(red_rate / full_rate, 4) if red_rate and full_rate else None,
            },
        }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------- output
def flatten(record: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one level with dotted keys; lists become JSON text."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def write_csv(records: Sequence[dict], path: Union[str, Path]) -> None:
    rows = [flatten(r) for r in records]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})


def write_json(obj: Any, path: Union[str, Path]) -> None:
    """Atomic write (temporary file, then rename), so an interrupted run leaves the old file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def format_record(r: dict) -> str:
    """A few lines for the terminal."""
    def f(v: Any, spec: str) -> str:
        if v is None:
            width = spec.split(".")[0].rstrip("dfg")
            return "-".rjust(int(width)) if width.isdigit() else "-"
        return format(v, spec)

    p = r["num_prop"]
    lines = [f"{r['model']} ({r['weights']} weights) on {r['images']} images of {r['data']}"
             + ("" if r["labelled"] else " (unlabelled: fidelity only)"),
             f"method {r['method']} P={p} theta={f(r['sparsity'], 'g')} alpha={f(r['alpha'], 'g')} "
             f"M={f(r['num_neighbours'], 'd')}",
             f"{'':10} {'top-1':>8} {'top-5':>8} {'GMACs':>8} {'img/s':>9}",
             f"{'full':10} {f(r['full_top1'], '8.2f')} {f(r['full_top5'], '8.2f')} "
             f"{f(r['full_gmacs'], '8.3f')} {f(r['timing']['full_img_per_s'], '9.1f')}",
             f"{r['method']:10} {f(r['top1'], '8.2f')} {f(r['top5'], '8.2f')} "
             f"{f(r['gmacs'], '8.3f')} {f(r['timing']['img_per_s'], '9.1f')}",
             f"top-1 agreement {f(r['agreement'], '.2f')}{'' if r['agreement'] is None else '%'} | KL(full||{r['method']}) {f(r['kl'], '.5f')} | "
             f"cosine {f(r['cosine'], '.5f')} (min {f(r['cosine_min'], '.5f')})"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ CLI
def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --limit, --batch-size, --workers, --no-progress (shared with `gtp.sweep`)."""
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="image folder: class subfolders (wnid, index or class name), or flat "
                             "(labelled by --labels, else unlabelled)")
    parser.add_argument("--labels", default=None, metavar="FILE",
                        help="labels of a flat folder: LOC_val_solution.csv or 'NAME LABEL' lines")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="use N images (a seeded random subset)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `eval` options besides the model and GTP ones: data options, --method, --out."""
    add_data_arguments(parser)
    parser.add_argument("--method", choices=list(METHODS), default="gtp",
                        help="reduction compared with the full model; --num-prop gives its P "
                             "(r for tome); only gtp reads the other GTP options (default gtp)")
    parser.add_argument("--out", default=None, metavar="BASE",
                        help="write BASE.json and BASE.csv")


def make_evaluator(args: argparse.Namespace, d: Dist) -> tuple[Evaluator, Any]:
    """Load the model and the images named by the CLI options."""
    from .models import load_model
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
    from .cli import gtp_kwargs
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
