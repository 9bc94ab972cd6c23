"""Sweep results uploaded by the person (`python -m gtp sweep` JSON or CSV) read for the
trade-off chart.

A sweep file is untrusted upload: it is bounded (bytes, nesting depth, records, distinct methods,
label length) before anything costly is done with it, each bound refusing with a sentence that
names it. The nesting depth is counted on the raw text before `json.loads` (which recurses once
per level) ever sees it. Names read from the file are plain one-line text; the trade-off chart
escapes them so nothing is read as markup or LaTeX.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Union

import numpy as np

from .errors import InputError
from .limits import MAX_LABEL_CHARS, MAX_SWEEP_BYTES, MAX_SWEEP_DEPTH, MAX_SWEEP_METHODS, MAX_SWEEP_RECORDS
from .plain import plain_text

# Column names other tools use for the same quantity.
_ALIASES = {
    "gmacs": ("gmacs", "gmac", "macs_g", "gflops_macs"),
    "top1": ("top1", "top_1", "top1_acc", "acc1", "accuracy", "acc", "top-1"),
    "agreement": ("agreement", "agree", "top1_agreement", "agreement_top1"),
}
_LABEL_KEYS = ("model", "num_prop", "sparsity", "alpha", "method", "label")
_RECORD_KEYS = ("records", "results", "rows", "sweep", "data")

# A JSON string, possibly unterminated (brackets inside strings are not nesting); anything not a bracket.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deeply [ and { nest in JSON text, counted without parsing (no recursion, and no loop
    in Python over the characters), so that a 100,000-deep file costs milliseconds instead of a
    RecursionError."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return max(0, int(np.cumsum(steps).max()))


def _number(value: Any) -> float | None:
    """A finite float from numbers or numeric strings ('81.5', '81.5%'); None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        value = value.strip().rstrip("%").strip()
        if not value or len(value) > 50:  # float() of a huge digit string is slow; no metric is that long
            return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _records(data: Any) -> list[dict]:
    """The list of records inside whatever JSON shape a sweep was saved in: a list, a list under
    one of _RECORD_KEYS, or a single record."""
    if isinstance(data, dict):
        inner = next((data[k] for k in _RECORD_KEYS if isinstance(data.get(k), list)), None)
        data = [data] if inner is None else inner
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def _json_rows(text: str, name: str) -> list[dict]:
    depth = json_depth(text)
    if depth > MAX_SWEEP_DEPTH:
        raise InputError(f"{name} nests [ and {{ {depth:,} levels deep; a sweep file needs at most "
                         f"{MAX_SWEEP_DEPTH}. Upload the JSON or CSV that `python -m gtp sweep` writes.")
    try:
        data = json.loads(text)
    except ValueError as e:  # JSONDecodeError, and integers too long to convert
        raise InputError(f"{name} looks like JSON but does not parse: {e}") from None
    return _records(data)


def _csv_rows(text: str, name: str) -> list[dict]:
    rows = []
    try:
        for row in csv.DictReader(io.StringIO(text)):
            rows.append(row)
            if len(rows) > MAX_SWEEP_RECORDS:
                break
    except csv.Error as e:
        raise InputError(f"{name} is neither JSON nor CSV: {e}") from None
    return rows


def _as_percent(values: list[float | None]) -> list[float | None]:
    """A column given as fractions (every value within 0..1) becomes percentages."""
    present = [v for v in values if v is not None]
    if present and all(0 <= v <= 1 for v in present):
        return [None if v is None else v * 100 for v in values]
    return values


def _record(row: dict) -> dict | None:
    """One row as {gmacs, top1, agreement, method, label}; None without GMACs or any metric."""
    lowered = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    values = {}
    for field, aliases in _ALIASES.items():
        values[field] = next((_number(lowered[a]) for a in aliases if _number(lowered.get(a)) is not None), None)
    if values["gmacs"] is None or (values["top1"] is None and values["agreement"] is None):
        return None
    label = ", ".join(f"{k}={plain_text(lowered[k])}" for k in _LABEL_KEYS if lowered.get(k) not in (None, ""))
    method = plain_text(lowered.get("method") or "") or "sweep"
    return {"gmacs": values["gmacs"], "top1": values["top1"], "agreement": values["agreement"],
            "method": method, "label": plain_text(label, 3 * MAX_LABEL_CHARS)}


def parse_sweep(text: str, name: str = "sweep") -> tuple[list[dict], str]:
    """Records {gmacs, top1, agreement, method, label} from a sweep file's text (JSON or CSV).

    Tolerant: keys in any case, common aliases, numbers as strings, fractions or percents,
    JSON as a list or under 'records'/'results'. Rows without GMACs or without both metrics
    are skipped and counted. Bounded: InputError past MAX_SWEEP_DEPTH levels of nesting,
    MAX_SWEEP_RECORDS rows or MAX_SWEEP_METHODS distinct methods, or when nothing usable is
    found. `method` and `label` are plain one-line text.
    """
    name = plain_text(name)
    text = text.lstrip("\ufeff").strip()
    if not text:
        raise InputError(f"{name} is empty.")
    rows = _json_rows(text, name) if text[0] in "[{" else _csv_rows(text, name)
    if len(rows) > MAX_SWEEP_RECORDS:
        raise InputError(f"{name} has more than {MAX_SWEEP_RECORDS:,} records; the chart takes at most "
                         f"{MAX_SWEEP_RECORDS:,}. Split the sweep or keep the settings you want to compare.")
    records = [r for r in map(_record, rows) if r is not None]
    skipped = len(rows) - len(records)
    methods = {r["method"] for r in records}
    if len(methods) > MAX_SWEEP_METHODS:
        raise InputError(f"{name} has {len(methods):,} different method names; the chart draws one series "
                         f"per method and takes at most {MAX_SWEEP_METHODS}.")
    for field in ("top1", "agreement"):
        for record, value in zip(records, _as_percent([r[field] for r in records])):
            record[field] = value
    if not records:
        raise InputError(
            f"{name} has no usable records: each needs a 'gmacs' value and a 'top1' or 'agreement' "
            f"value ({skipped} row(s) skipped).")
    message = f"Loaded {len(records)} record(s) from {name}"
    return records, message + (f"; skipped {skipped} without gmacs and top1/agreement." if skipped else ".")


def load_sweep(path: Union[str, Path]) -> tuple[list[dict], str]:
    """`parse_sweep` on a file (JSON or CSV, as written by `python -m gtp sweep`), refused
    unread when larger than MAX_SWEEP_BYTES."""
    path = Path(path)
    name = plain_text(path.name)
    try:
        size = path.stat().st_size
        if size > MAX_SWEEP_BYTES:
            raise InputError(f"{name} is {size / 2**20:.1f} MB; a sweep file may be at most "
                             f"{MAX_SWEEP_BYTES // 2**20} MB.")
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {name}: {e.strerror or type(e).__name__}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{name} is not a text (UTF-8) file; expected JSON or CSV.") from None
    return parse_sweep(text, name)
