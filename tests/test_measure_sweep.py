"""`python -m gtp sweep` (gtp.measure.sweep): the plan, the documented record format, resuming."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from gtp import cli
from gtp.methods import METHODS, apply_method, describe, method_fn
from gtp.measure import sweep
from gtp.measure.data import scan_folder
from gtp.measure.evaluate import Evaluator

from conftest import ROOT, random_model

PHOTOS = [ROOT / "assets" / n for n in ("chelsea.png", "rocket.jpg")]
RECORD_KEYS = {"model", "weights", "data", "limit", "images", "labelled", "method", "num_prop", "sparsity",
               "alpha", "graph", "num_neighbours", "selection", "propagation", "token_scale", "gmacs",
               "full_gmacs", "top1", "top5", "full_top1", "full_top5", "agreement", "kl", "cosine",
               "cosine_min", "timing"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data(tmp_path):
    if not all(p.exists() for p in PHOTOS):
        pytest.skip("real photos missing from assets/")
    d = tmp_path / "data" / "n02123045"  # tabby
    d.mkdir(parents=True)
    for p in PHOTOS:
        shutil.copy(p, d / p.name)
    return tmp_path / "data"


def test_plan_grid_random_and_dedup():
    grid = sweep.plan(["gtp", "tome"], num_prop=[4, 8], sparsity=[0.6, 1.0], alpha=[0.1], num_neighbours=[8])
    assert grid[0] == ("full", 0, {})
    assert sum(m == "gtp" for m, _, _ in grid) == 4
    assert sum(m == "tome" for m, _, _ in grid) == 2   # theta does not apply to ToMe
    rnd = sweep.plan(["gtp"], num_prop=[2, 4, 8, 16], sparsity=[0.5, 0.7, 0.9], search="random", trials=5, seed=3)
    assert len(rnd) == 6 and rnd == sweep.plan(["gtp"], num_prop=[2, 4, 8, 16], sparsity=[0.5, 0.7, 0.9],
                                               search="random", trials=5, seed=3)
    with pytest.raises(ValueError):
        sweep.plan(["gtp"], search="random")
    with pytest.raises(ValueError):
        sweep.plan(["nope"])


def test_methods_table():
    assert list(METHODS) == ["full", "gtp", "gtp_dense", "tome", "pruning", "evit", "random", "downsample", "pitome"]
    model = random_model("deit_tiny_patch16_224")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        ref = model(x)
        for name in METHODS:
            apply_method(model, name, 4)
            assert model(x).shape == ref.shape
        method_fn("full")(model)
        assert torch.equal(model(x), ref)
    assert describe("pruning", 8)["propagation"] == "none" and describe("evit", 8)["propagation"] == "mean"
    assert describe("gtp", 8, propagation="none")["alpha"] is None


def test_sweep_writes_the_format_and_resumes(data, tmp_path):
    from gtp.models import load_model
    loaded = load_model("deit_tiny_patch16_224", device="cpu")
    images = scan_folder(data)
    meta = dict(model="deit_tiny_patch16_224", weights=loaded.source, data=str(data.resolve()))
    out = tmp_path / "sweep.json"

    def evaluator():
        return Evaluator(loaded.model, images, loaded.transform, True, 224, batch_size=2, progress=False, meta=meta)

    first = sweep.plan(["gtp", "tome"], num_prop=[4], sparsity=[1.0], alpha=[0.1], num_neighbours=[8])
    records, computed = sweep.run_sweep(evaluator(), first, out)
    assert computed == 3 and len(records) == 3
    saved = json.loads(out.read_text())
    assert saved == records and out.with_suffix(".csv").exists()
    for r in saved:
        assert set(r) == RECORD_KEYS
        assert r["images"] == 2 and r["labelled"] and r["model"] == "deit_tiny_patch16_224"
    full, g, t = saved
    assert full["method"] == "full" and full["cosine"] == 1.0 and full["gmacs"] == full["full_gmacs"]
    assert g["method"] == "gtp" and g["num_prop"] == 4 and g["sparsity"] == 1.0 and g["alpha"] == 0.1
    assert g["num_neighbours"] == 8 and g["gmacs"] < g["full_gmacs"]
    assert t["method"] == "tome" and t["sparsity"] is None and abs(t["gmacs"] - g["gmacs"]) / g["gmacs"] < 0.01

    # The same sweep again computes nothing and leaves the file as it was.
    before = out.read_text()
    _, computed = sweep.run_sweep(evaluator(), first, out)
    assert computed == 0 and out.read_text() == before
    # A larger sweep computes only what is new.
    more = sweep.plan(["gtp", "tome"], num_prop=[4], sparsity=[1.0, 0.8], alpha=[0.1], num_neighbours=[8])
    records, computed = sweep.run_sweep(evaluator(), more, out)
    assert computed == 1 and len(records) == 4 and records[-1]["sparsity"] == 0.8


def test_sweep_cli(data, tmp_path, capsys):
    def args(out):
        return ["sweep", "--model", "deit_tiny_patch16_224", "--data", str(data), "--out", str(out),
                "--methods", "pruning", "--num-prop", "16", "--batch-size", "2", "--no-progress"]

    out = tmp_path / "cli.json"
    assert cli.main(args(out)) == 0
    recs = json.loads(out.read_text())
    assert [r["method"] for r in recs] == ["full", "pruning"]
    assert cli.main(args(out)) == 0
    assert "0 computed" in capsys.readouterr().err
    assert cli.main(args(tmp_path / "x.txt")) == 2          # not a .json file
    (tmp_path / "bad.json").write_text("{not json")
    assert cli.main(args(tmp_path / "bad.json")) == 2        # not a result file: refused, kept
    assert (tmp_path / "bad.json").read_text() == "{not json"


def test_sweep_plot_draws_each_methods_records(data, tmp_path):
    """`sweep --plot` on a tiny folder: a line per method at the records' GMACs and top-1, the full
    model a star; the SVG keeps its labels as text."""
    import xml.etree.ElementTree as ET
    from gtp.figures import style as S
    from gtp.figures.results import sweep_figure
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.svg"
    assert cli.main(["sweep", "--model", "deit_tiny_patch16_224", "--data", str(data), "--num-prop", "4", "8",
                     "--sparsity", "1", "--methods", "gtp", "--batch-size", "2", "--no-progress",
                     "--out", str(out), "--plot", str(plot)]) == 0
    records = json.loads(out.read_text())
    texts = {"".join(t.itertext()) for t in ET.parse(plot).getroot().iter("{http://www.w3.org/2000/svg}text")}
    assert {"GTP", "Full model", "top-1 accuracy (%)", "GMACs per image (measured)"} <= texts
    with S.using(S.get("paper")):
        lines = {line.get_label(): line for line in sweep_figure(records).axes[0].get_lines()}
    gtp_records = sorted((r for r in records if r["method"] == "gtp"), key=lambda r: r["gmacs"])
    assert list(lines["GTP"].get_xdata()) == [r["gmacs"] for r in gtp_records] and len(gtp_records) == 2
    assert list(lines["GTP"].get_ydata()) == [r["top1"] for r in gtp_records]
    assert lines["Full model"].get_marker() == "*"
    assert cli.main(["sweep", "--model", "deit_tiny_patch16_224", "--data", str(data), "--out", str(out),
                     "--plot", str(tmp_path / "sweep.gif")]) == 2    # refused before any model runs
