"""Reading a torch.save archive in a child process with a time and a memory limit.

Even a file that passed `gtp.weights_check` is read by torch's unpickler, which builds what the
pickle describes (e.g. a tensor of a billion elements viewed, stride 0, over 4 bytes). So the
read happens in a child process that
  - may grow its address space by `memory_bytes` only (RLIMIT_AS) and write no more than the
    weights bound (RLIMIT_FSIZE), and is killed after `timeout_s` seconds;
  - reads with `torch.load(weights_only=True)`, picks the state dict out of a checkpoint,
    checks it against the bounds and writes it as .safetensors: the only thing the caller loads;
  - answers with a few bytes of JSON in a file, never a pickle.
Starting Python and importing torch takes seconds (4 s on a loaded 2-core CPU, measured), so a
small reader server (`python -c ... _serve()`, ~290 MB, started on first use or by
`start_server()`, gone after READER_IDLE_S idle) imports torch once and forks one child per
file. It is single-threaded and runs no torch code itself, so forking it is safe, which forking
the caller (a threaded web server) is not; multiprocessing's forkserver would re-run the
caller's main script (the app) in every child, hence this instead.
"""
from __future__ import annotations

import json
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import save_file

from .weights_check import MB, WeightsBounds, WeightsRefused

READ_TIMEOUT_S = 10.0
"""Longest a child may take to read a file: deit_base's 330 MB .pth is read and converted in
0.6-1.2 s on this project's shared 2-core CPU at load average 4-5 (measured), so a file that
needs 10 s is hostile or broken."""

READER_START_S = 120.0   # the reader server's start (Python + torch import): not in the file's control
READER_IDLE_S = 600.0    # the reader server exits after this long without a file to read
_REPLY_BYTES = 64 * 1024  # the child's JSON reply, at most
_ROOT = str(Path(__file__).resolve().parent.parent)


# ----------------------------------------------------------------------------- in the child


def _vm_bytes() -> Optional[int]:
    """This process's address space now (VmSize), the base of the child's memory limit; None
    without Linux's /proc (then the child runs without a memory limit)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        return None


def _limit(which: int, soft: int) -> None:
    _, hard = resource.getrlimit(which)
    resource.setrlimit(which, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _state_dict_of(checkpoint: Any) -> Any:
    """The state dict inside a checkpoint, chosen as timm.models.load_state_dict chooses it
    (EMA weights first); the caller's timm load then cleans prefixes as usual."""
    if isinstance(checkpoint, dict):
        for key in ("state_dict_ema", "model_ema"):
            if checkpoint.get(key) is not None:
                return checkpoint[key]
        for key in ("state_dict", "model"):
            if key in checkpoint:
                return checkpoint[key]
    return checkpoint


def convert(path: str, out: str, max_bytes: int, max_tensors: int) -> None:
    """Read `path` with torch.load(weights_only=True) and write its state dict to `out`."""
    state = _state_dict_of(torch.load(path, map_location="cpu", weights_only=True))
    if not isinstance(state, dict):
        raise WeightsRefused(f"it holds a {type(state).__name__}, not a state dict")
    if len(state) > max_tensors:
        raise WeightsRefused(f"it holds {len(state):,} entries; weights for this model have at most "
                             f"{max_tensors:,}")
    tensors: dict[str, torch.Tensor] = {}
    declared, storages = 0, set()
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsRefused(f"its entry {str(key)[:40]!r} is a {type(value).__name__}, not a tensor")
        declared += value.numel() * value.element_size()  # what the tensor claims, not its storage
        if declared > max_bytes:
            raise WeightsRefused(f"its tensors take more than {max_bytes / MB:.0f} MB; weights for "
                                 "this model take less")
        storage = value.untyped_storage()
        # safetensors stores each tensor whole and alone: views and shared storages are copied.
        alone = (value.is_contiguous() and storage.data_ptr() not in storages
                 and storage.nbytes() == value.numel() * value.element_size())
        tensors[key] = value if alone else value.detach().clone(memory_format=torch.contiguous_format)
        storages.add(storage.data_ptr())
    save_file(tensors, out)


def _read_job(job: dict) -> dict:
    """One file, in the forked child: limits first, then `convert`; the JSON reply."""
    try:
        base = _vm_bytes()
        if base is not None:
            _limit(resource.RLIMIT_AS, base + job["memory_bytes"])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not kills
        _limit(resource.RLIMIT_FSIZE, job["max_bytes"] + 16 * MB)
        torch.set_num_threads(1)  # no OpenMP pool (and its stacks) inside the memory limit
        convert(job["path"], job["out"], job["max_bytes"], job["max_tensors"])
        return {"ok": True}
    except WeightsRefused as e:
        return {"ok": False, "message": str(e)}
    except MemoryError:
        return {"ok": False, "memory": True}
    except Exception as e:  # noqa: BLE001 (whatever a hostile file provokes is a refusal)
        text = " ".join(str(e).split()) or type(e).__name__
        if "can't allocate memory" in text or "out of memory" in text.lower():
            return {"ok": False, "memory": True}
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:  # torch's own message is a page of advice for whoever trusts the file
            return {"ok": False, "message": f"it holds Python objects, not only tensors ({unsafe[1][:60]}), "
                    "which are never loaded from an upload; save model.state_dict() instead"}
        if "Weights only load failed" in text:
            text = text.split("WeightsUnpickler error:")[-1]
        return {"ok": False, "message": f"torch could not read it: {text[:200]}"}


def _run_child(job: dict) -> None:
    """The forked child's whole life; never returns."""
    code = 1
    try:
        reply = json.dumps(_read_job(job)).encode()[:_REPLY_BYTES]
        with open(job["reply"], "wb") as f:
            f.write(reply)
        code = 0
    finally:
        os._exit(code)


def _serve(idle_s: float = READER_IDLE_S) -> None:
    """The reader server: one JSON job per line on stdin; per job, fork a child, wait for it at
    most job["timeout_s"] seconds (then kill it), answer {"exit": code, "timed_out": bool}."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the caller; we end when it does
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the protocol
    proto.write('{"ready": true}\n')
    while select.select([sys.stdin], [], [], idle_s)[0]:  # one job at a time: nothing waits in a buffer
        line = sys.stdin.readline(_REPLY_BYTES)
        if not line:  # the caller is gone
            return
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run_child(job)
        deadline, status, timed_out = time.monotonic() + job["timeout_s"], None, False
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)  # not reaped yet, so the pid is still this child's
                status, timed_out = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), True
            else:
                time.sleep(0.005)
        proto.write(json.dumps({"exit": status, "timed_out": timed_out}) + "\n")


# ----------------------------------------------------------------------------- in the caller


class _Reader:
    """The caller's handle on the reader server: started on demand, one file at a time."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.lock = threading.Lock()
        self._buffer = b""

    def _line(self, deadline: float) -> Optional[dict]:
        """The server's next reply line, or None at the deadline or if it is gone."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, _REPLY_BYTES)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
        self.proc, self._buffer = None, b""

    def ensure_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.stop()
        code = f"import sys; sys.path.insert(0, {_ROOT!r}); from gtp.weights_child import _serve; _serve()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)
        if self._line(time.monotonic() + READER_START_S) != {"ready": True}:
            self.stop()
            raise WeightsRefused("the weights reader could not start on this server; try again later")

    def run(self, job: dict) -> dict:
        """Send one job; the server's {"exit", "timed_out"} answer."""
        with self.lock:
            for attempt in range(2):
                self.ensure_running()
                try:
                    self.proc.stdin.write(json.dumps(job).encode() + b"\n")
                    answer = self._line(time.monotonic() + job["timeout_s"] + 10.0)
                except OSError:
                    answer = None
                if answer is not None:
                    return answer
                idle_exit = self.proc.poll() == 0  # it ended, idle, just as the job came: once more
                self.stop()  # else it hangs or died: a fresh one next time
                if not idle_exit:
                    break
            raise WeightsRefused("the weights reader stopped answering; try again")


_READER = _Reader()


def start_server() -> None:
    """Start the reader server now (seconds: it imports torch) rather than on the first upload.
    Optional and idempotent; it exits by itself after READER_IDLE_S idle."""
    with _READER.lock:
        _READER.ensure_running()


def read_torch_file(path: Path, out: Path, bounds: WeightsBounds, timeout_s: float = READ_TIMEOUT_S,
                    memory_bytes: Optional[int] = None) -> None:
    """Convert the torch.save archive `path` into the .safetensors file `out` in a child process.

    The child may take `timeout_s` seconds and grow by `memory_bytes` (default: three copies of
    the weights bound, for the read, a contiguous copy and the writer's buffer, plus 256 MB).
    WeightsRefused when it fails, overruns or dies.
    """
    memory_bytes = 3 * bounds.max_bytes + 256 * MB if memory_bytes is None else memory_bytes
    reply = out.with_suffix(".json")
    reply.unlink(missing_ok=True)  # only this child's answer counts
    answer = _READER.run(dict(path=str(path), out=str(out), reply=str(reply), timeout_s=timeout_s,
                              memory_bytes=memory_bytes, max_bytes=bounds.max_bytes,
                              max_tensors=bounds.max_tensors))
    if answer.get("timed_out"):
        raise WeightsRefused(f"reading it took longer than {timeout_s:g} s (a state dict for this "
                             "model reads in a second or two)")
    try:
        with open(reply, "rb") as f:
            result = json.loads(f.read(_REPLY_BYTES))
    except (OSError, ValueError):
        raise WeightsRefused(f"the process reading it stopped without an answer (exit code "
                             f"{answer.get('exit')})") from None
    if result.get("memory"):
        raise WeightsRefused(f"reading it needed more than {memory_bytes / MB:.0f} MB of memory, "
                             "more than weights for this model need")
    if not result.get("ok"):
        raise WeightsRefused(str(result.get("message", "it could not be read")))
