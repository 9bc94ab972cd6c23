"""The fused Triton attention (gtp/kernels/triton_attention.py, fused_attention.py).

On a CUDA machine the kernel runs on the GPU; elsewhere Triton's interpreter runs the
same kernel on CPU tensors (conftest sets TRITON_INTERPRET=1). The interpreter is
slow, so maps stay small; n = 50 spans several ragged 32 x 32 tiles there, and one map of
260 tokens is larger than a 224-pixel grid (256 tokens).
"""
from __future__ import annotations

import functools

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from gtp import functional as G  # noqa: E402
from gtp import kernels  # noqa: E402
from gtp.kernels import fused_attention as FA  # noqa: E402
from gtp.kernels import torch_select, triton_support  # noqa: E402
from conftest import ROOT, attention_inputs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_support.interpreting():
    pytest.skip("no CUDA and TRITON_INTERPRET is not set", allow_module_level=True)


inputs = functools.partial(attention_inputs, device=DEVICE)   # q, k, v and sizes on DEVICE


def zeroed_like_torch(dense, num_zero: int):
    """The kernel's own dense map, zeroed by the PyTorch selection."""
    B, H, n, _ = dense.shape
    zeroed = dense.clone()
    if num_zero > 0:
        torch_select.zero_smallest_(zeroed.view(B * H, n * n), num_zero)
    return zeroed


def check_outputs(res: FA.FusedAttention, v):
    """out, diagonal, column sums and CLS row are those of the returned sparse map."""
    sparse = res.sparse_map
    torch.testing.assert_close(res.out.float(), sparse @ v.float(), atol=1e-5, rtol=1e-4)
    diagonal, column_sums = res.statistics
    torch.testing.assert_close(diagonal, sparse.diagonal(dim1=-2, dim2=-1), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(column_sums, sparse.sum(-2), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.cls_row, sparse[:, :, 0], atol=0, rtol=0)


@pytest.mark.parametrize("sparsity", [1.0, 0.6, 0.3])
@pytest.mark.parametrize("token_scale", [False, True])
@pytest.mark.parametrize("n, d", [(5, 8), (17, 12), (50, 20)])
def test_zeroes_exactly_the_smallest_entries(n, d, token_scale, sparsity):
    """The sparse map is the kernel's dense map with zero_smallest_ applied: same zeros, same values."""
    q, k, v, size = inputs(1, 2, n, d, token_scale=token_scale, seed=n)
    num_zero = kernels.num_zeroed(n, sparsity)
    res = FA.fused_attention(q, k, v, size, 0.3, num_zero, statistics=True, cls_row=True, keep_maps=True)
    assert torch.equal(res.sparse_map, zeroed_like_torch(res.dense_map, num_zero))
    # the softmax of torch's own logits, up to float32 rounding
    torch.testing.assert_close(res.dense_map, G.attention_map(q, k, size, 0.3), atol=1e-6, rtol=1e-5)
    check_outputs(res, v)


@pytest.mark.parametrize("n", [17, 50, 260])
def test_threshold_is_the_kth_smallest(n):
    """Exactly k entries per head are zeroed, ties with the threshold aside: an off-by-one fails."""
    q, k, v, _ = inputs(1, 3 if n < 256 else 1, n, 16, seed=1)  # 260 tokens: more than one 256-key pass
    num_zero = kernels.num_zeroed(n, 0.6)
    res = FA.fused_attention(q, k, v, None, 0.25, num_zero, statistics=n > 256, cls_row=n > 256, keep_maps=True)
    if n > 256:
        assert torch.equal(res.sparse_map, zeroed_like_torch(res.dense_map, num_zero))
        check_outputs(res, v)
        full = FA.fused_attention(q, k, v, None, 0.25, 0, statistics=True, cls_row=True, keep_maps=True)
        assert torch.equal(full.sparse_map, full.dense_map)  # theta = 1: the lse of PyTorch's attention
        torch.testing.assert_close(full.dense_map, res.dense_map, atol=1e-8, rtol=1e-5)
        check_outputs(full, v)
    dense = res.dense_map.flatten(2)
    threshold = dense.kthvalue(num_zero, dim=-1, keepdim=True).values
    ties = (dense == threshold).sum(-1)
    zeroed = (res.sparse_map.flatten(2) == 0).sum(-1)
    assert torch.equal(zeroed, (dense < threshold).sum(-1) + ties)
    assert (zeroed >= num_zero).all() and (zeroed - ties < num_zero).all()
    assert (ties == 1).float().mean() > 0.9  # random maps: the count is mostly k itself


@pytest.mark.parametrize("token_scale", [False, True])
def test_a_map_of_ties(token_scale):
    """q = 0: every row is the same (uniform without token scale); ties with the threshold are zeroed."""
    n, num_zero = 17, kernels.num_zeroed(17, 0.6)
    _, k, v, size = inputs(1, 2, n, 8, token_scale=token_scale)
    if size is not None:
        size[0, ::2] = 1.0  # many equal sizes: many equal columns
    q = torch.zeros_like(k)
    res = FA.fused_attention(q, k, v, size, 1.0, num_zero, statistics=True, cls_row=True, keep_maps=True)
    assert torch.equal(res.sparse_map, zeroed_like_torch(res.dense_map, num_zero))
    zeroed = (res.sparse_map == 0).flatten(2).sum(-1)
    if size is None:  # all n^2 entries equal the threshold
        assert (zeroed == n * n).all() and (res.out == 0).all()
    else:  # whole columns go: a multiple of n, at least num_zero
        assert ((zeroed % n) == 0).all() and (zeroed >= num_zero).all()
    check_outputs(res, v)


def test_close_to_the_torch_path():
    """The same attention as gtp.functional.attention, up to rounding at the threshold."""
    q, k, v, size = inputs(2, 2, 23, 16, seed=3)
    ours = FA.fused_attention(q, k, v, size, 0.25, kernels.num_zeroed(23, 0.6), statistics=True)
    theirs = G.attention(q, k, v, size, 0.6, 0.25, statistics=True)
    torch.testing.assert_close(ours.out, theirs.out, atol=1e-4, rtol=1e-3)
    for a, b in zip(ours.statistics, theirs.statistics):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def recorded_launches(monkeypatch) -> list:
    """Every list of launches `triton_support.execute` runs from now on (it still runs them)."""
    run, seen = triton_support.execute, []

    def record(launches):
        seen.append(list(launches))
        run(launches)

    monkeypatch.setattr(triton_support, "execute", record)
    return seen


def test_no_map_in_memory_unless_traced(monkeypatch):
    """Untraced, no launch is handed a buffer of n x n entries per head: no map is written anywhere."""
    seen = recorded_launches(monkeypatch)
    B, H, n, d = 1, 2, 33, 8  # n > d: q, k, v hold fewer entries than one map per head
    q, k, v, size = inputs(B, H, n, d, seed=7)
    lean = FA.fused_attention(q, k, v, size, 0.3, 300, statistics=True, cls_row=True)
    traced = FA.fused_attention(q, k, v, size, 0.3, 300, statistics=True, cls_row=True, keep_maps=True)
    full = FA.fused_attention(q, k, v, size, 0.3, 0, statistics=True, cls_row=True)
    assert len(seen) == 3  # one plan each
    tensors = [[t for launch in launches for t in launch.args.values() if isinstance(t, torch.Tensor)]
               for launches in seen]
    # floats: fewer entries than the maps; integers: the radix histograms, 3 x 1024 per head whatever n
    assert max(t.numel() for t in tensors[0] + tensors[2] if t.is_floating_point()) < B * H * n * n
    assert {t.numel() for t in tensors[0] if not t.is_floating_point()} == {B * H * 3 * 1024}
    assert any(t.numel() == 2 * B * H * n * n for t in tensors[1])  # the dense and sparse maps
    assert torch.equal(lean.out, traced.out)
    traced_full = FA.fused_attention(q, k, v, size, 0.3, 0, statistics=True, keep_maps=True)
    assert torch.equal(full.statistics[1], traced_full.statistics[1])
    torch.testing.assert_close(full.statistics[1], traced_full.sparse_map.sum(-2), atol=1e-6, rtol=1e-5)


def test_without_maps_the_same_results():
    """keep_maps / cls_row change only what is written, not out or the statistics."""
    q, k, v, size = inputs(1, 2, 17, 8, seed=4)
    with_maps = FA.fused_attention(q, k, v, size, 0.3, 100, statistics=True, cls_row=True, keep_maps=True)
    lean = FA.fused_attention(q, k, v, size, 0.3, 100, statistics=True)
    assert lean.dense_map is None and lean.sparse_map is None and lean.cls_row is None
    assert torch.equal(lean.out, with_maps.out)
    assert all(torch.equal(a, b) for a, b in zip(lean.statistics, with_maps.statistics))
    bare = FA.fused_attention(q, k, v, size, 0.3, 100)
    assert bare.statistics is None and torch.equal(bare.out, with_maps.out)


def test_the_wide_plan_zeroes_exactly(monkeypatch):
    """The plan of large grids on a GPU (`attention_plan.WIDE`: 128-row tiles, 16 keys per step), run by the
    interpreter on a ragged map: the diagonal spans several key tiles (its own loop in radix pass 0), and the
    padded rows and keys, counted by pass 0 with no mask, are taken off the histograms."""
    from gtp.kernels import attention_plan
    monkeypatch.setattr(attention_plan, "_wide", lambda *args: True)
    seen = recorded_launches(monkeypatch)
    n = 150   # two row tiles of 128, ten key tiles of 16
    q, k, v, size = inputs(1, 2, n, 16, token_scale=True, seed=5)
    num_zero = kernels.num_zeroed(n, 0.6)
    res = FA.fused_attention(q, k, v, size, 0.25, num_zero, statistics=True, cls_row=True, keep_maps=True)
    assert {(x.args["BLOCK_M"], x.args["BLOCK_N"]) for x in seen[0][:5]} == {(128, 16)}
    assert torch.equal(res.sparse_map, zeroed_like_torch(res.dense_map, num_zero))
    check_outputs(res, v)
    lean = FA.fused_attention(q, k, v, size, 0.25, num_zero, statistics=True)
    assert torch.equal(lean.out, res.out) and all(torch.equal(a, b) for a, b in zip(lean.statistics, res.statistics))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    """Logits and softmax in float32 from the half inputs; p is rounded to the input dtype for P @ V."""
    q, k, v, size = inputs(1, 2, 17, 16, dtype=dtype, seed=5)
    num_zero = kernels.num_zeroed(17, 0.6)
    res = FA.fused_attention(q, k, v, size, 0.25, num_zero, statistics=True, cls_row=True, keep_maps=True)
    assert res.out.dtype == dtype and res.dense_map.dtype == torch.float32
    assert torch.equal(res.sparse_map, zeroed_like_torch(res.dense_map, num_zero))
    torch.testing.assert_close(res.dense_map, G.attention_map(q.float(), k.float(), size, 0.25),
                               atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.out.float(), res.sparse_map @ v.float(), atol=1e-2, rtol=1e-2)


def test_strided_views_and_the_output_layout():
    """q, k, v as timm slices them from one qkv tensor are read in place; out is [B, n, H, d] memory."""
    B, n, H, d = 2, 17, 3, 8
    qkv = torch.randn(B, n, 3 * H * d, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    q, k, v = qkv.reshape(B, n, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
    size = torch.ones(B, n, device=DEVICE) + torch.arange(n, device=DEVICE) % 3
    strided = FA.fused_attention(q, k, v, size, 0.3, 120, statistics=True)
    packed = FA.fused_attention(q.contiguous(), k.contiguous(), v.contiguous(), size, 0.3, 120, statistics=True)
    assert torch.equal(strided.out, packed.out)
    assert torch.equal(strided.statistics[1], packed.statistics[1])
    merged = strided.out.transpose(1, 2).reshape(B, n, H * d)
    assert merged.data_ptr() == strided.out.data_ptr()  # a view: no copy
    torch.testing.assert_close(merged, packed.out.transpose(1, 2).flatten(2))


def test_single_token_and_validation():
    q, k, v, size = inputs(2, 1, 1, 8)
    res = FA.fused_attention(q, k, v, size, 0.3, 1, statistics=True, keep_maps=True)
    assert (res.dense_map == 1).all() and (res.sparse_map == 0).all() and (res.out == 0).all()
    with pytest.raises(ValueError, match="num_zero"):
        FA.fused_attention(q, k, v, size, 0.3, 2)
    with pytest.raises(ValueError, match="size"):
        FA.fused_attention(q, k, v, size[:, :0], 0.3, 0)
    with pytest.raises(ValueError, match="dtype"):
        FA.fused_attention(q, k, v.double(), size, 0.3, 0)


@pytest.mark.parametrize("device", ["cuda", "meta"])
def test_shapes_on_fake_and_meta_tensors(device):
    """The fake implementation gives every output its shape, dtype and layout, with no data."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    B, H, n, d = 2, 3, 197, 64
    mode = FakeTensorMode() if device == "cuda" else torch.device("meta")
    with mode:
        q, k, v = (torch.empty(B, H, n, d, dtype=torch.bfloat16, device=device) for _ in range(3))
        size = torch.ones(B, n, device=device)
        res = FA.fused_attention(q, k, v, size, 0.125, 100, statistics=True, cls_row=True, keep_maps=True)
        lean = FA.fused_attention(q, k, v, None, 0.125, 0)
    assert res.out.shape == (B, H, n, d) and res.out.dtype == torch.bfloat16
    assert res.out.transpose(1, 2).is_contiguous()
    assert [t.shape for t in (*res.statistics, res.cls_row)] == [(B, H, n)] * 3
    assert res.dense_map.shape == res.sparse_map.shape == (B, H, n, n)
    assert res.out.device.type == device and lean.statistics is None and lean.sparse_map is None


def test_one_graph_under_torch_compile():
    """The op is one node: dynamo traces a block's attention without a break."""
    q, k, v, size = inputs(1, 2, 9, 8)

    def attend(q, k, v, size):
        res = FA.fused_attention(q, k, v, size, 0.3, 20, statistics=True)
        return res.out.transpose(1, 2).flatten(2) * 2, res.statistics[0].amax(1)

    explained = torch._dynamo.explain(attend)(q, k, v, size)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    for a, b in zip(compiled(q, k, v, size), attend(q, k, v, size)):
        assert torch.equal(a, b)


def described(launches) -> list:
    """A plan as comparable data: kernel, grid, warps, stages, scalars, and each tensor's shape and dtype."""
    return [(l.kernel.__name__, l.grid, l.num_warps, l.num_stages,
             {k: (tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a for k, a in l.args.items()})
            for l in launches]


@pytest.mark.parametrize("num_zero", [0, 100])
def test_the_plan_is_what_runs(num_zero, monkeypatch):
    """Each op's registered plan, given the op's own arguments, lists exactly the launches it makes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.gtp = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "gtp":
                self.gtp.append((f"gtp::{func._schema.name.split('::')[1]}", args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    seen = recorded_launches(monkeypatch)
    q, k, v, size = inputs(2, 3, 40, 16, seed=8)
    with Calls() as calls:
        FA.fused_attention(q, k, v, size, 0.25, num_zero, statistics=True, cls_row=True)
    (name, args, kwargs), = calls.gtp
    assert name == ("gtp::fused_attention" if num_zero else "gtp::attention_statistics")
    planned = triton_support.PLANS[name](args, kwargs)
    assert described(planned) == described(seen[0])
    kernels_run = [launch.kernel.__name__ for launch in seen[0]]
    tiles = -(-40 // 32)  # 32-row tiles under the interpreter
    if num_zero:
        assert kernels_run == ["_lse_kernel"] + ["_radix_kernel"] * 3 + ["_attention_kernel", "_sum_tiles_kernel"]
        assert [launch.args["PASS"] for launch in seen[0][1:4]] == [0, 1, 2]
    else:  # the output and the lse came from PyTorch's attention, outside the plan
        assert kernels_run == ["_attention_kernel", "_sum_tiles_kernel"]
        assert seen[0][0].args["OUTPUT"] is False
    assert all(launch.grid == (tiles, 2 * 3) for launch in seen[0][:-1])  # row tiles x (image, head)


@pytest.mark.parametrize("batch", [1, 256])
def test_every_pass_tiles_rows_as_the_final_pass(batch):
    """On a GPU the passes may take other key steps and warps than the final pass (2 warps at a large
    batch), never other row tiles: each logit is then the same MMA sequence, so p has the same bits in
    the passes that find the threshold and in the pass that zeroes (and a key step is a multiple of the
    row tile, which the diagonal's key tile assumes)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        q = torch.empty(batch, 197, 3, 12, 64, dtype=torch.bfloat16, device="cuda").permute(2, 0, 3, 1, 4)[0]
        plan = triton_support.PLANS["gtp::fused_attention"]((q, q, q, None, 0.125, 15000, True, False, False), {})
    final = plan[4]
    assert [x.kernel.__name__ for x in plan[:5]] == ["_lse_kernel"] + ["_radix_kernel"] * 3 + ["_attention_kernel"]
    assert all(x.args["BLOCK_M"] == final.args["BLOCK_M"] and x.grid == final.grid for x in plan[:4])
    assert all(max(x.args["BLOCK_N"], x.args["BLOCK_M"]) % min(x.args["BLOCK_N"], x.args["BLOCK_M"]) == 0
               for x in plan[:5])   # key tiles aligned with the row tiles (the diagonal's key tiles)
    if batch == 256:   # 128-row tiles: one warpgroup per pass, two in the final pass, 16 keys per step in all
        assert final.args["BLOCK_M"] == 128 and {x.args["BLOCK_N"] for x in plan[:5]} == {16}
        assert [x.num_warps for x in plan[:5]] == [4, 4, 4, 4, 8]
    else:
        assert final.args["BLOCK_M"] == 32 and {x.num_warps for x in plan[:4]} == {final.num_warps}


# Compiles the plans' kernels for a Hopper GPU (sm_90) and the RTX Pro 6000 Blackwell (sm_120) down to
# cubins with Triton's own ptxas: no GPU needed. The interpreter runs Python, so it accepts code the real
# compiler rejects; this catches that, and reads what ptxas gave each kernel.
COMPILE_FOR_GPUS = """
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from gtp.kernels import fused_attention, triton_support as S
B, H, n, d = 2, 12, 197, 64
with FakeTensorMode():
    q, k, v = torch.empty(B, n, 3, H, d, dtype=torch.bfloat16, device="cuda").permute(2, 0, 3, 1, 4).unbind(0)
    bias, lse = torch.empty(B, n, device="cuda"), torch.empty(B, H, 224, device="cuda")
    sparse = S.PLANS["gtp::fused_attention"]((q, k, v, bias, 0.125, 15000, True, False, False), {})
    full = S.PLANS["gtp::attention_statistics"]((q, k, bias.bfloat16(), lse, 0.125, True, False, False), {})
    wide = torch.empty(256, n, 3, H, d, dtype=torch.bfloat16, device="cuda").permute(2, 0, 3, 1, 4)[0]
    big = S.PLANS["gtp::fused_attention"]((wide, wide, wide, None, 0.125, 15000, True, False, False), {})
    assert big[0].num_warps == 4 and big[0].args["BLOCK_M"] == 128  # the plan for a grid that fills the GPU
for launch in sparse[:2] + sparse[-2:] + full[:1] + big[:2]:
    for arch in (90, 120):
        compiled = S.compile_launch(launch, arch)
        used = S.resources(compiled)
        print(launch.kernel.__name__, arch, used)
        assert compiled.asm["cubin"] and used["spills"] == 0 and used["shared"] <= 99 * 1024
        assert used["registers"] <= 128, (launch.kernel.__name__, arch, used)
        if launch.kernel.__name__ == "_radix_kernel":
            assert "tt.histogram" not in compiled.asm["ttgir"] and "red.relaxed.gpu.global.add.u32" in compiled.asm["ptx"]
"""


def test_compiles_for_hopper_and_blackwell():
    """The bfloat16 plans' kernels compile for sm_90 and sm_120 within 128 registers, no spills, shared
    memory within sm_120's 99 KB per block; the radix passes count with atomics (no tl.histogram)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    subprocess.run([sys.executable, "-c", COMPILE_FOR_GPUS], cwd=ROOT, env=env, check=True, timeout=600)


def test_gtp_imports_without_triton():
    """The kernel module is imported on the first call only: gtp, and the op, load where Triton is missing."""
    code = ("import sys; sys.modules['triton'] = None; "  # any `import triton` now fails
            "import gtp, gtp.patch, gtp.kernels.fused_attention; "
            "assert 'gtp.kernels.triton_attention' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
