"""The lesson (app/ui/lesson.py): every number its text quotes is checked here against the run's
trace, recomputed independently; each step shows a tab's figure of this run with the patch the
text names highlighted; a step change never runs a model."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.core import costs as K  # noqa: E402
from app.core import inference  # noqa: E402
from app.core.settings import make_settings  # noqa: E402
from app.ui import handlers as H  # noqa: E402
from app.ui import lesson as L  # noqa: E402
from app.views import walk as W  # noqa: E402
from app.views.base import RUN_TAG_CHARS  # noqa: E402
from conftest import DINOV2_FILE  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COFFEE = str(ROOT / "assets" / "coffee.png")
TINY = "deit_tiny_patch16_224"
HIGHLIGHTED = re.compile(r"Highlighted in green: patch (\d+) \(row (\d+), col (\d+)\)")


def explore(model: str = TINY, schedule: str = "", weights=None, **hp):
    return next(iter(H.run(COFFEE, make_settings(model, weights, schedule, **hp), H.View(), "lesson")))["state"]


def steps(exp) -> list[dict]:
    """Every step's panels, GMACs counted (the last update of each step)."""
    out = []
    for step in range(1, L.NUM_STEPS + 1):
        *_, last = H.lesson_panels(exp, step)
        out.append({**H.draw_lesson(exp, step), **last})
    return out


def figure(panels: dict) -> dict:
    return json.loads(panels["lesson_plot"].plot)


def highlighted(fig: dict) -> list[int]:
    return [t["meta"]["token"] for t in fig["data"] if (t.get("meta") or {}).get("role") == "highlight"]


@pytest.fixture(scope="module")
def run():
    exp = explore()
    return exp, steps(exp)


def test_the_lesson_follows_the_first_token_to_leave(run):
    exp, _ = run
    f = L.focus(exp)
    layer = next(layer for layer in exp.trace.layers if (layer.propagated[0] >= 0).any())
    index = int(torch.argmin(layer.score[0]))     # the lowest score (its first occurrence: the lower position)
    assert (f.block, f.index, f.token) == (layer.block, index, int(layer.candidates[0, index]))
    assert f.token in layer.propagated[0].tolist()
    k = exp.trace.num_prefix + index
    assert f.head == int(layer.attn_after[0, :, k, k].float().argmax())


def test_every_step_shows_this_run_with_the_named_patch_highlighted(run):
    exp, panels = run
    f = L.focus(exp)
    texts = [p["lesson_md"] for p in panels]
    assert len(set(texts)) == L.NUM_STEPS == len(L.TITLES) >= 7
    for step, p in enumerate(panels, 1):
        assert p["lesson_counter"] == f"**Step {step} of {L.NUM_STEPS}**"
        assert p["lesson_md"].startswith(f"### {step}. {L.TITLES[step - 1]}") and "$$" in p["lesson_md"]
        assert "Random weights here" in p["lesson_md"]          # deit_tiny has random weights here
        fig = figure(p)
        assert fig["data"] and "message" not in fig["layout"].get("meta", {}), step
        named = HIGHLIGHTED.search(p["lesson_md"])
        if step < L.NUM_STEPS:
            assert fig["layout"]["meta"]["run"] == exp.key[:RUN_TAG_CHARS]   # a figure of THIS run
            assert highlighted(fig) == [int(named.group(1))] == [f.token], step
            gw = exp.trace.grid_size[1]
            assert (int(named.group(2)), int(named.group(3))) == divmod(f.token, gw)
        else:   # the trade-off chart, with this setting's GMACs measured now
            g = K.costs(exp, ("gtp",), count=False).of("gtp")
            assert named is None and any(t.get("x") == [g] for t in fig["data"] if (t.get("meta") or {}).get("role") == "measured")


def test_the_texts_quote_the_trace(run):
    exp, panels = run
    trace, f = exp.trace, L.focus(exp)
    text = [p["lesson_md"] for p in panels]
    p0, (gh, gw), b = trace.num_prefix, trace.grid_size, f.block
    layer = trace.layers[b]
    # 1. tokens; the CLS token's attention in head 0 of block 1
    first = trace.layers[0]
    cls_row = first.attn_after[0, 0, 0, p0:].float()
    top = int(cls_row.argmax())
    assert f"{gh} × {gw} = {gh * gw} patches" in text[0] and f"{first.tokens_in} tokens enter block 1" in text[0]
    assert f"attends most to patch {int(first.candidates[0, top])} ({cls_row[top].item():.4g})" in text[0]
    # 2. the two factors and the score of the focus token
    R, B, score = (float(t[0, f.index]) for t in (layer.regeneration, layer.broadcasting, layer.score))
    assert score == pytest.approx(R * B, rel=1e-4)         # mixed_attn_max (SPEC.md section 3)
    assert f"Patch {f.token}: R = {R:.4g}, B = {B:.4g}" in text[1] and f"is {score:.4g}." in text[1]
    assert f"head {f.head} of block {b + 1}" in text[1]
    # 3. who left in that block, with their scores; how many in all
    for pid in layer.propagated[0].tolist():
        pos = layer.candidates[0].tolist().index(pid)
        assert f"{pid} ({float(layer.score[0, pos]):.4g})" in text[2]
    assert f"In all, {sum(len(x.propagated[0]) for x in trace.layers)} tokens leave" in text[2]
    assert f"{trace.layers[-1].tokens_out} leave block {len(trace.layers)}" in text[2]
    # 4. the graph: grid neighbours and the M most similar patches
    r, c = divmod(f.token, gw)
    grid = sorted(i * gw + j for i in range(r - 1, r + 2) for j in range(c - 1, c + 2)
                  if 0 <= i < gh and 0 <= j < gw and (i, j) != (r, c))
    assert f"grid neighbours ({', '.join(map(str, grid))})" in text[3]
    sim = trace.similarity[0, f.token].clone()
    sim[f.token] = -math.inf
    nearest = set(sim.topk(8).indices.tolist())
    listed = re.search(r"most similar patches by cosine similarity: (.*?)\.\s", text[3]).group(1)
    assert {int(x) for x in re.findall(r"(\d+) \(", listed)} == nearest
    # 5. propagation: the focus token's receivers and weights alpha * W
    e = layer.edges[0]
    mine = sorted(((int(d), float(w)) for s, d, w in zip(e.src, e.dst, e.weight) if int(s) == f.token), key=lambda t: -t[1])
    assert mine and f"to the {len(mine)} remaining tokens" in text[4]
    for d, w in mine[:L.LISTED]:
        assert f"{d} ({w:.4g})" in text[4]
    top, w = mine[0]
    assert rf"$x_{{{top}}} \leftarrow x_{{{top}}} + {w:.4g} \, x_{{{f.token}}}$" in text[4]
    # 6. sparsification: the share zeroed in the shown head, and in the focus token's row
    n, theta = layer.tokens_in, exp.settings.config.sparsity
    before, after = layer.attn_before[0, f.head].float(), layer.attn_after[0, f.head].float()
    k = p0 + f.index
    row = int(((after[k] == 0) & (before[k] != 0)).sum())
    assert f"= {math.floor(n * n * (1 - theta)):,} smallest of {n * n:,}" in text[5]
    assert f"{100 * float(layer.zeroed_fraction[0, f.head]):.1f}% of the map" in text[5]
    assert f"{row} of {n} entries were zeroed" in text[5]
    # 7. prediction and cost
    g = K.costs(exp, ("full", "gtp"), count=False)
    assert f"GTP costs {g.of('gtp'):.3f} GMACs instead of {g.of('full'):.3f}" in text[6]
    assert f"*{exp.run.full_top5[0].label.split(',')[0]}*" in text[6]


def test_a_step_change_never_runs_a_model(run, monkeypatch):
    exp, _ = run

    def forbidden(*a, **k):
        raise AssertionError("a lesson step ran a model")
    for name in ("explore_photo", "run_photo", "compare_photo"):
        monkeypatch.setattr(inference, name, forbidden)
    step = 1
    for by in (+1,) * 7 + (-1,) * 7:
        update = list(H.move_lesson(exp, step, by))[0]
        step = update["lesson_step"]
        assert update["lesson_counter"] == f"**Step {step} of 7**" and update["lesson_plot"] is not None
    assert step == 1
    assert list(H.move_lesson(None, 3, +1))[0]["lesson_md"].startswith("### 4.")   # no run yet: the text only


@pytest.mark.parametrize("schedule, hp, says", [
    ("", {"num_prop": 0}, {2: "nothing leaves", 3: "No block propagated", 5: "nothing was propagated"}),
    ("", {"propagation": "none", "graph": "semantic"}, {4: "semantic graph alone", 5: "prunes"}),
    ("", {"propagation": "mean", "selection": "random"}, {2: "uniform noise", 5: "their average"}),
    ("0,0,8,8,8,8,8,8,8,8,8,8", {"sparsity": 1.0, "selection": "cls_attn_max"},
     {2: "before any token leaves block 3", 3: "Block 3 (the blocks before it removed none)",
      6: "sparsification is off"}),
])
def test_every_setting_is_told_as_it_ran(schedule, hp, says):
    exp = explore(schedule=schedule, **hp)
    panels = steps(exp)
    assert len({p["lesson_md"] for p in panels}) == L.NUM_STEPS
    for step, phrase in says.items():
        assert phrase.lower() in panels[step - 1]["lesson_md"].lower(), (step, phrase)
    for p in panels[:-1]:
        assert highlighted(figure(p)) == [L.focus(exp).token]


def test_a_model_without_a_classifier_explains_the_cosine():
    if not DINOV2_FILE.exists():
        pytest.skip(f"real weights not found at {DINOV2_FILE}")
    exp = explore("vit_small_patch14_dinov2", weights=str(DINOV2_FILE))
    last = steps(exp)[-1]["lesson_md"]
    assert "no classifier" in last and f"{exp.run.feature_cosine:.4f}" in last and r"\cos" in last
    assert "Random weights" not in last                     # real weights: no such note


def test_the_step_is_clamped():
    assert [L.step_of(v) for v in (None, "x", 0, 1, 4, 7, 8, 10**30, "3")] == [1, 1, 1, 1, 4, 7, 7, 7, 3]


def test_a_highlight_stays_on_view_in_every_block_of_the_walk(run):
    """plotly's "update" applies a step's `visible` list to the traces in order: it must name
    every trace, the highlight included, or the mark would vanish (or another trace show)."""
    exp, _ = run
    token = L.focus(exp).token
    fig = json.loads(W.walk(exp, 3, highlight=token).plot)
    assert fig["data"][-1]["meta"] == {"role": "highlight", "token": token}
    assert fig["layout"]["sliders"][0]["active"] == 3
    for step in fig["layout"]["sliders"][0]["steps"]:
        visible = step["args"][0]["visible"]
        assert len(visible) == len(fig["data"]) and visible[-1] is True
    plain = json.loads(W.walk(exp, 3).plot)
    assert len(plain["data"]) == len(fig["data"]) - 1 and not highlighted(plain)


def test_back_and_next_are_enabled_only_where_they_lead(run):
    """Step 1 has no Back and step 7 no Next (a Next that does nothing looks broken)."""
    exp, panels = run
    for step, p in enumerate(panels, start=1):
        assert (p["lesson_back"].interactive, p["lesson_next"].interactive) == (step > 1, step < L.NUM_STEPS), step
    assert list(H.move_lesson(None, L.NUM_STEPS - 1, +1))[0]["lesson_next"].interactive is False


def test_the_propagation_step_draws_the_followed_patchs_own_edges(run):
    """Step 5: only the edges the followed patch sent its features along, each receiver with its
    weight alpha * W from the trace (not the whole block's walk)."""
    exp, panels = run
    f = L.focus(exp)
    layer = exp.trace.layers[f.block]
    src, dst, w = (layer.edges[0].src.numpy(), layer.edges[0].dst.numpy(), layer.edges[0].weight.float().numpy())
    expected = {int(d): float(x) for s, d, x in zip(src, dst, w) if s == f.token}
    fig = figure(panels[4])
    assert "sliders" not in fig["layout"]                          # not the layer walk
    received = [t for t in fig["data"] if (t.get("meta") or {}).get("role") == "received"][0]
    got = {row[0]: row[3] for row in received["customdata"]}
    assert set(got) == set(expected) and expected
    assert all(got[d] == pytest.approx(expected[d], rel=1e-3) for d in expected)
    assert highlighted(fig) == [f.token]
