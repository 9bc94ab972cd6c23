"""Weights files a person uploads, checked where they cannot hold up anyone else's run.

The library makes a file safe to load (`gtp.weights`: checks before any parser sees it, a
torch.save archive read in a bounded child process, refusals remembered by content hash in
`gtp.weights.REFUSED`). The app decides WHERE that happens: in the `check_weights` event, in a
queue of its own (`app.ui.events`), never in the models' queue that every run and `/explore`
waits on. So:
  1. `check(model, path)`: the file's sha256 is looked up among refused files BEFORE the model
     load lock is taken: a file refused before is refused at once, for the cost of one hash;
     otherwise the model is loaded with it (`app.core.models.get_model`, which the library
     checks), and a file that loads is remembered as checked (`CHECKED`);
  2. `require_checked(model, path)`, in the run event (models' queue): only a checked file may be
     loaded there (again, after the model cache dropped it); any other is refused at once, so a
     client calling the run endpoint directly cannot make the models' queue read its file.
"""
from __future__ import annotations

import threading
from typing import Optional

from gtp.weights import REFUSED, WeightsRefused, file_digest, file_label
from gtp.weights_child import start_server

from . import limits
from .caches import BoundedCache
from .errors import InputError, for_person
from .models import get_model, is_loaded

CHECKED: BoundedCache[bool] = BoundedCache("checked weights", limits.CHECKED_WEIGHTS_ENTRIES, size_of=lambda v: 0)


def check(model: str, path: Optional[str]) -> None:
    """Load `model` with the weights file `path` (nothing to do without one, or if it is loaded):
    a file refused before is refused at once; InputError with the library's message otherwise."""
    if not path or is_loaded(model, path):
        return
    try:
        digest = file_digest(path, limits.MAX_UPLOAD_BYTES)
    except (OSError, WeightsRefused) as e:  # gone, unreadable, or over the upload bound
        raise InputError(for_person(f"could not read weights file {file_label(path)}: {e}")) from None
    remembered = REFUSED.get(digest, model)
    if remembered is not None:
        raise InputError(for_person(remembered))
    get_model(model, path)  # checked and read within bounds by the library; InputError if refused
    CHECKED.put((model, path), True)


def require_checked(model: str, path: Optional[str]) -> None:
    """InputError unless `path` is None or was checked for `model` (`check`)."""
    if path and not is_loaded(model, path) and (model, path) not in CHECKED:
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
