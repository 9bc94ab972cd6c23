"""The trade-off chart's measured curves (app/core/curves.py): the fidelity bench of the chosen model
and weights on the bundled photos, measured once on demand, kept on disk within its bound, drawn
beside the published curves and labelled "measured on N photos"."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.core import curves, limits  # noqa: E402
from app.core.settings import make_settings  # noqa: E402
from app.views import tradeoff  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def measured():
    settings = make_settings("deit_tiny_patch16_224", num_prop=6)
    curves._file(settings).unlink(missing_ok=True)
    return settings, curves.curves(settings)


def test_curves_are_measured_once_and_then_read_from_disk(measured, monkeypatch):
    settings, record = measured
    rows = record["rows"]
    assert record["views"] == limits.CURVE_VIEWS and record["photos"] >= 4 and record["has_head"]
    assert {(r["method"], r["num_prop"]) for r in rows if r["method"] != "full"} == {
        (m, p) for m in limits.CURVE_METHODS for p in limits.CURVE_NUM_PROP}
    for p in limits.CURVE_NUM_PROP:           # matched GMACs at each P (downsample: the nearest grid)
        at_p = {r["method"]: r["gmacs"] for r in rows if r["num_prop"] == p}
        assert max(at_p.values()) / min(at_p.values()) < 1.12, (p, at_p)
    monkeypatch.setattr(curves, "measure_curves", lambda job: pytest.fail("measured again"))
    assert curves.curves(settings) == record and curves._file(settings).is_file()


def test_the_chart_draws_the_measured_curves_labelled_with_the_photo_count(measured):
    _, record = measured
    fig = tradeoff.tradeoff_figure({}, "deit_tiny_patch16_224", curves=record)
    drawn = [t for t in fig["data"] if (t.get("meta") or {}).get("role") == "curve"]
    assert len(drawn) == len(limits.CURVE_METHODS)
    assert all(t["name"].endswith(f"(measured on {record['photos']} photos)") and t["yaxis"] == "y2" for t in drawn)
    gtp = next(t for t in drawn if t["name"].startswith("GTP"))
    rows = sorted((r for r in record["rows"] if r["method"] == "gtp"), key=lambda r: r["gmacs"])
    assert gtp["x"] == [r["gmacs"] for r in rows] and gtp["y"] == [100 * r["agreement"] for r in rows]
    assert "agreement" in fig["layout"]["yaxis2"]["title"]["text"]
    headless = dict(record, has_head=False)
    fig = tradeoff.tradeoff_figure({}, "deit_tiny_patch16_224", curves=headless)
    assert fig["layout"]["yaxis2"]["title"]["text"] == "feature cosine to the full model"


def test_the_disk_keeps_only_the_newest_curve_files(tmp_path, monkeypatch):
    monkeypatch.setattr(curves, "CURVE_DIR", tmp_path)
    monkeypatch.setattr(curves, "_kept", __import__("collections").deque())
    monkeypatch.setattr(limits, "CURVE_FILES_KEPT", 2)
    for i in range(4):
        model = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224", "vit_small_patch14_dinov2"][i]
        curves._save(make_settings(model), {"rows": [], "i": i})
    assert len(list(tmp_path.iterdir())) == 2
    assert curves.load(make_settings("vit_small_patch14_dinov2"))["i"] == 3
