"""The GPU path: batched, static-shape, sync-free, and exact.

Everything but the CPU with numba takes the batched PyTorch path. Its properties
are checked here on the CPU, with numba switched off: the operations one forward
issues (a TorchDispatchMode sees each), none of which reads a value back to the
host, and whose number does not grow with the batch; the same forward on the
`meta` device, which has no data at all, so any host read fails. Tests marked
`gpu` run the same checks on CUDA and skip without it.
"""
from __future__ import annotations

import collections
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gtp
from gtp import kernels
from conftest import ROOT, random_model

aten = torch.ops.aten
# Operations that make the host wait for the device: a value read back, or an output
# whose size depends on the data.
SYNC_OPS = {aten._local_scalar_dense, aten.item, aten.nonzero, aten.masked_select, aten.unique_dim,
            aten._unique2, aten.bincount}
SYNC_OVERLOADS = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}  # the size comes from data
CONFIGS = [
    dict(num_prop=8, sparsity=0.6),                                  # the published setting
    dict(num_prop=8, sparsity=1.0),
    dict(num_prop=0, sparsity=0.6, token_scale=True),
    dict(num_prop=8, sparsity=0.6, selection="cls_attn_mean", propagation="mean"),
    dict(num_prop=8, sparsity=0.6, selection="cos_sim_max", propagation="none", graph="semantic"),
    dict(num_prop=8, sparsity=0.6, selection="random", graph="spatial"),
]


class OpLog(TorchDispatchMode):
    """Counts every aten operation and collects the ones that would synchronise a GPU."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[str(func)] += 1
        bool_index = func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []) if i is not None)
        if func._overloadpacket in SYNC_OPS or func in SYNC_OVERLOADS or bool_index:
            self.syncs.append(str(func))
        return func(*args, **kwargs)


@pytest.fixture
def no_numba(monkeypatch):
    """The CPU without numba: the batched path every other device takes."""
    monkeypatch.setattr(kernels.radix_select, "available", lambda: False)


def forward_ops(model: torch.nn.Module, batch: int) -> OpLog:
    """The ops of one forward after a first one (which builds what is kept across forwards: the grid graph)."""
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        model(x)
        with OpLog() as log:
            model(x)
    return log


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_untraced_forward_is_sync_free_and_batch_independent(cfg, no_numba):
    """No operation reads a value back; batch 1 and 8 issue exactly the same operations."""
    model = gtp.patch(random_model("deit_tiny_patch16_224"), **cfg)
    one, eight = forward_ops(model, 1), forward_ops(model, 8)
    assert one.syncs == [] and eight.syncs == []
    assert one.ops == eight.ops
    if cfg["sparsity"] < 1.0:
        # one selection per block: a loop over images or heads would multiply it
        knn_graph = (cfg["num_prop"] > 0 and cfg.get("propagation", "graph") == "graph"
                     and cfg.get("graph", "mixed") != "spatial")  # the kNN takes one topk too
        assert one.ops["aten.topk.default"] == 12 + knn_graph


def test_the_dispatch_mode_sees_a_sync():
    """The check can fail: the old per-row thresholding and a boolean mask are caught."""
    with OpLog() as log:
        t = torch.rand(3, 5)
        t[t > 0.5] = 0.0
        float(t.sum())
    assert len(log.syncs) == 2


@pytest.mark.parametrize("cfg", CONFIGS + [dict(num_prop=[0, 20, 3, 0, 40, 5, 9, 1, 0, 30, 2, 60], sparsity=0.3)],
                         ids=lambda c: "-".join(map(str, c.values())))
def test_gpu_path_never_reads_a_value_on_the_host(cfg):
    """The `meta` device holds no data, so `.item()`, `.tolist()`, `nonzero` or `.numpy()` fail on it.

    It is not the CPU, so the forward takes the path a GPU takes."""
    model = gtp.patch(random_model("deit_tiny_patch16_224"), **cfg).to("meta")
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 224, 224, device="meta"))
    assert out.shape == (2, 1000) and out.device.type == "meta"
    with pytest.raises((NotImplementedError, RuntimeError), match="meta"):  # the device refuses host reads
        out.sum().item()


@pytest.mark.skipif(not kernels.radix_select.available(), reason="numba is not installed")
@pytest.mark.parametrize("sparsity", [0.6, 0.2])
def test_numba_and_batched_paths_propagate_the_same_tokens(sparsity, monkeypatch):
    """A whole forward on both CPU paths: the same ids, and each block's map zeroed identically."""
    model = gtp.patch(random_model("deit_small_patch16_224"), num_prop=8, sparsity=sparsity)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    runs = []
    for numba in (True, False):
        if not numba:
            monkeypatch.setattr(kernels.radix_select, "available", lambda: False)
        with torch.inference_mode(), gtp.trace(model, attention=True) as rec:
            logits = model(x)
        runs.append((logits, rec))
    (fast, fast_rec), (batched, batched_rec) = runs
    assert torch.allclose(fast, batched, atol=1e-4)
    for a, b in zip(fast_rec.layers, batched_rec.layers):
        assert torch.equal(a.propagated, b.propagated)
        # the batched path's zeroing of the numba run's own map: the very entries numba zeroed
        again, _ = kernels.sparsify(a.attn_before.clone(), sparsity)
        assert torch.equal(again == 0, a.attn_after == 0)


# ---------------------------------------------------------------- on CUDA
def photo_and_model(name: str = "deit_small_patch16_224") -> tuple[torch.Tensor, torch.nn.Module]:
    """assets/chelsea.png preprocessed for `name` ([1, 3, 224, 224]) and the model (hub or random weights)."""
    from gtp.models import load_image, load_model, preprocess
    loaded = load_model(name, device="cpu")
    return preprocess(load_image(ROOT / "assets" / "chelsea.png"), loaded), loaded.model


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sparsity", [1.0, 0.6])
def test_cuda_propagates_the_cpu_ids_on_a_real_photo(sparsity, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # fp32 as on the CPU
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    x, model = photo_and_model()
    gtp.patch(model, num_prop=8, sparsity=sparsity)
    with torch.inference_mode():
        with gtp.trace(model, attention=True) as cpu:
            cpu_logits = model(x)
        model.cuda()
        with gtp.trace(model, attention=True) as gpu:
            gpu_logits = model(x.cuda()).cpu()
    assert torch.allclose(gpu_logits, cpu_logits, atol=1e-3)
    for a, b in zip(cpu.layers, gpu.layers):
        assert torch.equal(a.propagated, b.propagated.cpu())
        again, _ = kernels.sparsify(a.attn_before.cuda(), sparsity)  # the CPU's map, zeroed on CUDA
        assert torch.equal((again == 0).cpu(), a.attn_after == 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_untraced_cuda_forward_never_waits(cfg):
    model = gtp.patch(random_model("deit_small_patch16_224"), **cfg).cuda()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        model(x)  # first call: lazy CUDA initialisation may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sparsify_zeroes_what_numba_zeroes():
    from test_kernels import expected_zeroed, tied_maps
    maps = tied_maps(4, 6, 197)
    for sparsity in (0.9, 0.6, 0.1):
        k = kernels.num_zeroed(197, sparsity)
        expected = expected_zeroed(maps.view(24, -1), k).view_as(maps)
        got, (diagonal, column_sums) = kernels.sparsify(maps.cuda(), sparsity, statistics=True)
        assert torch.equal(got.cpu(), expected)
        assert torch.equal(diagonal.cpu(), expected.diagonal(dim1=-2, dim2=-1))
        assert torch.allclose(column_sums.cpu(), expected.sum(-2), atol=1e-6)
