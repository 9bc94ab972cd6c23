"""The plotly figures (app/plots*.py) against the trace they are drawn from: a seeded random
DeiT-S patched with GTP (published setting) and traced with attention maps, on chelsea.png."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gtp
from app.views import attention, compare as plots_compare, graphs, tradeoff, walk as walk_view
from app.views.base import gtp_destinations, patch_name
from app.views.walk import STATIC_TRACES, TRACES_PER_BLOCK

from conftest import random_model

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = json.loads((ROOT / "assets" / "published_results.json").read_text())
PAYLOAD_LIMIT = 1_500_000      # bytes of fig.to_json() for the layer walk of one run


@pytest.fixture(scope="module")
def run():
    """(photo as shown [224 x 224 PIL], trace of one GTP forward with attention maps)."""
    torch.manual_seed(0)
    model = random_model("deit_small_patch16_224")
    gtp.patch(model)
    photo = Image.open(ROOT / "assets" / "chelsea.png").convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.inference_mode(), gtp.trace(model, attention=True) as rec:
        model(x)
    return photo, rec


@pytest.fixture(scope="module")
def walk(run):
    return walk_view.layer_walk_figure(*run)


def render(template: str, customdata: list) -> str:
    """plotly's hovertemplate substitution for %{customdata[k]} and %{customdata[k]:fmt}
    (d3's '~' = python's default trimming)."""
    def sub(m):
        value, fmt = customdata[int(m.group(1))], (m.group(2) or "").replace("~", "")
        return format(value, fmt) if fmt else str(value)
    return re.sub(r"%\{customdata\[(\d+)\](?::([^}]*))?\}", sub, template).replace("<extra></extra>", "")


def visible_tokens(fig, step: int, role: str):
    """The token trace of `role` ("candidates" / "earlier") that slider step `step` shows."""
    visible = fig.layout.sliders[0].steps[step].args[0]["visible"]
    found = [fig.data[i] for i, v in enumerate(visible) if v and fig.data[i].meta and fig.data[i].meta.get("role") == role]
    assert len(found) == 1
    return found[0]


def number_after(text: str, label: str) -> float:
    return float(re.search(re.escape(label) + r" ([-0-9.e+]+)", text).group(1))


def test_slider_has_one_step_per_block_showing_that_blocks_propagated_ids(run, walk):
    _, rec = run
    steps = walk.layout.sliders[0].steps
    assert len(steps) == len(rec.layers) == 12
    for b, (step, layer) in enumerate(zip(steps, rec.layers)):
        assert step.method == "update"
        visible = step.args[0]["visible"]
        assert len(visible) == len(walk.data) == STATIC_TRACES + TRACES_PER_BLOCK * 12
        assert sum(visible) == STATIC_TRACES + TRACES_PER_BLOCK
        cand = visible_tokens(walk, b, "candidates")
        assert cand.meta["block"] == b
        here = sorted(p for p, _, _, status, *_ in cand.customdata if status == "propagated in this block")
        assert here == sorted(layer.propagated[0].tolist())
        earlier = visible_tokens(walk, b, "earlier")
        gone = sorted(p for l in rec.layers[:b] for p in l.propagated[0].tolist())
        assert sorted(p for p, *_ in earlier.customdata) == gone
        assert f"{layer.tokens_out} tokens left" in step.args[1]["annotations[0].text"]


def test_token_hover_tells_score_factors_rank_and_size(run, walk):
    _, rec = run
    b = 3
    layer = rec.layers[b]
    cand = visible_tokens(walk, b, "candidates")
    ids = layer.candidates[0].tolist()
    rank = {ids[i]: r + 1 for r, i in enumerate(layer.score[0].sort(stable=True).indices.tolist())}
    kept_size = dict(zip(layer.kept[0].tolist(), layer.sizes[0].tolist()))
    for pid in (layer.propagated[0, 0].item(), ids[len(ids) // 2]):
        row = next(c for c in cand.customdata if c[0] == pid)
        text = render(cand.hovertemplate, row)
        i = ids.index(pid)
        assert f"patch {pid} (row {pid // 14}, col {pid % 14})" in text
        assert number_after(text, "selection score") == pytest.approx(layer.score[0, i].item(), rel=1e-3)
        assert number_after(text, "regeneration difficulty") == pytest.approx(layer.regeneration[0, i].item(), rel=1e-3)
        assert number_after(text, "broadcasting ability") == pytest.approx(layer.broadcasting[0, i].item(), rel=1e-3)
        assert "= regeneration × broadcasting" in text
        assert f"rank {rank[pid]} of {len(ids)} candidates" in text
        if pid in kept_size:
            assert number_after(text, "size") == pytest.approx(kept_size[pid], rel=1e-3)
            assert "block 4: kept" in text
        else:
            assert "block 4: propagated in this block" in text


def test_sender_and_receiver_hovers_list_the_weights(run, walk):
    _, rec = run
    b = 0
    edges = rec.layers[b].edges[0]
    src, dst, w = edges.src.tolist(), edges.dst.tolist(), edges.weight.tolist()
    cand = visible_tokens(walk, b, "candidates")
    sender = src[0]
    sent = [(d, x) for s, d, x in zip(src, dst, w) if s == sender]
    text = render(cand.hovertemplate, next(c for c in cand.customdata if c[0] == sender))
    assert f"sent its features to {len(sent)} tokens" in text
    strongest = max(sent, key=lambda e: e[1])
    assert f"· patch {strongest[0]}: {strongest[1]:.3g}" in text
    receiver = dst[0]
    got = [(s, x) for s, d, x in zip(src, dst, w) if d == receiver]
    text = render(cand.hovertemplate, next(c for c in cand.customdata if c[0] == receiver))
    assert "received features in this block" in text
    assert number_after(text, "received") == pytest.approx(sum(x for _, x in got), rel=1e-2)
    assert all(f"· patch {s}: " in text for s, _ in got)
    # a token propagated in block 1 says so at block 3
    earlier = visible_tokens(walk, 2, "earlier")
    row = next(c for c in earlier.customdata if c[0] == sender)
    assert "propagated in block 1" in render(earlier.hovertemplate, row)


def test_layer_walk_payload_is_bounded_and_holds_one_photo(run, walk):
    payload = walk.to_json()
    assert len(payload) < PAYLOAD_LIMIT, f"{len(payload)} bytes"
    parsed = json.loads(payload)
    assert [im["source"][:23] for im in parsed["layout"]["images"]] == ["data:image/jpeg;base64,"]
    assert payload.count("base64,") == 1 and "frames" not in parsed


def test_charts_follow_the_trace(run, walk):
    _, rec = run
    bars = walk.data[0]
    assert list(bars.y) == rec.tokens_per_block()
    zeroed = walk.data[1]
    assert zeroed.y[5] == pytest.approx(100 * rec.layers[5].zeroed_fraction[0].mean().item(), abs=1e-3)
    mass = walk.data[2]
    assert mass.y[5] == pytest.approx(100 * rec.layers[5].mass_removed[0].mean().item(), abs=1e-3)


def test_graph_hover_lists_neighbours_with_cosine(run):
    photo, rec = run
    fig = graphs.graph_figure(photo, rec)
    tokens = next(t for t in fig.data if t.meta and t.meta.get("role") == "tokens")
    pid = 15
    text = tokens.hovertext[pid]
    sim = rec.similarity[0]
    semantic = [d for s, d in zip(rec.semantic_edges[0].src.tolist(), rec.semantic_edges[0].dst.tolist()) if s == pid]
    spatial = [d for s, d in zip(rec.spatial_edges.src.tolist(), rec.spatial_edges.dst.tolist()) if s == pid]
    assert f"spatial neighbours ({len(spatial)})" in text and f"semantic neighbours ({len(semantic)})" in text
    for j in semantic + spatial:
        assert f"· patch {j}: {sim[pid, j].item():.3f}" in text
    with pytest.raises(ValueError, match="graph kind"):
        graphs.graph_figure(photo, rec, kind="nonsense")


def test_similarity_map_holds_the_tokens_row(run):
    photo, rec = run
    fig = graphs.similarity_figure(photo, rec, token=20)
    assert np.allclose(np.asarray(fig.data[0].z).ravel(), rec.similarity[0, 20].numpy(), atol=1e-6)
    assert "cosine similarity to patch 20" in fig.data[0].hovertemplate


def test_attention_hover_tells_zeroed_entries(run):
    _, rec = run
    layer = rec.layers[2]
    fig = attention.attention_figure(rec, block=2, head=1)
    before, after = fig.data   # two float32 maps: the figure stays light (~2 x 200 kB at 197 tokens)
    before_map, after_map = layer.attn_before[0, 1].numpy(), layer.attn_after[0, 1].numpy()
    truly_zeroed = (after_map == 0) & (before_map != 0)
    assert truly_zeroed.any() and fig.data[1].meta["zeroed"] == int(truly_zeroed.sum())
    assert np.allclose(np.asarray(before.z), before_map, atol=1e-7)
    assert np.array_equal((np.asarray(after.z) == 0) & (np.asarray(before.z) != 0), truly_zeroed)
    assert "zeroed by sparsification" in after.hovertemplate and "before sparsification" in before.hovertemplate
    assert "query: %{y}" in before.hovertemplate and "key: %{x}" in before.hovertemplate
    assert before.x[0] == "CLS" and before.x[1] == patch_name(layer.candidates[0, 0].item(), (14, 14))
    assert np.allclose(np.asarray(after.z), after_map, atol=1e-7)
    assert len(fig.to_json()) < 450_000


def test_cls_attention_marks_tokens_already_gone(run):
    photo, rec = run
    fig = attention.cls_attention_figure(photo, rec, block=4, head=0)
    z = np.asarray(fig.data[0].z, dtype=float).ravel()
    gone = {p for l in rec.layers[:4] for p in l.propagated[0].tolist()}
    assert {int(i) for i in np.flatnonzero(np.isnan(z))} == gone
    pid = next(iter(gone))
    assert "propagated in block" in np.asarray(fig.data[0].text).ravel()[pid]


def test_compare_hover_says_in_which_block_and_how(run):
    photo, rec = run
    gtp_removed = [l.propagated[0].tolist() for l in rec.layers]
    tome_removed = [ids[::-1] for ids in gtp_removed[1:]] + [gtp_removed[0]]   # other blocks
    fig = plots_compare.compare_figure(photo, rec.grid_size, {"gtp": gtp_removed, "tome": tome_removed, "pruning": gtp_removed},
                               destinations={"gtp": gtp_destinations(rec)})
    texts = {t.meta["method"]: np.asarray(t.text).ravel() for t in fig.data}
    pid = gtp_removed[5][0]
    receivers = [d for s, d in zip(rec.layers[5].edges[0].src.tolist(), rec.layers[5].edges[0].dst.tolist()) if s == pid]
    assert f"GTP: propagated in block 6 to {patch_name(receivers[0], (14, 14))}" in texts["gtp"][pid]
    assert "Pruning: dropped in block 6" in texts["pruning"][pid]
    assert "ToMe: merged in block 5 into another token" in texts["tome"][pid]
    kept = sorted(set(range(196)) - {p for ids in gtp_removed for p in ids})[0]
    assert texts["gtp"][kept].endswith("stayed to the end")


def test_compare_hover_names_the_tome_partner(run):
    """A real ToMe forward (random DeiT-Ti, r = 8, source tracking) on the photo: every merged
    patch's hover names the block and the token (by its own patch) it merged into."""
    from gtp import tome
    photo, rec = run
    model = tome.patch(random_model("deit_tiny_patch16_224"), r=8, trace_source=True)
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.inference_mode():
        model(x)
    merged = [m[0].tolist() for m in tome.merged_ids_of(model)]
    into = [m[0].tolist() for m in tome.merged_into_of(model)]
    destinations = plots_compare.tome_destinations(merged, into)
    fig = plots_compare.compare_figure(photo, rec.grid_size, {"tome": merged}, destinations={"tome": destinations})
    texts = np.asarray(fig.data[0].text).ravel()
    checked = 0
    for block, (gone, partners) in enumerate(zip(merged, into)):
        for pid, dst in zip(gone, partners):
            assert texts[pid].endswith(f"ToMe: merged in block {block + 1} into the token of "
                                       f"{patch_name(dst, (14, 14))}"), texts[pid]
            checked += 1
    assert checked == 12 * 8
    with pytest.raises(ValueError, match="partners"):
        plots_compare.tome_destinations([[1, 2]], [[3]])


def test_tradeoff_draws_only_the_selected_models_family(run):
    fig = tradeoff.tradeoff_figure(PUBLISHED, "deit_small_patch16_224", current={"full": 4.6, "gtp": 3.4})
    published = [t for t in fig.data if t.meta and t.meta.get("role") == "published"]
    assert published and all(t.meta["model"] == "deit_small_patch16_224" for t in published)
    assert not any("DeiT-B" in (t.name or "") for t in fig.data)
    assert "No published trade-off curve for DeiT-S" in fig.layout.annotations[-1].text
    assert "not drawn" in fig.layout.annotations[-1].text
    assert any("3.40 GMACs (DeiT-S, measured)" in (t.name or "") for t in fig.data)
    # asked for, DeiT-B's curves come labelled as DeiT-B's, never as DeiT-S's
    fig = tradeoff.tradeoff_figure(PUBLISHED, "deit_small_patch16_224", other_families=True)
    deit_b = [t for t in fig.data if t.meta and t.meta.get("model") == "deit_base_patch16_224"]
    assert deit_b and all(t.name.startswith("DeiT-B · ") for t in deit_b)
    # DeiT-B: the paper's curves, each point with method, GMACs, top-1 and the source
    fig = tradeoff.tradeoff_figure(PUBLISHED, "deit_base_patch16_224")
    curve = next(t for t in fig.data if t.name == "GTP (published)")
    expected = sorted((r["gmacs"], r["top1"]) for r in PUBLISHED["tradeoff_deit_base"] if r["method"] == "GTP")
    assert list(zip(curve.x, curve.y)) == expected
    assert curve.customdata[0][2] == "published: Xu et al., GTP-ViT, WACV 2024, arXiv:2311.03035"
    assert "%{x:.2f} GMACs" in curve.hovertemplate and "top-1 %{y:.2f}" in curve.hovertemplate


def test_tradeoff_sweep_labels_are_plain_text_and_throughput_has_its_panel():
    sweep = [{"model": "deit_small_patch16_224", "method": "gtp", "gmacs": 3.4, "top1": 79.1, "num_prop": 8,
              "label": "cost: $5 <b>run</b>"},
             {"model": "deit_small_patch16_224", "method": "tome", "gmacs": 3.4, "agreement": 91.0}]
    speed = [{"batch_size": 1, "full_img_per_s": 50.0, "gtp_img_per_s": 60.0, "device": "CPU (2 threads)"},
             {"batch_size": 8, "full_img_per_s": 80.0, "gtp_img_per_s": 100.0, "device": "CPU (2 threads)"}]
    fig = tradeoff.tradeoff_figure(PUBLISHED, "deit_small_patch16_224", sweep=sweep, throughput=speed)
    mine = [t for t in fig.data if t.meta and t.meta.get("role") == "sweep"]
    assert len(mine) == 2
    labelled = next(t for t in mine if "cost" in t.name)
    assert "$" not in labelled.name and "&#36;5" in labelled.name and "&lt;b&gt;" in labelled.name
    assert "$" not in fig.to_json().replace("\\u0024", "")
    assert next(t for t in mine if t is not labelled).yaxis == "y2"  # agreement: its own axis
    speed_traces = [t for t in fig.data if t.meta and t.meta.get("role") == "throughput"]
    assert [list(t.y) for t in speed_traces] == [[50.0, 80.0], [60.0, 100.0]]


def test_play_js_steps_the_slider_of_the_named_plot():
    js = walk_view.play_js("my-walk", 300)
    assert '"my-walk"' in js and "Plotly.update" in js and "sliders[0].active" in js and "300" in js
    assert f'"{walk_view.WALK_ELEM_ID}"' in walk_view.PLAY_JS


def test_figures_are_transparent_for_both_themes(run, walk):
    photo, rec = run
    for fig in (walk, graphs.graph_figure(photo, rec), tradeoff.tradeoff_figure(PUBLISHED, "deit_base_patch16_224")):
        assert fig.layout.paper_bgcolor == "rgba(0,0,0,0)" and fig.layout.plot_bgcolor == "rgba(0,0,0,0)"
