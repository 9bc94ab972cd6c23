"""The figures (app/views) against the trace they are drawn from: a seeded random DeiT-S patched
with GTP (published setting) and traced with attention maps, on chelsea.png. Figures are plain
plotly.js dicts; hovers are checked by filling their templates as plotly.js does."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gtp
from app.views import attention, compare as plots_compare, graphs, tradeoff, walk as walk_view
from app.views.base import gtp_destinations, patch_name, to_json
from app.views.walk import STATIC_TRACES, TRACES_PER_BLOCK

from conftest import random_model

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = json.loads((ROOT / "assets" / "published_results.json").read_text())
WALK_LIMIT = 260_000           # bytes of the layer walk's JSON for one run (12 blocks, 196 patches)


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
    return json.loads(to_json(walk_view.layer_walk_figure(*run)))


def values(spec) -> np.ndarray:
    """A data array of figure JSON as numpy (typed arrays are base64 binary)."""
    if isinstance(spec, dict) and "bdata" in spec:
        shape = [int(s) for s in str(spec.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(spec["dtype"])).reshape(shape)
    return np.asarray(spec, dtype=float)


def render(template: str, customdata, text: str = "", z: float = float("nan")) -> str:
    """plotly's hovertemplate substitution for %{customdata[k]}, %{customdata}, %{text} and %{z}
    with d3 formats ('~' trims zeros, '(' puts a negative number in parentheses)."""
    def fmt(value, spec: str) -> str:
        spec = (spec or "").replace("~", "")
        if spec.startswith("("):
            body = format(abs(value), spec[1:])
            return f"({body})" if value < 0 else body
        return format(value, spec) if spec else str(value)
    out = re.sub(r"%\{customdata\[(\d+)\](?::([^}]*))?\}", lambda m: fmt(customdata[int(m.group(1))], m.group(2)),
                 template)
    out = re.sub(r"%\{customdata\}", lambda m: str(customdata), out)
    out = re.sub(r"%\{z(?::([^}]*))?\}", lambda m: fmt(z, m.group(1)), out)
    return out.replace("%{text}", text).replace("<extra></extra>", "")


def visible_tokens(fig: dict, step: int, role: str) -> dict:
    """The token trace of `role` ("candidates", "received", "propagated", "earlier") that slider
    step `step` shows."""
    visible = fig["layout"]["sliders"][0]["steps"][step]["args"][0]["visible"]
    found = [t for t, v in zip(fig["data"], visible) if v and (t.get("meta") or {}).get("role") == role]
    assert len(found) == 1
    return found[0]


def hover_of(trace: dict, pid: int) -> str:
    """The hover of patch `pid` in a token trace."""
    i = next(k for k, row in enumerate(trace["customdata"]) if row[0] == pid)
    return render(trace["hovertemplate"], trace["customdata"][i], (trace.get("text") or [""] * (i + 1))[i])


def number_after(text: str, label: str) -> float:
    return float(re.search(re.escape(label) + r" ([-0-9.e+]+)", text).group(1))


def test_slider_has_one_step_per_block_showing_that_blocks_tokens(run, walk):
    _, rec = run
    steps = walk["layout"]["sliders"][0]["steps"]
    assert len(steps) == len(rec.layers) == 12
    for b, (step, layer) in enumerate(zip(steps, rec.layers)):
        assert step["method"] == "update"
        visible = step["args"][0]["visible"]
        assert len(visible) == len(walk["data"]) == STATIC_TRACES + TRACES_PER_BLOCK * 12
        assert sum(visible) == STATIC_TRACES + TRACES_PER_BLOCK
        here = visible_tokens(walk, b, "propagated")
        assert here["meta"]["block"] == b == visible_tokens(walk, b, "candidates")["meta"]["block"]
        assert sorted(row[0] for row in here["customdata"]) == sorted(layer.propagated[0].tolist())
        gone = sorted(p for l in rec.layers[:b] for p in l.propagated[0].tolist())
        assert sorted(row[0] for row in visible_tokens(walk, b, "earlier")["customdata"]) == gone
        staying = [row[0] for role in ("candidates", "received") for row in visible_tokens(walk, b, role)["customdata"]]
        assert sorted(staying) == sorted(set(range(196)) - set(gone) - set(layer.propagated[0].tolist()))
        assert f"{layer.tokens_out} tokens left" in step["args"][1]["annotations[0].text"]


def test_token_hover_tells_score_factors_rank_and_size(run, walk):
    _, rec = run
    b = 3
    layer = rec.layers[b]
    ids = layer.candidates[0].tolist()
    rank = {ids[i]: r + 1 for r, i in enumerate(layer.score[0].sort(stable=True).indices.tolist())}
    size_in = dict(zip(rec.layers[b - 1].kept[0].tolist(), rec.layers[b - 1].sizes[0].tolist()))
    kept = visible_tokens(walk, b, "candidates")
    for pid, trace, status in ((layer.propagated[0, 0].item(), visible_tokens(walk, b, "propagated"),
                                "block 4: propagated in this block"), (kept["customdata"][0][0], kept, "block 4: kept")):
        text = hover_of(trace, pid)
        i = ids.index(pid)
        assert f"patch {pid} (row {pid // 14}, col {pid % 14})" in text and status in text
        assert number_after(text, "selection score") == pytest.approx(layer.score[0, i].item(), rel=1e-3)
        assert number_after(text, "regeneration difficulty") == pytest.approx(layer.regeneration[0, i].item(), rel=1e-3)
        assert number_after(text, "broadcasting ability") == pytest.approx(layer.broadcasting[0, i].item(), rel=1e-3)
        assert "= regeneration × broadcasting" in text
        assert f"rank {rank[pid]} of {len(ids)} candidates" in text
        assert number_after(text, "size") == pytest.approx(size_in.get(pid, 1.0), rel=1e-3)


def test_sender_and_receiver_hovers_list_the_weights(run, walk):
    _, rec = run
    b = 0
    edges = rec.layers[b].edges[0]
    src, dst, w = edges.src.tolist(), edges.dst.tolist(), edges.weight.tolist()
    sender = src[0]
    sent = [(d, x) for s, d, x in zip(src, dst, w) if s == sender]
    text = hover_of(visible_tokens(walk, b, "propagated"), sender)
    assert f"sent its features to {len(sent)} tokens" in text
    strongest = max(sent, key=lambda e: e[1])
    assert f"<br>· {strongest[0]}: {strongest[1]:.3g}" in text
    receiver = dst[0]
    got = [(s, x) for s, d, x in zip(src, dst, w) if d == receiver]
    text = hover_of(visible_tokens(walk, b, "received"), receiver)
    assert "block 1: kept; received features in this block" in text
    assert number_after(text, "received") == pytest.approx(sum(x for _, x in got), rel=1e-2)
    assert all(f"<br>· {s}: " in text for s, _ in got)
    size_after = dict(zip(rec.layers[b].kept[0].tolist(), rec.layers[b].sizes[0].tolist()))[receiver]
    assert number_after(text, "entering this block,") == pytest.approx(size_after, rel=1e-3)   # its size after
    # a token propagated in block 1 says so at block 3
    assert "propagated in block 1" in hover_of(visible_tokens(walk, 2, "earlier"), sender)


def test_layer_walk_payload_is_bounded_and_names_one_photo(run):
    photo, rec = run
    payload = to_json(walk_view.layer_walk_figure("photo.webp", rec))
    assert len(payload) < WALK_LIMIT, f"{len(payload)} bytes"
    parsed = json.loads(payload)
    assert [im["source"] for im in parsed["layout"]["images"]] == ["photo.webp"] and "frames" not in parsed
    uri = walk_view.layer_walk_figure(photo, rec)["layout"]["images"][0]["source"]   # a picture: one data URI
    assert uri.startswith("data:image/jpeg;base64,")


def test_charts_follow_the_trace(run, walk):
    _, rec = run
    bars, zeroed, mass = walk["data"][:3]
    assert bars["y"] == rec.tokens_per_block()
    assert zeroed["y"][5] == pytest.approx(100 * rec.layers[5].zeroed_fraction[0].mean().item(), abs=1e-3)
    assert mass["y"][5] == pytest.approx(100 * rec.layers[5].mass_removed[0].mean().item(), abs=1e-3)


def test_graph_hover_lists_neighbours_with_cosine(run):
    photo, rec = run
    fig = graphs.graph_figure(photo, rec)
    pid = 15
    token = next(t for t in fig["data"] if (t.get("meta") or {}).get("role") == "tokens"
                 and pid in values(t["customdata"])[:, 0])
    row = values(token["customdata"])
    text = render(token["hovertemplate"], row[list(row[:, 0]).index(pid)].tolist())
    sim = rec.similarity[0]
    semantic = [d for s, d in zip(rec.semantic_edges[0].src.tolist(), rec.semantic_edges[0].dst.tolist()) if s == pid]
    spatial = [d for s, d in zip(rec.spatial_edges.src.tolist(), rec.spatial_edges.dst.tolist()) if s == pid]
    assert f"spatial neighbours ({len(spatial)})" in text and f"semantic neighbours ({len(semantic)})" in text
    for j in semantic + spatial:
        assert f"· patch {float(j)}: {sim[pid, j].item():.3f}" in text
    with pytest.raises(ValueError, match="graph kind"):
        graphs.graph_figure(photo, rec, kind="nonsense")


def test_graph_lines_draw_every_edge(run):
    """The spatial lines and the semantic paths pass through every edge of their graph."""
    photo, rec = run
    fig = graphs.graph_figure(photo, rec)
    drawn = {}
    for t in fig["data"]:
        if t["mode"] == "lines":
            kind = t["name"].split()[0]
            pts = list(zip(t["x"], t["y"]))
            drawn[kind] = {frozenset((a, b)) for a, b in zip(pts, pts[1:]) if None not in a + b}

    def centre(p: int) -> tuple[float, float]:
        return p % 14 + 0.5, p // 14 + 0.5

    def covered(i: int, j: int, lines: set) -> bool:   # on a drawn segment (a spatial line spans many patches)
        (xi, yi), (xj, yj) = centre(i), centre(j)
        return any(abs((bx - ax) * (yi - ay) - (by - ay) * (xi - ax)) < 1e-9 and
                   abs((bx - ax) * (yj - ay) - (by - ay) * (xj - ax)) < 1e-9 and
                   min(ax, bx) <= min(xi, xj) and max(xi, xj) <= max(ax, bx) and
                   min(ay, by) <= min(yi, yj) and max(yi, yj) <= max(ay, by)
                   for (ax, ay), (bx, by) in map(tuple, lines))
    sem = rec.semantic_edges[0]
    assert all(frozenset((centre(i), centre(j))) in drawn["semantic"] for i, j in zip(sem.src.tolist(), sem.dst.tolist()))
    assert all(covered(i, j, drawn["spatial"]) for i, j in zip(rec.spatial_edges.src.tolist(), rec.spatial_edges.dst.tolist()))


def test_similarity_map_holds_the_tokens_row(run):
    photo, rec = run
    heat = graphs.similarity_figure(photo, rec, token=20)["data"][0]
    assert np.allclose(values(heat["z"]).ravel(), rec.similarity[0, 20].numpy(), atol=1e-6)
    assert values(heat["customdata"]).ravel().tolist() == list(range(196))     # patch id per cell, hover names it
    assert "cosine similarity to patch 20" in heat["hovertemplate"] and "(row %{y}, col %{x})" in heat["hovertemplate"]


def test_attention_hover_tells_values_before_and_after(run):
    _, rec = run
    layer = rec.layers[2]
    fig = attention.attention_figure(rec, block=2, head=1)
    (after,) = fig["data"]            # one map of values; the map before is a picture of them
    before_map, after_map = layer.attn_before[0, 1].numpy(), layer.attn_after[0, 1].numpy()
    truly_zeroed = (after_map == 0) & (before_map != 0)
    assert truly_zeroed.any() and after["meta"]["zeroed"] == int(truly_zeroed.sum())
    z = values(after["z"])
    assert np.allclose(np.abs(z), before_map, atol=1e-7) and np.array_equal(z < 0, truly_zeroed)
    q, k = np.argwhere(truly_zeroed)[0]
    text = render(after["hovertemplate"], None, z=float(z[q, k]))
    assert f"attention after sparsification ({before_map[q, k]:.4g})" in text and "zeroed" in text
    q, k = np.argwhere(~truly_zeroed)[0]
    assert f"after sparsification {after_map[q, k]:.4g}<br>" in render(after["hovertemplate"], None, z=float(z[q, k]))
    assert "query: %{y}" in after["hovertemplate"] and "key: %{x}" in after["hovertemplate"]
    assert after["x"][0] == "CLS" and after["x"][1] == patch_name(layer.candidates[0, 0].item(), (14, 14))
    picture = fig["layout"]["images"][0]["source"]
    png = Image.open(__import__("io").BytesIO(base64.b64decode(picture.split(",", 1)[1])))
    assert png.size == before_map.shape[::-1]
    assert len(to_json(fig)) < 250_000


def test_cls_attention_marks_tokens_already_gone(run):
    photo, rec = run
    heat = attention.cls_attention_figure(photo, rec, block=4, head=0)["data"][0]
    z = values(heat["z"]).ravel()
    gone = {p for l in rec.layers[:4] for p in l.propagated[0].tolist()}
    assert {int(i) for i in np.flatnonzero(np.isnan(z))} == gone
    pid = next(iter(gone))
    assert "propagated in block" in np.asarray(heat["text"], dtype=object).ravel()[pid]


def test_compare_hover_says_in_which_block_and_how(run):
    photo, rec = run
    gtp_removed = [l.propagated[0].tolist() for l in rec.layers]
    tome_removed = [ids[::-1] for ids in gtp_removed[1:]] + [gtp_removed[0]]   # other blocks
    fig = plots_compare.compare_figure(photo, rec.grid_size, {"gtp": gtp_removed, "tome": tome_removed,
                                                              "pruning": gtp_removed},
                                       destinations={"gtp": gtp_destinations(rec)})
    maps = {t["meta"]["method"]: t for t in fig["data"]}
    texts = {m: np.asarray(t["text"], dtype=object).ravel() for m, t in maps.items()}
    pid = gtp_removed[5][0]
    receivers = [d for s, d in zip(rec.layers[5].edges[0].src.tolist(), rec.layers[5].edges[0].dst.tolist()) if s == pid]
    assert texts["gtp"][pid].startswith(f"propagated in block 6 to patch {receivers[0]}")
    assert texts["pruning"][pid] == "dropped in block 6"
    assert texts["tome"][pid] == "merged in block 5 into another token (partner not recorded)"
    kept = sorted(set(range(196)) - {p for ids in gtp_removed for p in ids})[0]
    r, c = divmod(kept, 14)
    assert render(maps["gtp"]["hovertemplate"], maps["gtp"]["customdata"][r][c], texts["gtp"][kept]) == \
        f"patch {kept} (row {r}, col {c})<br>GTP: stayed to the end"


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
    texts = np.asarray(fig["data"][0]["text"], dtype=object).ravel()
    checked = 0
    for block, (gone, partners) in enumerate(zip(merged, into)):
        for pid, dst in zip(gone, partners):
            assert texts[pid] == f"merged in block {block + 1} into the token of {patch_name(dst, (14, 14))}"
            checked += 1
    assert checked == 12 * 8
    with pytest.raises(ValueError, match="partners"):
        plots_compare.tome_destinations([[1, 2]], [[3]])


def test_tradeoff_draws_only_the_selected_models_family():
    fig = tradeoff.tradeoff_figure(PUBLISHED, "deit_small_patch16_224", current={"full": 4.6, "gtp": 3.4})
    published = [t for t in fig["data"] if (t.get("meta") or {}).get("role") == "published"]
    assert published and all(t["meta"]["model"] == "deit_small_patch16_224" for t in published)
    assert not any("DeiT-B" in t.get("name", "") for t in fig["data"])
    note = fig["layout"]["annotations"][-1]["text"]
    assert "No published trade-off curve for DeiT-S" in note and "not drawn" in note
    assert any("3.40 GMACs (DeiT-S, measured)" in t.get("name", "") for t in fig["data"])
    # asked for, DeiT-B's curves come labelled as DeiT-B's, never as DeiT-S's
    fig = tradeoff.tradeoff_figure(PUBLISHED, "deit_small_patch16_224", other_families=True)
    deit_b = [t for t in fig["data"] if (t.get("meta") or {}).get("model") == "deit_base_patch16_224"]
    assert deit_b and all(t["name"].startswith("DeiT-B") for t in deit_b)
    full_b = [t["name"] for t in deit_b if "full model (published" in t["name"]]
    assert full_b == ["DeiT-B full model (published, Xu et al. 2024)"]   # the family named once, and the source
    # the published GMACs' label sits on the side of its line away from the GTP line just right of it
    for gtp_now, side in ((3.44, "right"), (2.9, "left")):
        fig = tradeoff.tradeoff_figure(PUBLISHED, "deit_small_patch16_224", current={"full": 4.6, "gtp": gtp_now})
        label = next(a for a in fig["layout"]["annotations"] if "GMACs (published, Xu et al. 2024)" in a["text"])
        assert label["x"] < gtp_now if side == "right" else label["x"] > gtp_now
        assert label["xanchor"] == side, (gtp_now, label)
    # DeiT-B: the paper's curves, each point with method, GMACs, top-1 and the source
    fig = tradeoff.tradeoff_figure(PUBLISHED, "deit_base_patch16_224")
    curve = next(t for t in fig["data"] if t.get("name") == "GTP (published, Xu et al. 2024)")
    expected = sorted((r["gmacs"], r["top1"]) for r in PUBLISHED["tradeoff_deit_base"] if r["method"] == "GTP")
    assert list(zip(curve["x"], curve["y"])) == expected
    assert curve["customdata"][0][2] == "published: Xu et al., GTP-ViT, WACV 2024, arXiv:2311.03035"
    assert "%{x:.2f} GMACs" in curve["hovertemplate"] and "top-1 %{y:.2f}" in curve["hovertemplate"]


def test_tradeoff_sweep_labels_are_plain_text_and_throughput_has_its_panel():
    sweep = [{"model": "deit_small_patch16_224", "method": "gtp", "gmacs": 3.4, "top1": 79.1, "num_prop": 8,
              "label": "cost: $5 <b>run</b>"},
             {"model": "deit_small_patch16_224", "method": "tome", "gmacs": 3.4, "agreement": 91.0}]
    speed = [{"batch_size": 1, "full_img_per_s": 50.0, "gtp_img_per_s": 60.0, "device": "CPU (2 threads)"},
             {"batch_size": 8, "full_img_per_s": 80.0, "gtp_img_per_s": 100.0, "device": "CPU (2 threads)"}]
    fig = tradeoff.tradeoff_figure(PUBLISHED, "deit_small_patch16_224", sweep=sweep, throughput=speed)
    mine = [t for t in fig["data"] if (t.get("meta") or {}).get("role") == "sweep"]
    assert len(mine) == 2
    labelled = next(t for t in mine if "cost" in t["name"])
    assert "$" not in labelled["name"] and "&#36;5" in labelled["name"] and "&lt;b&gt;" in labelled["name"]
    assert "$" not in to_json(fig)
    assert next(t for t in mine if t is not labelled)["yaxis"] == "y2"  # agreement: its own axis
    speed_traces = [t for t in fig["data"] if (t.get("meta") or {}).get("role") == "throughput"]
    assert [t["y"] for t in speed_traces] == [[50.0, 80.0], [60.0, 100.0]]


def test_play_js_steps_the_slider_of_the_named_plot():
    js = walk_view.play_js("my-walk", 300)
    assert '"my-walk"' in js and "Plotly.update" in js and "sliders[0].active" in js and "300" in js
    assert f'"{walk_view.WALK_ELEM_ID}"' in walk_view.PLAY_JS


def test_figures_are_transparent_for_both_themes(run, walk):
    photo, rec = run
    for fig in (walk, graphs.graph_figure(photo, rec), tradeoff.tradeoff_figure(PUBLISHED, "deit_base_patch16_224")):
        assert fig["layout"]["paper_bgcolor"] == "rgba(0,0,0,0)" and fig["layout"]["plot_bgcolor"] == "rgba(0,0,0,0)"


def test_every_published_legend_entry_names_its_source():
    """'published, <authors> <year>' from whichever citation a record carries (breakage tried:
    the tag without the year)."""
    from gtp.facts import published_records, published_tag
    assert published_tag("Doe et al., FooNet, CVPR 2021, arXiv:2101.00001") == "published, Doe et al. 2021"
    own = {"citation": "Roe et al., BarViT, ICCV 2023", "model": "deit_base_patch16_224", "method": "GTP",
           "gmacs": 15.0, "top1": 81.0}
    records = published_records({**PUBLISHED, "extra": [own]})
    assert {r["tag"] for r in records} == {"published, Xu et al. 2024", "published, Roe et al. 2023"}
    fig = tradeoff.tradeoff_figure(PUBLISHED, "deit_base_patch16_224")
    names = [t["name"] for t in fig["data"] if (t.get("meta") or {}).get("role") == "published"]
    assert names and all(n.endswith("(published, Xu et al. 2024)") for n in names), names
