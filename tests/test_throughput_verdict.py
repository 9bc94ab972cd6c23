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
