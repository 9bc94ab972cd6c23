"""At which batch size GTP's MODELLED GPU time beats the full model's: what the app says where GTP
loses at the batch size it measured (issue 24, item 5). Never measured: `gtp.measure.cuda_cost`
models each forward on fake CUDA tensors, with CUDA graphs (what the app's GPU throughput uses
where faster), deit_base, bf16, the published P = 8.

`python -m gtp.measure.crossover` writes `assets/modelled_crossover.json` (a minute on a CPU: it
compiles GTP's Triton kernels for sm_90); the app reads that file (`crossover_sentence`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

FILE = Path(__file__).resolve().parents[2] / "assets" / "modelled_crossover.json"
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
COMMAND = ("python -m gtp cost --methods full gtp --batch-size 1 2 4 8 16 32 64 128 256 --dtype bf16 "
           "--sparsity 1 0.6 --cuda-graphs")


def model_crossover(model: str = "deit_base_patch16_224", sparsities: tuple[float, ...] = (1.0, 0.6),
                    batches: tuple[int, ...] = BATCHES, gpu: str = "h100", dtype: str = "bf16") -> dict:
    """Modelled speed-up of GTP over the full model (CUDA graphs) per sparsity and batch size:
    {"model", "gpu", "dtype", "num_prop", "cuda_graphs", "command", "rows": [{"sparsity", "batch",
    "modelled_speedup_vs_full"}]}."""
    from .cuda_cost import estimate
    from .gpu_model import GPUS
    rows = []
    for batch in batches:
        full = estimate(model, "full", batch=batch, dtype=dtype, gpu=gpu, cuda_graphs=True)
        for sparsity in sparsities:
            gtp = estimate(model, "gtp", 8, batch=batch, dtype=dtype, gpu=gpu, cuda_graphs=True, sparsity=sparsity)
            rows.append(dict(sparsity=sparsity, batch=batch,
                             modelled_speedup_vs_full=round(full.modelled_s / gtp.modelled_s, 4)))
    return dict(model=model, gpu=GPUS[gpu].name, dtype=dtype, num_prop=8, cuda_graphs=True, command=COMMAND,
                rows=rows)


def first_faster(record: dict) -> dict[float, Optional[int]]:
    """Per sparsity, the smallest batch size of `record` from which GTP is modelled faster than the
    full model at every larger batch size listed (None: not at the largest)."""
    out: dict[float, Optional[int]] = {}
    for sparsity in dict.fromkeys(r["sparsity"] for r in record["rows"]):
        rows = sorted((r for r in record["rows"] if r["sparsity"] == sparsity), key=lambda r: r["batch"])
        first = None
        for r in reversed(rows):
            if r["modelled_speedup_vs_full"] <= 1.0:
                break
            first = r["batch"]
        out[sparsity] = first
    return out


def crossover_sentence(record: Optional[dict] = None) -> str:
    """One plain sentence, labelled modelled, saying where GTP beats the full model on a GPU ("" when
    the file is missing)."""
    if record is None:
        if not FILE.is_file():
            return ""
        record = json.loads(FILE.read_text())
    largest = max(r["batch"] for r in record["rows"])
    parts = []
    for sparsity, batch in first_faster(record).items():
        at_one = next(r["modelled_speedup_vs_full"] for r in record["rows"] if r["sparsity"] == sparsity
                      and r["batch"] == min(x["batch"] for x in record["rows"]))
        parts.append(f"θ={sparsity:g}: ×{at_one:.2f} at batch 1, "
                     + (f"faster from batch size {batch}" if batch else f"not faster at any batch size up to {largest}"))
    return (f"**Modelled, not measured** (`python -m gtp cost`, {record['model']}, {record['dtype']}, P = "
            f"{record['num_prop']}, an {record['gpu']} replaying CUDA graphs, no GPU used): GTP against the full "
            f"model, {'; '.join(parts)}. At batch 1 a GPU is far from full and GTP's extra small kernels "
            "cost more than the tokens it removes save.")


if __name__ == "__main__":
    FILE.write_text(json.dumps(model_crossover(), indent=1) + "\n")
    print(crossover_sentence())
