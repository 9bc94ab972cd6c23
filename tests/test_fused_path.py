"""The fused GPU path of a whole GTP forward (gtp/steps.py with the Triton kernels), checked on the CPU.

Without CUDA, Triton's interpreter runs the kernels on CPU tensors (`triton_support.on_cpu`).
Every block of a patched forward is replayed on the PyTorch path from the very values the
fused path computed, so "exact" means what the specification fixes, given the same
attention values: the same zeroed entries (ties included) and the same propagated ids;
the propagated features agree to float32 rounding. On a CUDA machine the same checks run
on CUDA tensors. Covered: all 13 selections, the three graphs and propagations, token
scale on and off, theta in {1, 0.6, 0.3}, CLS / CLS + distillation / registers / no prefix.
"""
from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

import gtp
from gtp import functional as G
from gtp import kernels, steps
from gtp.kernels import triton_support, torch_select

pytestmark = pytest.mark.skipif(not triton_support.available(), reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REAL = (steps.attend, steps.choose, steps.propagate)  # what `Replay` wraps


def tiny(prefix: str) -> torch.nn.Module:
    """A 3-block ViT on 16 x 16 images: 16 patch tokens and the given prefix tokens."""
    torch.manual_seed(0)
    size = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=10)
    if prefix == "distilled":
        return VisionTransformerDistilled(**size).eval().to(DEVICE)
    extra = {"cls": {}, "registers": dict(reg_tokens=2),
             "none": dict(class_token=False, global_pool="avg")}[prefix]
    return VisionTransformer(**size, **extra).eval().to(DEVICE)


def fused():
    """The Triton path: on CUDA as it is, on the CPU under the interpreter."""
    return contextlib.nullcontext() if DEVICE == "cuda" else triton_support.on_cpu()


class Replay:
    """Wraps the steps of `gtp.steps`; each fused result is replayed on the PyTorch path and compared."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.blocks = 0
        for name in ("attend", "choose", "propagate"):
            monkeypatch.setattr(steps, name, getattr(self, name))
        self._attend, self._choose, self._propagate = REAL

    def attend(self, q, k, v, size, sparsity, scale, needs="none", keep_maps=False):
        got = self._attend(q, k, v, size, sparsity, scale, needs, keep_maps)
        ref = G.attention(q, k, v, size, sparsity, scale, statistics=True, keep_maps=True)
        if got.dense_map is not None:  # traced: the fused dense map, zeroed by the torch path
            n = q.shape[2]
            k_zero = kernels.num_zeroed(n, sparsity)
            expected = got.dense_map.clone()
            if k_zero:
                torch_select.zero_smallest_(expected.view(-1, n * n), k_zero)
            assert torch.equal(got.sparse_map, expected)
            torch.testing.assert_close(got.dense_map, ref.dense_map, rtol=1e-5, atol=1e-6)
            # Its own zeroed map is the reference from here: two maps a rounding apart may put an entry
            # on either side of a tie with the threshold (random tiny models have near-uniform maps).
            sparse = got.sparse_map
            ref = ref._replace(out=(sparse @ v.float()).to(v.dtype),
                               statistics=(sparse.diagonal(dim1=-2, dim2=-1), sparse.sum(-2)))
        torch.testing.assert_close(got.out.float(), ref.out.float(), rtol=1e-4, atol=1e-5)
        if got.statistics is not None:
            for mine, theirs in zip(got.statistics, ref.statistics):
                torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
        self.blocks += 1
        return got

    def choose(self, attended, ids, num_prefix, selection, num_prop, generator=None):
        got = self._choose(attended, ids, num_prefix, selection, num_prop, generator)
        if selection != "random":  # random draws new noise on each call
            ref = steps._choose_torch(attended, ids, num_prefix, selection, num_prop)
            for a, b in zip(got, ref):
                assert (a is None and b is None) or torch.equal(a, b)
        return got

    def propagate(self, x, size, graph, ids, choice, num_prefix, propagation, alpha, weights=False):
        got = self._propagate(x, size, graph, ids, choice, num_prefix, propagation, alpha, weights)
        ref = steps._propagate_torch(x, size, graph, ids, choice, num_prefix, propagation, alpha, True)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=1e-6)
        assert torch.equal(got[2], ref[2])
        if weights and propagation == "graph":
            assert torch.equal(got[3], ref[3])
        return got



PUBLISHED = dict(num_prop=2, sparsity=0.6)
SETTINGS: list[dict[str, Any]] = (
    [dict(selection=s) for s in gtp.SELECTIONS]
    + [dict(graph=g) for g in gtp.GRAPHS]
    + [dict(propagation=p) for p in gtp.PROPAGATIONS]
    + [dict(token_scale=False), dict(sparsity=1.0), dict(sparsity=0.3)]
)


def run(model: torch.nn.Module, traced: bool) -> torch.Tensor:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    with torch.inference_mode(), fused():
        if not traced:
            return model(x)
        with gtp.trace(model, attention=True):
            return model(x)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_every_setting_replays_exactly(setting, monkeypatch):
    """Untraced and traced forwards of every setting: each block equals the PyTorch path on its values."""
    model = gtp.patch(tiny("cls"), **{**PUBLISHED, **setting})
    replay = Replay(monkeypatch)
    for traced in (False, True):
        logits = run(model, traced)
        assert torch.isfinite(logits).all()
    assert replay.blocks == 6


@pytest.mark.parametrize("prefix", ["cls", "distilled", "registers", "none"])
@pytest.mark.parametrize("sparsity", [1.0, 0.6, 0.3])
def test_every_prefix_layout_replays_exactly(prefix, sparsity, monkeypatch):
    selection = "mixed_attn_max" if prefix == "none" else "cls_attn_mean"
    for setting in (dict(selection="mixed_attn_max"), dict(selection=selection, token_scale=False)):
        model = gtp.patch(tiny(prefix), num_prop=2, sparsity=sparsity, **setting)
        replay = Replay(monkeypatch)
        run(model, traced=True)
        assert replay.blocks == 3


def test_the_fused_path_runs_the_triton_ops():
    """The checks above compare the fused path, not the PyTorch path with itself."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    model = gtp.patch(tiny("cls"), **PUBLISHED)
    x = torch.randn(2, 3, 16, 16).to(DEVICE)
    with torch.inference_mode(), fused(), Ops() as ops:
        model(x)
    for op in ("gtp.fused_attention.default", "gtp.select_tokens.default", "gtp.propagate_tokens.default"):
        assert ops.seen.count(op) == 3, op  # once per block
    assert not any("softmax" in op or "sort" in op or "kthvalue" in op for op in ops.seen)
    assert sum("topk" in op for op in ops.seen) == 1  # the semantic graph's kNN, once per forward


def test_fused_forward_matches_the_pytorch_forward():
    """End to end: the same propagated tokens and logits as the PyTorch path (float32)."""
    model = gtp.patch(tiny("cls"), **PUBLISHED)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    with torch.inference_mode():
        with gtp.trace(model) as plain:
            expected = model(x)
        with fused(), gtp.trace(model) as rec:
            logits = model(x)
    for a, b in zip(rec.layers, plain.layers):
        assert torch.equal(a.propagated, b.propagated)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
