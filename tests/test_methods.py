"""gtp/methods.py: one description per token-reduction method, read everywhere: a method added to
the registry appears in the CLI, the measurements' records, the app's Compare tab and GMACs, and
its `compare` API endpoint."""
from __future__ import annotations

import pytest
import torch

from gtp import cli, methods
from gtp.methods import BlockRecord, How, Method
from gtp.patch import patch as gtp_patch

from conftest import ROOT, random_model

CAT = str(ROOT / "assets" / "chelsea.png")
RANDOM = dict(selection="random", propagation="none", sparsity=1.0, token_scale=False)


@pytest.fixture
def registered(monkeypatch):
    """A new method, "random_drop" (P random tokens dropped per block), in the registry for one test."""
    new = Method("random_drop", "Random test drop", "drops P random tokens per block", How("dropped at random"),
                 patch=lambda model, amount, record, **options: gtp_patch(model, num_prop=amount, **RANDOM),
                 settings=lambda amount, **options: {"num_prop": amount, **RANDOM},
                 recorder=methods.METHODS["pruning"].recorder)
    monkeypatch.setitem(methods.METHODS, "random_drop", new)
    yield new
    from app.core import inference
    from app.views import base
    inference.forget_runs()   # explorations compared with it
    base.FIGURES.clear()


def test_every_method_applies_records_and_describes_itself():
    model = random_model("deit_tiny_patch16_224")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        ref = model(x)
        for m in methods.METHODS.values():
            assert m.apply(model, 4)(x).shape == ref.shape
            described = m.describe(4)
            assert list(described)[0] == "num_prop" and set(described) == {"num_prop", *methods.GTP_OPTIONS}
            if m.recorder is None or m.how.verb == "kept":   # downsample: no token leaves
                continue
            out, blocks = m.run_recorded(model, lambda mod: mod(x), 4)
            added = 12 if m.name == "evit" else 0          # EViT adds one average token per block
            assert [len(b.removed) for b in blocks] == [4] * 12 and blocks[-1].tokens_left == 197 - 48 + added, m.name
            assert all(isinstance(b, BlockRecord) for b in blocks) and (blocks[0].into is not None) == (m.name in ("tome", "pitome"))
        methods.reset(model)
        assert torch.equal(model(x), ref)
    assert methods.describe("gtp", 8, propagation="none")["alpha"] is None
    assert methods.get("tome").cost_key(8) == methods.get("tome").cost_key(8, sparsity=0.3)   # ToMe ignores theta
    assert methods.get("gtp").cost_key(8) != methods.get("gtp").cost_key(8, sparsity=0.3)
    with pytest.raises(ValueError, match="method must be one of"):
        methods.get("nope")


def test_a_registered_method_appears_in_the_cli(registered, capsys):
    parser = cli.build_parser(with_bench=True)
    assert parser.parse_args(["eval", "--model", "deit_tiny_patch16_224", "--data", ".",
                              "--method", "random_drop"]).method == "random_drop"
    assert "random_drop" in parser.parse_args(["sweep", "--data", ".", "--out", "x.json",
                                               "--methods", "gtp", "random_drop"]).methods
    assert "random_drop" in parser.parse_args(["bench", "--methods", "full", "random_drop"]).methods
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["eval", "--help"])
    assert "random_drop: drops P random tokens per block" in " ".join(capsys.readouterr().out.split())


def test_a_registered_method_appears_in_the_compare_tab_and_the_api(registered):
    from app.core import costs, inference
    from app.core.photos import open_photo
    from app.core.settings import make_settings
    from app.ui import api, handlers as H
    from conftest import figure_of
    first = next(iter(H.run(CAT, make_settings("deit_tiny_patch16_224", num_prop=3))))
    panels = list(H.open_tab("compare", first["state"], first["shown"]))
    exp = panels[0]["state"]
    mine = exp.comparison.method("random_drop")
    assert [len(ids) for ids in mine.removed] == [3] * 12 and mine.label == "Random test drop"
    assert [t["meta"]["method"] for t in figure_of(panels[0]["compare_plot"])["data"]][-1] == "random_drop"
    n = len(methods.compared()) - 1                                   # all remove tokens but downsample
    assert "| Random test drop |" in panels[-1]["compare_md"]
    assert f"GMACs of the {H.text._COUNT[n]} methods that remove tokens differ" in panels[-1]["compare_md"]
    assert costs.costs(exp, costs.all_methods()).of("random_drop") == pytest.approx(
        costs.costs(exp, costs.all_methods()).of("pruning"), rel=0.02)          # same tokens left, same cost
    answer = api.compare(CAT, model="deit_tiny_patch16_224", num_prop=3)
    assert list(answer["methods"]) == [m.name for m in methods.compared()] and list(answer["methods"])[-1] == "random_drop"
    assert answer["methods"]["random_drop"]["label"] == "Random test drop" and answer["methods"]["random_drop"]["gmacs"] > 0
    assert inference.explore_photo(open_photo(CAT), make_settings("deit_tiny_patch16_224", num_prop=3)) is not None
