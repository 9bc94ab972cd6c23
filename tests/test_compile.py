"""torch.compile of a patched model: one graph per forward, theta < 1 included, same output as eager.

`torch._dynamo.explain` traces without compiling (fast); the outputs are compared
with the "aot_eager" backend, which runs the traced graph after AOTAutograd's
functionalisation (the fake implementation of the numba op included) but skips
inductor's C++ code generation, minutes on a busy 2-core machine.
"""
from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import gtp
from gtp import kernels
from conftest import random_model


def tiny_vit() -> VisionTransformer:
    """A 3-block ViT on 32 x 32 images (64 patch tokens): every choice compiles in seconds."""
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=10).eval()


def explain(model: torch.nn.Module, x: torch.Tensor):
    torch._dynamo.reset()
    with torch.inference_mode():
        return torch._dynamo.explain(model)(x)


@pytest.mark.parametrize("sparsity", [1.0, 0.6])
def test_deit_forward_is_one_graph(sparsity):
    model = gtp.patch(random_model("deit_tiny_patch16_224"), num_prop=8, sparsity=sparsity)
    assert len({type(block) for block in model.blocks}) == 1  # one class: no recompilation per block
    result = explain(model, torch.randn(2, 3, 224, 224))
    assert result.graph_break_count == 0 and result.graph_count == 1, result.break_reasons
    code = result.graphs[0].code
    if sparsity < 1.0 and kernels.radix_select.available():
        assert "radix_sparsify_" in code  # the numba kernel, as one opaque op of the graph


CHOICES = ([dict(selection=s) for s in gtp.SELECTIONS] + [dict(graph=g) for g in gtp.GRAPHS]
           + [dict(propagation=p) for p in gtp.PROPAGATIONS] + [dict(token_scale=False, sparsity=0.3)])


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: "-".join(map(str, c.values())))
def test_every_choice_is_one_graph(choice):
    model = gtp.patch(tiny_vit(), **dict(dict(num_prop=8, sparsity=0.6), **choice))
    result = explain(model, torch.randn(2, 3, 32, 32))
    assert result.graph_break_count == 0 and result.graph_count == 1, result.break_reasons


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("cfg", [dict(num_prop=8, sparsity=0.6), dict(num_prop=8, sparsity=1.0),
                                 dict(num_prop=4, sparsity=0.5, selection="cos_sim_mean", propagation="mean")],
                         ids=lambda c: "-".join(map(str, c.values())))
def test_compiled_model_matches_eager(cfg, numba, monkeypatch):
    if numba and not kernels.radix_select.available():
        pytest.skip("numba is not installed")
    if not numba:
        monkeypatch.setattr(kernels.radix_select, "available", lambda: False)
    model = gtp.patch(tiny_vit(), **cfg)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.inference_mode():
        expected = model(x)
        expected_ids = model._gtp_state.ids.clone()
        model._gtp_state.ids = torch.full_like(expected_ids, -1)   # only the compiled run can write them back
        got = compiled(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(model._gtp_state.ids, expected_ids)  # the same tokens left, block by block
    with torch.inference_mode(), gtp.trace(model) as rec:  # tracing still works on the eager model
        model(x)
    assert torch.equal(rec.layers[-1].kept, expected_ids)


def test_recompiles_stay_under_the_limit():
    """Twelve blocks share one forward: compiling deit_tiny and calling it again needs no recompilation."""
    from torch._dynamo.utils import counters
    model = gtp.patch(random_model("deit_tiny_patch16_224"), num_prop=8, sparsity=0.6)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        first = compiled(x)
        again = compiled(x)
    assert torch.equal(first, again)
    assert counters["stats"]["unique_graphs"] == 1


def test_tome_forward_is_one_graph():
    """ToMe (sync-free, one block class) also traces as one graph with no break."""
    from gtp import tome
    model = tome.patch(random_model("deit_tiny_patch16_224"), r=8)
    assert len({type(block) for block in model.blocks}) == 1
    result = explain(model, torch.randn(2, 3, 224, 224))
    assert result.graph_break_count == 0 and result.graph_count == 1, result.break_reasons
