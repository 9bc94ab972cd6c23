"""`python -m gtp bench`: side-by-side timing mechanics (no speed is asserted here)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import gtp
from gtp.measure.bench import Traced, benchmark, time_interleaved
from conftest import ROOT, random_model


def test_interleaved_timing_runs_every_model_every_round():
    calls = []

    class Probe(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append(self.name)
            return x

    times = time_interleaved({"a": Probe("a"), "b": Probe("b"), "c": Probe("c")}, torch.zeros(1), repeats=3, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    timed = calls[3:]  # after one warm-up call each
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # order rotated every round


def test_benchmark_reports_ratios_of_medians_and_gmacs():
    model = random_model("deit_tiny_patch16_224")
    result = benchmark(model, {"full": lambda m: m, "gtp": lambda m: gtp.patch(m, num_prop=8)},
                       batch_sizes=[2], repeats=3, warmup=1, device="cpu", log=lambda s: None)
    run = result["runs"][0]
    assert run["batch_size"] == 2 and run["speedup"]["full"] == 1.0
    assert abs(run["speedup"]["gtp"] - run["median_s"]["full"] / run["median_s"]["gtp"]) < 1e-12
    assert abs(run["img_per_s"]["gtp"] - 2 / run["median_s"]["gtp"]) < 1e-9
    ratios = sorted(f / g for f, g in zip(run["times_s"]["full"], run["times_s"]["gtp"]))
    rounds = run["per_round_speedup"]["gtp"]
    assert rounds["median"] == ratios[1]  # three rounds: the quartiles lie halfway between neighbours
    assert abs(rounds["q1"] - (ratios[0] + ratios[1]) / 2) < 1e-12 and abs(rounds["q3"] - (ratios[1] + ratios[2]) / 2) < 1e-12
    assert result["gmacs"]["gtp"] < 0.8 * result["gmacs"]["full"]
    assert gtp.config_of(model) is None  # the caller's model is not patched


def test_traced_wrapper_gives_the_same_output():
    model = gtp.patch(random_model("deit_tiny_patch16_224"), num_prop=8)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(Traced(model)(x), model(x))


def test_bench_command_prints_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gtp", "bench", "--model", "deit_tiny_patch16_224", "--methods", "full", "gtp", "tome",
         "pruning", "--batch-size", "1", "2", "--repeats", "1", "--warmup", "0", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "batch 1:" in proc.stdout and "batch 2:" in proc.stdout and "device CPU (" in proc.stdout
    for name in ("full", "gtp", "tome", "pruning"):
        assert name in proc.stdout
    data = json.loads(out.read_text())
    assert [r["batch_size"] for r in data["runs"]] == [1, 2]
    assert set(data["gmacs"]) == {"full", "gtp", "tome", "pruning"}
    assert abs(data["gmacs"]["tome"] - data["gmacs"]["gtp"]) / data["gmacs"]["gtp"] < 0.02


def test_compiled_models_are_timed_side_by_side_with_eager():
    """`--compile` adds "<name>+compile" to the same rounds (the "eager" backend keeps this test fast)."""
    model = random_model("deit_tiny_patch16_224")
    result = benchmark(model, {"full": lambda m: m, "gtp": lambda m: gtp.patch(m, num_prop=8, sparsity=0.6)},
                       batch_sizes=[1], repeats=2, warmup=0, device="cpu", log=lambda s: None,
                       compile_backend="eager")
    run = result["runs"][0]
    assert list(run["img_per_s"]) == ["full", "gtp", "full+compile", "gtp+compile"]
    assert all(len(t) == 2 for t in run["times_s"].values())
    assert result["gmacs"]["gtp+compile"] == result["gmacs"]["gtp"] < result["gmacs"]["full"]
    assert result["compile"] == "eager"


def test_bench_command_has_a_compile_flag():
    import argparse
    from gtp.measure.bench import add_arguments
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--compile"]).compile and not parser.parse_args([]).compile


def test_cuda_graphs_refuse_without_cuda_clearly():
    import argparse
    from gtp.measure.bench import add_arguments
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--cuda-graphs"]).cuda_graphs and not parser.parse_args([]).cuda_graphs
    with pytest.raises(ValueError, match="--cuda-graphs .* needs a CUDA device; this run is on cpu"):
        benchmark(random_model("deit_tiny_patch16_224"), {"full": lambda m: m}, [1], device="cpu",
                  cuda_graphs=True, log=lambda s: None)
    proc = subprocess.run([sys.executable, "-m", "gtp", "bench", "--cuda-graphs", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "needs a CUDA device" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_replay_the_eager_forward_side_by_side():
    from gtp.measure.bench import CudaGraphed
    model = gtp.patch(random_model("deit_tiny_patch16_224"), num_prop=8, sparsity=0.6).cuda()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        assert torch.allclose(CudaGraphed(model)(x), model(x), atol=1e-4)
    result = benchmark(random_model("deit_tiny_patch16_224"),
                       {"full": lambda m: m, "gtp": lambda m: gtp.patch(m, num_prop=8, sparsity=0.6)},
                       batch_sizes=[2], repeats=2, warmup=1, device="cuda", dtype="bf16", log=lambda s: None,
                       cuda_graphs=True)
    assert result["graph_errors"] == {}
    assert list(result["runs"][0]["img_per_s"]) == ["full", "gtp", "full+graphs", "gtp+graphs"]
