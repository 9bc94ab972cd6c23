"""Hub ids of transformers models load offline, with their image processing and the honest message."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

import gtp
from gtp import adapters, hf_models
from gtp.measure.metrics import features_and_logits

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_hub_ids_are_listed_with_the_timm_models():
    assert list(hf_models.HUB_MODELS) == [n for n in gtp.SUPPORTED_MODELS if "/" in n]
    assert "deit_small_patch16_224" in gtp.SUPPORTED_MODELS


@pytest.mark.parametrize("name", list(hf_models.HUB_MODELS))
def test_each_published_configuration_builds_a_supported_model(name):
    spec = hf_models.HUB_MODELS[name]
    with torch.device("meta"):   # shapes only: no memory, no time
        model = hf_models._random(name, 0)
    assert type(model).__name__ == spec.model_class
    adapters.of(model).check_model(model, "test")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    expected = {"small": (21, 23), "base": (85, 94)}["small" if "small" in name else "base"]
    assert expected[0] <= params <= expected[1], params       # the published size (ViT-S 22M, ViT-B 86M)


def test_a_hub_model_loads_offline_with_random_weights_and_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = gtp.load_model("facebook/deit-small-patch16-224", device="cpu")
    assert loaded.source == "random" and not loaded.pretrained and "RANDOM weights" in loaded.message
    assert loaded.has_head and len(loaded.class_names) == 1000 and loaded.img_size == (224, 224)
    again = gtp.load_model("facebook/deit-small-patch16-224", device="cpu")   # seeded: the same weights
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.parameters(), again.model.parameters()))
    white = gtp.preprocess(Image.new("RGB", (320, 200), (255, 255, 255)), loaded)
    assert white.shape == (1, 3, 224, 224)     # DeiT's processor: resize to 256, crop 224, ImageNet mean/std
    expected = [(1 - m) / s for m, s in zip(hf_models.IMAGENET_MEAN, hf_models.IMAGENET_STD)]
    torch.testing.assert_close(white[0, :, 100, 100], torch.tensor(expected), atol=1e-3, rtol=0)
    gtp.patch(loaded.model, num_prop=8)
    with gtp.trace(loaded.model) as rec, torch.inference_mode():
        feats, logits = features_and_logits(loaded.model, white)
    assert rec.tokens_per_block()[-1] == 197 - 12 * 8 and logits.shape == (1, 1000) and feats.shape == (1, 384)
    with pytest.raises(ValueError, match="weights file is read for timm models only"):
        gtp.load_model("facebook/deit-small-patch16-224", weights="x.safetensors")
