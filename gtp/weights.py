"""A weights file someone gave, made safe to load: checked, read in a bounded child, refusals
remembered, and messages a person can act on.

`readable(path, bounds)` is the whole path from a file on disk to a .safetensors file the caller
may load (with timm, say): the format checks of `gtp.weights_check` first (no parser has seen
a byte yet), then, for a torch.save archive, the bounded child of `gtp.weights_child`; a
.safetensors file that passed its checks is loaded as it is (safetensors builds nothing else).
`REFUSED` remembers a refused file by its content's hash for a while, so sending the same
file again is refused at once, with the same message. `gtp.models` uses all of these.
"""
from __future__ import annotations

import hashlib
import re
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from .weights_check import WeightsBounds, WeightsInfo, WeightsRefused, check_file, check_safetensors
from .weights_child import READ_TIMEOUT_S, read_torch_file

__all__ = ["WeightsBounds", "WeightsRefused", "Readable", "readable", "file_digest", "RefusedFiles",
           "REFUSED", "public_message", "file_label", "load_notes", "MAX_MESSAGE_CHARS"]

MAX_MESSAGE_CHARS = 300
"""Longest message about a weights file (a refusal or a success)."""

MAX_NAME_CHARS = 60
"""Longest file name a message repeats (an upload's name is chosen by its sender)."""

REFUSED_TTL_S = 15 * 60.0
REFUSED_ENTRIES = 256


# ----------------------------------------------------------------------------- messages

# An absolute path: "/" (or "C:\") then at least one folder, up to a space, quote or bracket
# (not the "//host/" of a URL, nor a relative "./folder/").
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/])(?:[A-Za-z]:\\|/)(?:[^\s'\"()\[\]<>,;/\\]+[/\\])+")


def public_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line, every absolute path cut to its last part (the file's name), at most
    `limit` characters (an ellipsis where cut)."""
    text = _ABSOLUTE_PATH.sub("", " ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def file_label(path: Union[str, Path]) -> str:
    """The name a message gives a file: its name only, cut to MAX_NAME_CHARS."""
    name = Path(path).name
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1] + "…"


_DTYPE_WORDS = {"BF": "bfloat", "F": "float", "I": "int", "U": "uint"}


def _dtype_word(code: str) -> str:
    """A safetensors dtype code as torch names it: "F16" -> "float16", "I8" -> "int8"."""
    for prefix, word in _DTYPE_WORDS.items():
        if code.startswith(prefix) and code[len(prefix):len(prefix) + 1].isdigit():
            return (word + code[len(prefix):]).lower()
    return code.lower()


def load_notes(dtypes: dict[str, int], non_finite: int = 0) -> str:
    """What a person should know about weights that loaded: casts into the model's float32 and
    non-finite values, e.g. "cast from int8 to float32; contains 12 non-finite values (NaN/inf)".
    "" when there is nothing to say."""
    notes = []
    cast = sorted(_dtype_word(d) for d in dtypes if d != "F32")
    if cast:
        notes.append(f"cast from {', '.join(cast)} to float32")
    if non_finite:
        notes.append(f"contains {non_finite:,} non-finite values (NaN/inf), so outputs may be NaN")
    return "; ".join(notes)


# ----------------------------------------------------------------------------- refused files


def file_digest(path: Union[str, Path], max_bytes: int, chunk: int = 2**20) -> str:
    """sha256 of the file's content, read in chunks; WeightsRefused past `max_bytes`."""
    digest, read = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            read += len(block)
            if read > max_bytes:
                raise WeightsRefused(f"it is larger than {max_bytes:,} bytes")
            digest.update(block)
    return digest.hexdigest()


class RefusedFiles:
    """Refusal messages by (content hash, model name), each kept `ttl_s` seconds, at most
    `max_entries` (the oldest go first). Thread-safe."""

    def __init__(self, ttl_s: float = REFUSED_TTL_S, max_entries: int = REFUSED_ENTRIES,
                 clock=time.monotonic) -> None:
        self.ttl_s, self.max_entries, self._clock = ttl_s, max_entries, clock
        self._entries: "OrderedDict[tuple[str, str], tuple[float, str]]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str, model: str) -> Optional[str]:
        """The message a file with this hash was refused with for `model`, if still remembered."""
        with self._lock:
            found = self._entries.get((digest, model))
            if found is None:
                return None
            if self._clock() - found[0] > self.ttl_s:
                del self._entries[(digest, model)]
                return None
            return found[1]

    def put(self, digest: str, model: str, message: str) -> None:
        with self._lock:
            self._entries.pop((digest, model), None)
            self._entries[(digest, model)] = (self._clock(), message)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


REFUSED = RefusedFiles()
"""The process's memory of refused files (gtp.models.load_model consults it)."""


# ----------------------------------------------------------------------------- the load path


@dataclass
class Readable:
    """A .safetensors file the caller may load, and what the checks learnt about it."""
    file: Path                 # the checked upload itself, or its conversion in a temporary folder
    info: WeightsInfo          # of `file`: its dtypes say which casts loading will do


@contextmanager
def readable(path: Union[str, Path], bounds: WeightsBounds, timeout_s: float = READ_TIMEOUT_S,
             memory_bytes: Optional[int] = None) -> Iterator[Readable]:
    """Check `path` against `bounds` and yield a .safetensors file that is safe to load; a
    torch.save archive is read in a child process (`timeout_s`, `memory_bytes`) and converted
    into a temporary folder, deleted when the block ends. WeightsRefused otherwise."""
    path = Path(path)
    info = check_file(path, bounds)
    if info.format == "safetensors":
        if path.suffix.lower() != ".safetensors":  # timm picks its reader by the file's extension
            raise WeightsRefused("it is a .safetensors file under another extension; rename it "
                                 "to end in .safetensors")
        yield Readable(path, info)
        return
    if path.suffix.lower() == ".safetensors":
        raise WeightsRefused("it is a torch.save archive under a .safetensors name; rename it to "
                             "end in .pth")
    with tempfile.TemporaryDirectory(prefix="gtp-weights-") as folder:
        out = Path(folder) / "weights.safetensors"
        read_torch_file(path, out, bounds, timeout_s=timeout_s, memory_bytes=memory_bytes)
        with open(out, "rb") as f:  # written by our child from checked tensors; checked anyway
            converted = check_safetensors(f, bounds)
        yield Readable(out, converted)
