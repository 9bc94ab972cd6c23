"""A backbone's own page (a model without classes, e.g. DINOv2): its Prediction tab shows the
feature cosine of GTP to the full model and the PCA maps of both models' final patch features,
the trade-off chart plots what exists for it (no ImageNet top-1 axis, nothing "published"),
and the random-weights banner speaks of features, not classes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import CHROMIUM, DINOV2_FILE, figure_of

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.core.assets import published_results  # noqa: E402
from app.core.models import weights_banner  # noqa: E402
from app.views import backbone, tradeoff  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DINO = "vit_small_patch14_dinov2"
MODEL_TIMEOUT_MS = 300_000   # a cold DINOv2 load plus a run and its GMACs on a busy 2-core machine


def _texts(fig: dict) -> str:
    """Every text the chart draws: titles, annotations, legend entries."""
    layout = fig["layout"]
    parts = [str(layout.get(a, {}).get("title", {}).get("text", "")) for a in ("xaxis", "yaxis", "yaxis2")]
    parts += [a.get("text", "") for a in layout.get("annotations", [])]
    parts += [t.get("name", "") for t in fig["data"]]
    return "\n".join(parts)


def test_backbone_tradeoff_names_what_it_plots():
    published = published_results()
    current = {"full": 6.12, "gtp": 4.93, "cosine": 0.9749}
    fig = tradeoff.tradeoff_figure(published, DINO, current, has_head=False)
    texts = _texts(fig)
    assert fig["layout"]["yaxis"]["title"]["text"] == "feature cosine to the full model"
    assert "top-1" not in texts and "published" not in texts and "DINOv2 ViT-S/14: measured now" in texts
    assert not any((t.get("meta") or {}).get("role") == "published" for t in fig["data"])
    points = {t["name"]: (t["x"], t["y"]) for t in fig["data"] if (t.get("meta") or {}).get("role") == "measured-cosine"}
    assert points == {"full model on this photo: cosine 1.0000 (measured)": ([6.12], [1.0]),
                      "GTP on this photo: cosine 0.9749 (measured)": ([4.93], [0.9749])}
    # A classifier keeps its published top-1 curves and axis.
    deit = tradeoff.tradeoff_figure(published, "deit_small_patch16_224", {"full": 4.6, "gtp": 3.4})
    assert deit["layout"]["yaxis"]["title"]["text"] == "ImageNet top-1 (%)" and "(published, Xu et al. 2024)" in _texts(deit)


def test_random_weights_banner_is_worded_per_model():
    classifier = weights_banner("deit_small_patch16_224", False, "random")
    headless = weights_banner(DINO, False, "random", has_head=False)
    assert "the classes below are meaningless" in classifier and "Predictions come from" in classifier
    assert "classes" not in headless and "Features come from randomly initialised weights" in headless
    assert "random network, not the photo" in headless


def test_pca_maps_share_one_basis_and_grey_the_propagated():
    rng = np.random.default_rng(0)
    grid = (4, 4)
    # Two groups of patches (left half, right half) with different features, plus noise.
    centre = np.where((np.arange(16) % 4 < 2)[:, None], 1.0, -1.0) * rng.normal(size=(1, 32))
    full = centre + 0.05 * rng.normal(size=(16, 32))
    ids = np.array([0, 3, 5, 10, 15])             # the patches GTP kept, in its token order
    full_map, gtp_map = backbone.pca_maps(full, full[ids], ids, grid)
    assert full_map.shape == gtp_map.shape == (4, 4, 3) and full_map.dtype == np.uint8
    flat_full, flat_gtp = full_map.reshape(16, 3), gtp_map.reshape(16, 3)
    assert (flat_gtp[ids] == flat_full[ids]).all()   # same features, same colour: one basis
    gone = np.setdiff1d(np.arange(16), ids)
    assert (flat_gtp[gone] == backbone.REMOVED_RGB).all()
    left, right = flat_full[np.arange(16) % 4 < 2, 0].astype(int), flat_full[np.arange(16) % 4 >= 2, 0].astype(int)
    assert abs(left.mean() - right.mean()) > 150     # the first component tells the two groups apart


@pytest.mark.skipif(not DINOV2_FILE.exists(), reason="real DINOv2 weights not present")
def test_backbone_prediction_panels_from_a_real_run():
    from app.core import inference
    from app.core.photos import open_photo
    from app.core.settings import make_settings
    from app.ui import handlers as H
    exp = inference.explore_photo(open_photo(str(ROOT / "assets" / "chelsea.png")), make_settings(DINO))
    assert exp.pretrained and not exp.has_head
    kept = exp.trace.layers[-1].kept[0]
    assert exp.run.full.patches.shape == (256, 384) and exp.run.gtp.patches.shape == (len(kept), 384)
    panels = list(H.tab_panels("prediction", exp, H.View()))[-1]
    assert panels["full_label"].visible is False and panels["backbone_plot"].visible is True
    assert f"{exp.run.feature_cosine:.4f}" in panels["backbone_md"].value
    value = panels["backbone_plot"].value   # the gr.Plot update's value: the view's serialised figure
    fig = json.loads(value["plot"] if isinstance(value, dict) else value.plot)
    images = [t for t in fig["data"] if t["type"] == "image"]
    assert len(images) == 2 and np.asarray(images[0]["z"]).shape == (16, 16, 3)
    grey = np.all(np.asarray(images[1]["z"]).reshape(256, 3) == backbone.REMOVED_RGB, axis=1)
    assert grey.sum() == 256 - len(kept)
    chart = figure_of(panels["tradeoff_plot"])
    assert "top-1" not in _texts(chart) and "published" not in _texts(chart)


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM) or not DINOV2_FILE.exists(),
                    reason=f"needs {CHROMIUM} and the real DINOv2 weights")
@pytest.mark.parametrize("width, height", [(1440, 900), (390, 844)])
def test_backbone_page_in_the_browser(browser, url, width, height):
    """The Prediction tab of DINOv2 (opened by link): no blank half, the backbone's own result,
    a chart with no top-1 axis and no 'published' caption; on a desktop and on a phone."""
    from conftest import ARTIFACTS
    page = browser.new_page(viewport={"width": width, "height": height})
    try:
        page.goto(url + f"?model={DINO}", wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_function(
            "() => { const m = document.querySelector('#gtp-backbone-md');"
            " return m && m.innerText.includes('Cosine similarity of the final features'); }", timeout=MODEL_TIMEOUT_MS)
        page.wait_for_function(
            "() => { const gd = document.querySelector('#gtp-backbone .js-plotly-plot');"
            " return gd && gd.data && gd.data.filter(t => t.type === 'image').length === 2; }", timeout=60_000)
        page.wait_for_function(
            "() => { const gd = document.querySelector('#gtp-tradeoff .js-plotly-plot');"
            " return gd && gd.data && gd.data.some(t => t.meta && t.meta.role === 'measured-cosine'); }",
            timeout=MODEL_TIMEOUT_MS)
        assert not page.locator("#gtp-full").is_visible() and not page.locator("#gtp-gtp").is_visible()
        maps = page.locator("#gtp-backbone .js-plotly-plot .imagelayer image, #gtp-backbone .js-plotly-plot image")
        assert maps.count() >= 2
        for i in range(2):
            box = maps.nth(i).bounding_box()
            assert box["width"] > 80 and box["height"] > 80, box   # both maps drawn, not a blank panel
        for panel in ("#gtp-backbone", "#gtp-backbone-md", "#gtp-tradeoff"):   # nothing wider than the screen
            box = page.locator(panel).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, (panel, box)
        chart = page.locator("#gtp-tradeoff .js-plotly-plot").inner_text()
        drawn = page.evaluate("() => Array.from(document.querySelectorAll('#gtp-tradeoff svg text'))"
                              ".map(t => t.textContent).join('\\n')")
        assert "feature cosine to the full model" in drawn, drawn
        assert "top-1" not in drawn and "published" not in drawn, drawn
        assert "top-1" not in chart
        page.screenshot(path=str(ARTIFACTS / f"browser_backbone_{width}.png"), full_page=True)
    finally:
        page.close()
