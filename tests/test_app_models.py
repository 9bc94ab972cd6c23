"""The loaded models (app/models.py): a bounded cache; a refused weights file frees the model
it built (issue 12 A: refused models stayed referenced through the exception's frames)."""
from __future__ import annotations

import gc
import os
import weakref

import pytest
import timm.models._builder as builder
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.core import limits, models  # noqa: E402
from app.core.errors import InputError  # noqa: E402
from conftest import random_model  # noqa: E402


def test_unknown_model_is_refused_by_name():
    with pytest.raises(InputError, match="resnet50"):
        models.get_model("resnet50")


@pytest.mark.parametrize("target", ["deit_small_patch16_224", "deit_tiny_patch16_224"])
def test_a_refused_weights_file_frees_the_model_it_built(tmp_path, monkeypatch, target):
    """deit_tiny weights for deit_small (wrong shapes), and for deit_tiny with a key missing."""
    state = random_model("deit_tiny_patch16_224").state_dict()
    if target == "deit_tiny_patch16_224":
        state.pop("head.bias")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    built: list[weakref.ref] = []
    original = builder.load_pretrained

    def recording(model, *args, **kwargs):
        built.append(weakref.ref(model))
        return original(model, *args, **kwargs)
    monkeypatch.setattr(builder, "load_pretrained", recording)
    before = len(models.MODELS)
    with pytest.raises(InputError, match="could not load weights") as info:
        models.get_model(target, str(path))
    assert built, "the load never built a model"
    assert info.value.__context__ is None and info.value.__cause__ is None  # no chain back to the frames
    del info
    assert built[0]() is None, "the refused model is still alive"
    assert len(models.MODELS) == before


def test_the_model_cache_is_bounded(tmp_path):
    """One more model than the cache holds (deit_tiny with the server's weights and with
    MODEL_CACHE_ENTRIES weights files of its own: cheap to build): the least recently used is
    dropped, and its memory with it; the others stay; asked for again, it is loaded afresh."""
    tiny = "deit_tiny_patch16_224"
    weights = [None]
    for seed in range(limits.MODEL_CACHE_ENTRIES):
        path = tmp_path / f"tiny_{seed}.safetensors"
        save_file(random_model(tiny, seed).state_dict(), str(path))
        weights.append(str(path))
    models.MODELS.clear()
    first = weakref.ref(models.get_model(tiny, weights[0]).model)
    for w in weights[1:]:
        models.get_model(tiny, w)
    assert len(models.MODELS) == limits.MODEL_CACHE_ENTRIES
    assert not models.is_loaded(tiny, weights[0]) and all(models.is_loaded(tiny, w) for w in weights[1:])
    gc.collect()
    assert first() is None, "the dropped model is still alive"
    models.get_model(tiny, weights[0])   # loaded again; now weights[1] is the least recently used
    assert models.is_loaded(tiny, weights[0]) and not models.is_loaded(tiny, weights[1])


def test_messages_name_files_never_their_folders():
    from app.core.errors import file_names_only
    assert file_names_only("could not load weights from '/srv/x/y/m.safetensors': bad") == \
        "could not load weights from 'm.safetensors': bad"
    assert file_names_only("Loaded weights from /a/b/c.pth (timm), P=8/12") == "Loaded weights from c.pth (timm), P=8/12"
    assert models.weights_banner("m", True, "from /home/u/w.safetensors") == "Weights: from w.safetensors"


def test_the_console_says_when_a_model_has_random_weights(caplog):
    """Offline, a model without pretrained weights runs randomly initialised: the page's banner says
    so, and the server's log too (one warning, when it is loaded)."""
    models.MODELS.clear()
    with caplog.at_level("WARNING", logger="gtp.app"):
        slot = models.get_model("deit_tiny_patch16_224")
        models.get_model("deit_tiny_patch16_224")          # from the cache: said once
    said = [r for r in caplog.records if "RANDOMLY INITIALISED" in r.getMessage()]
    assert not slot.loaded.pretrained and len(said) == 1 and "deit_tiny_patch16_224" in said[0].getMessage()
