"""Files the app writes: figure JPEGs for the image panels and the download folders.

Both live under one temporary folder per process; only the newest `limits.FIGURE_FILES_KEPT`
figures and `limits.DOWNLOAD_FOLDERS_KEPT` download folders are kept (Gradio has copied a file
into its own cache, cleaned by `delete_cache`, by the time it is older), and the whole folder
is removed at exit, including on SIGTERM.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from PIL import Image

from . import limits

ROOT = Path(tempfile.mkdtemp(prefix="gtp_app_"))
FIGURE_DIR = ROOT / "figures"
DOWNLOAD_DIR = ROOT / "downloads"
FIGURE_DIR.mkdir()
DOWNLOAD_DIR.mkdir()

_lock = threading.Lock()
_figures: "OrderedDict[int, str]" = OrderedDict()   # id(image) -> its file (images are cached, immutable)
_folders: deque = deque()


def deliver(img: Image.Image) -> str:
    """A figure as a JPEG file for an output gr.Image (q 92, no chroma subsampling).

    Encoding ourselves is ~50x faster than letting Gradio write PNGs; a figure drawn once
    (cached in `app.draw.FIGURES`) is written once while its file is kept.
    """
    with _lock:
        path = _figures.get(id(img))
        if path is not None and getattr(img, "_gtp_path", None) == path and os.path.exists(path):
            _figures.move_to_end(id(img))
            return path
    path = str(FIGURE_DIR / f"{uuid.uuid4().hex}.jpg")
    img.save(path, format="JPEG", quality=92, subsampling=0)
    img._gtp_path = path  # ties the id to this very image (ids are reused after collection)
    with _lock:
        _figures[id(img)] = path
        while len(_figures) > limits.FIGURE_FILES_KEPT:
            _, old = _figures.popitem(last=False)
            with contextlib.suppress(OSError):
                os.remove(old)
    return path


def download_folder() -> Path:
    """A new folder for one Downloads click; the oldest are deleted past the bound."""
    folder = Path(tempfile.mkdtemp(prefix="gtp_downloads_", dir=DOWNLOAD_DIR))
    with _lock:
        _folders.append(folder)
        while len(_folders) > limits.DOWNLOAD_FOLDERS_KEPT:
            shutil.rmtree(_folders.popleft(), ignore_errors=True)
    return folder


def disk_usage() -> int:
    """Bytes under the app's folder (figures + downloads)."""
    return sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())


def remove_all() -> None:
    """Delete every file the app wrote (at exit)."""
    shutil.rmtree(ROOT, ignore_errors=True)


def _on_sigterm(signum: int, frame: Any) -> None:
    remove_all()
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    else:  # the default action: end the process, as SIGTERM asks
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


atexit.register(remove_all)
_previous_sigterm = None
if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
    _previous_sigterm = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_sigterm)
