"""What the app ships: the example photos and the paper's published numbers (read-only files
under `assets/`)."""
from __future__ import annotations

from pathlib import Path

from gtp import facts

ASSETS = Path(__file__).resolve().parents[2] / "assets"
EXAMPLE_PHOTOS = [ASSETS / name for name in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")]
PUBLISHED_FILE = facts.PUBLISHED_FILE


def example_paths() -> list[str]:
    """The example photos that exist (all four in a normal checkout)."""
    return [str(p) for p in EXAMPLE_PHOTOS if p.is_file()]


published_results = facts.published_results
"""The paper's numbers as published (see assets/CREDITS.md); never measured here. The library reads
the file (`gtp.facts`), so the app's chart and `python -m gtp figure` draw the same numbers."""
