"""The app's throughput says how it measured (eager or CUDA graphs, batch size) and says plainly when GTP loses."""
from __future__ import annotations

import torch

from app.core import inference
from app.core.results import Throughput
from app.ui import text


def test_a_loss_is_said_with_the_batch_size_that_wins():
    lost = Throughput("deit", "NVIDIA H100", 1, 5, 1000.0, 800.0, 2.0, mode="full model CUDA graphs, GTP eager")
    said = text.throughput_markdown(lost, faster_at=64)
    assert "batch size 1, full model CUDA graphs, GTP eager" in said
    assert "GTP is not faster than the full model at batch size 1" in said and "batch size 64 (measured)" in said
    assert "try a larger one" in text.throughput_markdown(lost)
    won = Throughput("deit", "NVIDIA H100", 64, 5, 1000.0, 1300.0, 2.0)
    assert "not faster" not in text.throughput_markdown(won)


def test_the_cpu_measures_eager_only():
    model = torch.nn.Linear(4, 4)
    ms, batches, mode = inference._fastest(model, torch.randn(2, 4), 0.05, 3)
    assert mode == "eager" and ms > 0 and batches >= 1
    assert inference.device_label(torch.device("cpu")).startswith("CPU")


def test_where_gtp_loses_the_app_says_at_which_batch_size_it_is_modelled_to_win():
    """Issue 24, item 5: the batch size from which GTP is modelled faster (CUDA graphs), labelled
    modelled, beside the measured loss and on the intro; read from the shipped record
    (`python -m gtp.measure.crossover`), with the first batch of a run of wins, not a lucky one."""
    from gtp.measure import crossover
    rows = [dict(sparsity=s, batch=b, modelled_speedup_vs_full=x) for s, b, x in (
        (1.0, 1, 0.8), (1.0, 2, 1.01), (1.0, 4, 0.97), (1.0, 8, 1.05), (1.0, 16, 1.1),
        (0.6, 1, 0.7), (0.6, 2, 0.8), (0.6, 4, 0.9), (0.6, 8, 0.95), (0.6, 16, 0.99))]
    assert crossover.first_faster(rows) == {1.0: 8, 0.6: None}
    record = {"model": "deit", "dtype": "bf16", "num_prop": 8,
              "gpus": [{"kind": "h100", "gpu": "H100 SXM", "rows": rows}]}
    said = crossover.crossover_sentence(record)
    assert said.startswith("**Modelled, not measured**") and "H100 SXM: θ=1 ×0.80 at batch 1 and faster from batch size 8" in said
    assert "θ=0.6 ×0.70 at batch 1 and not faster up to batch size 16" in said
    shipped = crossover.crossover_sentence()
    assert "Modelled, not measured" in shipped and "RTX Pro 6000 Blackwell (ZeroGPU's card)" in shipped
    lost = Throughput("deit", "NVIDIA H100", 1, 5, 1000.0, 800.0, 2.0, mode="CUDA graphs")
    assert shipped in text.throughput_markdown(lost) and shipped in text.throughput_intro("CUDA", 256, 20)
    assert shipped not in text.throughput_markdown(Throughput("deit", "NVIDIA H100", 64, 5, 1000.0, 1300.0, 2.0))
