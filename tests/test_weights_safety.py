"""Hostile weights files (gtp/weights*.py): refused before anything is parsed, quickly, in little
memory, with a short message naming no server folder; refusals remembered by content hash;
torch.save archives read in a child process with a time and a memory limit.

The files are built SMALL and the bounds scaled down with them (the check functions take their
bounds). `PYTHONPATH=. python tests/test_weights_safety.py full` builds the issue's full-size cases (a 1 MB
compressed .pth, a 40 MB pickle of tiny opcodes, a 1.1M-tensor safetensors header) and prints
the time to refusal and peak RSS growth of each.
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Optional

import pytest
import torch
from safetensors.torch import load_file

from gtp.weights import (MAX_MESSAGE_CHARS, REFUSED, RefusedFiles, WeightsBounds, WeightsRefused,
                         public_message, readable)
from gtp.weights_check import check_file, check_pickle
from gtp.weights_child import read_torch_file, start_server

ROOT = Path(__file__).resolve().parent.parent
TINY = "deit_tiny_patch16_224"
MB = 2**20
SMALL = WeightsBounds(max_bytes=1 * MB, max_tensors=100)  # the scaled-down bounds


# ----------------------------------------------------------------------------- hostile files


def torch_zip(path: Path, pickle: bytes, extra: Optional[dict[str, bytes]] = None, compress: bool = False) -> Path:
    """A torch.save-shaped archive: w/data.pkl, w/byteorder, w/version and `extra` entries."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("w/data.pkl", pickle, compress_type=zipfile.ZIP_STORED)
        z.writestr("w/byteorder", "little", compress_type=zipfile.ZIP_STORED)
        z.writestr("w/version", "3\n", compress_type=zipfile.ZIP_STORED)
        for name, data in (extra or {}).items():
            z.writestr(f"w/{name}", data)
    return path


def tiny_opcodes(n: int) -> bytes:
    """A pickle of 2n + 3 opcodes: a list that n APPENDs fill with None (torch's unpickler runs it)."""
    return b"\x80\x02]" + b"Na" * n + b"."


def safetensors_file(path: Path, header: dict, data: bytes = b"", header_len: int = -1) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len < 0 else header_len) + raw + data)
    return path


def empty_tensors(n: int) -> dict:
    return {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}


def hostile(kind: str, folder: Path, scale: int = 1) -> Path:
    """One hostile file; `scale` multiplies its size (1: small, for the tests)."""
    if kind == "zip_bomb":  # 4 MB of zeros (x scale) deflated to a few KB
        return torch_zip(folder / "bomb.pth", tiny_opcodes(1), {"data/0": bytes(4 * MB * scale)}, compress=True)
    if kind == "unpacked_too_big":
        return torch_zip(folder / "big.pth", tiny_opcodes(1), {"data/0": bytes(2 * MB * scale)})
    if kind == "many_entries":
        return torch_zip(folder / "entries.pth", tiny_opcodes(1), {f"data/{i}": b"" for i in range(200 * scale)})
    if kind == "many_opcodes":  # within the pickle's size bound, over its opcode budget
        return torch_zip(folder / "opcodes.pth", tiny_opcodes(30_000 * scale))
    if kind == "big_pickle":
        return torch_zip(folder / "pickle.pth", tiny_opcodes(200_000 * scale))
    if kind == "too_many_tensors":  # a header within its byte bound (given), too many tensors
        return safetensors_file(folder / "tensors.safetensors", empty_tensors(1000 * scale))
    if kind == "huge_header":
        return safetensors_file(folder / "header.safetensors", empty_tensors(3000 * scale))
    if kind == "header_beyond_file":
        return safetensors_file(folder / "beyond.safetensors", {}, header_len=10**12)
    if kind == "offsets_out_of_range":
        header = {"w": {"dtype": "F32", "shape": [250], "data_offsets": [0, 1000]}}
        return safetensors_file(folder / "offsets.safetensors", header, data=bytes(8))
    if kind == "overlapping":
        header = {n: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]} for n in ("a", "b")}
        return safetensors_file(folder / "overlap.safetensors", header, data=bytes(8))
    if kind == "legacy":
        path = folder / "legacy.pth"
        torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
        return path
    if kind == "not_weights":
        path = folder / "notes.pth"
        path.write_bytes(b"hello, these are not weights")
        return path
    raise KeyError(kind)


KINDS = {  # kind -> words the message must contain
    "zip_bomb": "compressed", "unpacked_too_big": "unpacks to", "many_entries": "entries",
    "many_opcodes": "pickle operations", "big_pickle": "data.pkl is", "too_many_tensors": "tensors; weights for this model have at most",
    "huge_header": "header is", "header_beyond_file": "header claims", "offsets_out_of_range": "outside",
    "overlapping": "overlap", "legacy": "legacy", "not_weights": "neither",
}


def assert_person_message(message: str, folder: Path) -> None:
    """Non-empty, bounded, and naming no folder of this machine."""
    assert message.strip() and len(message) <= MAX_MESSAGE_CHARS, message
    assert str(folder) not in message and not re.search(r"(^|[\s('\"])/\w", message), message


@pytest.fixture(autouse=True)
def forget_refusals():
    REFUSED.clear()
    yield
    REFUSED.clear()


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_file_refused_by_its_check(tmp_path, kind):
    path = hostile(kind, tmp_path)
    bounds = SMALL if kind != "too_many_tensors" else WeightsBounds(1 * MB, 100, max_header_bytes=4 * MB)
    t0 = time.perf_counter()
    with pytest.raises(WeightsRefused) as info:
        check_file(path, bounds)
    assert time.perf_counter() - t0 < 2.0
    assert KINDS[kind] in str(info.value)
    assert_person_message(str(info.value), tmp_path)


def test_the_bounds_let_a_real_state_dict_through(tmp_path):
    """The same checks pass deit_tiny's own files at its own bounds (so each refusal above is
    the bound's doing, not any file's)."""
    import gtp.models as M
    from safetensors.torch import save_file
    state = M._create_random(TINY).state_dict()
    torch.save({"model": state}, tmp_path / "w.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    bounds = M.weights_bounds(TINY)
    assert check_file(tmp_path / "w.pth", bounds).format == "torch-zip"
    info = check_file(tmp_path / "w.safetensors", bounds)
    assert info.format == "safetensors" and info.tensors == len(state) and info.dtypes == {"F32": len(state)}
    assert bounds.max_tensors >= 2 * len(state) and bounds.max_bytes > 1.5 * info.data_bytes


def test_opcode_budget_counts_exactly():
    data = tiny_opcodes(10)  # PROTO, EMPTY_LIST, 10 x (NONE, APPEND), STOP = 23 opcodes
    assert check_pickle(data, 23) == 23
    with pytest.raises(WeightsRefused, match="more than 22"):
        check_pickle(data, 22)
    with pytest.raises(WeightsRefused, match="not a valid pickle"):
        check_pickle(b"\x80\x02\xff", 100)


def test_hostile_files_through_load_model_are_refused_and_remembered(tmp_path, monkeypatch):
    """The real path (deit_tiny's own bounds): a message naming the file and not its folder;
    the same content again (under another name) is refused from memory without any check."""
    import gtp.models as M
    for kind in ("zip_bomb", "header_beyond_file", "offsets_out_of_range", "legacy", "too_many_tensors"):
        path = hostile(kind, tmp_path)
        with pytest.raises(ValueError, match="could not load weights") as info:
            M.load_model(TINY, weights=str(path), device="cpu")
        assert path.name in str(info.value) and KINDS[kind].split()[0] in str(info.value)
        assert_person_message(str(info.value), tmp_path)
    copy = tmp_path / "again" / "renamed.pth"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "bomb.pth").read_bytes())
    first = str(pytest.raises(ValueError, M.load_model, TINY, weights=str(tmp_path / "bomb.pth")).value)
    checked, real = [], M.readable
    monkeypatch.setattr(M, "readable", lambda *a, **k: checked.append(1) or real(*a, **k))
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as again:
        M.load_model(TINY, weights=str(copy), device="cpu")
    assert time.perf_counter() - t0 < 0.5 and str(again.value) == first and not checked
    REFUSED.clear()  # forgotten: checked afresh
    with pytest.raises(ValueError, match="compressed"):
        M.load_model(TINY, weights=str(copy), device="cpu")
    assert checked == [1]


def test_refused_files_expire_and_are_bounded():
    now = [0.0]
    memory = RefusedFiles(ttl_s=60, max_entries=3, clock=lambda: now[0])
    memory.put("aa", TINY, "refused: bomb")
    assert memory.get("aa", TINY) == "refused: bomb" and memory.get("aa", "deit_small_patch16_224") is None
    now[0] = 61.0
    assert memory.get("aa", TINY) is None and len(memory) == 0
    for digest in "bcde":
        memory.put(digest, TINY, digest)
    assert len(memory) == 3 and memory.get("b", TINY) is None and memory.get("e", TINY) == "e"


def test_public_message_drops_folders_and_is_bounded():
    text = "could not open /srv/app/uploads/x1/w.pth: see C:\\Users\\me\\w.pth and ./rel/ok.pth"
    assert public_message(text) == "could not open w.pth: see w.pth and ./rel/ok.pth"
    long = public_message("x" * 5000)
    assert len(long) == MAX_MESSAGE_CHARS and long.endswith("…")


# ----------------------------------------------------------------------------- the bounded child


def test_reader_child_that_overruns_its_time_is_stopped(tmp_path):
    """A pickle whose unpickling takes seconds (torch's weights-only unpickler runs each opcode
    in Python), handed straight to the reader (the checks would refuse it): stopped at the
    time limit, and the reader serves the next file."""
    path = torch_zip(tmp_path / "slow.pth", tiny_opcodes(3_000_000))
    start_server()  # the server's start is not the file's doing
    t0 = time.perf_counter()
    with pytest.raises(WeightsRefused, match="longer than 0.5 s") as info:
        read_torch_file(path, tmp_path / "out.safetensors", SMALL, timeout_s=0.5)
    assert time.perf_counter() - t0 < 2.0
    assert_person_message(str(info.value), tmp_path)
    torch.save({"w": torch.ones(3)}, tmp_path / "good.pth")
    read_torch_file(tmp_path / "good.pth", tmp_path / "good.safetensors", SMALL, timeout_s=10)
    assert load_file(tmp_path / "good.safetensors")["w"].tolist() == [1.0, 1.0, 1.0]


def test_reader_starts_again_after_its_server_died(tmp_path):
    from gtp.weights_child import _READER
    torch.save({"model": {"w": torch.arange(4.0)}}, tmp_path / "good.pth")
    start_server()
    first = _READER.proc
    first.kill()
    first.wait()
    read_torch_file(tmp_path / "good.pth", tmp_path / "good.safetensors", SMALL)
    assert _READER.proc is not first and _READER.proc.poll() is None
    assert load_file(tmp_path / "good.safetensors")["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_reader_child_that_overruns_its_memory_is_stopped(tmp_path):
    """4 bytes on disk that claim 200 MB (a stride-0 view): the child runs out of its 64 MB."""
    path = tmp_path / "expanded.pth"
    torch.save({"w": torch.zeros(1).expand(50_000_000)}, path)
    generous = WeightsBounds(1024 * MB, 100)
    with pytest.raises(WeightsRefused, match="more than 64 MB of memory") as info:
        with readable(path, generous, memory_bytes=64 * MB):
            pytest.fail("a file that cannot be read in its memory was handed over")
    assert_person_message(str(info.value), tmp_path)
    # With room, the same file is read (so the refusal above was the memory limit's doing).
    with readable(path, generous, memory_bytes=512 * MB) as ready:
        assert ready.info.data_bytes == 200_000_000


def test_reader_child_refuses_what_the_model_cannot_hold(tmp_path):
    path = tmp_path / "expanded.pth"
    torch.save({"w": torch.zeros(1).expand(50_000_000)}, path)  # declares 200 MB
    with pytest.raises(WeightsRefused, match="more than 1 MB"):
        with readable(path, SMALL):
            pass


# ----------------------------------------------------------------------------- time and memory, measured


def measure(model: str, files: list[str]) -> list[dict]:
    """In THIS process: each file through gtp.models.load_model, with the seconds to its refusal,
    the peak RSS above the RSS before it (VmHWM reset through /proc/self/clear_refs), and how
    many models timm built and torch.save archives the reader child read for it."""
    import gtp.models as M
    import gtp.weights as GW
    counts = {"built": 0, "read": 0}
    real_create, real_read = M._create, GW.read_torch_file

    def counted(key, real):
        def call(*args, **kwargs):
            counts[key] += 1
            return real(*args, **kwargs)
        return call
    M._create, GW.read_torch_file = counted("built", real_create), counted("read", real_read)

    def status() -> dict[str, int]:
        with open("/proc/self/status") as f:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)
                    if k in ("VmRSS", "VmHWM")}
    M.weights_bounds(model)  # built once per model, not the file's doing
    results = []
    for file in files:
        counts.update(built=0, read=0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status()["VmRSS"]
        t0 = time.perf_counter()
        try:
            M.load_model(model, weights=file, device="cpu")
            message = "LOADED"
        except ValueError as e:
            message = str(e)
        seconds = time.perf_counter() - t0
        results.append(dict(file=Path(file).name, seconds=seconds, message=message,
                            peak_growth_mb=(status()["VmHWM"] - before) / MB, **counts))
    return results


def measure_in_child(model: str, files: list[Path]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, __file__, "measure", model, *map(str, files)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_refusals_take_little_work_and_memory(tmp_path):
    """Each hostile file (small, at deit_tiny's own bounds) refused by its own check (the
    message) before any costly step: no model built by timm, no reader child reading it; with a
    peak RSS growth of a few MB in the process that refuses it (measured in a fresh one). (Its
    time: `python tests/test_weights_safety.py full`.)"""
    kinds = ["zip_bomb", "many_opcodes", "too_many_tensors", "header_beyond_file", "legacy"]
    results = measure_in_child(TINY, [hostile(kind, tmp_path, scale=4) for kind in kinds])
    for kind, result in zip(kinds, results):
        assert result["message"].startswith("could not load weights") and KINDS[kind] in result["message"], result
        assert result["built"] == 0 and result["read"] == 0 and result["peak_growth_mb"] < 10, result
        assert_person_message(result["message"], tmp_path)


def full_size(folder: Path) -> list[Path]:
    """The issue's cases at full size."""
    bomb = folder / "bomb_1MB.pth"  # ~1 GB of zeros deflated to ~1 MB
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("w/data.pkl", tiny_opcodes(1), compress_type=zipfile.ZIP_STORED)
        with z.open("w/data/0", "w", force_zip64=True) as entry:
            for _ in range(1000):
                entry.write(bytes(MB))
    opcodes = torch_zip(folder / "opcodes_40MB.pth", tiny_opcodes(20 * MB))
    header = safetensors_file(folder / "header_1.1M.safetensors", empty_tensors(1_100_000))
    return [bomb, opcodes, header]


if __name__ == "__main__":
    if sys.argv[1] == "measure":
        print(json.dumps(measure(sys.argv[2], sys.argv[3:])))
    elif sys.argv[1] == "full":
        import tempfile
        with tempfile.TemporaryDirectory() as folder:
            files = full_size(Path(folder))
            for result in measure_in_child(sys.argv[2] if len(sys.argv) > 2 else "deit_small_patch16_224", files):
                size = (Path(folder) / result["file"]).stat().st_size
                print(f"{result['file']} ({size / MB:.1f} MB): refused in {result['seconds']:.3f} s, "
                      f"peak RSS +{result['peak_growth_mb']:.1f} MB: {result['message']}")
