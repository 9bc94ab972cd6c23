"""Memory the server has freed, handed back to the system.

Measured under load (deit_tiny, fresh runs from 4 clients): what the server held stayed flat
(glibc's `mallinfo2` in-use bytes) while its resident memory grew run after run. The growth was
freed memory that glibc's allocator keeps: each server thread that runs a request gets an arena
of its own (8 per core by default) that keeps the high-water mark of what it once held, and a
heap is only given back from its top. So the app
  - caps the arenas (`limits.MALLOC_ARENAS`, through `mallopt(M_ARENA_MAX)`, before the server's
    threads start), and
  - after requests, asks glibc to give back every free page (`malloc_trim(0)`) from a thread of
    its own, at most every `limits.TRIM_EVERY_S` seconds (a trim takes ~20 ms), first running the
    sweeps registered with `add_sweep` (e.g. `app.ui.sessions`: what Gradio keeps per session).
Both are no-ops where the C library is not glibc (macOS, Windows, musl); the sweeps run anyway.
"""
from __future__ import annotations

import ctypes
import logging
import threading
import time
from typing import Callable, Optional

from . import limits

_M_ARENA_MAX = -8  # mallopt parameter number (glibc's malloc.h)
log = logging.getLogger("gtp.app")


def _glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


class Trimmer:
    """A daemon thread that trims the heap `every_s` seconds after a request ended
    (`after_request`), once for all the requests that ended meanwhile."""

    def __init__(self, every_s: float = limits.TRIM_EVERY_S) -> None:
        self.every_s = every_s
        self.trims = 0
        self._wanted = threading.Event()
        self._sweeps: dict[str, Callable[[], None]] = {}
        self._libc = _glibc()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Cap the arenas and start the thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            if self._libc is not None and limits.MALLOC_ARENAS:
                self._libc.mallopt(_M_ARENA_MAX, limits.MALLOC_ARENAS)
            if not self.every_s:  # GTP_APP_TRIM_EVERY_S=0: never trim (to measure without it)
                return
            self._thread = threading.Thread(target=self._run, name="gtp-malloc-trim", daemon=True)
            self._thread.start()

    def add_sweep(self, name: str, sweep: Callable[[], None]) -> None:
        """Run `sweep` before each trim (it drops references to what need not be kept); a sweep
        added under the same name replaces the one before (a page built again)."""
        self._sweeps[name] = sweep

    def after_request(self) -> None:
        self._wanted.set()

    def sweep_and_trim(self) -> None:
        for name, sweep in list(self._sweeps.items()):
            try:
                sweep()
            except Exception:  # noqa: BLE001 - a sweep that fails frees nothing; the server keeps going
                log.exception("memory sweep %r failed", name)
        if self._libc is not None:
            self._libc.malloc_trim(0)
        self.trims += 1

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            # Wait first: what a request frees after its handler returns (its answer, sent) is
            # freed by then, and the requests ending meanwhile share this one trim.
            time.sleep(self.every_s)
            self._wanted.clear()
            self.sweep_and_trim()


TRIMMER = Trimmer()
