"""gtp.models: the supported list, weight sources and their fallbacks, image preprocessing."""
from __future__ import annotations

import socket
import threading
import weakref

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import gtp.models as M
from gtp.weights import MAX_MESSAGE_CHARS
from conftest import DINOV2_FILE, dinov2_model, random_model

TINY = "deit_tiny_patch16_224"


@pytest.fixture
def no_local(monkeypatch, tmp_path):
    """No local weights anywhere: an empty GTP_WEIGHTS_DIR, no shared/weights, no hub cache."""
    monkeypatch.setenv("GTP_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(M, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(M, "_cached_hub_file", lambda name: None)


@pytest.fixture(autouse=True)
def forget_refusals():
    """Refused files are remembered by content, and several tests build the same content."""
    M.REFUSED.clear()
    yield
    M.REFUSED.clear()


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


def test_offline_falls_back_to_random_without_the_hub(monkeypatch, no_local):
    # HF_HUB_OFFLINE=1 (conftest): the hub must not even be probed, nor a download tried.
    monkeypatch.setattr(M, "hub_reachable", lambda *a: pytest.fail("probed the hub while offline"))
    real, created = M._create, []

    def no_pretrained(name, **kw):
        created.append(kw)
        assert not kw.get("pretrained"), "tried to download while offline"
        return real(name, **kw)
    monkeypatch.setattr(M, "_create", no_pretrained)
    state = torch.random.get_rng_state()
    loaded = M.load_model(TINY, device="cpu")
    assert len(created) == 1, created
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
    """A probe that hangs (a DNS lookup ignores socket timeouts) does not hold the caller: the
    answer comes while the probe is still hanging, the timeout reaches the socket, and the answer
    is cached (one probe per process)."""
    calls, release, finished = [], threading.Event(), threading.Event()

    def hanging(address, timeout=None):
        calls.append(timeout)
        release.wait(60)          # hangs until the test lets it go
        finished.set()
        raise OSError("timed out")
    monkeypatch.setattr(socket, "create_connection", hanging)
    monkeypatch.setattr(M, "_hub_reachable", None)
    try:
        assert M.hub_reachable(timeout=0.3) is False
        assert not finished.is_set(), "the caller waited for the hanging probe"
        assert M.hub_reachable(timeout=0.3) is False
        assert calls == [0.3]     # the timeout passed on; the second answer from the cache
    finally:
        release.set()


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
    assert loaded.source == "file" and loaded.pretrained
    assert loaded.message == f"Loaded {TINY} weights from {path.name}."  # the name, not the folder
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
    assert loaded.message == f"Loaded {TINY} weights from {TINY}.safetensors."
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


def test_cast_and_non_finite_weights_load_with_a_note(tmp_path):
    state = random_model(TINY, 1).state_dict()
    int8 = {k: (v * 50).to(torch.int8) for k, v in state.items()}
    torch.save(int8, tmp_path / "int8.pth")
    loaded = M.load_model(TINY, weights=str(tmp_path / "int8.pth"), device="cpu")
    assert loaded.message == f"Loaded {TINY} weights from int8.pth (cast from int8 to float32)."
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, int8[key].float()), key
    half = {k: v.half() for k, v in state.items()}
    half["cls_token"][..., :5] = float("nan")
    half["head.bias"][0] = float("-inf")
    save_file(half, str(tmp_path / "half.safetensors"))
    loaded = M.load_model(TINY, weights=str(tmp_path / "half.safetensors"), device="cpu")
    assert "(cast from float16 to float32; contains 6 non-finite values (NaN/inf)" in loaded.message
    assert len(loaded.message) <= MAX_MESSAGE_CHARS


def test_refusals_name_the_file_not_its_folder(tmp_path):
    """Every refusal: a non-empty message of bounded length with the file's (cut) name only."""
    long = "w" * 200
    (tmp_path / f"{long}.txt").write_text("x")
    (tmp_path / f"{long}.safetensors").write_bytes(b"not a safetensors file")
    save_file(random_model("deit_small_patch16_224").state_dict(), str(tmp_path / "small.safetensors"))
    cases = {f"{long}.pth": "not found", f"{long}.txt": "must be a .safetensors",
             f"{long}.safetensors": "neither", "small.safetensors": "tensors take 84 MB"}
    for name, words in cases.items():
        with pytest.raises(ValueError, match=words) as info:
            M.load_model(TINY, weights=str(tmp_path / name), device="cpu")
        message = str(info.value)
        assert 0 < len(message) <= MAX_MESSAGE_CHARS and str(tmp_path) not in message
        assert name[:50] in message and long not in message  # a long name is cut


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
    # The shared file is float16: the message says so, and names no folder.
    assert "cast from float16 to float32" in lm.message and str(DINOV2_FILE.parent) not in lm.message


# ----------------------------------------------------------------------------- failed loads free memory


@pytest.fixture
def built_models(monkeypatch):
    """Weak references to every ViT constructed while the test runs (timm builds the model,
    then loads the file into it, so a failed load has built one the caller never sees)."""
    from timm.models.vision_transformer import VisionTransformer
    refs: list[weakref.ref] = []
    real_init = VisionTransformer.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        refs.append(weakref.ref(self))
    monkeypatch.setattr(VisionTransformer, "__init__", recording_init)
    return refs


def _weights_file(tmp_path, kind: str):
    """(model name, file) for a load that must fail."""
    if kind == "deit_small_into_deit_base":  # issue 12: about +340 MB kept per attempt before
        path = tmp_path / "deit_small.safetensors"
        save_file(random_model("deit_small_patch16_224", 4).state_dict(), str(path))
        return "deit_base_patch16_224", path
    if kind == "wrong_shape":  # right names, one tensor of the wrong shape
        sd = random_model(TINY, 4).state_dict()
        sd["head.weight"] = torch.zeros(10, sd["head.weight"].shape[1])
        path = tmp_path / "wrong_shape.safetensors"
        save_file(sd, str(path))
        return TINY, path
    path = tmp_path / "corrupt.safetensors"  # a valid file cut short
    save_file(random_model(TINY, 4).state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return TINY, path


@pytest.mark.parametrize("kind", ["deit_small_into_deit_base", "wrong_shape", "corrupt"])
def test_failed_load_frees_the_model_it_built(tmp_path, built_models, kind):
    name, path = _weights_file(tmp_path, kind)
    built_models.clear()  # only the models the failing load builds
    with pytest.raises(ValueError, match="could not load weights") as info:
        M.load_model(name, weights=str(path), device="cpu")
    # The error the caller holds carries no chain back to timm's frames ...
    assert info.value.__context__ is None and info.value.__cause__ is None
    if kind == "corrupt":  # a file cut short is refused by its check, before any model is built
        assert not built_models and "outside the file's data" in str(info.value)
        return
    assert built_models, "the failing load built no model: the test checks nothing"
    # ... and, with that error still held and without collecting here, the models are gone.
    assert all(ref() is None for ref in built_models), f"{kind}: a failed load kept its model alive"


def test_failed_loads_in_a_row_do_not_accumulate(tmp_path, built_models):
    name, path = _weights_file(tmp_path, "wrong_shape")
    built_models.clear()
    for _ in range(3):
        M.REFUSED.clear()  # else the second and third are refused from memory, building nothing
        try:
            M.load_model(name, weights=str(path), device="cpu")
        except ValueError as e:
            message = str(e)
    assert "could not load weights" in message and len(built_models) == 3
    assert [ref() for ref in built_models] == [None] * 3


def test_oversize_weights_file_refused_before_reading(tmp_path, monkeypatch, built_models):
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:  # sparse: takes no disk
        f.truncate(M.MAX_WEIGHTS_BYTES + 1)
    monkeypatch.setattr(M, "_create", lambda *a, **k: pytest.fail("an oversize file reached timm"))
    with pytest.raises(ValueError, match=f"limit is {M.MAX_WEIGHTS_BYTES // 2**20} MB"):
        M.load_model(TINY, weights=str(path), device="cpu")
    assert not built_models


def test_size_cap_has_room_for_the_largest_supported_model():
    """DeiT-B / ViT-B float32 weights (~350 MB) must fit under the cap."""
    with torch.device("meta"):  # shapes only: nothing allocated
        model = M.timm.create_model("deit_base_patch16_224")
    params = sum(p.numel() for p in model.parameters())
    assert params > 85e6
    assert params * 4 * 1.2 < M.MAX_WEIGHTS_BYTES


def test_failed_load_gives_freed_memory_back(tmp_path, monkeypatch):
    """Besides collecting, a failed load asks glibc to return freed heap (`malloc_trim`): without
    it the app's worker threads kept ~600 MB after failed DeiT-B loads (scripts/soak.py)."""
    calls = []

    class FakeLibc:
        def malloc_trim(self, pad):
            calls.append(pad)
    monkeypatch.setattr(M.ctypes, "CDLL", lambda name: FakeLibc())
    name, path = _weights_file(tmp_path, "wrong_shape")
    with pytest.raises(ValueError, match="could not load weights"):
        M.load_model(name, weights=str(path), device="cpu")
    assert calls == [0]
    M.REFUSED.clear()
    monkeypatch.setattr(M.ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError("no libc")))
    with pytest.raises(ValueError, match="could not load weights"):  # elsewhere: still the same error
        M.load_model(name, weights=str(path), device="cpu")
