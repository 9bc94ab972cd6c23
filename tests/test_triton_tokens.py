"""gtp.kernels.triton_tokens: selection and propagation, one Triton launch each, give gtp.functional's results.

Without CUDA the same kernels run on CPU tensors under Triton's interpreter (conftest sets
TRITON_INTERPRET=1); with CUDA they compile and run on the GPU.
"""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from gtp import functional as G
from gtp.kernels import triton_support

pytest.importorskip("triton")
if not torch.cuda.is_available() and not triton_support.interpreting():
    pytest.skip("no CUDA, and Triton's interpreter is off", allow_module_level=True)
from gtp.kernels import triton_tokens as T  # noqa: E402  (imports triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STATISTIC_SELECTIONS = [s for s in G.SELECTIONS if G.selection_input(s) == "statistics"]
SCORE_SELECTIONS = [s for s in G.SELECTIONS if G.selection_input(s) != "statistics"]


@pytest.fixture(autouse=True)
def _kernels_take_device_tensors():
    if DEVICE == "cpu":
        with triton_support.on_cpu():
            yield
    else:
        yield


def strategy(selection: str) -> tuple[str, str]:
    """"mixed_attn_max" -> (reduce "max", combine "mixed")."""
    parts = selection.split("_")
    return parts[-1], parts[0]


def attended(B: int, H: int, n: int, sparsity: float, seed: int) -> G.Attention:
    """GTP attention of random queries and keys: real softmax maps, sparsified (zeros, ties)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, 16, generator=gen) for _ in range(3))
    att = G.attention(q, k, v, sparsity=sparsity, scale=0.5, statistics=True, keep_maps=True)
    return G.Attention(*(None if t is None else (tuple(s.to(DEVICE) for s in t) if isinstance(t, tuple)
                                                 else t.to(DEVICE)) for t in att))


def tied_statistics(B: int, H: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics on a coarse dyadic grid, a third of them zero: ties everywhere, and sums
    over the heads exact in float32 (so every summation order gives the same bits)."""
    gen = torch.Generator().manual_seed(seed)
    diagonal = (torch.rand(B, H, n, generator=gen) * 4).floor() / 8
    column_sums = (torch.rand(B, H, n, generator=gen) * 3).floor() / 4
    diagonal[..., ::3] = 0.0
    return diagonal.to(DEVICE), column_sums.to(DEVICE)


def head_mean_in_order(t: torch.Tensor) -> torch.Tensor:
    """[B, H, N] -> [B, N]: heads added in order 0..H-1, then divided by H (the kernel's mean)."""
    total = t[:, 0].clone()
    for h in range(1, t.shape[1]):
        total += t[:, h]
    return total / t.shape[1]


def original_ids(B: int, N: int, N0: int, seed: int) -> torch.Tensor:
    """[B, N] distinct original ids of the current patch tokens (as after earlier blocks)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(N0, generator=gen)[:N] for _ in range(B)]).to(DEVICE)


def assert_split(sel: T.Selection, score: torch.Tensor, ids: torch.Tensor, num_prop: int) -> None:
    """prop, keep and the new ids are `split_tokens`'s of `score`."""
    prop, keep = G.split_tokens(score, num_prop)
    assert torch.equal(sel.prop, prop) and torch.equal(sel.keep, keep)
    assert torch.equal(sel.ids, ids.gather(1, keep))


# (B, H, n, p0, P, statistics) with P from 0 to N-1; "tied" statistics, or ones of real softmax maps
CASES = [(2, 6, 50, 1, 13, "attention"), (1, 4, 40, 0, 0, "tied"), (3, 8, 37, 2, 34, "tied"),
         (2, 3, 69, 5, 20, "attention"), (1, 12, 197, 1, 98, "attention"), (2, 4, 21, 5, 15, "tied")]


@pytest.mark.parametrize("selection", STATISTIC_SELECTIONS)
def test_selection_from_statistics_equals_torch(selection):
    reduce, combine = strategy(selection)
    for case, (B, H, n, p0, P, source) in enumerate(CASES):
        att = attended(B, H, n, 0.4, case) if source == "attention" else G.Attention(
            None, tied_statistics(B, H, n, case), None, None)
        ids = original_ids(B, n - p0, 300, case)
        score, regeneration, broadcasting = G.selection_scores(att, p0, selection)
        sel = T.select_tokens(ids, P, statistics=att.statistics, num_prefix=p0, reduce=reduce, combine=combine)
        if reduce == "mean" and source == "attention":
            # torch's mean(1) adds the heads in an order that depends on the column's place in its
            # vector loop: the kernel adds them in order, so only the last bits may differ.
            torch.testing.assert_close(sel.regeneration, regeneration, rtol=1e-6, atol=0)
            torch.testing.assert_close(sel.broadcasting, broadcasting, rtol=1e-6, atol=0)
            diagonal, column_sums = (s[:, :, p0:] for s in att.statistics)
            regeneration, broadcasting = head_mean_in_order(diagonal), head_mean_in_order(column_sums)
            score = {"mixed": regeneration * broadcasting, "sum": regeneration + broadcasting,
                     "diag": regeneration, "img": broadcasting}[combine]
        assert torch.equal(sel.regeneration, regeneration) and torch.equal(sel.broadcasting, broadcasting)
        assert torch.equal(sel.score, score)
        assert_split(sel, score, ids, P)


@pytest.mark.parametrize("selection", SCORE_SELECTIONS)
def test_selection_from_a_score_equals_torch(selection):
    for case, (B, H, n, p0, P, _) in enumerate(CASES):
        if selection.startswith("cls") and p0 == 0:
            continue
        att = attended(B, H, n, 0.3, case)  # cls_attn reads a row of zeros and ties
        gen = torch.Generator(DEVICE).manual_seed(case)
        score, _, _ = G.selection_scores(att, p0, selection, generator=gen)
        ids = original_ids(B, n - p0, 300, case)
        sel = T.select_tokens(ids, P, score=score)
        assert sel.score is score and sel.regeneration is None and sel.broadcasting is None
        assert_split(sel, score, ids, P)


def test_ties_go_to_the_lower_index():
    """Checked by hand: equal scores leave lowest index first; -0.0 ties with 0.0; infinities rank."""
    score = torch.tensor([[0.5, 0.0, 0.5, -0.0, 0.5, 0.0],
                          [float("inf"), -1.0, float("-inf"), 2.0, -1.0, -1.0]], device=DEVICE)
    ids = torch.tensor([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25]], device=DEVICE)
    sel = T.select_tokens(ids, 4, score=score)
    assert sel.prop.tolist() == [[0, 1, 3, 5], [1, 2, 4, 5]]
    assert sel.keep.tolist() == [[2, 4], [0, 3]]
    assert sel.ids.tolist() == [[12, 14], [20, 23]]
    sel = T.select_tokens(ids, 2, score=score)
    assert sel.prop.tolist() == [[1, 3], [1, 2]] and sel.keep.tolist() == [[0, 2, 4, 5], [0, 3, 4, 5]]


def test_selection_over_several_tiles_equals_torch():
    """Up to N = 2500 patch tokens (tiles of 64 ranked x 256 compared) with long runs of ties."""
    for B, n, p0, selection, P in ((1, 2501, 1, "mixed_attn_max", 1234), (2, 701, 0, "sum_attn_mean", 700),
                                   (2, 701, 5, "img_attn_max", 1)):
        diagonal, column_sums = tied_statistics(B, 4, n, seed=n)
        ids = original_ids(B, n - p0, 3000, seed=n)
        reduce, combine = strategy(selection)
        score, _, _ = G.selection_scores(G.Attention(None, (diagonal, column_sums), None, None), p0, selection)
        sel = T.select_tokens(ids, P, statistics=(diagonal, column_sums), num_prefix=p0, reduce=reduce,
                              combine=combine)
        assert torch.equal(sel.score, score)
        assert_split(sel, score, ids, P)


def test_selection_rejects_bad_input():
    ids = torch.arange(10, device=DEVICE).expand(2, 10)
    stats = torch.rand(2, 3, 11, device=DEVICE)
    with pytest.raises(ValueError, match="either"):
        T.select_tokens(ids, 3)
    with pytest.raises(ValueError, match="num_prop"):
        T.select_tokens(ids, 11, score=torch.rand(2, 10, device=DEVICE))
    with pytest.raises(ValueError, match="statistics must be"):
        T.select_tokens(ids, 3, statistics=(stats, stats), num_prefix=0)
    with pytest.raises(ValueError, match="reduce"):
        T.select_tokens(ids, 3, statistics=(stats, stats), num_prefix=1, reduce="median")
