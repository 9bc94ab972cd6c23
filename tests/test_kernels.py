"""gtp.kernels: sparsification on every path zeroes exactly what kthvalue names (ties included)."""
from __future__ import annotations

import threading

import pytest
import torch

from gtp import kernels
from gtp.kernels import radix_select, torch_select

needs_numba = pytest.mark.skipif(not radix_select.available(), reason="numba is not installed")


def expected_zeroed(values: torch.Tensor, k: int) -> torch.Tensor:
    """The specification: zero every entry <= the k-th smallest of its row."""
    out = values.clone()
    out[out <= out.kthvalue(k, dim=1, keepdim=True).values] = 0.0
    return out


def tied_maps(B: int = 2, H: int = 3, n: int = 50, seed: int = 0) -> torch.Tensor:
    """Softmax maps [B, H, n, n] with ties at and around the thresholds."""
    maps = (torch.randn(B, H, n, n, generator=torch.Generator().manual_seed(seed)) * 3).softmax(-1)
    maps[0, 1, :, 7] = maps[0, 1, 0, 7]            # a column of ties
    maps[1, 0] = maps[1, 0].round(decimals=3)       # ties everywhere
    maps[1, 2, :20] = 0.0                           # underflowed entries
    return maps


def test_kth_smallest_equals_kthvalue():
    gen = torch.Generator().manual_seed(0)
    for rows, length in [(3, 100), (24, 38809), (5, 20000)]:
        logits = torch.randn(rows, length, generator=gen) * 3
        values = logits.softmax(-1)
        values[0, :50] = values[0, 7]  # ties
        values[1, : length // 2] = 0.0  # underflowed softmax entries
        for k in (1, 17, length // 3, int(0.4 * length), length - 1, length):
            expected = values.kthvalue(k, dim=1).values
            assert torch.equal(torch_select.kth_smallest(values, k), expected)


def radix_zero_smallest_(values: torch.Tensor, k: int) -> torch.Tensor:
    """The numba kernel on rows [R, L]: zeroes in place, returns the thresholds [R]."""
    return torch.from_numpy(radix_select.zeroer(values, k)())


@pytest.mark.parametrize("path", ["torch", "radix"])
def test_zero_smallest_zeroes_what_kthvalue_names(path):
    """Each implementation zeroes exactly the entries <= the k-th smallest, ties included."""
    if path == "radix" and not radix_select.available():
        pytest.skip("numba is not installed")
    fn = {"torch": torch_select.zero_smallest_, "radix": radix_zero_smallest_}[path]
    gen = torch.Generator().manual_seed(1)
    values = (torch.randn(6, 38809, generator=gen) * 4).softmax(-1)
    values[0, ::3] = values[0, 5]                   # many ties at one value
    values[2] = values[2].round(decimals=5)         # ties everywhere
    values[3, :100] = float("inf")
    for k in (1, 1000, 15523, 38809):
        expected = expected_zeroed(values, k)
        threshold = values.kthvalue(k, dim=1).values
        got = values.clone()
        assert torch.equal(fn(got, k), threshold) and torch.equal(got, expected)
    if path != "radix":  # negative values: the radix kernel leaves such rows to the caller
        signed = torch.randn(4, 5000, generator=gen)
        got = signed.clone()
        fn(got, 2000)
        assert torch.equal(got, expected_zeroed(signed, 2000))
    else:
        signed = torch.randn(2, 100, generator=gen)
        kept = signed.clone()
        assert radix_zero_smallest_(signed, 10).isnan().all() and torch.equal(signed, kept)


@needs_numba
@pytest.mark.parametrize("k", [0, 1, 1000, 2450, 2500])
def test_zeroing_pass_also_takes_the_diagonal_and_column_sums(k):
    """The fused kernel zeroes what kthvalue names and reads the zeroed maps'
    diagonal and column sums; `kernels.sparsify` with theta = 1 gives the same bits."""
    maps = tied_maps(seed=3)
    rows = maps.clone().view(6, 2500)
    expected = expected_zeroed(maps.view(6, 2500), k) if k > 0 else maps.clone().view(6, 2500)
    diagonal, column_sums = torch.full((6, 50), -1.0), torch.full((6, 50), -1.0)
    radix_select.zeroer(rows, k, statistics=True)(diagonal.numpy(), column_sums.numpy())
    assert torch.equal(rows, expected)
    zeroed = expected.view(6, 50, 50)
    assert torch.equal(diagonal, zeroed.diagonal(dim1=-2, dim2=-1))
    assert torch.allclose(column_sums, zeroed.sum(-2), rtol=1e-5, atol=1e-7)
    again = kernels.sparsify(zeroed.clone().view(2, 3, 50, 50), 1.0, statistics=True)[1]
    assert torch.equal(again[0].view(6, 50), diagonal) and torch.equal(again[1].view(6, 50), column_sums)
    with pytest.raises(ValueError, match="shapes"):  # the compiled kernel would write out of bounds
        radix_select.zeroer(rows, k, statistics=True)(diagonal[:, :49].numpy(), column_sums.numpy())


@pytest.mark.parametrize("sparsity", [1.0, 0.9, 0.6, 0.3, 0.01])
def test_sparsify_zeroes_the_same_entries_on_every_path(sparsity, monkeypatch):
    """numba op, batched torch path (the GPU's), autograd and float64: one zeroed set, ties included."""
    maps = tied_maps()
    n = maps.shape[-1]
    k = kernels.num_zeroed(n, sparsity)
    flat = maps.reshape(6, n * n)
    expected = (expected_zeroed(flat, k) if k > 0 else flat.clone()).view_as(maps)
    results = {}
    if radix_select.available():
        results["numba"] = kernels.sparsify(maps.clone(), sparsity, statistics=True)
    monkeypatch.setattr(radix_select, "available", lambda: False)
    results["torch"] = kernels.sparsify(maps.clone(), sparsity, statistics=True)
    results["strided"] = kernels.sparsify(maps.clone().transpose(-2, -1).contiguous().transpose(-2, -1),
                                          sparsity, statistics=True)
    results["float64"] = kernels.sparsify(maps.double(), sparsity, statistics=True)
    graded = maps.clone().requires_grad_()
    results["autograd"] = kernels.sparsify(graded, sparsity, statistics=True)
    assert torch.equal(graded.detach(), maps)  # not changed in place
    for name, (out, (diagonal, column_sums)) in results.items():
        assert torch.equal(out.detach().float(), expected), name
        assert diagonal.dtype == column_sums.dtype == torch.float32
        assert torch.equal(diagonal, expected.diagonal(dim1=-2, dim2=-1)), name
        assert torch.allclose(column_sums, expected.sum(-2), atol=1e-6), name
    assert kernels.sparsify(maps.clone(), sparsity)[1] is None


def test_sparsify_zeroes_exactly_the_smallest_entries():
    attn = torch.randn(2, 3, 50, 50, generator=torch.Generator().manual_seed(0)).softmax(-1)
    out, _ = kernels.sparsify(attn.clone(), 0.6)
    k = int(50 * 50 * 0.4)
    assert ((out == 0).flatten(2).sum(-1) == k).all()
    kept_min = torch.where(out > 0, out, torch.inf).flatten(2).amin(-1)
    zeroed_max = torch.where(out == 0, attn, -torch.inf).flatten(2).amax(-1)
    assert (zeroed_max < kept_min).all()


@needs_numba
def test_custom_op_matches_the_kernel_and_handles_negative_rows():
    """The torch.library op (what torch.compile sees) zeroes and sums as the kernel does;
    a map with a negative entry, which the radix kernel skips, is zeroed by the torch path."""
    maps = tied_maps().view(6, 50, 50)
    maps[4, 3, 3] = -0.5
    got = maps.clone()
    diagonal, column_sums = torch.ops.gtp.radix_sparsify_(got, 1000, True)
    expected = expected_zeroed(maps.view(6, 2500), 1000).view(6, 50, 50)
    assert torch.equal(got, expected)
    assert torch.equal(diagonal, expected.diagonal(dim1=-2, dim2=-1))
    assert torch.allclose(column_sums, expected.sum(-2), atol=1e-6)
    empty = torch.ops.gtp.radix_sparsify_(maps.clone(), 1000, False)
    assert [t.shape for t in empty] == [(6, 0), (6, 0)]


def test_zero_smallest_from_many_threads_at_once():
    """An app serves several requests at once: concurrent calls stay exact."""
    gen = torch.Generator().manual_seed(2)
    values = [torch.rand(12, 38809, generator=gen) for _ in range(6)]
    expected = [expected_zeroed(v, 15000) for v in values]
    zero = radix_zero_smallest_ if radix_select.available() else torch_select.zero_smallest_
    workers = [threading.Thread(target=zero, args=(v, 15000)) for v in values]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert all(torch.equal(v, e) for v, e in zip(values, expected))


@pytest.mark.skipif(not radix_select.available() or not hasattr(__import__("os"), "fork"), reason="numba, fork")
def test_a_child_forked_after_numbas_openmp_layer_takes_the_pytorch_path():
    """GNU OpenMP is not fork-safe: numba ends a child that launches its OpenMP layer after the
    parent did. Such a child (a ZeroGPU worker) takes the PyTorch path: the same entries zeroed."""
    import os
    attn = torch.rand(2, 3, 50, 50).softmax(-1)
    expected, _ = kernels.sparsify(attn.clone(), 0.6)    # the numba kernel: its layer is chosen now
    pid = os.fork()
    if pid == 0:   # the child: exit status 0 if it takes the right path and zeroes the same entries
        torch.set_num_threads(1)   # as a worker does first: PyTorch's own OpenMP pool is no safer
        ok = radix_select.available() == (radix_select._layer() != "omp")
        got, _ = kernels.sparsify(attn.clone(), 0.6)
        os._exit(0 if ok and torch.equal(got, expected) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and radix_select.available()
