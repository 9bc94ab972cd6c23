"""What the app ships: the example photos and the paper's published numbers (read-only files
under `assets/`)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"
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
