"""The GPU functions (app/inference.py) as ZeroGPU runs them, checked on the CPU: picklable
arguments and results, inputs left unchanged, and the same answer from a forked process."""
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
from app.core.results import RunJob, RunResult, Throughput, ThroughputJob, UserError  # noqa: E402
from app.core.settings import make_settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAT = str(ROOT / "assets" / "chelsea.png")
SETTINGS = make_settings("deit_tiny_patch16_224", num_prop=6)


@pytest.fixture(scope="module")
def job() -> RunJob:
    slot = models.get_model(SETTINGS.model)  # loaded before the GPU call, as the app does
    return RunJob(settings=SETTINGS, x=inference.model_input(open_photo(CAT), slot))


def roundtrip(value):
    return pickle.loads(pickle.dumps(value))


def same_run(a: RunResult, b: RunResult) -> bool:
    """Equal measurements (latency aside: it is a timing)."""
    return (a.full_top5 == b.full_top5 and a.gtp_top5 == b.gtp_top5 and a.feature_cosine == b.feature_cosine
            and a.trace.summary() == b.trace.summary() and a.comparison.methods == b.comparison.methods
            and a.comparison.budget == b.comparison.budget and a.num_heads == b.num_heads)


def test_run_photo_arguments_and_result_pickle(job):
    again = roundtrip(job)
    assert again.settings == job.settings and torch.equal(again.x, job.x)
    result = inference.run_photo(job)
    assert isinstance(result, RunResult)
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
    from app.core.results import RunJob, ThroughputJob, UserError
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
    job = RunJob(settings=settings, x=x)
    here = inference.run_photo(job)
    there = forked(inference.run_photo, job)
    bad = forked(inference.run_photo, RunJob(settings=make_settings(settings.model, schedule="8,8"), x=x))
    rate = forked(inference.measure_throughput, ThroughputJob(settings, x, 2, 1.0, 3))
    print(json.dumps({
        "same_trace": there.trace.summary() == here.trace.summary(),
        "same_top5": [there.full_top5, there.gtp_top5] == [here.full_top5, here.gtp_top5],
        "same_comparison": there.comparison.methods == here.comparison.methods,
        "same_cosine": there.feature_cosine == here.feature_cosine,
        "bad": bad.message if isinstance(bad, UserError) else repr(bad),
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
    assert "12 entries" in verdict["bad"]                    # refusals cross as a message, not a lost exception
    batch, timed, full_ok, gtp_ok = verdict["rate"]
    assert batch == 2 and 1 <= timed <= 3 and full_ok and gtp_ok


def test_impossible_settings_are_a_message_in_process_too(job):
    bad = RunJob(settings=make_settings("deit_tiny_patch16_224", schedule="8,8"), x=job.x)
    result = inference.run_photo(bad)
    assert isinstance(result, UserError) and "12 entries" in result.message
    assert roundtrip(result) == result
    with pytest.raises(ValueError, match="12 entries"):
        inference.explore_photo(open_photo(CAT), bad.settings)


def test_throughput_job_and_result_pickle_and_inputs_stay(job):
    tjob = ThroughputJob(settings=SETTINGS, x=job.x, batch_size=2, budget_s=1.0, max_batches=3)
    x_before = job.x.clone()
    again = roundtrip(tjob)
    assert again.settings == tjob.settings and torch.equal(again.x, tjob.x)
    result = inference.measure_throughput(tjob)
    assert isinstance(result, Throughput) and result.batch_size == 2 and 1 <= result.timed_batches <= 3
    assert roundtrip(result) == result and torch.equal(job.x, x_before)


def test_gpu_functions_have_a_measured_duration_and_gmacs_stay_outside():
    import inspect
    from app.core import limits
    src = inspect.getsource(inference)
    assert f"@spaces.GPU(duration=limits.GPU_DURATION_RUN_S)" in src
    assert "@spaces.GPU(duration=limits.GPU_DURATION_THROUGHPUT_S)" in src
    assert "@spaces.GPU\n" not in src                        # never bare (60 s default)
    assert 0 < limits.GPU_DURATION_RUN_S < 60 and "gmacs" not in inspect.getsource(inference.run_photo)


def test_throughput_stops_at_its_time_budget(job):
    """A small budget cuts the number of timed batches (the request cannot hold the model long)."""
    generous = ThroughputJob(settings=SETTINGS, x=job.x, batch_size=2, budget_s=0.05, max_batches=200)
    r = inference.measure_throughput(generous)
    assert r.timed_batches < 200
    one_batch_s = 2 / min(r.full_img_per_s, r.gtp_img_per_s)
    assert r.seconds < 0.05 + 6 * one_batch_s + 1.0  # at most two batches per model past the budget, plus warm-up
