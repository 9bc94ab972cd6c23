"""Figures and charts (app/figures.py, app/charts.py, app/draw.py)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app import charts as C  # noqa: E402
from app import draw as D  # noqa: E402
from app import figures as F  # noqa: E402
from app.examples import published_results  # noqa: E402
from app.inference import explore_photo  # noqa: E402
from app.photos import open_photo  # noqa: E402
from app.settings import make_settings  # noqa: E402

CAT = str(Path(__file__).resolve().parent.parent / "assets" / "chelsea.png")


@pytest.fixture(scope="module")
def exp():
    return explore_photo(open_photo(CAT), make_settings("deit_tiny_patch16_224"))


def test_attention_after_sparsification_has_zeros(exp):
    before, after, stats = F.attention_figures(exp, 0, 0)
    assert stats["zeroed_fraction"] == pytest.approx(0.4, abs=0.01)  # theta = 0.6
    assert 0 < stats["mass_removed"] < 1
    dark_after = (np.asarray(after.convert("L")) == 0).mean()
    dark_before = (np.asarray(before.convert("L")) == 0).mean()
    assert dark_after > dark_before + 0.2


def test_click_picks_the_token_under_it(exp):
    cw, ch = D.cell_size(exp)
    assert D.token_at(exp, 0, 0) == 0
    assert D.token_at(exp, 3 * cw + 1, 2 * ch + 1) == 2 * 14 + 3
    assert D.token_at(exp, D.DISPLAY - 1, D.DISPLAY - 1) == 195


def test_figures_are_cached_per_run_and_never_change_the_run(exp):
    first = F.layer_frame(exp, 2)
    assert F.layer_frame(exp, 2) is first and F.layer_frame(exp, 3) is not first
    assert (exp.key, "layer", 2) in D.FIGURES
    assert exp.model_input.size == (224, 224)  # drawing copies the base picture, never draws on it


def test_tradeoff_labels_are_text_and_series_are_bounded():
    names = [f"$\\frac{{{i}$" for i in range(40)]  # would be a mathtext parse error
    sweep = [{"gmacs": 3 + i / 10, "top1": 70 + i / 10, "agreement": None, "method": m} for i, m in enumerate(names)]
    img = C.tradeoff_chart(published_results(), None, sweep)
    assert min(img.size) > 100
    series = C._series(sweep)
    assert len(series) == C.MAX_SWEEP_SERIES + 1 and series[-1][0] == f"{40 - C.MAX_SWEEP_SERIES} other methods"
    assert sum(len(pts) for _, pts in series) == 40
