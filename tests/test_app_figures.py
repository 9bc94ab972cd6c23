"""The app's views (app/views): plotly figures of a finished run, cached as JSON; a builder's
bug is never shown or cached as a message; the photo is one served file; the GIF frames."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402

from app.core import files, limits  # noqa: E402
from app.core.assets import published_results  # noqa: E402
from app.core.inference import explore_photo  # noqa: E402
from app.core.photos import open_photo  # noqa: E402
from app.core.settings import make_settings  # noqa: E402
from app.ui import events, handlers as H  # noqa: E402
from app.views import attention as A, base as V, gif as C, graphs as G, tradeoff as T, walk as W  # noqa: E402

from test_plots import render  # noqa: E402
from conftest import figure_of  # noqa: E402

CAT = str(Path(__file__).resolve().parent.parent / "assets" / "chelsea.png")


def array(value) -> np.ndarray:
    """A data array of figure JSON as numpy (plotly sends numpy arrays as base64 binary)."""
    if isinstance(value, dict) and "bdata" in value:
        shape = [int(s) for s in str(value.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).reshape(shape)
    return np.asarray(value, dtype=float)


@pytest.fixture(scope="module")
def exp():
    return explore_photo(open_photo(CAT), make_settings("deit_tiny_patch16_224"))


def test_attention_after_sparsification_has_zeros(exp):
    stats = A.attention_stats(exp, 0, 0)
    assert stats["zeroed_fraction"] == pytest.approx(0.4, abs=0.01)  # theta = 0.6
    assert 0 < stats["mass_removed"] < 1
    (after,) = figure_of(A.attention(exp, 0, 0))["data"]
    signed = array(after["z"])                      # a zeroed entry is minus its value before
    assert signed.shape == (197, 197) and (signed == 0).sum() == 0
    assert (signed < 0).mean() == pytest.approx(stats["zeroed_fraction"], abs=0.01)


def test_graph_hover_lists_each_tokens_neighbours(exp):
    """Hovering a token of the graph view tells its neighbours (it replaces clicking a patch)."""
    fig = figure_of(G.graph(exp, "spatial + semantic"))
    tokens = next(t for t in fig["data"] if (t.get("meta") or {}).get("role") == "tokens")
    near = G.neighbours_of(exp, "spatial + semantic", 17)
    assert sorted(near["spatial"]) == [2, 3, 4, 16, 18, 30, 31, 32] and len(near["semantic"]) == 8
    tokens = next(t for t in fig["data"] if (t.get("meta") or {}).get("role") == "tokens"
                  and 17 in array(t["customdata"])[:, 0])
    rows = array(tokens["customdata"])
    hover = render(tokens["hovertemplate"], rows[list(rows[:, 0]).index(17)].tolist())
    assert "patch 17.0 (row 1.0, col 3.0)" in hover           # (plotly.js prints 17, 1, 3)
    assert all(f"· patch {float(j)}: " in hover for j in near["spatial"] + near["semantic"])
    sim = figure_of(G.similarity(exp, 17))["data"][0]
    assert np.allclose(array(sim["z"]).ravel(), exp.trace.similarity[0, 17].float().numpy(), atol=1e-6)
    assert "cosine similarity to patch 17" in sim["hovertemplate"]


def test_missing_data_is_a_figure_that_says_why(exp, monkeypatch):
    def no_maps(*a, **k):
        raise V.Unavailable("attention maps were not recorded")
    monkeypatch.setattr(A, "attention_figure", no_maps)
    V.FIGURES.clear()
    fig = figure_of(A.attention(exp, 5, 1))
    assert fig["layout"]["meta"]["message"] == "attention maps were not recorded"
    V.FIGURES.clear()


def test_a_bug_in_a_figure_builder_is_a_bug_never_a_message_and_never_cached(exp, monkeypatch, caplog):
    """numpy's shape errors are ValueErrors: one in a builder must not look like the person's
    mistake, nor stay in the cache as if it were the figure."""
    def broken(*a, **k):
        return np.zeros(3).reshape(2, 2)       # ValueError: cannot reshape array of size 3
    monkeypatch.setattr(G, "graph_figure", broken)
    V.FIGURES.clear()
    event = events.at_the_edge(H.draw_graph)
    with pytest.raises(gr.Error) as err:
        event(exp, "spatial", 3)
    assert "bug" in err.value.message and "reshape" not in err.value.message and err.value.title == "Something went wrong"
    assert "reshape" in caplog.text                                  # logged with its traceback for whoever runs it
    assert not any(key[1:3] == ("plotly", "graph") for key in _keys())  # nothing cached
    monkeypatch.undo()
    assert figure_of(G.graph(exp, "spatial"))["data"]              # the real builder draws it afterwards


def _keys() -> list:
    with V.FIGURES._lock:
        return list(V.FIGURES._data)


def test_input_errors_keep_their_message(exp):
    with pytest.raises(gr.Error) as err:
        events.at_the_edge(H.measure)(None, 1, None, None)
    assert err.value.title == "Cannot do that" and "Run a photo first" in err.value.message


def test_a_run_sends_its_photo_once_as_a_served_file(exp):
    """Every figure of a run names the same small file (served by the page), none carries a copy."""
    sources = {im["source"] for view in (W.walk(exp, 0), G.graph(exp, "spatial"), G.similarity(exp, 3),
                                         A.cls_attention(exp, 0, 0)) for im in figure_of(view)["layout"]["images"]}
    assert len(sources) == 1
    (source,) = sources
    path = Path(source.removeprefix(V.PHOTO_ROUTE))
    assert path.parent == files.PHOTO_DIR and path.is_file() and path.stat().st_size < 20_000
    from PIL import Image
    assert Image.open(path).size == exp.model_input.size


def test_figures_are_cached_per_run_and_never_change_the_run(exp):
    first = W.walk(exp, 2)
    assert W.walk(exp, 2).plot is first.plot and W.walk(exp, 3).plot is not first.plot
    assert (exp.key, "plotly", "walk", 2) in V.FIGURES
    frame = C.layer_frame(exp, 2)  # the GIF's frames: PIL, cached the same way
    assert C.layer_frame(exp, 2) is frame and (exp.key, "layer", 2) in V.FIGURES
    assert exp.model_input.size == (224, 224)  # drawing copies the base picture, never draws on it


def test_tradeoff_labels_are_text_and_series_are_bounded():
    names = [f"$\\frac{{{i}$" for i in range(40)]  # LaTeX for plotly.js (MathJax): must stay text
    sweep = [{"gmacs": 3 + i / 10, "top1": 70 + i / 10, "agreement": None, "method": m} for i, m in enumerate(names)]
    fig = figure_of(T.tradeoff(published_results(), "deit_small_patch16_224", None, sweep))
    series = [t for t in fig["data"] if (t.get("meta") or {}).get("role") == "sweep"]
    assert len(series) == limits.MAX_SWEEP_METHODS + 1
    assert any(f"{40 - limits.MAX_SWEEP_METHODS} other methods" in t["name"] for t in series)
    assert sum(len(t["x"]) for t in series) == 40
    assert all("$" not in t["name"] and "&#36;" in t["name"] for t in series if "other methods" not in t["name"])
