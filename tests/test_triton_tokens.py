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
    statistics = tuple(s.to(DEVICE) for s in att.statistics)
    return G.Attention(att.out.to(DEVICE), statistics, att.dense_map.to(DEVICE), att.sparse_map.to(DEVICE))


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
            # torch's mean(1) adds the heads in an order of its own (on the CPU it depends on the
            # column's place in its vector loop; CUDA multiplies by 1/H): the kernel adds them in
            # order and divides, so the last bits may differ from torch's, never from that order's.
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
    signed_zeros = torch.tensor([[0.0, 1.0, -0.0, 0.0, -0.0]], device=DEVICE)  # a -0.0 after a 0.0 does not jump it
    for P, prop in ((1, [0]), (2, [0, 2]), (3, [0, 2, 3])):
        assert T.select_tokens(ids[:1, :5], P, score=signed_zeros).prop.tolist() == [prop]


def test_selection_of_many_tokens_equals_torch():
    """Up to N = 2500 patch tokens (one tile of 4096 keys, 32 warps) with long runs of ties."""
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


# ---------------------------------------------------------------------------------- propagation
def propagation_inputs(B: int, p0: int, dtype: torch.dtype, seed: int):
    """Tokens after earlier blocks: N = 80 of N0 = 100 patch tokens left (ids a random subset),
    C = 80 channels (three channel tiles), sizes in [1, 3), P = 37 leaving (two steps of 32)."""
    gen = torch.Generator().manual_seed(seed)
    N0, N, C, P = 100, 80, 80, 37
    x = torch.randn(B, p0 + N, C, generator=gen).to(DEVICE, dtype)
    x[:, ::2, 3] = -0.0  # copies keep the sign of zero
    size = (1 + 2 * torch.rand(B, p0 + N, generator=gen)).to(DEVICE)
    ids = original_ids(B, N, N0, seed)
    sel = T.select_tokens(ids, P, score=torch.rand(B, N, generator=gen).to(DEVICE))
    grid_graph = G.build_graph(torch.randn(B, N0, 8, generator=gen), (10, 10), "mixed").to(DEVICE)
    return x, size, ids, sel, grid_graph


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p0", [0, 1, 2, 5])
def test_propagation_equals_torch(p0, dtype):
    B = 2
    x, size, ids, sel, graph = propagation_inputs(B, p0, dtype, seed=p0)
    # per-image W; one W for every image, as [N0, N0] or broadcast to [B, N0, N0] (batch stride 0)
    shared = graph[0]
    given, reference = [(graph, graph), (shared, shared.expand(B, -1, -1)),
                        (shared.expand(B, -1, -1), shared.expand(B, -1, -1)), (graph, graph)][p0 % 4]
    x_ref, size_ref, ids_ref, weights_ref = G.propagate(x, size, reference, ids, sel.prop, sel.keep, p0, "graph", 0.3)
    x_new, size_new, weights = T.propagate_tokens(x, size, given, ids, sel.prop, sel.keep, p0, "graph", 0.3,
                                                  weights=True)
    assert x_new.dtype == dtype and torch.equal(sel.ids, ids_ref)
    assert torch.equal(weights, weights_ref) and weights.abs().sum() > 0
    tolerance = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x_new, x_ref, **tolerance)
    torch.testing.assert_close(size_new, size_ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(x_new[:, :p0], x[:, :p0]) and torch.equal(size_new[:, :p0], size[:, :p0])
    assert torch.equal(x_new[:, :p0].signbit(), x[:, :p0].signbit())
    assert not torch.allclose(size_new[:, p0:], size.gather(1, sel.keep + p0))  # something was propagated

    x_new, size_new, weights = T.propagate_tokens(x, size, None, ids, sel.prop, sel.keep, p0, "none")
    x_ref, size_ref, _, _ = G.propagate(x, size, None, ids, sel.prop, sel.keep, p0, "none")
    assert weights is None and torch.equal(x_new, x_ref) and torch.equal(size_new, size_ref)
    assert torch.equal(x_new.signbit(), x_ref.signbit())


def test_propagation_of_no_token_copies_the_rows():
    x, size, ids, _, graph = propagation_inputs(1, 1, torch.float32, seed=3)
    keep = torch.arange(80, device=DEVICE)[None]
    prop = keep[:, :0]
    x_new, size_new, weights = T.propagate_tokens(x, size, graph, ids, prop, keep, 1, weights=True)
    assert torch.equal(x_new, x) and torch.equal(size_new, size) and weights.shape == (1, 80, 0)


def test_propagation_rejects_bad_input():
    x, size, ids, sel, graph = propagation_inputs(1, 1, torch.float32, seed=4)
    with pytest.raises(ValueError, match="'graph' or 'none'"):
        T.propagate_tokens(x, size, graph, ids, sel.prop, sel.keep, 1, "mean")
    with pytest.raises(ValueError, match="needs the graph"):
        T.propagate_tokens(x, size, None, ids, sel.prop, sel.keep, 1, "graph")
    with pytest.raises(ValueError, match="must split"):
        T.propagate_tokens(x, size, graph, ids, sel.prop, sel.keep, 2)
    with pytest.raises(ValueError, match="graph must be"):
        T.propagate_tokens(x, size, graph[:, :50], ids, sel.prop, sel.keep, 1)


# ------------------------------------------------------------- fake tensors, torch.compile, costs
def block_step(diagonal, column_sums, ids, x, size, graph, num_prefix: int = 1, num_prop: int = 13):
    """Selection then graph propagation, as a patched block runs them."""
    sel = T.select_tokens(ids, num_prop, statistics=(diagonal, column_sums), num_prefix=num_prefix)
    x, size, weights = T.propagate_tokens(x, size, graph, ids, sel.prop, sel.keep, num_prefix, weights=True)
    return x, size, sel.ids, sel.score, weights


def block_inputs(device: str, B: int = 2, H: int = 6, n: int = 50, C: int = 32):
    diagonal, column_sums = torch.rand(B, H, n, device=device), torch.rand(B, H, n, device=device)
    ids = torch.arange(n - 1, device=device).expand(B, n - 1)
    x = torch.randn(B, n, C, device=device, dtype=torch.bfloat16)
    return diagonal, column_sums, ids, x, torch.ones(B, n, device=device), torch.rand(n - 1, n - 1, device=device)


@pytest.mark.parametrize("mode", ["fake cuda", "meta"])
def test_ops_give_shapes_on_fake_and_meta_tensors(mode):
    context = FakeTensorMode() if mode == "fake cuda" else torch.device("meta")
    with context:
        inputs = block_inputs("cuda" if mode == "fake cuda" else "meta")
        x, size, ids, score, weights = block_step(*inputs)
        sel = T.select_tokens(inputs[2], 5, score=torch.rand(2, 49, device=inputs[0].device))
    assert (x.shape, x.dtype, size.shape, ids.shape, score.shape, weights.shape) == (
        (2, 37, 32), torch.bfloat16, (2, 37), (2, 36), (2, 49), (2, 36, 13))
    assert x.device.type == inputs[0].device.type == ("cuda" if mode == "fake cuda" else "meta")
    assert (sel.prop.shape, sel.keep.shape, sel.prop.dtype, sel.regeneration) == ((2, 5), (2, 44), torch.int64, None)


def test_torch_compile_keeps_one_graph():
    inputs = block_inputs(DEVICE)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(block_step)(*inputs)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    compiled = torch.compile(block_step, backend="eager", fullgraph=True)(*inputs)
    for got, expected in zip(compiled, block_step(*inputs)):
        assert torch.equal(got, expected)


class RecordOps(TorchDispatchMode):
    """Keeps (op name, args, kwargs) of every op dispatched, as a cost counter sees them."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func._schema.name, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def test_each_op_plans_the_launch_it_makes(monkeypatch):
    """Each op's registered plan, from the arguments the dispatcher passes, is the launch it runs."""
    with torch.device("meta"), RecordOps() as recorder:
        block_step(*block_inputs("meta", B=2, H=6, n=50, C=32))
    plans = {name: triton_support.PLANS[name](args, kwargs) for name, args, kwargs in recorder.calls
             if name.startswith("gtp::")}
    (select,), (propagate,) = plans["gtp::select_tokens"], plans["gtp::propagate_tokens"]
    assert select.kernel is T._select_kernel and select.grid == (2,) and select.args["P"] == 13
    assert select.args["FROM_STATS"] and select.args["H"] == 6 and select.args["p0"] == 1
    assert propagate.kernel is T._propagate_kernel and propagate.grid == (2, 2, 1)  # 37 rows in 32s, 32 channels
    assert propagate.args["GRAPH"] and propagate.args["WEIGHTS"] and propagate.args["P"] == 13

    run, seen = triton_support.execute, []
    monkeypatch.setattr(triton_support, "execute", lambda launches: (seen.append(launches), run(launches)))
    inputs = block_inputs(DEVICE)
    with RecordOps() as recorder:
        block_step(*inputs)
    calls = [(name, args, kwargs) for name, args, kwargs in recorder.calls if name.startswith("gtp::")]
    assert len(calls) == len(seen) == 2
    for (name, args, kwargs), launches in zip(calls, seen):
        planned = triton_support.PLANS[name](args, kwargs)
        assert [(l.kernel, l.grid, l.num_warps, l.num_stages) for l in planned] == \
               [(l.kernel, l.grid, l.num_warps, l.num_stages) for l in launches]
        assert [{k: a for k, a in l.args.items() if not isinstance(a, torch.Tensor)} for l in planned] == \
               [{k: a for k, a in l.args.items() if not isinstance(a, torch.Tensor)} for l in launches]


def fake_cuda_launches() -> list:
    """The launches of every selection and propagation variant a forward makes, at deit_base's shape
    (197 tokens, 12 heads, 768 channels, P = 8), on fake CUDA tensors (no GPU needed)."""
    B, H, n, C = 2, 12, 197, 768
    launches = []
    with FakeTensorMode():
        cuda = dict(device="cuda")
        stats, ids = torch.empty(B, H, n, **cuda), torch.empty(B, n - 1, dtype=torch.int64, **cuda)
        for reduce in T.REDUCES:
            launches += triton_support.PLANS["gtp::select_tokens"]((stats, stats, None, ids, 1, 8, reduce, "mixed"), {})
        launches += triton_support.PLANS["gtp::select_tokens"](
            (None, None, torch.empty(B, n - 1, **cuda), ids, 1, 8, "max", "mixed"), {})
        prop, keep = torch.empty(B, 8, dtype=torch.int64, **cuda), torch.empty(B, n - 9, dtype=torch.int64, **cuda)
        graph, size = torch.empty(n - 1, n - 1, **cuda), torch.empty(B, n, **cuda)
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.empty(B, n, C, dtype=dtype, **cuda)
            for weights in (False, True):
                launches += triton_support.PLANS["gtp::propagate_tokens"](
                    (x, size, graph, ids, prop, keep, 1, 0.1, weights), {})
    return launches


def test_compiles_for_a_gpu_in_128_registers_without_spills():
    """Both kernels compile for sm_90 (H100) and sm_120 (RTX Pro 6000 Blackwell) with Triton's own
    ptxas, no GPU needed (the interpreter runs Python, so it accepts code the real compiler rejects),
    and are read as the cost model reads them: <= 128 registers, no spill store, every loop mapped."""
    from gtp.measure import compiled
    launches = fake_cuda_launches()
    for cc in (90, 120):
        for launch, c in zip(launches, compiled.compile_launches(launches, cc)):
            assert c.registers <= 128 and c.spill_bytes == 0, (c.kernel, cc, c.registers, c.spill_bytes)
