"""At which batch size GTP's MODELLED GPU time beats the full model's: what the app says where GTP
loses at the batch size it measured (issue 24, item 5). Never measured: `gtp.measure.cuda_cost`
models each forward on fake CUDA tensors, with CUDA graphs (what the app's GPU throughput uses
where faster), deit_base, bf16, the published P = 8, on an H100 (the issue's reference) and on the
RTX Pro 6000 Blackwell that ZeroGPU Spaces run on.

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
           "--sparsity 1 0.6 --cuda-graphs --device-kind h100")   # and again with rtxpro6000


def model_crossover(model: str = "deit_base_patch16_224", sparsities: tuple[float, ...] = (1.0, 0.6),
                    batches: tuple[int, ...] = BATCHES, gpus: tuple[str, ...] = ("h100", "rtxpro6000"),
                    dtype: str = "bf16") -> dict:
    """Modelled speed-up of GTP over the full model (CUDA graphs) per GPU, sparsity and batch size:
    {"model", "dtype", "num_prop", "cuda_graphs", "command", "gpus": [{"kind", "gpu", "rows":
    [{"sparsity", "batch", "modelled_speedup_vs_full"}]}]}."""
    from .cuda_cost import estimate
    from .gpu_model import GPUS
    per_gpu = []
    for gpu in gpus:
        rows = []
        for batch in batches:
            full = estimate(model, "full", batch=batch, dtype=dtype, gpu=gpu, cuda_graphs=True)
            for sparsity in sparsities:
                gtp = estimate(model, "gtp", 8, batch=batch, dtype=dtype, gpu=gpu, cuda_graphs=True, sparsity=sparsity)
                rows.append(dict(sparsity=sparsity, batch=batch,
                                 modelled_speedup_vs_full=round(full.modelled_s / gtp.modelled_s, 4)))
        per_gpu.append(dict(kind=gpu, gpu=GPUS[gpu].name, rows=rows))
    return dict(model=model, dtype=dtype, num_prop=8, cuda_graphs=True, command=COMMAND, gpus=per_gpu)


def first_faster(rows: list[dict]) -> dict[float, Optional[int]]:
    """Per sparsity, the smallest batch size of `rows` (one GPU's) from which GTP is modelled faster
    than the full model at every larger batch size listed (None: not at the largest)."""
    out: dict[float, Optional[int]] = {}
    for sparsity in dict.fromkeys(r["sparsity"] for r in rows):
        ordered = sorted((r for r in rows if r["sparsity"] == sparsity), key=lambda r: r["batch"])
        first = None
        for r in reversed(ordered):
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
    said = []
    for entry in record["gpus"]:
        rows, parts = entry["rows"], []
        largest, smallest = max(r["batch"] for r in rows), min(r["batch"] for r in rows)
        for sparsity, batch in first_faster(rows).items():
            first = next(r["modelled_speedup_vs_full"] for r in rows if r["sparsity"] == sparsity and r["batch"] == smallest)
            parts.append(f"θ={sparsity:g} ×{first:.2f} at batch {smallest} and "
                         + (f"faster from batch size {batch}" if batch else f"not faster up to batch size {largest}"))
        card = " (ZeroGPU's card)" if entry["kind"] == "rtxpro6000" else ""
        said.append(f"on the {entry['gpu']}{card}: {', '.join(parts)}")
    return (f"**Modelled, not measured** (`python -m gtp cost`, {record['model']}, {record['dtype']}, P = "
            f"{record['num_prop']}, CUDA graphs, no GPU used), GTP against the full model: {'; '.join(said)}. "
            "At small batches a GPU is far from full, so removing tokens saves little, while GTP's own small "
            "kernels cost their launch each.")


if __name__ == "__main__":
    FILE.write_text(json.dumps(model_crossover(), indent=1) + "\n")
    print(crossover_sentence())
