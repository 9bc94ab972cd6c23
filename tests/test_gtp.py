"""gtp.patch against the unpatched model and against the slow reference of SPEC.md."""
from __future__ import annotations


import pytest
import torch

import gtp
from gtp import functional as G, kernels
from reference import reference_forward
from conftest import dinov2_model, random_model

# One model per prefix layout and block (deit_base is deit_small wider: nothing more to show).
EXACT_MODELS = [
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_small_distilled_patch16_224",
    "vit_small_patch16_224.augreg_in21k_ft_in1k",
]


def images(n: int = 2, size: int = 224, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_identity(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        expected = model(x)
        gtp.patch(model, num_prop=0, sparsity=1.0, token_scale=False)
        got = model(x)
        gtp.unpatch(model)
        restored = model(x)
    assert (got - expected).abs().max() <= 1e-5
    assert torch.equal(restored, expected)


# ------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", EXACT_MODELS)
def test_no_reduction_reproduces_the_unpatched_model(name):
    assert_identity(random_model(name), images())


def test_no_reduction_reproduces_real_dinov2():
    assert_identity(dinov2_model(), images())


def test_traced_identity_forward_matches_too():
    """The traced path runs explicit attention instead of timm's: still within 1e-5."""
    model = random_model("deit_tiny_patch16_224")
    x = images()
    with torch.inference_mode():
        expected = model(x)
        gtp.patch(model, num_prop=0, sparsity=1.0, token_scale=False)
        with gtp.trace(model):
            got = model(x)
    assert (got - expected).abs().max() <= 1e-5


# ---------------------------------------------------------------- faithfulness
def assert_matches_reference(model: torch.nn.Module, x: torch.Tensor, cfg: dict, check=(0,)) -> None:
    """Patch with cfg, trace a batched forward, and compare images `check` with the slow loop."""
    gtp.patch(model, **cfg)
    with torch.inference_mode(), gtp.trace(model) as rec:
        logits = model(x)
    for i in check:
        ref_logits, ref_prop = reference_forward(model, x[i], **cfg)
        assert [sorted(layer.propagated[i].tolist()) for layer in rec.layers] == ref_prop
        assert torch.allclose(logits[i], ref_logits, atol=1e-4, rtol=1e-4)


BASE = dict(num_prop=6, sparsity=0.6, alpha=0.1, graph="mixed", num_neighbours=8,
            selection="mixed_attn_max", propagation="graph", token_scale=True)
CASES = (
    [dict(BASE)]
    + [dict(BASE, graph=g) for g in ("spatial", "semantic")]
    + [dict(BASE, selection=s) for s in gtp.SELECTIONS if s not in ("mixed_attn_max", "random")]
    + [dict(BASE, propagation=p) for p in ("mean", "none")]
    + [dict(BASE, propagation=p, sparsity=s, token_scale=t)
       for p in ("graph", "mean", "none") for s in (1.0, 0.6) for t in (True, False)]
    + [dict(BASE, num_neighbours=3, alpha=0.5), dict(BASE, num_prop=[0, 20, 3, 0, 40, 5, 9, 1, 0, 30, 2, 60])]
)


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "-".join(str(v) for v in c.values()).replace(" ", ""))
def test_matches_the_reference_loop(cfg):
    # the slow loop runs on both images for the published setting, on the 2nd one otherwise
    assert_matches_reference(random_model("deit_tiny_patch16_224"), images(2), cfg,
                             check=(0, 1) if cfg == BASE else (1,))


def test_matches_the_reference_with_a_distillation_token():
    assert_matches_reference(random_model("deit_small_distilled_patch16_224"), images(1), BASE)


def test_global_pool_model_without_prefix_tokens():
    model = random_model("vit_small_patch16_224", class_token=False, global_pool="avg")
    assert model.num_prefix_tokens == 0
    assert_matches_reference(model, images(1), dict(BASE, selection="img_attn_mean"))


def test_register_tokens_are_never_propagated():
    model = random_model("vit_small_patch16_224", reg_tokens=4)
    assert model.num_prefix_tokens == 5
    assert_matches_reference(model, images(1), BASE)


def test_each_image_of_a_batch_gets_what_it_gets_alone():
    model = gtp.patch(random_model("deit_tiny_patch16_224"), **BASE)
    x = images(4)
    with torch.inference_mode():
        with gtp.trace(model) as rec:
            batch = model(x)
        for i in range(4):
            with gtp.trace(model) as alone:
                single = model(x[i:i + 1])
            assert torch.allclose(single[0], batch[i], atol=1e-5)
            for lb, la in zip(rec.layers, alone.layers):
                assert torch.equal(lb.propagated[i], la.propagated[0])
    # and the images really were treated differently
    assert not torch.equal(rec.layers[0].propagated[0], rec.layers[0].propagated[1])


def test_graph_propagation_with_zero_alpha_is_pruning():
    model = random_model("deit_tiny_patch16_224")
    x = images()
    with torch.inference_mode():
        gtp.patch(model, **dict(BASE, alpha=0.0))
        graph = model(x)
        gtp.patch(model, **dict(BASE, propagation="none"))
        none = model(x)
    assert torch.allclose(graph, none, atol=1e-6)


def test_other_input_sizes_use_the_patch_embedding_grid():
    model = random_model("deit_tiny_patch16_224", img_size=(160, 256))
    x = torch.randn(1, 3, 160, 256, generator=torch.Generator().manual_seed(3))
    assert_matches_reference(model, x, BASE)
    with torch.inference_mode(), gtp.trace(model) as rec:
        model(x)
    assert rec.grid_size == (10, 16)
    assert rec.layers[0].tokens_in == 1 + 160


def test_large_schedule_never_removes_the_last_patch_tokens():
    model = gtp.patch(random_model("deit_tiny_patch16_224"), num_prop=100)
    with torch.inference_mode(), gtp.trace(model) as rec:
        model(images(1))
    assert rec.tokens_per_block()[0] == 197 - 100
    assert rec.tokens_per_block()[-1] == 197 - 100  # 96 patch tokens left <= P: no more propagation


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize("bad, message", [
    (dict(num_prop=196), r"\[0, 195\]"),
    (dict(num_prop=-1), r"\[0, 195\]"),
    (dict(num_prop=[8] * 11), "12 entries"),
    (dict(sparsity=0.0), r"\(0, 1\]"),
    (dict(sparsity=1.5), r"\(0, 1\]"),
    (dict(alpha=-0.1), ">= 0"),
    (dict(graph="knn"), "spatial, semantic, mixed"),
    (dict(selection="best"), "mixed_attn_max"),
    (dict(propagation="diffuse"), "graph, mean, none"),
    (dict(num_neighbours=0), r"\[1, 195\]"),
])
def test_bad_parameters_name_the_valid_range(bad, message):
    model = random_model("deit_tiny_patch16_224")
    with pytest.raises(ValueError, match=message):
        gtp.patch(model, **bad)


def test_patch_again_reconfigures_and_unpatch_restores():
    model = random_model("deit_tiny_patch16_224")
    x = images(1)
    with torch.inference_mode():
        expected = model(x)
        gtp.patch(model, num_prop=8)
        gtp.patch(model, num_prop=16)
        assert gtp.config_of(model).num_prop == [16] * 12
        with gtp.trace(model) as rec:
            model(x)
        assert rec.tokens_per_block()[0] == 197 - 16
        gtp.unpatch(model)
        assert torch.equal(model(x), expected)
    assert gtp.config_of(model) is None


def test_gradients_flow_through_a_patched_model():
    """Training through GTP (sparsification included) works and computes the same forward."""
    model = random_model("deit_tiny_patch16_224")
    gtp.patch(model, num_prop=8, sparsity=0.6)
    x = images(2)
    with torch.inference_mode():
        expected = model(x)
    logits = model(x)
    assert torch.allclose(logits, expected, atol=1e-5)
    logits.logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.blocks[5].attn.qkv.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- pure functions
@pytest.mark.parametrize("numba", [True, False])
def test_attention_with_the_selection_statistics_matches_its_parts(numba, monkeypatch):
    """Both attention paths (the image-by-image CPU kernel, the batched one) equal the map built step by step."""
    if numba and not kernels.radix_select.available():
        pytest.skip("numba is not installed")
    if not numba:
        monkeypatch.setattr(kernels.radix_select, "available", lambda: False)
    assert kernels.cpu_attention.applies(*(torch.zeros(1, 1, 2, 2),) * 3, None) == numba
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(3, 2, 40, 16, generator=gen) for _ in range(3))
    size = torch.rand(3, 40, generator=gen) + 0.5
    for sparsity in (1.0, 0.6):
        attended = G.attention(q, k, v, size, sparsity, scale=0.25, statistics=True, keep_maps=True)
        dense = G.attention_map(q, k, size, 0.25)
        amap, _ = kernels.sparsify(dense.clone(), sparsity)
        assert torch.allclose(attended.dense_map, dense, atol=1e-7)
        assert torch.equal(attended.sparse_map == 0, amap == 0)
        assert torch.allclose(attended.out, amap @ v, atol=1e-6)
        diagonal, column_sums = attended.statistics
        assert torch.allclose(diagonal, amap.diagonal(dim1=-2, dim2=-1), atol=1e-7)
        assert torch.allclose(column_sums, amap.sum(-2), atol=1e-6)
        bare = G.attention(q, k, v, size, sparsity, scale=0.25)
        assert bare.statistics is None and bare.dense_map is None and bare.sparse_map is None
        assert torch.equal(bare.out, attended.out)


def test_selection_asks_for_what_it_reads():
    assert {G.selection_input(s) for s in gtp.SELECTIONS if "_attn_" in s and "cls" not in s} == {"statistics"}
    assert G.selection_input("cls_attn_max") == G.selection_input("cls_attn_mean") == "cls_row"
    assert G.selection_input("cos_sim_max") == G.selection_input("cos_sim_mean") == "map"
    assert G.selection_input("random") == "none"
    with pytest.raises(ValueError, match="selection"):
        G.selection_input("best")


def test_random_selection_ignores_the_attention():
    """The "random" ablation scores tokens with uniform noise, not with the map."""
    out = torch.zeros(2, 3, 11, 4)  # only its shape matters
    score, regeneration, broadcasting = G.selection_scores(
        G.Attention(out, None, None, None), 1, "random", torch.Generator().manual_seed(5))
    assert torch.equal(score, torch.rand(2, 10, generator=torch.Generator().manual_seed(5)))
    assert regeneration is None and broadcasting is None
    model = gtp.patch(random_model("deit_tiny_patch16_224"), num_prop=4, selection="random")
    runs = []
    for seed in (0, 1):  # the same photo, other noise: other tokens propagated
        torch.manual_seed(seed)
        with torch.inference_mode(), gtp.trace(model) as rec:
            model(images(1))
        runs.append([layer.propagated for layer in rec.layers])
    assert len(runs[0]) == 12 and any(not torch.equal(a, b) for a, b in zip(*runs))


def test_graph_normalisation_and_neighbours():
    w = G.build_graph(torch.randn(1, 16, 8), (4, 4), "spatial")[0]
    assert (w > 0).sum(1).tolist() == [3, 5, 5, 3, 5, 8, 8, 5, 5, 8, 8, 5, 3, 5, 5, 3]
    assert torch.isclose(w[0, 1], torch.tensor(1 / (3 * 5) ** 0.5))
    sem = G.semantic_adjacency(G.cosine_similarity(torch.randn(2, 16, 8)), 4)
    assert (sem.sum(-1) == 4).all() and (sem.diagonal(dim1=1, dim2=2) == 0).all()


def test_a_patched_model_can_be_deep_copied(image_batch):
    """bench and cost copy patched models: the copy runs the same method (GTP and ToMe)."""
    import copy

    from gtp import tome
    x = image_batch[:1]
    for model in (gtp.patch(random_model("deit_tiny_patch16_224"), num_prop=8),
                  tome.patch(random_model("deit_tiny_patch16_224"), r=8)):
        twin = copy.deepcopy(model)
        with torch.inference_mode():
            assert torch.equal(model(x), twin(x))
