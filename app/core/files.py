"""Files the app writes: the download folders (GIF + trace JSON) and the photos its figures
show (one small WebP per photo, which the page serves, `PHOTO_DIR`, so that a run's figures
name it instead of each carrying a copy).

They live under one temporary folder per process; only the newest `limits.DOWNLOAD_FOLDERS_KEPT`
download folders (Gradio has copied a file into its own cache, cleaned by `delete_cache`, by the
time it is older) and `limits.PHOTO_FILES_KEPT` photos are kept, and the whole folder is removed
at exit, including on SIGTERM.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import signal
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any

from PIL import Image

from . import limits
from .workers import Lock

ROOT = Path(tempfile.mkdtemp(prefix="gtp_app_"))
DOWNLOAD_DIR = ROOT / "downloads"
DOWNLOAD_DIR.mkdir()
PHOTO_DIR = ROOT / "photos"
PHOTO_DIR.mkdir()
PHOTO_QUALITY = 75

_lock = Lock()
_folders: deque = deque()
_photos: deque = deque()


def download_folder() -> Path:
    """A new folder for one Downloads click; the oldest are deleted past the bound."""
    folder = Path(tempfile.mkdtemp(prefix="gtp_downloads_", dir=DOWNLOAD_DIR))
    with _lock:
        _folders.append(folder)
        while len(_folders) > limits.DOWNLOAD_FOLDERS_KEPT:
            shutil.rmtree(_folders.popleft(), ignore_errors=True)
    return folder


def photo_file(image: Image.Image) -> Path:
    """The photo as a WebP file in PHOTO_DIR, named by its pixels (written once); the oldest
    photos are deleted past the bound."""
    path = PHOTO_DIR / (hashlib.sha256(image.tobytes()).hexdigest()[:32] + ".webp")
    with _lock:
        if not path.exists():
            image.convert("RGB").save(path, format="WEBP", quality=PHOTO_QUALITY)
            _photos.append(path)
            while len(_photos) > limits.PHOTO_FILES_KEPT:
                _photos.popleft().unlink(missing_ok=True)
    return path


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
