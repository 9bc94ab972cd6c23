"""Checks on a weights file BEFORE anything in it is parsed by torch, pickle or safetensors.

An uploaded file is hostile until shown otherwise. What each format can do to a reader:
  - a `torch.save` archive (.pth / .pt / .bin) is a zip: a compressed entry unpacks to any
    size (1 MB of zeros inflates to 1 GB), so none is accepted (torch.save never compresses);
    its `data.pkl` is a pickle whose opcodes torch's unpickler walks one by one in Python, so
    its size and opcode count are bounded (walked here with `pickletools.genops`, which only
    decodes opcodes and builds nothing);
  - a .safetensors file starts with an 8-byte header length and a JSON header, which is read
    only when that length is small and inside the file; then the tensor count, dtypes, shapes
    and offsets must agree with each other and with the file size;
  - a legacy (pre-PyTorch-1.6, non-zip) torch file is one long pickle with storages in between:
    refused, with how to re-save it.
Every bound scales with what the chosen model can hold (`WeightsBounds.for_model`), so a file
for a small model is held to small bounds. Every refusal is a `WeightsRefused` whose message
names the file, never its folder.
"""
from __future__ import annotations

import io
import json
import math
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MB = 2**20

# safetensors dtype -> bytes per element (the formats a float model can be loaded from).
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}

ZIP_MAGIC = b"PK\x03\x04"
_EOCD = b"PK\x05\x06"          # end of central directory record
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"


class WeightsRefused(ValueError):
    """A weights file refused before (or instead of) loading; the message is for the person."""


@dataclass(frozen=True)
class WeightsBounds:
    """What a weights file for one model may hold.

    max_bytes: tensor bytes once unpacked (the model's float32 parameters with a margin).
    max_tensors: tensors in the file (the model's state_dict entries with a margin).
    The rest follow from max_tensors: a `torch.save` pickle takes ~175 bytes and ~44 opcodes
    per tensor, a safetensors header ~90 bytes per tensor (measured on deit_tiny), so 1 KB and
    128 opcodes per tensor, plus a constant for checkpoint metadata, leave ample room.
    """
    max_bytes: int
    max_tensors: int
    max_header_bytes: int = field(default=-1)     # safetensors JSON header; -1: from max_tensors
    max_pickle_bytes: int = field(default=-1)     # torch.save's data.pkl; -1: from max_tensors
    max_pickle_opcodes: int = field(default=-1)   # opcodes in data.pkl; -1: from max_tensors
    min_bytes: int = 0                            # tensor bytes at least (fewer cannot be the model's weights)

    def __post_init__(self) -> None:
        per_tensor = dict(max_header_bytes=min(4 * MB, 64 * 1024 + 1024 * self.max_tensors),
                          max_pickle_bytes=min(4 * MB, 64 * 1024 + 1024 * self.max_tensors),
                          max_pickle_opcodes=4096 + 128 * self.max_tensors)
        for name, value in per_tensor.items():
            if getattr(self, name) < 0:
                object.__setattr__(self, name, value)

    @property
    def max_zip_entries(self) -> int:
        """torch.save writes one entry per storage plus about six of its own."""
        return self.max_tensors + 16

    @classmethod
    def for_model(cls, param_bytes: int, state_entries: int) -> "WeightsBounds":
        """Bounds for a model whose state dict holds `state_entries` tensors of `param_bytes`
        bytes in float32: x1.5 + 16 MB room for the bytes, x2 + 64 for the count (a checkpoint
        may carry a few extra tensors; an optimizer's or EMA copy does not fit, on purpose), and
        at least an eighth of the float32 bytes (half a byte per parameter: below int8 and fp8,
        the narrowest types a checkpoint holds): a smaller file is refused from its header alone,
        before any model is built to find its shapes wrong."""
        return cls(max_bytes=int(param_bytes * 1.5) + 16 * MB, max_tensors=2 * state_entries + 64,
                   min_bytes=param_bytes // 8)


@dataclass
class WeightsInfo:
    """What the checks learnt: the format and, for safetensors, each tensor's dtype."""
    format: str                                       # "safetensors" or "torch-zip"
    tensors: int = 0                                  # entries (safetensors) or zip entries
    data_bytes: int = 0                               # tensor bytes the file declares
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype -> tensors of it (safetensors)


def _mb(n: float) -> str:
    return f"{n / MB:.1f} MB" if n < 10 * MB else f"{n / MB:.0f} MB"


def sniff(head: bytes) -> str:
    """The format of a file from its first 9 bytes: "torch-zip", "safetensors", "legacy-torch"
    or "unknown"."""
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":  # a pickle protocol marker: torch.save(..., _use_new_zipfile_serialization=False)
        return "legacy-torch"
    return "unknown"


def check_file(path: Path, bounds: WeightsBounds) -> WeightsInfo:
    """Check `path` (any supported format) against `bounds`; WeightsRefused if it fails."""
    with open(path, "rb") as f:
        kind = sniff(f.read(9))
        f.seek(0)
        if kind == "torch-zip":
            return check_torch_zip(f, bounds)
        if kind == "safetensors":
            return check_safetensors(f, bounds)
    if kind == "legacy-torch":
        raise WeightsRefused("it is in PyTorch's legacy (pre-1.6, non-zip) format, which is not "
                             "accepted; re-save it with torch.save(state_dict, 'w.pth') or as .safetensors")
    raise WeightsRefused("it is neither a .safetensors file nor a torch.save archive (.pth / .pt)")


# ----------------------------------------------------------------------------- torch.save zip


def _central_directory(f: BinaryIO, size: int) -> tuple[int, int]:
    """(entries, central directory bytes) read from the zip's end records, before `zipfile`
    builds one Python object per entry."""
    tail_len = min(size, 22 + 65535)  # the end record, then a comment of at most 64 KB
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(_EOCD)
    if at < 0 or at + 22 > len(tail):
        raise WeightsRefused("it starts like a zip archive but has no end record (cut short?)")
    entries, cd_bytes = struct.unpack_from("<HI", tail, at + 10)
    if entries == 0xFFFF or cd_bytes == 0xFFFFFFFF:  # zip64: the real numbers are in the zip64 record
        loc = at - 20
        if loc < 0 or tail[loc:loc + 4] != _ZIP64_LOCATOR:
            raise WeightsRefused("its zip64 end record is missing")
        (record_at,) = struct.unpack_from("<Q", tail, loc + 8)
        if record_at + 56 > size:
            raise WeightsRefused("its zip64 end record points outside the file")
        f.seek(record_at)
        record = f.read(56)
        if record[:4] != _ZIP64_EOCD:
            raise WeightsRefused("its zip64 end record is damaged")
        entries, cd_bytes = struct.unpack_from("<QQ", record, 32)
    return entries, cd_bytes


def check_torch_zip(f: BinaryIO, bounds: WeightsBounds) -> WeightsInfo:
    """A torch.save archive: bounded entry count, no compressed entry, bounded unpacked size,
    and a `data.pkl` of bounded size and opcode count."""
    f.seek(0, io.SEEK_END)
    size = f.tell()
    entries, cd_bytes = _central_directory(f, size)
    if entries > bounds.max_zip_entries:
        raise WeightsRefused(f"its archive has {entries:,} entries; weights for this model have "
                             f"at most {bounds.max_zip_entries:,}")
    if cd_bytes > bounds.max_zip_entries * 1024 or cd_bytes > size:
        raise WeightsRefused(f"its archive's directory is {_mb(cd_bytes)}, far more than "
                             f"{entries:,} entries need")
    try:
        archive = zipfile.ZipFile(f)
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise WeightsRefused(f"its zip archive is damaged ({type(e).__name__})") from None
    total, pickle_info = 0, None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise WeightsRefused("its archive holds a compressed entry, which can unpack to any size "
                                 "(a zip bomb); torch.save never compresses: save with torch.save")
        if info.flag_bits & 0x1:
            raise WeightsRefused("its archive holds an encrypted entry")
        if info.header_offset + info.file_size > size:
            raise WeightsRefused("its archive has an entry that runs past the end of the file")
        total += info.file_size
        if info.filename.endswith("/data.pkl") and info.filename.count("/") == 1:
            if pickle_info is not None:
                raise WeightsRefused("its archive holds more than one data.pkl")
            pickle_info = info
    if total > bounds.max_bytes:
        raise WeightsRefused(f"it unpacks to {_mb(total)}; weights for this model take at most "
                             f"{_mb(bounds.max_bytes)} (save only the model's state_dict)")
    if pickle_info is None:
        raise WeightsRefused("its archive has no data.pkl, so it was not written by torch.save")
    if pickle_info.file_size > bounds.max_pickle_bytes:
        raise WeightsRefused(f"its data.pkl is {_mb(pickle_info.file_size)}; a state dict for this "
                             f"model needs at most {_mb(bounds.max_pickle_bytes)}")
    check_pickle(archive.read(pickle_info), bounds.max_pickle_opcodes)
    _check_enough(total, bounds)
    return WeightsInfo("torch-zip", tensors=len(infos), data_bytes=total)


def _check_enough(data_bytes: int, bounds: WeightsBounds) -> None:
    """WeightsRefused when the file holds fewer tensor bytes than the model's weights need."""
    if data_bytes < bounds.min_bytes:
        raise WeightsRefused(f"it holds {data_bytes:,} bytes of tensors; weights for this model take at "
                             f"least {_mb(bounds.min_bytes)} (these are another model's, or not weights)")


def check_pickle(data: bytes, max_opcodes: int) -> int:
    """Walk a pickle's opcodes without running any (decoding only, nothing is built): its
    opcode count, or WeightsRefused past `max_opcodes` or if it is not a pickle."""
    count = 0
    try:
        for count, _ in enumerate(pickletools.genops(io.BytesIO(data)), start=1):
            if count > max_opcodes:
                raise WeightsRefused(f"its data.pkl holds more than {max_opcodes:,} pickle "
                                     "operations, far more than a state dict for this model needs")
    except WeightsRefused:
        raise
    except Exception as e:  # genops' ValueError on a bad opcode, struct errors on truncation
        raise WeightsRefused(f"its data.pkl is not a valid pickle ({type(e).__name__})") from None
    return count


# ----------------------------------------------------------------------------- safetensors


def _tensor_entry(name: str, entry: object, data_bytes: int) -> tuple[str, int, int]:
    """(dtype, begin, end) of one header entry, checked: a known dtype, a shape of
    non-negative ints whose size matches the offsets, offsets inside the data."""
    shown = name if len(name) <= 40 else name[:39] + "…"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise WeightsRefused(f"its header entry {shown!r} is not a tensor description")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise WeightsRefused(f"tensor {shown!r} has dtype {str(dtype)[:20]!r}, which a float model "
                             f"cannot take (use one of F32, F16, BF16, I8, ...)")
    ints = lambda xs: isinstance(xs, list) and all(type(x) is int and x >= 0 for x in xs)  # noqa: E731
    if not ints(shape) or len(shape) > 8 or not ints(offsets) or len(offsets) != 2:
        raise WeightsRefused(f"tensor {shown!r} has a malformed shape or offsets")
    begin, end = offsets
    if not begin <= end <= data_bytes:
        raise WeightsRefused(f"tensor {shown!r} has offsets outside the file's data "
                             f"({begin:,}..{end:,} of {data_bytes:,} bytes)")
    if math.prod(shape) * SAFETENSORS_DTYPES[dtype] != end - begin:
        raise WeightsRefused(f"tensor {shown!r}: its shape and dtype do not match its offsets")
    return dtype, begin, end


def check_safetensors(f: BinaryIO, bounds: WeightsBounds) -> WeightsInfo:
    """A .safetensors file: a bounded header inside the file, a bounded tensor count, and
    offsets that tile the data exactly (as safetensors itself requires)."""
    f.seek(0, io.SEEK_END)
    size = f.tell()
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        raise WeightsRefused("it is too short to be a .safetensors file")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > size - 8:
        raise WeightsRefused(f"its header claims {header_len:,} bytes but the file has {size - 8:,} "
                             "after the length (cut short, or not safetensors)")
    if header_len > bounds.max_header_bytes:
        raise WeightsRefused(f"its header is {_mb(header_len)}; weights for this model need at most "
                             f"{_mb(bounds.max_header_bytes)}")
    try:
        header = json.loads(f.read(header_len))
    except (ValueError, RecursionError) as e:  # bad UTF-8 / JSON; JSON nested thousands deep
        raise WeightsRefused(f"its header is not valid JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise WeightsRefused("its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsRefused("its __metadata__ is not a mapping of strings")
    if len(header) > bounds.max_tensors:
        raise WeightsRefused(f"it declares {len(header):,} tensors; weights for this model have at "
                             f"most {bounds.max_tensors:,}")
    data_bytes = size - 8 - header_len
    spans, dtypes = [], {}
    for name, entry in header.items():
        dtype, begin, end = _tensor_entry(name, entry, data_bytes)
        spans.append((begin, end))
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    spans.sort()
    covered = 0
    for begin, end in spans:
        if begin != covered:
            raise WeightsRefused("its tensors overlap or leave gaps in the data")
        covered = end
    if covered != data_bytes:
        raise WeightsRefused(f"its tensors cover {covered:,} of its {data_bytes:,} data bytes")
    if data_bytes > bounds.max_bytes:
        raise WeightsRefused(f"its tensors take {_mb(data_bytes)}; weights for this model take at "
                             f"most {_mb(bounds.max_bytes)}")
    _check_enough(data_bytes, bounds)
    return WeightsInfo("safetensors", tensors=len(header), data_bytes=data_bytes, dtypes=dtypes)
