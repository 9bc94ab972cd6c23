"""Photos, examples, published numbers and sweep files (app/photos.py, app/examples.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from app.core.assets import EXAMPLE_PHOTOS, published_results
from app.core.photos import PhotoError, open_photo

ROOT = Path(__file__).resolve().parent.parent
CAT = str(ROOT / "assets" / "chelsea.png")


def test_open_photo_rejects_and_converts(files):
    with pytest.raises(PhotoError, match="too large"):
        open_photo(files["bomb"])
    with pytest.raises(PhotoError, match="No photo"):
        open_photo(None)
    photo = open_photo(files["cmyk"])
    assert photo.image.mode == "RGB" and photo.original_mode == "CMYK"


def test_examples_exist_and_are_credited():
    credits = (ROOT / "assets" / "CREDITS.md").read_text()
    for path in EXAMPLE_PHOTOS:
        assert path.is_file()
        assert path.name in credits
        assert open_photo(path).image.mode == "RGB"


def test_published_results_match_the_paper():
    pub = published_results()
    assert "arXiv:2311.03035" in pub["citation"] and pub["status"] == "published"
    table = {(r["method"], r["gmacs"]): r["top1"] for r in pub["tradeoff_deit_base"]}
    assert table[("GTP", 13.1)] == 81.5 and table[("ToMe", 8.8)] == 77.8
    assert table[("EViT", 9.8)] == 78.7 and table[("ATS", 15.3)] == 81.8
    best = {r["num_prop"]: r for r in pub["best_deit_base_by_num_prop"]}
    assert best[8]["top1"] == 81.46 and best[8]["sparsity"] == 0.6 and len(best) == 14
    csv_text = (ROOT / "assets" / "published_results.csv").read_text()
    assert csv_text.count("published") >= 30 and "arXiv:2311.03035" in csv_text
