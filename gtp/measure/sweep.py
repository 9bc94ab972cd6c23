"""Sweep GTP's hyper-parameters, with the baselines beside it: `python -m gtp sweep`.

Grid search runs every combination of the given P (--num-prop), theta (--sparsity),
alpha (--alpha) and M (--num-neighbours) lists for each method in --methods (every
numeric field of `gtp.GTPConfig` is a search axis; the others are fixed options); random
search (--search random --trials N --seed S) runs N combinations drawn without
replacement from that same grid. Methods other than gtp only read P (see
`gtp.methods`), so their duplicates collapse to one run per P. A "full" record
(the unpatched model) is always included. Every configuration is measured by
`gtp.measure.evaluate.Evaluator` on the same images against one cached run of the full model.

Resumable: the result file is rewritten (atomically) after each configuration, and
configurations whose key is already in it are skipped, so rerunning the same command
after an interruption computes only what is missing; a finished sweep computes nothing.

Result file (--out FILE.json; FILE.csv is written beside it): a JSON list of flat
records, one per configuration, in the order computed. Each record:

  model          timm model name                        "deit_small_patch16_224"
  weights        where the weights came from            "file" | "hub" | "random"
  data           absolute path of the image folder
  limit          --limit used (null = all images)
  images         number of images measured
  labelled       true when top-1/top-5 could be counted
  method         "full" | "gtp" | "tome" | "pruning" | "evit"
  num_prop       P per block (r for tome; 0 for full); an int or a per-block list
  sparsity       theta (null where the method has none)
  alpha          propagation weight (null unless propagation is "graph")
  graph          "spatial" | "semantic" | "mixed" (null unless propagation is "graph")
  num_neighbours M (null unless the graph has a semantic part)
  selection      token selection strategy (null for full / tome)
  propagation    "graph" | "mean" | "none" (null for full / tome)
  token_scale    proportional attention on token sizes (null for full)
  gmacs          GMACs of one image with the method (gtp.gmacs)
  full_gmacs     GMACs of the full model
  top1, top5     accuracy in percent with the method (null without labels or head)
  full_top1, full_top5   the same for the full model
  agreement      percent of images whose top-1 equals the full model's (null for headless models)
  kl             mean KL(p_full || p_method) in nats (null for headless models)
  cosine         mean cosine similarity of the final (pre-logits) features with the full model's
  cosine_min     the lowest of those
  timing         {device, world_size, batch_size, img_per_s, full_img_per_s, speedup}: the only
                 fields that change between identical runs

The key that identifies a configuration (for resuming) is every field above from
`model` to `token_scale` except `images` and `labelled`: `KEY_FIELDS`, whose GTP part
is the fields of `gtp.GTPConfig`.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .. import methods
from ..config import PUBLISHED, GTPConfig, value_type
from ..options import add_data_arguments, add_field_option
from .distributed import close_distributed, init_distributed
from .evaluate import Evaluator, make_evaluator
from .records import write_csv, write_json

KEY_FIELDS = ("model", "weights", "data", "limit", "method") + tuple(f.name for f in dataclasses.fields(GTPConfig))
# The search axes: the numeric hyper-parameters. Each defaults to its published value
# alone, except the sweep's own default ranges for P and theta.
AXES = tuple(f.name for f in dataclasses.fields(GTPConfig) if value_type(f) in (int, float))
DEFAULT_GRID = {**{name: [PUBLISHED[name]] for name in AXES},
                "num_prop": [4, 8, 12, 16], "sparsity": [0.6, 0.8, 1.0]}


def record_key(record: dict) -> str:
    """The identity of a configuration in a result file (see the module docstring)."""
    return json.dumps([record.get(k) for k in KEY_FIELDS])


def plan(
        names: Sequence[str] = ("gtp",),
        search: str = "grid",
        trials: Optional[int] = None,
        seed: int = 0,
        **options: Any,
) -> list[tuple[str, int, dict]]:
    """The configurations to run: (method, P, gtp options), "full" first, duplicates removed.

    options: a list of values for a search axis (`AXES`: num_prop, sparsity, alpha,
    num_neighbours; an axis not given takes `DEFAULT_GRID`'s), one value for any other
    GTP option (graph, selection, propagation, token_scale: fixed).
    """
    for m in names:
        methods.get(m)  # ValueError naming the methods
    if search not in ("grid", "random"):
        raise ValueError(f"search must be grid or random; got {search!r}")
    grid = {name: options.pop(name, DEFAULT_GRID[name]) for name in AXES}
    grid = {name: list(v) if isinstance(v, (list, tuple)) else [v] for name, v in grid.items()}
    axes = [name for name in AXES if name != "num_prop"]
    combos = [(m, values[0], dict(options, **dict(zip(axes, values[1:]))))
              for m in names if m != "full"
              for values in itertools.product(*grid.values())]
    if search == "random":
        if trials is None or trials < 1:
            raise ValueError("random search needs --trials N (N >= 1)")
        combos = random.Random(seed).sample(combos, min(trials, len(combos)))
    configs, seen = [], set()
    for m, p, opts in [("full", 0, {})] + combos:
        key = methods.get(m).cost_key(p, **opts)
        if key not in seen:  # e.g. tome at one P under several theta
            seen.add(key)
            configs.append((m, p, opts))
    return configs


def load_records(path: Union[str, Path]) -> list[dict]:
    """The records of an existing result file ([] when there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a sweep result file (bad JSON: {e}); move it away to start afresh")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path} is not a sweep result file (expected a JSON list of records)")
    return records


def run_sweep(
        evaluator: Evaluator,
        configs: Sequence[tuple[str, int, dict]],
        out: Union[str, Path],
        log=None,
) -> tuple[list[dict], int]:
    """Measure each configuration not yet in `out`; returns (all records, number computed).

    Rank 0 reads and rewrites the file; under torchrun the other ranks follow its list.
    """
    out = Path(out)
    d = evaluator.dist
    records = load_records(out) if d.is_main else []
    if d.active:
        import torch.distributed as dist
        box = [records]
        dist.broadcast_object_list(box, src=0)
        records = box[0]
    done = {record_key(r) for r in records}
    meta = {**evaluator.meta, "limit": evaluator.images.limit}
    computed = 0
    for method, amount, opts in configs:
        key = record_key({**meta, "method": method, **methods.describe(method, amount, **opts)})
        if key in done:
            continue
        record = evaluator.measure(method, amount, **opts)
        computed += 1
        done.add(key)
        records.append(record)
        if d.is_main:
            write_json(records, out)
            write_csv(records, out.with_suffix(".csv"))
            if log:
                log(_line(record))
    return records, computed


def _line(r: dict) -> str:
    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)
    return (f"{r['method']:8} P={json.dumps(r['num_prop']):>3} theta={f(r['sparsity'], 'g'):>4} "
            f"alpha={f(r['alpha'], 'g'):>4} M={f(r['num_neighbours'], 'd'):>2} | {f(r['gmacs'], '.3f')} GMACs | "
            f"top-1 {f(r['top1'], '.2f')} | agree {f(r['agreement'], '.2f')} | kl {f(r['kl'], '.5f')} | "
            f"cos {r['cosine']:.5f}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `sweep` options besides the model ones."""
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, metavar="FILE.json",
                        help="result file: read to resume, rewritten after each configuration")
    parser.add_argument("--methods", nargs="+", choices=list(methods.METHODS), default=["gtp"],
                        help="methods to sweep (default gtp; full is always included): "
                             + "; ".join(f"{m.name}: {m.about}" for m in methods.METHODS.values()))
    axes = parser.add_argument_group("search space (lists)")
    fixed = parser.add_argument_group("fixed GTP options (defaults: the published setting)")
    for f in dataclasses.fields(GTPConfig):
        if f.name in AXES:
            add_field_option(axes, f, many=True, default=DEFAULT_GRID[f.name])
        else:
            add_field_option(fixed, f)
    axes.add_argument("--search", choices=("grid", "random"), default="grid")
    axes.add_argument("--trials", type=int, default=None, help="configurations drawn by random search")
    axes.add_argument("--seed", type=int, default=0, help="random search seed (default 0)")
    parser.add_argument("--plot", default=None, metavar="FILE",
                        help="also draw accuracy / fidelity against GMACs per method (.pdf, .svg or .png)")


def main(args: argparse.Namespace) -> int:
    """`python -m gtp sweep`."""
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out must name a .json file; got {out}")
    if args.plot:
        from ..figures.results import check_plot_path
        check_plot_path(args.plot)
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(GTPConfig)}
    configs = plan(args.methods, args.search, args.trials, args.seed, **options)
    d = init_distributed(args.device)
    try:
        ev, _ = make_evaluator(args, d)
        if d.is_main:
            out.parent.mkdir(parents=True, exist_ok=True)
            print(f"{len(configs)} configurations planned; results in {out}", file=sys.stderr)
        records, computed = run_sweep(ev, configs, out, log=print if d.is_main else None)
        if d.is_main:
            print(f"{computed} computed, {len(configs) - computed} already in {out}", file=sys.stderr)
            if args.plot:
                from ..figures.results import plot_sweep
                print(f"plot: {plot_sweep(records, args.plot)}", file=sys.stderr)
    finally:
        close_distributed(d)
    return 0
