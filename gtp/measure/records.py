"""Writing and printing the flat result records of `python -m gtp eval` and `sweep` (their fields
are documented in `gtp.measure.sweep`): JSON written atomically, CSV with nested fields flattened
to dotted columns, and a few lines for the terminal."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence, Union


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
