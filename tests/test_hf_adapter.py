"""GTP and ToMe on Hugging Face transformers models give the same answers as on timm's.

Each family timm also has (ViT, DeiT, DINOv2 with and without registers, CLIP's and SigLIP's
vision towers) is built twice from one tiny seeded timm model: as timm, and as the transformers
class by our own weight mapping (tests/hf_convert.py, no hub). Unpatched, both compute the same
features and logits; patched, both propagate (ToMe: merge) the same original patch ids in every
block, with the same token sizes and features.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import gtp
from gtp import adapters, hf_adapter, methods, tome
from gtp.measure.metrics import features_and_logits

from conftest import ROOT

pytest.importorskip("transformers")
from hf_convert import IMG, PAIRS, clip, deit, dinov2, siglip, vit  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

GTP_SETTINGS = [dict(num_prop=3),
                dict(num_prop=4, sparsity=0.6, graph="spatial", selection="diag_attn_mean"),
                dict(num_prop=[2, 5, 1], alpha=0.3, graph="semantic", num_neighbours=3, selection="mixed_attn_max")]


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))


def _outputs(model, x, has_head=None):
    with torch.inference_mode():
        return features_and_logits(model, x, has_head) if has_head is not None else features_and_logits(model, x)


def _traced(model, x, has_head=None):
    """(features, propagated ids per block, token sizes per block) of one traced forward."""
    with gtp.trace(model) as rec:
        feats, _ = _outputs(model, x, has_head)
    return feats, [layer.propagated.tolist() for layer in rec.layers], [layer.sizes for layer in rec.layers]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", list(PAIRS))
def test_the_same_answers_as_timm(family, attn, x):
    timm_model, hf_model = PAIRS[family](attn=attn)
    has_head = timm_model.num_classes > 0
    (ft, lt), (fh, lh) = _outputs(timm_model, x, has_head), _outputs(hf_model, x)
    torch.testing.assert_close(fh, ft, rtol=1e-5, atol=1e-5)           # unpatched: one function
    if has_head:
        torch.testing.assert_close(lh, lt, rtol=1e-5, atol=1e-5)
    for settings in GTP_SETTINGS:
        for m in (timm_model, hf_model):
            gtp.patch(m, **settings)
        (ft, ids_t, sizes_t), (fh, ids_h, sizes_h) = _traced(timm_model, x, has_head), _traced(hf_model, x)
        assert ids_h == ids_t and any(ids_h)                            # the same patches leave each block
        for a, b in zip(sizes_h, sizes_t):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(fh, ft, rtol=1e-5, atol=1e-5)
    for m in (timm_model, hf_model):
        methods.apply_method(m, "tome", 3, record=True)
    (ft, _), (fh, _) = _outputs(timm_model, x, has_head), _outputs(hf_model, x)
    assert [a.tolist() for a in tome.merged_ids_of(hf_model)] == [a.tolist() for a in tome.merged_ids_of(timm_model)]
    assert tome.sizes_of(hf_model).tolist() == tome.sizes_of(timm_model).tolist()
    torch.testing.assert_close(fh, ft, rtol=1e-5, atol=1e-5)


CLASSES = {
    "ViTModel": lambda attn: vit("ViTModel", attn)[1],
    "ViTForImageClassification": lambda attn: vit(attn=attn)[1],
    "DeiTModel": lambda attn: deit("DeiTModel", attn)[1],
    "DeiTForImageClassification": lambda attn: deit("DeiTForImageClassification", attn)[1],
    "DeiTForImageClassificationWithTeacher": lambda attn: deit(attn=attn)[1],
    "Dinov2Model": lambda attn: dinov2(0, attn)[1],
    "Dinov2WithRegistersModel": lambda attn: dinov2(2, attn)[1],
    "CLIPVisionModel": lambda attn: clip(False, attn)[1],
    "CLIPModel": lambda attn: clip(True, attn)[1],
    "SiglipVisionModel": lambda attn: siglip(attn)[1],
}


def _raw(model, x):
    """Every tensor the model returns (logits, hidden states, pooled output)."""
    with torch.inference_mode():
        out = adapters.forward(model, x)
    return [v for v in out.values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(CLASSES))
def test_patch_at_no_reduction_and_unpatch_give_the_exact_outputs(name, attn, x):
    model = CLASSES[name](attn)
    assert type(model).__name__ == name and model.config._attn_implementation == attn
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _raw(model, x)
    gtp.patch(model, num_prop=0, sparsity=1.0, token_scale=False)
    assert all(type(b).__name__.startswith("GTP") for b in hf_adapter.blocks(model))
    patched = _raw(model, x)
    gtp.unpatch(model)
    restored = _raw(model, x)
    for e, p, r in zip(expected, patched, restored, strict=True):
        assert torch.equal(p, e) and torch.equal(r, e)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # weights untouched
    gtp.patch(model, num_prop=2)                                   # and a reduction changes them
    assert not torch.equal(_raw(model, x)[0], expected[0])
    gtp.unpatch(model)


def test_gmacs_fall_with_the_tokens_as_on_timm():
    timm_model, hf_model = vit()
    full = gtp.gmacs(hf_model, IMG)
    assert full == pytest.approx(gtp.gmacs(timm_model, IMG), rel=1e-6)
    for m in (timm_model, hf_model):
        gtp.patch(m, num_prop=4)
    reduced = gtp.gmacs(hf_model, IMG)
    assert reduced == pytest.approx(gtp.gmacs(timm_model, IMG), rel=1e-6) and reduced < full


def test_an_unsupported_class_names_the_supported_ones():
    import transformers
    cfg = transformers.ViTConfig(image_size=IMG, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=16)
    model = transformers.ViTForMaskedImageModeling(cfg)
    for patch in (gtp.patch, tome.patch):
        with pytest.raises(ValueError, match="supports these transformers models: ViTModel, .*SiglipVisionModel"):
            patch(model)
    with pytest.raises(ValueError, match="got Linear"):
        gtp.patch(torch.nn.Linear(2, 2))


def test_dinov2_follows_the_image_size(x):
    _, model = dinov2()
    gtp.patch(model, num_prop=2)
    big = torch.randn(1, 3, 2 * IMG, 3 * IMG)       # DINOv2 interpolates its position encodings
    with gtp.trace(model) as rec, torch.inference_mode():
        model(pixel_values=big)
    assert rec.grid_size == (8, 12) and rec.layers[0].tokens_in == 1 + 96


def test_a_timm_model_never_imports_transformers():
    code = ("import sys, torch, gtp, app, gtp.models\n"
            "from gtp.methods import apply_method\n"
            "from conftest import small_vit\n"
            "m = apply_method(small_vit(), 'gtp', 2); gtp.gmacs(m, 64)\n"
            "with gtp.trace(m): m(torch.randn(1, 3, 64, 64))\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'transformers'))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_cls_attention_methods_are_left_out_on_a_model_without_cls():
    _, model = siglip()
    assert [m.name for m in methods.compared(model)] == [m.name for m in methods.compared() if m.name != "pruning"]
    with pytest.raises(ValueError, match="needs a CLS token"):
        methods.apply_method(model, "pruning", 2)
    assert "pruning" in [m.name for m in methods.compared(vit()[1])]
