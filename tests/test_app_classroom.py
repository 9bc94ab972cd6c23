"""A Space a classroom can share: the example photos at the published setting run once and are
served to every session; a class opening the page at once is served from that one run; the
Space's build preloads the default model's weights and installs a torch ZeroGPU supports."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.core import classroom, inference, limits, models  # noqa: E402
from app.core.assets import EXAMPLE_PHOTOS  # noqa: E402
from app.core.photos import open_photo  # noqa: E402
from app.core.settings import DEFAULT_MODEL, PUBLISHED_SETTINGS, make_settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAT = ROOT / "assets" / "chelsea.png"
TINY = dataclasses.replace(PUBLISHED_SETTINGS, model="deit_tiny_patch16_224")   # published setting, cheap model


@pytest.fixture
def counted(monkeypatch) -> dict[str, list]:
    """The GPU functions' calls, by name (the real functions still run)."""
    calls: dict[str, list] = {"run_photo": [], "compare_photo": []}
    for name in calls:
        fn = getattr(inference, name)
        monkeypatch.setattr(fn, "on_gpu", lambda job, real=fn.on_gpu, name=name: calls[name].append(job) or real(job))
    inference.forget_runs()
    yield calls
    inference.forget_runs()


def test_the_examples_at_the_published_setting_run_once_for_every_session(counted, tmp_path, monkeypatch):
    """Eight sessions at once, each with its own copy of the file: one run, one shared result;
    uploads do not push it out; the comparison is shared too; a model loaded anew invalidates it."""
    copies = [shutil.copy(CAT, tmp_path / f"session{i}.png") for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda path: inference.explore_photo(open_photo(str(path)), TINY), copies))
    assert len(counted["run_photo"]) == 1 and all(r is runs[0] for r in runs)
    key = runs[0].key
    assert key in classroom.SHARED and key not in inference.RUNS
    assert classroom.SHARED.max_entries == len(EXAMPLE_PHOTOS) * limits.MODEL_CACHE_ENTRIES
    # Uploads and other settings fill the other cache; the shared run stays.
    monkeypatch.setattr(inference.RUNS, "max_entries", 1)
    for p in (3, 4):
        inference.explore_photo(open_photo(str(CAT)), make_settings(TINY.model, num_prop=p))
    assert inference.explore_photo(open_photo(str(copies[0])), TINY) is runs[0]
    assert len(counted["run_photo"]) == 3
    # The Compare tab of the shared run: run once, then every session's.
    done = inference.compared(runs[0])
    assert inference.compared(runs[1]) is done and len(counted["compare_photo"]) == 1
    assert inference.explore_photo(open_photo(str(copies[2])), TINY) is done
    # A model (or weights) loaded anew: the shared run is made again with it.
    fresh = models.ModelSlot(models.get_model(TINY.model).loaded)
    monkeypatch.setattr(inference, "get_model", lambda *args, **kwargs: fresh)
    again = inference.explore_photo(open_photo(str(copies[3])), TINY)
    assert again is not done and len(counted["run_photo"]) == 4 and classroom.get(key, fresh) is again


def test_only_examples_at_the_published_setting_are_shared(counted, tmp_path):
    from PIL import Image
    Image.open(CAT).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "upload.png")
    inference.explore_photo(open_photo(str(tmp_path / "upload.png")), TINY)            # not an example
    inference.explore_photo(open_photo(str(CAT)), make_settings(TINY.model, alpha=0.2))   # not published
    assert len(classroom.SHARED) == 0 and len(inference.RUNS) == 2


def load_script():
    spec = importlib.util.spec_from_file_location("classroom_load", ROOT / "scripts" / "classroom_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_class_opening_the_page_at_once_is_served_from_one_run(url, counted):
    """Eight sessions open the page together, as browsers do (page load, then the run of the first
    example, over Gradio's queue): every one gets its panels, and the models run once.
    `python scripts/classroom_load.py` does the same with 30 and reports the times."""
    results = load_script().burst(url, 8)
    assert [r.get("error") for r in results] == [None] * 8
    assert all("451 × 300" in r["status"] and r["panels_s"] <= r["done_s"] for r in results)
    assert len(counted["run_photo"]) == 1 and counted["run_photo"][0].settings.model == DEFAULT_MODEL


# ----------------------------------------------------------------------------- the Space's build


def front_matter() -> dict:
    import yaml
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_space_preloads_the_default_model_and_dinov2_weights_timm_reads():
    """`preload_from_hub` names the hub repositories and file timm's pretrained configs point at
    for the default model and the DINOv2 backbone the app offers, in the form the Spaces docs
    give ("repository file1,file2")."""
    import timm
    from gtp.models import SUPPORTED_MODELS, _HUB_FILES
    entries = dict(line.split(" ", 1) for line in front_matter()["preload_from_hub"])
    wanted = [DEFAULT_MODEL] + [m for m in SUPPORTED_MODELS if "dinov2" in m and "/" not in m]  # timm names (hub ids: transformers)
    assert set(entries) == {timm.models.get_pretrained_cfg(m).hf_hub_id for m in wanted}
    assert set(entries.values()) == {_HUB_FILES[0]}   # the file gtp.models looks for first


def test_preloaded_weights_load_with_no_download(tmp_path, monkeypatch):
    """What `preload_from_hub` leaves in the hub cache is what the app loads, offline."""
    import huggingface_hub.constants
    import timm
    import torch
    from safetensors.torch import save_file
    from gtp.models import load_model
    repo, filename = next(iter(front_matter()["preload_from_hub"])).split(" ")
    assert repo == timm.models.get_pretrained_cfg(DEFAULT_MODEL).hf_hub_id
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(3)
    weights = timm.create_model(DEFAULT_MODEL, pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(snapshot / filename))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("GTP_WEIGHTS_DIR", raising=False)
    loaded = load_model(DEFAULT_MODEL, device="cpu")
    assert loaded.source == "hub" and loaded.pretrained
    assert torch.equal(loaded.model.state_dict()["blocks.0.attn.qkv.weight"], weights["blocks.0.attn.qkv.weight"])


# ZeroGPU's torch versions as issue 24 quotes the Spaces documentation (2.8 to 2.11 now), with the older list.
ZEROGPU_TORCH = ("2.1.0", "2.1.1", "2.1.2", "2.2.0", "2.2.2", "2.4.0", "2.5.1", "2.6.0", "2.7.1", "2.8.0", "2.9.0", "2.9.1",
                 "2.10.0", "2.11.0")
"""The torch versions ZeroGPU supports, as huggingface.co/docs/hub/spaces-zerogpu lists them."""


def pins(path: Path) -> dict[str, str]:
    from packaging.requirements import Requirement
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {(r := Requirement(line)).name: r.specifier for line in lines if line}


def test_the_space_pins_a_torch_zerogpu_supports_and_local_installs_keep_their_range():
    """pre-requirements.txt (installed first on a Space) pins a supported torch and its
    torchvision; requirements.txt (all a local install reads) keeps its range, which the pins
    meet, so pip keeps them on the Space."""
    pre, main = pins(ROOT / "pre-requirements.txt"), pins(ROOT / "requirements.txt")
    torch_pin = next(iter(pre["torch"])).version
    vision_pin = next(iter(pre["torchvision"])).version
    assert all(s.operator == "==" for name in ("torch", "torchvision") for s in pre[name])
    assert torch_pin in ZEROGPU_TORCH and (torch_pin, vision_pin) == ("2.11.0", "0.26.0")   # a matched pair
    assert str(main["torch"]) == "<=2.14.1,>=2.1" and main["torch"].contains(torch_pin)
    assert main["torchvision"].contains(vision_pin)
    assert "pre-requirements" not in (ROOT / "requirements.txt").read_text()
