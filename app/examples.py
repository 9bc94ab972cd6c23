"""Files the app ships or reads: example photos, the paper's published numbers, sweep results."""
from __future__ import annotations

import csv
import io
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXAMPLE_PHOTOS = [ASSETS / name for name in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")]
PUBLISHED_FILE = ASSETS / "published_results.json"


def example_paths() -> list[str]:
    """The example photos that exist (all four in a normal checkout)."""
    return [str(p) for p in EXAMPLE_PHOTOS if p.is_file()]


@lru_cache(maxsize=1)
def published_results() -> dict:
    """The paper's numbers as published (see assets/CREDITS.md); never measured here."""
    with open(PUBLISHED_FILE, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- sweep files

# Column names other tools use for the same quantity.
_ALIASES = {
    "gmacs": ("gmacs", "gmac", "macs_g", "gflops_macs"),
    "top1": ("top1", "top_1", "top1_acc", "acc1", "accuracy", "acc", "top-1"),
    "agreement": ("agreement", "agree", "top1_agreement", "agreement_top1"),
}
_LABEL_KEYS = ("model", "num_prop", "sparsity", "alpha", "method", "label")


def _number(value: Any) -> float | None:
    """A finite float from numbers or numeric strings ('81.5', '81.5%'); None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        value = value.strip().rstrip("%").strip()
        if not value:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _records(data: Any) -> list[dict]:
    """The list of records inside whatever JSON shape a sweep was saved in."""
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    if isinstance(data, dict):
        for key in ("records", "results", "rows", "sweep", "data"):
            if isinstance(data.get(key), list):
                return _records(data[key])
        return [data]
    return []


def _as_percent(values: list[float | None]) -> list[float | None]:
    """A column given as fractions (every value within 0..1) becomes percentages."""
    present = [v for v in values if v is not None]
    if present and all(0 <= v <= 1 for v in present):
        return [None if v is None else v * 100 for v in values]
    return values


def parse_sweep(text: str, name: str = "sweep") -> tuple[list[dict], str]:
    """Records {gmacs, top1, agreement, label} from a sweep file's text (JSON or CSV).

    Tolerant: keys in any case, common aliases, numbers as strings, fractions or percents,
    JSON as a list or under 'records'/'results'. Rows without GMACs or without both metrics
    are skipped and counted. Raises ValueError when nothing usable is found.
    """
    text = text.lstrip("\ufeff").strip()
    if not text:
        raise ValueError(f"{name} is empty.")
    if text[0] in "[{":
        try:
            rows = _records(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} looks like JSON but does not parse: {e}") from None
    else:
        try:
            rows = list(csv.DictReader(io.StringIO(text)))
        except csv.Error as e:
            raise ValueError(f"{name} is neither JSON nor CSV: {e}") from None
    records, skipped = [], 0
    for row in rows:
        lowered = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        values = {}
        for field, aliases in _ALIASES.items():
            values[field] = next((_number(lowered[a]) for a in aliases if _number(lowered.get(a)) is not None), None)
        if values["gmacs"] is None or (values["top1"] is None and values["agreement"] is None):
            skipped += 1
            continue
        label = ", ".join(f"{k}={lowered[k]}" for k in _LABEL_KEYS if lowered.get(k) not in (None, ""))
        method = str(lowered.get("method") or "").strip() or "sweep"
        records.append({"gmacs": values["gmacs"], "top1": values["top1"], "agreement": values["agreement"],
                        "method": method, "label": label})
    for field in ("top1", "agreement"):
        for record, value in zip(records, _as_percent([r[field] for r in records])):
            record[field] = value
    if not records:
        raise ValueError(
            f"{name} has no usable records: each needs a 'gmacs' value and a 'top1' or 'agreement' "
            f"value ({skipped} row(s) skipped).")
    message = f"Loaded {len(records)} record(s) from {name}"
    return records, message + (f"; skipped {skipped} without gmacs and top1/agreement." if skipped else ".")


def load_sweep(path: Union[str, Path]) -> tuple[list[dict], str]:
    """`parse_sweep` on a file (JSON or CSV, as written by `python -m gtp sweep`)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {path.name}: {e}") from None
    if len(raw) > 20 * 2**20:
        raise ValueError(f"{path.name} is larger than 20 MB; that is not a sweep file.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path.name} is not a text (UTF-8) file; expected JSON or CSV.") from None
    return parse_sweep(text, path.name)
