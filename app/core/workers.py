"""ZeroGPU's forked workers made safe, and the one way the app calls a GPU function.

On a ZeroGPU Space `@spaces.GPU` runs the function in a worker process forked from the app's,
and keeps that worker for later calls while its GPU stays idle (`spaces/zero/wrappers.py`:
a worker goes back to the pool only after a call that succeeded). Three things follow:

* Locks. A fork copies every lock as it is; one that another thread held at that moment stays
  held in the child forever. The app's locks are this module's `Lock`, which a forked child
  gets back unlocked (`os.register_at_fork`).
* Threads. A child forked after the parent used its OpenMP thread pool (PyTorch, numba) hangs
  in its first parallel region on more than one thread, here until ZeroGPU's duration runs out
  (measured on this project's CPUs: a 512 x 512 matmul in the child hangs on 2 threads and takes
  0.3 s on 1). Every GPU function calls `enter_gpu_call` first: one CPU thread in a forked
  child, where the work is on the GPU anyway.
* Weights. A worker holds the models that were loaded when it was forked. A GPU function takes
  its model with `app.core.models.resident`, which never loads: a model loaded after the fork
  raises `NotInWorker` there, that worker ends, and `gpu_function` asks once more, which forks
  a fresh worker holding the model. A model switch so loads its weights outside the GPU call.

`gpu_function(duration, fallback)` wraps `fn(job, device)` with `spaces.GPU`; where ZeroGPU
gives no GPU (a spent quota, none free, the queue timed out) and `fallback` is set, the same
`fn` runs on the CPU in this process with a note for the page (`RunResult.note`, and a toast),
not an error. Outside ZeroGPU `spaces.GPU` returns `fn` itself and none of this happens.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import threading
import weakref
from typing import Any, Callable, Optional

import gradio as gr
import spaces
import torch

from . import limits

CPU = torch.device("cpu")
FORKED = False
"""True in a process forked from the app's (a ZeroGPU worker): set by `_after_fork_in_child`."""

NO_GPU = {"ZeroGPU quota exceeded": "the ZeroGPU quota is spent",
          "ZeroGPU pending credits exceeded": "the ZeroGPU quota is spent",
          "ZeroGPU queue timeout": "no GPU came free in time",
          "ZeroGPU client error": "no GPU was available"}
"""The titles of the `gr.Error`s `spaces` raises when it gives no GPU (`spaces/zero/client.py`,
`schedule`), and what each means. Visitors who are not logged in are counted by network address,
so a classroom behind one address shares one quota."""

WORKER_ERROR = "ZeroGPU worker error"   # how `spaces` reports an exception raised in the worker


class NotInWorker(Exception):
    """The GPU worker was forked before this model was loaded (it holds no copy of it)."""


# ----------------------------------------------------------------------------- locks and fork

_LOCKS: "weakref.WeakSet[Lock]" = weakref.WeakSet()


class Lock:
    """A `threading.Lock` that a forked child gets back unlocked (its holder thread is not there)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _LOCKS.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> "Lock":
        self._lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


def _after_fork_in_child() -> None:
    global FORKED
    FORKED = True
    for lock in list(_LOCKS):
        lock._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def enter_gpu_call() -> None:
    """The first call of every GPU function: in a forked worker, `limits.WORKER_CPU_THREADS`
    CPU threads before anything runs (see the module's docstring)."""
    if FORKED:
        torch.set_num_threads(limits.WORKER_CPU_THREADS)


def leave_worker() -> None:
    """This forked worker is of no further use (`spaces` drops a worker whose call failed):
    it ends itself once its answer has been sent, instead of idling until the Space restarts."""
    if FORKED:
        threading.Timer(limits.WORKER_EXIT_DELAY_S, os._exit, args=(0,)).start()


# ----------------------------------------------------------------------------- the GPU call


def no_gpu(e: BaseException) -> Optional[str]:
    """Why ZeroGPU gave no GPU, or None for any other exception."""
    return NO_GPU.get(getattr(e, "title", None)) if isinstance(e, gr.Error) else None


def _stale_worker(e: BaseException) -> bool:
    return isinstance(e, gr.Error) and getattr(e, "title", None) == WORKER_ERROR and \
        str(getattr(e, "message", "")) == NotInWorker.__name__


def fallback_note(reason: str) -> str:
    shared = " (visitors who are not logged in share one quota per network address)" if "quota" in reason else ""
    return (f"⚠ No GPU when this ran: {reason}{shared}. It ran on the CPU instead, more slowly: the same "
            "numbers, the CPU's timings.")


def gpu_function(duration: int, fallback: bool) -> Callable[[Callable], Callable]:
    """Decorate `fn(job, device=...)`: called as `fn(job)`, it runs on ZeroGPU's GPU (`duration`
    seconds reserved); with `fallback`, on the CPU here when ZeroGPU gives no GPU."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(job: Any) -> Any:
            try:
                try:
                    return call.on_gpu(job)
                except gr.Error as e:
                    if not _stale_worker(e):
                        raise
                    return call.on_gpu(job)   # a fresh worker, forked now, holds the model
            except gr.Error as e:
                reason = no_gpu(e)
                if reason is None or not fallback:
                    raise
            note = fallback_note(reason)
            gr.Warning(note)
            result = fn(job, CPU)
            if dataclasses.is_dataclass(result) and any(f.name == "note" for f in dataclasses.fields(result)):
                result = dataclasses.replace(result, note=note)
            return result

        call.on_gpu = spaces.GPU(duration=duration)(fn)   # what `spaces` made of `fn` (a test may stand in)
        return call
    return decorate
