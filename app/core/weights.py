"""Weights files a person uploads, checked where they cannot hold up anyone else's run.

The library makes a file safe to load (`gtp.weights`: checks before any parser sees it, a
torch.save archive read in a bounded child process, refusals remembered by content hash in
`gtp.weights.REFUSED`). The app decides WHERE and WHEN that happens: in the `check_weights`
event, which Gradio runs without a queue limit (`app.ui.events`), never in the models' queue
that every run and `/explore` waits on. So:
  1. `check(model, path, session)`: no file (every page run without one) returns at once,
     taking nothing; then the cheap checks, with no lock and no hash of the whole file (the
     format and the model's bounds, from the file's header: a small file of wrong shapes is
     refused here); then a turn: at most one check in flight per session and
     `limits.WEIGHTS_CHECKS_AT_ONCE` in all (past that, refused at once with a message, so
     a burst from one person holds no server thread and delays another person's check by at
     most that many loads); in its turn, a file refused before is refused for the cost of one
     hash; otherwise the model is loaded with it (`app.core.models.get_model`, which the
     library checks), and a file that loads is remembered as checked FOR THIS SESSION
     (`CHECKED`);
  2. `require_checked(model, path, session)`, in the run event (models' queue): only a file
     this session checked (or the model loaded from it) may be loaded there; any other is
     refused at once, so a client calling the run endpoint directly cannot make the models'
     queue read its file.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import gtp.models as library
from gtp.weights import REFUSED, WeightsRefused, file_digest, file_label
from gtp.weights_check import check_file
from gtp.weights_child import start_server

from . import limits
from .caches import BoundedCache
from .errors import InputError, for_person
from .models import get_model, is_loaded

CHECKED: BoundedCache[bool] = BoundedCache("checked weights", limits.CHECKED_WEIGHTS_ENTRIES, size_of=lambda v: 0)
"""Files that loaded, by (session, model, path): what a run of that session may load again."""

_turns_lock = threading.Lock()
_in_flight: dict[str, int] = {}   # session -> checks of it past the cheap checks (0 or 1)
BUSY = ("The server is checking other people's weights files right now; try again in a minute "
        "(the page without your file works meanwhile).")
ONE_AT_A_TIME = "A weights file of this session is being checked already; wait for its answer before sending another."


def in_flight() -> int:
    """Checks past the cheap checks now, all sessions together."""
    with _turns_lock:
        return sum(_in_flight.values())


@contextmanager
def turn(session: str) -> Iterator[None]:
    """A check's turn to hash and load its file: one per session, `limits.WEIGHTS_CHECKS_AT_ONCE`
    in all; InputError at once (never a wait) when the session or the server has no room."""
    with _turns_lock:
        if _in_flight.get(session):
            raise InputError(ONE_AT_A_TIME)
        if sum(_in_flight.values()) >= limits.WEIGHTS_CHECKS_AT_ONCE:
            raise InputError(BUSY)
        _in_flight[session] = 1
    try:
        yield
    finally:
        with _turns_lock:
            _in_flight.pop(session, None)


def check(model: str, path: Optional[str], session: str = "") -> None:
    """Load `model` with the weights file `path` for `session` (nothing to do without a file, or
    if it is loaded or this session checked it): cheap checks first, then a turn (`turn`), a file
    refused before refused at once; InputError with the library's message otherwise."""
    if not path or is_loaded(model, path) or (session, model, path) in CHECKED:
        return
    label = file_label(path)
    try:  # the file's header against the model's bounds: no model built, no lock, no whole-file hash
        check_file(Path(path), library.weights_bounds(model))
    except (OSError, WeightsRefused) as e:
        raise InputError(for_person(f"could not load weights for {model} from {label}: {e}")) from None
    with turn(session):
        try:
            digest = file_digest(path, limits.MAX_UPLOAD_BYTES)
        except (OSError, WeightsRefused) as e:  # gone, unreadable, or over the upload bound
            raise InputError(for_person(f"could not read weights file {label}: {e}")) from None
        remembered = REFUSED.get(digest, model)
        if remembered is not None:
            raise InputError(for_person(remembered))
        get_model(model, path)  # checked and read within bounds by the library; InputError if refused
    CHECKED.put((session, model, path), True)


def require_checked(model: str, path: Optional[str], session: str = "") -> None:
    """InputError unless `path` is None, or was checked for `model` by `session` (`check`), or the
    model is loaded from it."""
    if path and not is_loaded(model, path) and (session, model, path) not in CHECKED:
        raise InputError(f"The weights file {file_label(path)} has not been checked for {model} yet: "
                         "upload it under “Your own weights” (API: the check_weights endpoint first).")


def warm_reader() -> None:
    """Start the library's reader server in the background (it imports torch: ~3 s, ~315 MB;
    it exits after `limits.READER_IDLE_S` idle), so that an upload arriving soon finds it ready."""
    threading.Thread(target=_start_quietly, name="gtp-weights-reader", daemon=True).start()


def _start_quietly() -> None:
    try:
        start_server()
    except WeightsRefused:  # it could not start; the upload will say so when it needs it
        pass
