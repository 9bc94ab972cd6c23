"""The per-layer trace, GMACs and reduced-precision / CUDA paths."""
from __future__ import annotations

import importlib
import json

import pytest
import torch

import gtp
from gtp import functional as G
from conftest import random_model


def traced(cfg: dict, name: str = "deit_tiny_patch16_224", batch: int = 2, attention: bool = False):
    model = gtp.patch(random_model(name), **cfg)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode(), gtp.trace(model, attention=attention) as rec:
        model(x)
    return model, rec


def test_trace_ids_partition_the_tokens_of_each_block():
    _, rec = traced(dict(num_prop=10))
    assert len(rec.layers) == 12 and rec.grid_size == (14, 14) and rec.num_prefix == 1
    for layer in rec.layers:
        for b in range(2):
            cand = set(layer.candidates[b].tolist())
            prop, kept = layer.propagated[b].tolist(), layer.kept[b].tolist()
            assert len(prop) == 10 and set(prop) | set(kept) == cand and not set(prop) & set(kept)
        assert layer.tokens_out == layer.tokens_in - 10 == 1 + layer.kept.shape[1]
    # a token leaves once: the propagated ids of all blocks are distinct
    every = torch.cat([layer.propagated[0] for layer in rec.layers]).tolist()
    assert len(every) == len(set(every)) == 120


def test_trace_edges_are_the_graph_weights_used():
    _, rec = traced(dict(num_prop=8, graph="spatial", alpha=0.25, token_scale=False, sparsity=1.0))
    layer = rec.layers[0]
    e = layer.edges[0]
    gw = rec.grid_size[1]
    assert len(e.src) > 0
    for s, d, w in zip(e.src.tolist(), e.dst.tolist(), e.weight.tolist()):
        assert s in layer.propagated[0].tolist() and d in layer.kept[0].tolist()
        assert abs(s // gw - d // gw) <= 1 and abs(s % gw - d % gw) <= 1  # grid neighbours only
        assert w > 0
    # weights are alpha * W with W = D^-1/2 A D^-1/2 of the 8-neighbour grid
    deg = G.spatial_adjacency(14, 14).sum(1)
    s, d = int(e.src[0]), int(e.dst[0])
    assert torch.isclose(e.weight[0], 0.25 / (deg[s] * deg[d]).sqrt())
    # and the receiving tokens grew by exactly those weights (first block: every size was 1)
    sizes = dict(zip(layer.kept[0].tolist(), layer.sizes[0].tolist()))
    for dst in set(e.dst.tolist()):
        expected = 1 + float(e.weight[e.dst == dst].sum())
        assert sizes[dst] == pytest.approx(expected, rel=1e-5)


def test_mean_propagation_conserves_token_size_and_marks_merged_tokens():
    _, rec = traced(dict(num_prop=10, propagation="mean"))
    for layer in rec.layers:
        assert layer.sizes[0].sum().item() == pytest.approx(196.0)
    assert (rec.layers[0].kept[0] == -1).sum() == 1


def test_trace_sparsity_statistics():
    _, rec = traced(dict(num_prop=8, sparsity=0.7), attention=True)
    for layer in rec.layers:
        n = layer.tokens_in
        expected = int(n * n * 0.3) / (n * n)
        assert torch.allclose(layer.zeroed_fraction, torch.full_like(layer.zeroed_fraction, expected), atol=1e-3)
        before, after = layer.attn_before, layer.attn_after
        assert before.shape == after.shape == (2, 3, n, n)
        assert torch.allclose(before.sum(-1), torch.ones(2, 3, n), atol=1e-5)
        removed = (before - after).sum((-2, -1)) / n
        assert torch.allclose(layer.mass_removed, removed, atol=1e-5)
        assert ((layer.mass_removed > 0) & (layer.mass_removed < 0.3)).all()
    _, rec = traced(dict(num_prop=8, sparsity=1.0))
    assert all(float(layer.zeroed_fraction.max()) == 0.0 for layer in rec.layers)
    assert all(layer.attn_before is None for layer in rec.layers)  # maps only on request


def test_trace_graphs_and_json_summary():
    _, rec = traced(dict(num_prop=8, num_neighbours=5))
    assert len(rec.spatial_edges.src) == 2 * (2 * 13 * 14) + 4 * 13 * 13  # 8-neighbour grid edges
    for b in range(2):
        src = rec.semantic_edges[b].src
        assert torch.equal(torch.bincount(src, minlength=196), torch.full((196,), 5))
    assert rec.similarity.shape == (2, 196, 196)
    assert torch.allclose(rec.similarity.diagonal(dim1=1, dim2=2), torch.ones(2, 196), atol=1e-5)
    summary = json.loads(rec.to_json(1))
    assert len(summary["layers"]) == 12
    assert summary["layers"][3]["propagated"] == rec.layers[3].propagated[1].tolist()


def test_untraced_forward_records_nothing(monkeypatch):
    model, _ = traced(dict(num_prop=8))

    def no_record(*args, **kwargs):
        raise AssertionError("an untraced forward built a trace record")

    patch_module = importlib.import_module("gtp.patch")  # `gtp.patch` is the function
    monkeypatch.setattr(patch_module, "record_block", no_record)
    monkeypatch.setattr(patch_module, "record_start", no_record)
    with torch.inference_mode():
        model(torch.randn(1, 3, 224, 224))
    assert model._gtp_state.recorder is None


@pytest.mark.parametrize("cfg", [dict(num_prop=8), dict(num_prop=8, sparsity=1.0, token_scale=False),
                                 dict(num_prop=6, selection="cos_sim_mean"), dict(num_prop=6, selection="cls_attn_max")])
def test_untraced_forward_computes_exactly_what_the_traced_one_does(cfg):
    # The untraced CPU forward takes the image-by-image attention; the traced one keeps the maps.
    model, rec = traced(cfg, batch=3)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        with gtp.trace(model):
            traced_logits = model(x)
        logits = model(x)
    assert torch.equal(logits, traced_logits)
    assert torch.equal(model._gtp_state.ids, rec.layers[-1].kept)


def test_trace_requires_a_patched_model():
    with pytest.raises(ValueError, match="gtp.patch"):
        with gtp.trace(random_model("deit_tiny_patch16_224")):
            pass


# ------------------------------------------------------------------------ GMACs
@pytest.mark.parametrize("name, full, reduced", [
    ("deit_small_patch16_224", 4.60, 3.42),
    ("deit_base_patch16_224", 17.6, 13.1),
])
def test_gmacs_match_the_paper(name, full, reduced):
    model = random_model(name)
    assert gtp.gmacs(model) == pytest.approx(full, rel=0.01)
    gtp.patch(model, num_prop=8)
    assert gtp.gmacs(model) == pytest.approx(reduced, rel=0.01)
    gtp.unpatch(model)
    assert gtp.gmacs(model) == pytest.approx(full, rel=0.01)


@pytest.mark.parametrize("token_scale", [False, True])
def test_gmacs_are_the_same_on_every_attention_path(token_scale):
    """P = 0, theta = 1: GTP runs the fused kernel (with token scale as a bias) or timm's
    block; either way the count is the unpatched model's, fused or explicit attention."""
    model = random_model("deit_tiny_patch16_224")
    fused = gtp.gmacs(model)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    explicit = gtp.gmacs(model)
    gtp.patch(model, num_prop=0, sparsity=1.0, token_scale=token_scale)
    patched = gtp.gmacs(model)
    assert fused == explicit == patched
    assert fused == pytest.approx(1.2537, abs=1e-3)  # deit_tiny: 1.3 G in the DeiT paper


def test_deit_small_without_reduction_counts_its_full_gmacs():
    """The figure the issue names: num_prop=0, sparsity=1, token_scale=True -> 4.599 GMACs."""
    model = gtp.patch(random_model("deit_small_patch16_224"), num_prop=0, sparsity=1.0, token_scale=True)
    assert round(gtp.gmacs(model), 3) == 4.599


def test_gmacs_count_the_attention_products():
    model = random_model("deit_tiny_patch16_224")
    n, d, depth = 197, 192, 12
    attention = 2 * n * n * d * depth / 1e9  # q k^T and A V
    linear_only = gtp.gmacs(model) - attention
    # patch embedding + qkv/proj/mlp/head: the rest of the count
    expected = (196 * 768 * 192 + depth * n * (3 * d * d + d * d + 8 * d * d) + 192 * 1000) / 1e9
    assert linear_only == pytest.approx(expected, rel=1e-3)


def test_gmacs_count_the_graph_and_the_propagation():
    """Graph propagation costs what its matmuls cost: the kNN similarity once, alpha W[K, R] x_R per block."""
    model = random_model("deit_tiny_patch16_224")
    gtp.patch(model, num_prop=8, propagation="none")
    dropped = gtp.gmacs(model)
    gtp.patch(model, num_prop=8, propagation="graph")
    C, P = 192, 8
    similarity = 196 * 196 * C
    propagation = sum((196 - P * i - P) * P * (C + 1) for i in range(12))  # features and sizes
    assert gtp.gmacs(model) - dropped == pytest.approx((similarity + propagation) / 1e9, rel=1e-6)


# ------------------------------------------------------ reduced precision, CUDA
def test_bf16_autocast_on_cpu_agrees_with_float32():
    model = gtp.patch(random_model("deit_tiny_patch16_224"), num_prop=8, sparsity=0.6)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16), gtp.trace(model) as rec:
            low = model(x)
    assert torch.isfinite(low).all()
    assert rec.tokens_per_block()[-1] == 197 - 96
    cos = torch.nn.functional.cosine_similarity(low.float(), ref, dim=-1)
    assert (cos > 0.98).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    model = gtp.patch(random_model("deit_small_patch16_224"), num_prop=8, sparsity=0.6)
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        cpu = model(x)
        model.cuda()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32), gtp.trace(model) as rec:
            gpu = model(x.cuda()).float().cpu()
    assert rec.layers[0].propagated.device.type == "cuda"
    if dtype == torch.float32:
        assert torch.allclose(gpu, cpu, atol=1e-3)
    else:
        assert (torch.nn.functional.cosine_similarity(gpu, cpu, dim=-1) > 0.98).all()
