"""gtp.models: the supported list, weight sources and their fallbacks, image preprocessing."""
from __future__ import annotations

import io
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import gtp.models as M
from conftest import DINOV2_FILE, dinov2_model, random_model

TINY = "deit_tiny_patch16_224"


@pytest.fixture
def no_local(monkeypatch, tmp_path):
    """No local weights anywhere: an empty GTP_WEIGHTS_DIR, no shared/weights, no hub cache."""
    monkeypatch.setenv("GTP_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(M, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(M, "_cached_hub_file", lambda name: None)


@pytest.fixture(scope="module")
def tiny_random():
    return M.load_model(TINY, device="cpu")


def _image() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def test_supported_models_listed_in_order():
    names = list(M.SUPPORTED_MODELS)
    for name in [TINY, "deit_small_patch16_224", "deit_base_patch16_224", "deit_small_distilled_patch16_224",
                 "vit_small_patch16_224.augreg_in21k_ft_in1k", "vit_base_patch16_224.augreg_in21k_ft_in1k",
                 "vit_small_patch14_dinov2"]:
        assert name in names and M.SUPPORTED_MODELS[name]
    assert names[0] == TINY


@pytest.mark.parametrize("name", ["resnet50", "deit_tiny_patch16_224 ", "../../etc/passwd", "", None])
def test_unknown_name_raises_before_timm(monkeypatch, name):
    def boom(*a, **k):
        raise AssertionError("an unsupported name reached timm.create_model")
    monkeypatch.setattr(M.timm, "create_model", boom)
    with pytest.raises(ValueError, match="supported models: deit_tiny_patch16_224"):
        M.load_model(name)


def test_offline_falls_back_to_random_quickly(monkeypatch, no_local):
    # HF_HUB_OFFLINE=1 (conftest): the hub must not even be probed.
    monkeypatch.setattr(M, "hub_reachable", lambda *a: pytest.fail("probed the hub while offline"))
    state = torch.random.get_rng_state()
    t0 = time.perf_counter()
    loaded = M.load_model(TINY, device="cpu")
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0, f"offline load took {elapsed:.1f} s"
    assert loaded.source == "random" and loaded.pretrained is False
    assert "RANDOM" in loaded.message and "meaningless" in loaded.message and "weights=" in loaded.message
    assert not loaded.model.training and loaded.has_head
    assert torch.equal(torch.random.get_rng_state(), state), "loading must not move the global RNG"
    # Seeded: the same weights as conftest's random_model(name, 0), every time.
    ref = random_model(TINY, M.RANDOM_SEED)
    for (k, a), (_, b) in zip(loaded.model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k


def test_unreachable_hub_falls_back_without_download(monkeypatch, no_local):
    monkeypatch.setattr(M, "_is_offline", lambda: False)
    monkeypatch.setattr(M, "hub_reachable", lambda *a: False)
    real = M._create

    def no_pretrained(name, **kw):
        assert not kw.get("pretrained"), "tried to download with the hub unreachable"
        return real(name, **kw)
    monkeypatch.setattr(M, "_create", no_pretrained)
    loaded = M.load_model(TINY, device="cpu")
    assert loaded.source == "random" and not loaded.pretrained and "unreachable" in loaded.message


def test_hub_errors_never_escape(monkeypatch, no_local):
    monkeypatch.setattr(M, "_is_offline", lambda: False)
    monkeypatch.setattr(M, "hub_reachable", lambda *a: True)
    real = M._create

    def failing_download(name, **kw):
        if kw.get("pretrained"):
            raise OSError("connection reset by peer")
        return real(name, **kw)
    monkeypatch.setattr(M, "_create", failing_download)
    loaded = M.load_model(TINY, device="cpu")
    assert loaded.source == "random" and not loaded.pretrained and "download failed" in loaded.message


def test_hub_probe_is_bounded_and_cached(monkeypatch):
    calls = []

    def hanging(*a, **k):
        calls.append(1)
        time.sleep(3)
        raise OSError("timed out")
    monkeypatch.setattr(socket, "create_connection", hanging)
    monkeypatch.setattr(M, "_hub_reachable", None)
    t0 = time.perf_counter()
    assert M.hub_reachable(timeout=0.3) is False
    assert M.hub_reachable(timeout=0.3) is False
    assert time.perf_counter() - t0 < 2.0
    assert len(calls) == 1


def test_cached_hub_file_is_used_without_network(monkeypatch, tmp_path, no_local):
    ref = random_model(TINY, 5)
    path = tmp_path / "model.safetensors"
    save_file(ref.state_dict(), str(path))
    monkeypatch.setattr(M, "_cached_hub_file", lambda name: str(path))
    monkeypatch.setattr(M, "hub_reachable", lambda *a: pytest.fail("probed the hub with cached weights"))
    loaded = M.load_model(TINY, device="cpu")
    assert loaded.source == "hub" and loaded.pretrained and "cache" in loaded.message
    x = _image()
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), ref(x))


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-model", "pt-state_dict"])
def test_weights_file_round_trips_exactly(tmp_path, fmt):
    ref = random_model(TINY, 1)
    sd = ref.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(sd, str(path))
    else:
        path = tmp_path / ("w.pth" if fmt.startswith("pth") else "w.pt")
        obj = {"pth": sd, "pth-model": {"model": sd, "epoch": 3}, "pt-state_dict": {"state_dict": sd}}[fmt]
        torch.save(obj, path)
    loaded = M.load_model(TINY, weights=str(path), device="cpu")
    assert loaded.source == "file" and loaded.pretrained and str(path) in loaded.message
    x = _image()
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), ref(x))


def test_weights_dir_env_is_looked_up_first(monkeypatch, tmp_path):
    ref = random_model(TINY, 2)
    save_file(ref.state_dict(), str(tmp_path / f"{TINY}.safetensors"))
    monkeypatch.setenv("GTP_WEIGHTS_DIR", str(tmp_path))
    assert M.weight_candidates(TINY)[0] == tmp_path / f"{TINY}.safetensors"
    loaded = M.load_model(TINY, device="cpu")
    assert loaded.source == "file" and loaded.pretrained
    x = _image()
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), ref(x))


def test_bad_weights_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        M.load_model(TINY, weights=str(tmp_path / "missing.safetensors"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not load weights"):
        M.load_model(TINY, weights=str(garbage))
    other = tmp_path / "small.safetensors"  # a DeiT-S state dict does not fit DeiT-Ti
    save_file(random_model("deit_small_patch16_224").state_dict(), str(other))
    with pytest.raises(ValueError, match="could not load weights"):
        M.load_model(TINY, weights=str(other))
    pickled = tmp_path / "module.pth"  # a whole pickled module: refused by weights_only=True
    torch.save({"model": torch.nn.Linear(2, 2), "fn": print}, pickled)
    with pytest.raises(ValueError, match="could not load weights"):
        M.load_model(TINY, weights=str(pickled))
    with pytest.raises(ValueError, match=".safetensors"):
        M.load_model(TINY, weights=__file__)


def test_bad_device_raises():
    with pytest.raises(ValueError, match="device"):
        M.load_model(TINY, device="not-a-device")


def test_loaded_fields(tiny_random):
    lm = tiny_random
    assert lm.name == TINY and lm.has_head and lm.img_size == (224, 224)
    assert lm.data_config["input_size"] == (3, 224, 224) and lm.data_config["crop_pct"] == 0.9
    assert len(lm.class_names) == 1000
    assert "Egyptian cat" in lm.class_names[285] and lm.class_names[0].startswith("tench")
    assert lm.device == torch.device("cpu")


def test_dinov2_shared_file_loads(monkeypatch):
    if not DINOV2_FILE.exists():
        pytest.skip(f"real weights not found at {DINOV2_FILE}")
    ref = dinov2_model()
    lm = M.load_model("vit_small_patch14_dinov2", weights=DINOV2_FILE, device="cpu")
    assert lm.source == "file" and lm.pretrained and not lm.has_head and lm.class_names is None
    # 224 px, not the 518 px of DINOv2's pretrained config.
    assert lm.data_config["input_size"] == (3, 224, 224) and lm.img_size == (224, 224)
    img = Image.fromarray((np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8))
    x = M.preprocess(img, lm)
    with torch.inference_mode():
        feat = lm.model(x)
        assert feat.shape == (1, 384)
        assert torch.equal(feat, ref(x))
    # Without weights= it is found in the repo's sibling shared/weights/.
    monkeypatch.delenv("GTP_WEIGHTS_DIR", raising=False)
    auto = M.load_model("vit_small_patch14_dinov2", device="cpu")
    assert auto.source == "file" and auto.pretrained and str(DINOV2_FILE.name) in auto.message


def _modes() -> dict[str, Image.Image]:
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    base = Image.fromarray(rgb, "RGB")
    p_transparent = base.convert("P")
    p_transparent.info["transparency"] = 0
    gif = io.BytesIO()
    base.save(gif, "GIF", save_all=True, append_images=[base.rotate(90)], duration=50)
    gif.seek(0)
    return {
        "RGB": base, "RGBA": base.convert("RGBA"), "LA": base.convert("LA"), "L": base.convert("L"),
        "1": base.convert("1"), "I;16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "I": base.convert("I"), "F": base.convert("F"), "CMYK": base.convert("CMYK"),
        "P": base.convert("P"), "P+transparency": p_transparent, "YCbCr": base.convert("YCbCr"),
        "GIF": Image.open(gif),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_preprocess_any_mode(tiny_random, mode):
    img = _modes()[mode]
    assert img.mode == mode.split("+")[0] or mode == "GIF"
    x = M.preprocess(img, tiny_random)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_preprocess_values(tiny_random):
    white = M.preprocess(Image.new("RGB", (64, 64), (255, 255, 255)), tiny_random)
    # 16-bit full scale is white, fully transparent pixels are shown on white.
    assert torch.allclose(M.preprocess(Image.new("I;16", (64, 64), 65535), tiny_random), white)
    assert torch.allclose(M.preprocess(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), tiny_random), white)
    grey = np.full((64, 64), 128, np.uint8)
    assert torch.allclose(M.preprocess(Image.fromarray(grey), tiny_random),
                          M.preprocess(Image.fromarray(np.stack([grey] * 3, -1)), tiny_random))


def test_load_image_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        M.load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="cannot read image"):
        M.load_image(bad)
    ok = tmp_path / "ok.png"
    Image.new("LA", (8, 8)).save(ok)
    assert M.load_image(ok).mode == "RGB"


def test_top_k():
    names = [f"c{i}" for i in range(10)]
    logits = torch.arange(10.0)
    top = M.top_k(logits, names, 3)
    assert [t[1] for t in top] == ["c9", "c8", "c7"]
    assert top[0][2] == pytest.approx(logits.softmax(-1)[9].item())
    assert M.top_k(logits, None, 1)[0][:2] == (9, "class 9")
