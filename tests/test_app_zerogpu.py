"""The GPU functions (app/core/inference.py) as ZeroGPU runs them, checked on the CPU: picklable
arguments and results, inputs left unchanged, the same answer from a forked process, every
forward of a photo in one call on ZeroGPU, and settings refused before any GPU call."""
from __future__ import annotations

import dataclasses
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

from app.core import classroom, inference, limits, models, workers  # noqa: E402
from app.core.photos import open_photo  # noqa: E402
from app.core.errors import InputError  # noqa: E402
from app.core.results import CompareJob, RunJob, RunResult, Throughput, ThroughputJob  # noqa: E402
from app.core.settings import make_settings  # noqa: E402
from gtp import methods  # noqa: E402

OTHERS = [m.name for m in methods.compared() if m.name != "gtp"]   # what a compare runs beside GTP's own run
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
    assert isinstance(result, RunResult) and [o.method for o in result.others] == OTHERS
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
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.latency_ms = (0.0, 0.0)


# ZeroGPU forks its worker from the app's process, which may have run models on its CPU before
# (OpenMP and numba thread pools up: a child then hangs on more than one thread) and whose other
# threads may hold the app's locks at that moment; it keeps the worker for later calls, so a
# model loaded afterwards is not in it. The worker here is forked the same way, from a fresh
# interpreter that did all of that, and runs GPU functions in turn as ZeroGPU's does.
FORK_SCRIPT = textwrap.dedent("""
    import json, multiprocessing, pickle, sys, threading
    import torch
    torch.set_num_threads(2)
    from app.core import inference, models
    from app.core.photos import open_photo
    from app.core.results import RunJob, ThroughputJob
    from app.core.settings import make_settings

    def worker(jobs, answers):   # one process, several calls, as `spaces` keeps its worker
        while True:
            fn, arg = jobs.get()
            try:
                out = fn(pickle.loads(arg))
            except Exception as e:
                out = type(e).__name__
            answers.put(pickle.dumps((out, torch.get_num_threads())))

    def job_of(settings):
        slot = models.get_model(settings.model)
        return RunJob(settings=settings, x=inference.model_input(photo, slot),
                      budget=inference.check_settings(slot, settings), compare=True)

    photo = open_photo(sys.argv[1])
    settings = make_settings("deit_tiny_patch16_224", num_prop=6)
    job = job_of(settings)
    here = inference.run_photo(job)   # on two threads: the parent's OpenMP and numba pools are up
    held, release = threading.Event(), threading.Event()
    def hold():   # another thread holds the model's lock while the worker is forked
        with models.get_model(settings.model).lock:
            held.set()
            release.wait()
    threading.Thread(target=hold).start()
    held.wait()
    ctx = multiprocessing.get_context("fork")
    jobs, answers = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=worker, args=(jobs, answers), daemon=True)
    proc.start()
    release.set()

    def ask(fn, arg):
        jobs.put((fn, pickle.dumps(arg)))
        return pickle.loads(answers.get(timeout=float(sys.argv[2])))

    def close(a, b):   # equal; floats to their last digits (the child sums on one thread, in PyTorch)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(close(u, v) for u, v in zip(a, b))
        return abs(a - b) <= 1e-6 + 1e-4 * abs(b) if isinstance(a, float) else a == b

    there, threads = ask(inference.run_photo, job)
    rate, _ = ask(inference.measure_throughput, ThroughputJob(settings, job.x, 2, 1.0, 3))
    stale, _ = ask(inference.run_photo, job_of(make_settings("deit_small_patch16_224")))   # loaded after the fork
    proc.join(timeout=30)
    print(json.dumps({
        "same_trace": close(there.trace.summary(), here.trace.summary()),
        "same_top5": close([t.json() for t in there.full_top5 + there.gtp_top5],
                           [t.json() for t in here.full_top5 + here.gtp_top5]),
        "same_comparison": [(o.method, o.blocks) for o in there.others] == [(o.method, o.blocks) for o in here.others],
        "same_cosine": close(there.feature_cosine, here.feature_cosine),
        "rate": [rate.batch_size, rate.timed_batches, rate.full_img_per_s > 0, rate.gtp_img_per_s > 0],
        "threads": threads, "stale": stale, "worker_ended": not proc.is_alive(),
    }))
""")


def test_a_forked_worker_runs_where_the_parent_used_threads_and_locks_and_loads_nothing():
    """In a worker forked while another thread held the model's lock, after the parent ran the
    model on two threads: the GPU functions give the parent's results on one thread; a model
    loaded after the fork is refused (never loaded there: `NotInWorker`) and the worker ends."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_THREADING_LAYER", None)   # numba's default (OpenMP first), as on a Space
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT, CAT, "120"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    verdict = json.loads(out.stdout.strip().splitlines()[-1])
    assert verdict["same_trace"] and verdict["same_top5"] and verdict["same_comparison"] and verdict["same_cosine"]
    batch, timed, full_ok, gtp_ok = verdict["rate"]
    assert batch == 2 and 1 <= timed <= 3 and full_ok and gtp_ok
    assert verdict["threads"] == limits.WORKER_CPU_THREADS == 1
    assert verdict["stale"] == "NotInWorker" and verdict["worker_ended"]


def test_no_lock_of_the_app_is_held_across_a_fork():
    """Every lock held in the parent when it forks is free in the child at once."""
    slot = models.get_model(SETTINGS.model)
    locks = [slot.lock, models._load_lock, models.MODELS._lock, inference.RUNS._lock, classroom._making]
    for lock in locks:
        lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:   # the child: exit status 0 only if every lock is taken at once
            os._exit(0 if all(lock.acquire(timeout=1) for lock in locks) and workers.FORKED else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        for lock in locks:
            lock.release()
    assert os.waitstatus_to_exitcode(status) == 0 and not workers.FORKED


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
    inference.forget_runs()
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
    assert [r.method for r in runs] == OTHERS and [r.blocks for r in again] == [r.blocks for r in runs]
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


# ----------------------------------------------------------------------------- when ZeroGPU gives no GPU
# Stand-ins for `spaces`' own errors, made by its own `error` (spaces/zero/gradio.py) with the titles
# `spaces.zero.client.schedule` and `spaces.zero.wrappers` give them.

def spaces_error(title: str, message: str, html: bool = False):
    from spaces.zero.gradio import error
    return error(title, message, html=html)


NO_GPU = {
    "quota": ("ZeroGPU quota exceeded", "You have exceeded your free ZeroGPU quota (20s requested vs. 0s left). "
                                        "Try again in 0:12:00."),
    "none free": ("ZeroGPU client error", "No GPU was available"),
    "queue": ("ZeroGPU queue timeout", "No GPU was available after 60s. <a href='#'>Log in</a>"),
}


@pytest.mark.parametrize("why", list(NO_GPU))
def test_no_gpu_from_zerogpu_runs_on_the_cpu_with_a_note(why, monkeypatch):
    """A spent quota or no GPU: the run goes on on the CPU and the page says so; not an error."""
    from app.ui import handlers as H
    title, message = NO_GPU[why]
    asked = []

    def no_gpu(job):
        asked.append(job)
        raise spaces_error(title, message, html=why == "queue")
    monkeypatch.setattr(inference.run_photo, "on_gpu", no_gpu)
    inference.forget_runs()
    settings = make_settings("deit_tiny_patch16_224", num_prop=7)
    with pytest.warns(UserWarning, match="It ran on the CPU instead"):   # gr.Warning's toast, outside a page
        first = next(H.run(CAT, settings))
    exp = first["state"]
    assert len(asked) == 1 and exp.run.device.startswith("CPU") and workers.NO_GPU[title] in exp.run.note
    assert "It ran on the CPU instead" in first["status"] and workers.NO_GPU[title] in first["status"]
    assert exp.run.gtp_top5 and len(exp.trace.layers) == 12   # a whole run, not an error


def test_other_zerogpu_errors_and_throughput_are_not_hidden(job, monkeypatch):
    """Only 'no GPU' falls back: a failure inside the worker is reported, and throughput, which
    measures a GPU's batch sizes, says there is no GPU rather than time the CPU."""
    import gradio as gr

    def broken(job):
        raise spaces_error("ZeroGPU worker error", "RuntimeError")
    monkeypatch.setattr(inference.run_photo, "on_gpu", broken)
    with pytest.raises(gr.Error, match="RuntimeError"):
        inference.run_photo(job)

    def quota(job):
        raise spaces_error(*NO_GPU["quota"])
    monkeypatch.setattr(inference.measure_throughput, "on_gpu", quota)
    with pytest.raises(gr.Error, match="quota"):
        inference.measure_throughput(ThroughputJob(settings=SETTINGS, x=job.x, batch_size=2, budget_s=0.1,
                                                   max_batches=1))


def test_a_worker_forked_before_its_model_was_loaded_is_replaced(job, monkeypatch):
    """In a worker, a model not held is refused without loading it; the app then asks again,
    which `spaces` serves from a fresh worker (it drops a worker whose call failed)."""
    monkeypatch.setattr(workers, "FORKED", True)
    monkeypatch.setattr(models, "leave_worker", lambda: None)   # this test process is no worker to end
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a weights load in a GPU worker"))
    other = dataclasses.replace(SETTINGS, weights="loaded-after-the-fork.safetensors")   # in no worker
    with pytest.raises(workers.NotInWorker):
        inference._model(other, models.DEVICE)
    assert inference._model(SETTINGS, models.DEVICE) is models.get_model(SETTINGS.model)   # one it holds
    monkeypatch.setattr(workers, "FORKED", False)
    real, calls = inference.run_photo.on_gpu, []

    def stale_then_fresh(job):   # as `spaces` reports the worker's exception: its class name
        calls.append(job)
        if len(calls) == 1:
            raise spaces_error(workers.WORKER_ERROR, workers.NotInWorker.__name__)
        return real(job)
    monkeypatch.setattr(inference.run_photo, "on_gpu", stale_then_fresh)
    assert isinstance(inference.run_photo(job), RunResult) and len(calls) == 2
