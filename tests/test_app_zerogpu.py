"""The GPU functions (app/core/inference.py) as ZeroGPU runs them, checked on the CPU: picklable
arguments and results, inputs left unchanged, the same answer from a forked process, every
forward of a photo in one call on ZeroGPU, and settings refused before any GPU call."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.core import inference, models  # noqa: E402
from app.core.photos import open_photo  # noqa: E402
from app.core.errors import InputError  # noqa: E402
from app.core.results import CompareJob, RunJob, RunResult, Throughput, ThroughputJob  # noqa: E402
from app.core.settings import make_settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAT = str(ROOT / "assets" / "chelsea.png")
SETTINGS = make_settings("deit_tiny_patch16_224", num_prop=6)


@pytest.fixture(scope="module")
def job() -> RunJob:
    """A new photo's job as a ZeroGPU Space makes it: every forward in one call."""
    slot = models.get_model(SETTINGS.model)  # loaded before the GPU call, as the app does
    budget = inference.check_settings(slot, SETTINGS)
    return RunJob(settings=SETTINGS, x=inference.model_input(open_photo(CAT), slot), budget=budget, compare=True)


def roundtrip(value):
    return pickle.loads(pickle.dumps(value))


def same_run(a: RunResult, b: RunResult) -> bool:
    """Equal measurements (timings aside)."""
    return (a.full_top5 == b.full_top5 and a.gtp_top5 == b.gtp_top5 and a.feature_cosine == b.feature_cosine
            and a.trace.summary() == b.trace.summary() and a.num_heads == b.num_heads
            and [(o.method, o.blocks) for o in a.others] == [(o.method, o.blocks) for o in b.others]
            and all(torch.equal(o.outputs.logits, p.outputs.logits) for o, p in zip(a.others, b.others)))


def test_run_photo_arguments_and_result_pickle(job):
    again = roundtrip(job)
    assert again.settings == job.settings and torch.equal(again.x, job.x)
    result = inference.run_photo(job)
    assert isinstance(result, RunResult) and [o.method for o in result.others] == ["tome", "pruning"]
    copy = roundtrip(result)
    assert same_run(copy, result) and copy.latency_ms == result.latency_ms and copy.device == result.device
    assert all(t.device.type == "cpu" for t in (copy.trace.layers[0].attn_after, copy.trace.similarity))


def test_run_photo_leaves_its_input_and_module_state_unchanged(job):
    x_before = job.x.clone()
    models_before = {id(s) for s in models.MODELS.values()}
    result = inference.run_photo(job)
    assert torch.equal(job.x, x_before) and job.settings == SETTINGS
    assert {id(s) for s in models.MODELS.values()} == models_before
    slot = models.get_model(SETTINGS.model)
    assert not hasattr(slot.model, "_gtp_state") and not hasattr(slot.model, "_tome_state")  # rests unpatched
    with pytest.raises(dataclasses_frozen()):
        result.latency_ms = (0.0, 0.0)


def dataclasses_frozen():
    import dataclasses
    return dataclasses.FrozenInstanceError


# ZeroGPU forks its worker from a main process that never ran the model on its CPU. A test
# process that did (with several OpenMP threads) cannot fork safely: CPU thread pools do not
# survive fork. So the comparison runs in a fresh interpreter, on one thread, with numba's
# fork-safe thread pool, and forks from there.
FORK_SCRIPT = textwrap.dedent("""
    import json, multiprocessing, pickle, sys
    import torch
    torch.set_num_threads(1)
    from app.core import inference, models
    from app.core.photos import open_photo
    from app.core.results import RunJob, ThroughputJob
    from app.core.settings import make_settings

    def child(fn, arg, queue):
        queue.put(pickle.dumps(fn(pickle.loads(arg))))

    def forked(fn, arg):
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=child, args=(fn, pickle.dumps(arg), queue))
        proc.start()
        try:
            return pickle.loads(queue.get(timeout=240))
        finally:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()

    settings = make_settings("deit_tiny_patch16_224", num_prop=6)
    slot = models.get_model(settings.model)
    x = inference.model_input(open_photo(sys.argv[1]), slot)
    job = RunJob(settings=settings, x=x, budget=inference.check_settings(slot, settings), compare=True)
    here = inference.run_photo(job)
    there = forked(inference.run_photo, job)
    rate = forked(inference.measure_throughput, ThroughputJob(settings, x, 2, 1.0, 3))
    print(json.dumps({
        "same_trace": there.trace.summary() == here.trace.summary(),
        "same_top5": [there.full_top5, there.gtp_top5] == [here.full_top5, here.gtp_top5],
        "same_comparison": [(o.method, o.blocks) for o in there.others] == [(o.method, o.blocks) for o in here.others],
        "same_cosine": there.feature_cosine == here.feature_cosine,
        "rate": [rate.batch_size, rate.timed_batches, rate.full_img_per_s > 0, rate.gtp_img_per_s > 0],
    }))
""")


def test_forked_process_gives_the_same_results_as_in_process():
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT, CAT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    verdict = json.loads(out.stdout.strip().splitlines()[-1])
    assert verdict["same_trace"] and verdict["same_top5"] and verdict["same_comparison"] and verdict["same_cosine"]
    batch, timed, full_ok, gtp_ok = verdict["rate"]
    assert batch == 2 and 1 <= timed <= 3 and full_ok and gtp_ok


def test_impossible_settings_are_refused_before_any_gpu_call(job, monkeypatch):
    """Whatever the person can get wrong is checked outside the GPU functions (ZeroGPU replaces an
    exception raised in its worker), so inside them an exception is a bug."""
    def no_gpu(*a, **k):
        raise AssertionError("a GPU function was called")
    monkeypatch.setattr(inference, "run_photo", no_gpu)
    bad = make_settings("deit_tiny_patch16_224", schedule="8,8")
    with pytest.raises(InputError, match="12 entries"):
        inference.explore_photo(open_photo(CAT), bad)
    with pytest.raises(InputError, match="maximum|195"):
        inference.explore_photo(open_photo(CAT), make_settings("deit_tiny_patch16_224", num_prop=500))


def test_one_gpu_call_per_photo_on_zerogpu(monkeypatch):
    """On ZeroGPU a new photo runs every forward in run_photo (the Compare tab then runs nothing);
    elsewhere the comparison waits for the tab and reuses the full model's outputs."""
    calls = []
    real = {name: getattr(inference, name) for name in ("run_photo", "compare_photo")}
    for name, fn in real.items():
        monkeypatch.setattr(inference, name, lambda job, fn=fn, name=name: calls.append(name) or fn(job))
    inference.RUNS.clear()
    monkeypatch.setattr(inference, "ZERO_GPU", True)
    exp = inference.explore_photo(open_photo(CAT), make_settings("deit_tiny_patch16_224", num_prop=5))
    assert exp.comparison is not None and inference.compared(exp) is exp and calls == ["run_photo"]
    monkeypatch.setattr(inference, "ZERO_GPU", False)
    calls.clear()
    exp = inference.explore_photo(open_photo(CAT), make_settings("deit_tiny_patch16_224", num_prop=6))
    assert exp.comparison is None and calls == ["run_photo"]
    done = inference.compared(exp)
    assert calls == ["run_photo", "compare_photo"] and done.run is exp.run    # the full model's outputs reused
    assert inference.compared(exp) is done and calls == ["run_photo", "compare_photo"]   # cached


def test_compare_job_and_result_pickle(job):
    cjob = CompareJob(settings=job.settings, x=job.x, budget=job.budget)
    runs = inference.compare_photo(roundtrip(cjob))
    again = roundtrip(runs)
    assert [r.method for r in runs] == ["tome", "pruning"] and [r.blocks for r in again] == [r.blocks for r in runs]
    assert all(torch.equal(a.outputs.logits, b.outputs.logits) for a, b in zip(again, runs))


def test_throughput_job_and_result_pickle_and_inputs_stay(job):
    tjob = ThroughputJob(settings=SETTINGS, x=job.x, batch_size=2, budget_s=1.0, max_batches=3)
    x_before = job.x.clone()
    again = roundtrip(tjob)
    assert again.settings == tjob.settings and torch.equal(again.x, tjob.x)
    result = inference.measure_throughput(tjob)
    assert isinstance(result, Throughput) and result.batch_size == 2 and 1 <= result.timed_batches <= 3
    assert roundtrip(result) == result and torch.equal(job.x, x_before)


DURATIONS_SCRIPT = textwrap.dedent("""
    import json, spaces
    durations = {}
    def GPU(fn=None, duration=None, **kwargs):   # what ZeroGPU's decorator is given, recorded
        def wrap(f):
            durations[f.__name__] = duration
            return f
        return wrap(fn) if callable(fn) else wrap
    spaces.GPU = GPU
    from app.core import inference, limits
    print(json.dumps([durations, limits.GPU_DURATION_RUN_S, limits.GPU_DURATION_THROUGHPUT_S]))
""")


def test_every_gpu_function_asks_for_its_measured_duration():
    out = subprocess.run([sys.executable, "-c", DURATIONS_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    durations, run_s, throughput_s = json.loads(out.stdout.strip().splitlines()[-1])
    assert durations == {"run_photo": run_s, "compare_photo": run_s, "measure_throughput": throughput_s}
    assert 0 < run_s < 60 and 0 < throughput_s < 60                  # never ZeroGPU's 60 s default


def test_gmacs_are_counted_outside_the_gpu_call(job, monkeypatch):
    import torch.utils.flop_counter as fc

    def forbidden(*a, **k):
        raise AssertionError("GMACs counted inside a GPU function")
    monkeypatch.setattr(fc.FlopCounterMode, "__enter__", forbidden)
    assert isinstance(inference.run_photo(job), RunResult)


def test_throughput_stops_at_its_time_budget(job):
    """A small budget cuts the number of timed batches (the request cannot hold the model long)."""
    generous = ThroughputJob(settings=SETTINGS, x=job.x, batch_size=2, budget_s=0.05, max_batches=200)
    r = inference.measure_throughput(generous)
    assert r.timed_batches < 200
    one_batch_s = 2 / min(r.full_img_per_s, r.gtp_img_per_s)
    assert r.seconds < 0.05 + 6 * one_batch_s + 1.0  # at most two batches per model past the budget, plus warm-up
