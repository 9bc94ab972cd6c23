"""gtp.measure.metrics: each comparison equals its definition written out by hand, and
the forward gives exactly the model's own output."""
from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

import gtp
from gtp.measure import metrics as M

from conftest import random_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
@torch.inference_mode()
def test_features_and_logits_are_the_models_own_outputs(name):
    model = gtp.patch(random_model(name), num_prop=8)
    x = torch.randn(2, 3, 224, 224)
    features, logits = M.features_and_logits(model, x)
    assert torch.equal(logits, model(x))  # the same operations, bit for bit (two heads when distilled)
    assert torch.equal(features, model.forward_head(model.forward_features(x), pre_logits=True))
    assert features.shape == (2, model.embed_dim) and logits.shape == (2, 1000)


@torch.inference_mode()
def test_headless_model_gives_features_only():
    model = random_model("deit_tiny_patch16_224", num_classes=0)
    x = torch.randn(2, 3, 224, 224)
    features, logits = M.features_and_logits(model, x)
    assert logits is None and torch.equal(features, model(x))
    features, logits = M.features_and_logits(random_model("deit_tiny_patch16_224"), x, has_head=False)
    assert logits is None and features.shape == (2, 192)


def test_kl_cosine_agreement_by_hand():
    torch.manual_seed(1)
    ref, red = torch.randn(4, 10), torch.randn(4, 10)
    red[0] = ref[0]
    kl = M.kl_divergence(ref, red)
    p = F.softmax(ref.double(), -1)
    by_hand = [math.fsum(float(p[b, c]) * (math.log(float(p[b, c])) - float(F.log_softmax(red.double(), -1)[b, c]))
                         for c in range(10)) for b in range(4)]
    assert kl.dtype == torch.float64 and kl.shape == (4,)
    assert kl.tolist() == pytest.approx(by_hand, abs=1e-12)
    assert kl[0] == 0 and (kl[1:] > 0).all()
    # KL(ref || red), not KL(red || ref): the direction matters.
    assert not torch.allclose(kl[1:], M.kl_divergence(red, ref)[1:])

    cos = M.cosine(ref, red)
    dots = (ref.double() * red.double()).sum(-1) / (ref.double().norm(dim=-1) * red.double().norm(dim=-1))
    assert cos.dtype == torch.float64 and torch.allclose(cos, dots, atol=1e-12)
    assert cos[0] == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(M.cosine(ref.view(4, 2, 5), red.view(4, 2, 5)), cos)  # flattened per image

    agree = M.top1_agreement(ref, red)
    assert agree.dtype == torch.bool and agree.tolist() == (ref.argmax(-1) == red.argmax(-1)).tolist()
    assert agree[0]


def test_top_k_hits():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0, -1.0],
                           [9.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    top1, top5 = M.top_k_hits(logits, torch.tensor([1, 1]), k=5)
    assert top1.tolist() == [True, False] and top5.tolist() == [True, False]
    top1, top5 = M.top_k_hits(logits, torch.tensor([5, 3]), k=5)
    assert top1.tolist() == [False, False] and top5.tolist() == [True, True]
    assert M.top_k_hits(logits[:, :3], torch.tensor([2, 2]), k=5)[1].all()  # k larger than the classes


def test_timer_counts_only_active_blocks():
    timer = M.Timer(torch.device("cpu"))
    timer.active = False
    with timer:
        time.sleep(0.02)
    assert timer.seconds == 0.0 and timer.count == 0
    timer.active = True
    for _ in range(2):
        with timer:
            time.sleep(0.01)
    assert timer.count == 2 and 0.02 <= timer.seconds < 1.0


def test_device_name():
    assert M.device_name(torch.device("cpu")) == f"CPU ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        assert M.device_name(torch.device("cuda")) == torch.cuda.get_device_name(0)
