"""Photos, examples, published numbers and sweep files (app/photos.py, app/examples.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from app import figures as F
from app.examples import EXAMPLE_PHOTOS, load_sweep, published_results
from app.photos import PhotoError, open_photo

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


def test_sweep_loader_reads_the_gtp_sweep_format(tmp_path):
    """Records as `python -m gtp sweep` documents them: percents, nulls, lists, nested timing."""
    common = dict(model="deit_small_patch16_224", weights="random", data="/data", limit=None, images=50,
                  labelled=False, top1=None, top5=None, full_top1=None, full_top5=None, kl=0.1, cosine=0.99,
                  cosine_min=0.9, full_gmacs=4.599, timing={"device": "cpu", "img_per_s": 10.0})
    records = [
        dict(common, method="full", num_prop=0, sparsity=None, alpha=None, gmacs=4.599, agreement=100.0),
        dict(common, method="gtp", num_prop=8, sparsity=0.6, alpha=0.1, gmacs=3.437, agreement=0.8),
        dict(common, method="tome", num_prop=[8] * 12, sparsity=None, alpha=None, gmacs=3.3, agreement=96.0),
    ]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(records))
    got, message = load_sweep(path)
    assert [r["method"] for r in got] == ["full", "gtp", "tome"]
    assert [r["agreement"] for r in got] == [100.0, 0.8, 96.0]  # percents stay percents
    assert all(r["top1"] is None for r in got) and "3 record" in message
    assert len(F.figure_of(F.tradeoff(published_results(), "deit_small_patch16_224", None, got))["data"]) > 3
