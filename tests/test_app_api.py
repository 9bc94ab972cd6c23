"""The `explore` and `compare` endpoints (app/api.py), end to end through gradio_client.

The app is launched in-process once for the module; every bad input must come back as an
error message and leave the server answering the next good request.
"""
from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gtp import methods  # noqa: E402

from conftest import DINOV2_FILE  # noqa: E402
from fidelity_by_hand import fidelity_by_hand  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent
CAT = str(ROOT / "assets" / "chelsea.png")
FAST = dict(model="deit_tiny_patch16_224")  # the cheapest model, for tests about plumbing


@pytest.fixture(scope="module")
def client(url):
    return Client(url, verbose=False)


# ----------------------------------------------------------------------------- files that go wrong


# ----------------------------------------------------------------------------- the API


def test_explore_endpoint_documents_defaults(client):
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/explore"]
    params = info["parameters"]
    assert params[0]["parameter_name"] == "image" and not params[0]["parameter_has_default"]
    assert [p["parameter_name"] for p in params[1:]] == [
        "model", "num_prop", "schedule", "sparsity", "alpha", "num_neighbours", "graph", "selection",
        "propagation", "token_scale"]
    assert all(p["parameter_has_default"] for p in params[1:])
    defaults = {p["parameter_name"]: p["parameter_default"] for p in params[1:]}
    assert defaults["model"] == "deit_small_patch16_224"
    assert defaults["num_prop"] == 8 and defaults["sparsity"] == 0.6 and defaults["alpha"] == 0.1
    assert defaults["graph"] == "mixed" and defaults["token_scale"] is True


def test_explore_real_photo_with_defaults(client):
    prediction, summary = client.predict(handle_file(CAT), api_name="/explore")
    assert prediction["model"] == "deit_small_patch16_224"
    assert len(prediction["full"]["top5"]) == 5 and len(prediction["gtp"]["top5"]) == 5
    assert isinstance(prediction["agree"], bool)
    g = prediction["gmacs"]
    assert 4.4 < g["full"] < 4.8 and 3.2 < g["gtp"] < 3.6  # P = 8 on DeiT-S: about 3.4 (paper: 3.42)
    assert g["reduction_percent"] > 20
    assert prediction["latency_ms"]["full"] > 0 and prediction["latency_ms"]["gtp"] > 0
    assert prediction["weights"].startswith(("pretrained", "random"))
    # The trace summary: 12 blocks of DeiT-S, 8 tokens leaving each.
    assert summary["grid_size"] == [14, 14] and summary["num_prefix"] == 1
    assert len(summary["layers"]) == 12
    assert [layer["tokens_out"] for layer in summary["layers"]] == [197 - 8 * (i + 1) for i in range(12)]
    assert all(len(layer["propagated"]) == 8 for layer in summary["layers"])
    assert summary["config"]["num_prop"] == [8] * 12
    assert summary["spatial_edges"] and summary["semantic_edges"]


def test_compare_endpoint_matches_the_public_api(client):
    """/compare: the same tokens removed per block by each method, numbers as the library gives them."""
    import gtp
    from app.core.models import get_model
    from app.core.photos import open_photo
    from gtp.models import preprocess
    comparison = client.predict(handle_file(CAT), num_prop=4, api_name="/compare")
    assert comparison["budget"] == [4] * 12
    assert list(comparison["methods"]) == [m.name for m in methods.compared()]
    assert "zeroes 40% of attention entries" in comparison["methods"]["gtp"]["also_approximates"]   # theta = 0.6
    assert "resamples the position embeddings" in comparison["methods"]["downsample"]["also_approximates"]
    for name, method in comparison["methods"].items():
        if name == "downsample":        # no token leaves: every block keeps the smaller grid's tokens
            assert len(set(method["tokens_per_block"])) == 1 and method["tokens_per_block"][0] < 197
            continue
        assert [len(ids) for ids in method["removed"]] == [4] * 12
        assert method["tokens_per_block"] == [197 - 4 * (i + 1) for i in range(12)]
        assert len(method["top5"]) == 5
    slot = get_model("deit_small_patch16_224")
    x = preprocess(open_photo(str(CAT)).image, slot.loaded)
    with slot.lock:   # each method's KL and cosine as recomputed here from fresh forwards
        for name, method in comparison["methods"].items():
            by_hand = fidelity_by_hand(slot.model, x, name, 4)
            assert method["kl"] == pytest.approx(by_hand["kl"][0], rel=1e-3, abs=1e-5), name
            assert 1 - method["cosine"] == pytest.approx(1 - by_hand["cosine"][0], rel=1e-2, abs=2e-6), name
            assert method["agree"] == bool(by_hand["agree"][0]), name
    with torch.inference_mode(), slot.lock:
        gtp.patch(slot.model, num_prop=4)
        try:
            with gtp.trace(slot.model) as rec:
                slot.model(x)
        finally:
            gtp.unpatch(slot.model)
    assert comparison["methods"]["gtp"]["removed"] == [layer.propagated[0].tolist() for layer in rec.layers]


def test_explore_hyperparameters_and_schedule(client):
    schedule = "0,0,0,4,4,4,4,8,8,8,8,8"
    prediction, summary = client.predict(handle_file(CAT), num_prop=3, schedule=schedule, sparsity=1.0,
                                         alpha=0.2, num_neighbours=4, graph="semantic", selection="random",
                                         propagation="mean", token_scale=False, api_name="/explore", **FAST)
    assert summary["config"]["num_prop"] == [int(p) for p in schedule.split(",")]
    assert summary["config"]["graph"] == "semantic" and summary["config"]["propagation"] == "mean"
    assert summary["layers"][0]["propagated"] == []
    assert prediction["model"] == "deit_tiny_patch16_224"


@pytest.mark.skipif(not DINOV2_FILE.exists(), reason="real DINOv2 weights not present")
def test_headless_model_reports_feature_similarity(client):
    prediction, summary = client.predict(handle_file(CAT), model="vit_small_patch14_dinov2", api_name="/explore")
    assert "full" not in prediction
    assert 0.5 < prediction["feature_cosine_similarity"] <= 1.0001
    assert prediction["weights"] == "pretrained"
    assert summary["grid_size"] == [16, 16] and len(summary["layers"]) == 12


BAD_INPUTS = {
    "not_image": "not an image",
    "text_file": "not an image",
    "truncated_jpeg": "damaged or truncated",
    "one_pixel": "at least 16 pixels",
    "bomb": "too large to open safely",
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_image_gives_message_and_server_keeps_serving(client, files, name):
    with pytest.raises(AppError, match=BAD_INPUTS[name]):
        client.predict(handle_file(str(files[name])), api_name="/explore", **FAST)
    prediction, summary = client.predict(handle_file(CAT), api_name="/explore", **FAST)
    assert len(summary["layers"]) == 12


ODD_INPUTS = {
    "greyscale": "greyscale",
    "rgba": "RGBA",
    "16bit": "16-bit|integer",
    "cmyk": "CMYK",
    "animated_gif": "first of 3 frames",
}


@pytest.mark.parametrize("name", list(ODD_INPUTS))
def test_odd_but_usable_images_are_converted_with_a_note(client, files, name):
    prediction, summary = client.predict(handle_file(str(files[name])), api_name="/explore", **FAST)
    assert len(summary["layers"]) == 12
    notes = " ".join(prediction["input_notes"])
    assert any(word in notes for word in ODD_INPUTS[name].split("|")), notes


@pytest.mark.parametrize("kwargs, message", [
    (dict(schedule="8,8"), "12 entries"),
    (dict(schedule="eight, 8"), "comma-separated whole numbers"),
    (dict(num_prop=500), "maximum"),
    (dict(sparsity=0.0), "minimum"),
    (dict(num_prop=2.5), "whole number"),
    (dict(num_prop="eight"), "num_prop must be a number"),
    (dict(sparsity="high"), "sparsity must be a number"),
    (dict(token_scale="maybe"), "token_scale must be true or false"),
    (dict(model="resnet50"), "resnet50"),
])
def test_impossible_hyperparameters_give_message(client, kwargs, message):
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(CAT), api_name="/explore", **{**FAST, **kwargs})
    _, summary = client.predict(handle_file(CAT), api_name="/explore", **FAST)
    assert len(summary["layers"]) == 12


def test_twenty_concurrent_clients_all_get_answers(url):
    def one(i: int) -> int:
        c = Client(url, verbose=False)
        _, summary = c.predict(handle_file(CAT), num_prop=1 + i % 4, api_name="/explore", **FAST)
        return len(summary["layers"])

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(one, i) for i in range(20)]
        done, pending = concurrent.futures.wait(futures, timeout=480)
    assert not pending, f"{len(pending)} of 20 clients had no answer after {time.monotonic() - start:.0f} s"
    assert [f.result() for f in futures] == [12] * 20


