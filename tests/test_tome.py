"""ToMe (gtp.tome): exactness at r = 0, size bookkeeping, matching maths, source tracking, equal
GMACs with GTP, a sync-free forward. The authors' behaviour: tests/test_tome_authors.py."""
from __future__ import annotations

import pytest
import torch

import gtp
from gtp import tome
from gtp.tome import Matching, bipartite_soft_matching, merge_wavg, proportional_attention

from conftest import random_model, small_vit


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.inference_mode()
def test_r0_is_exactly_the_unpatched_model(deit_tiny, image_batch):
    ref = deit_tiny(image_batch)
    tome.patch(deit_tiny, r=0)
    try:
        assert torch.equal(deit_tiny(image_batch), ref)
        assert type(deit_tiny.blocks[0]).__name__.startswith("ToMe")
    finally:
        tome.unpatch(deit_tiny)
    assert torch.equal(deit_tiny(image_batch), ref)
    assert not hasattr(deit_tiny, "_tome_state")


@torch.inference_mode()
def test_sizes_sum_to_the_original_token_count(deit_tiny, image_batch):
    tome.patch(deit_tiny, r=8)
    try:
        out = deit_tiny(image_batch)
        sizes = tome.sizes_of(deit_tiny)
    finally:
        tome.unpatch(deit_tiny)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert sizes.shape == (2, 197 - 12 * 8)          # 8 fewer tokens after each of 12 blocks
    assert torch.equal(sizes.sum(1), torch.full((2,), 197.0))
    assert torch.equal(sizes[:, 0], torch.ones(2))    # the CLS token is never merged
    assert (sizes[:, 1:] >= 1).all()


@torch.inference_mode()
def test_per_block_schedule_and_clipping(deit_tiny, image_batch):
    tome.patch(deit_tiny, r=[0] * 11 + [100])  # the last block can merge at most half its patch tokens
    try:
        deit_tiny(image_batch)
        assert tome.sizes_of(deit_tiny).shape == (2, 1 + 196 - 98)
    finally:
        tome.unpatch(deit_tiny)
    with pytest.raises(ValueError):
        tome.patch(deit_tiny, r=[1, 2])
    with pytest.raises(ValueError):
        tome.patch(deit_tiny, r=-1)


def test_refuses_a_gtp_patched_model(deit_tiny):
    gtp.patch(deit_tiny, num_prop=4)
    try:
        with pytest.raises(ValueError, match="GTP"):
            tome.patch(deit_tiny, r=4)
    finally:
        gtp.unpatch(deit_tiny)


def test_gmacs_match_gtp_at_equal_p():
    model = random_model("deit_small_patch16_224")
    full = gtp.gmacs(model)
    tome.patch(model, r=8)
    g_tome = gtp.gmacs(model)
    tome.unpatch(model)
    gtp.patch(model, num_prop=8)
    g_gtp = gtp.gmacs(model)
    gtp.unpatch(model)
    assert g_tome < 0.8 * full
    assert abs(g_tome - g_gtp) / g_gtp < 0.01, (g_tome, g_gtp)


def test_matching_partitions_by_absolute_position_and_protects_prefix():
    # 1 prefix token, 6 patch tokens at positions 1..6. By absolute position, prefix
    # included: A = positions 0 (CLS), 2, 4, 6; B = 1, 3, 5.
    e = torch.eye(4)
    metric = torch.stack([e[3] * 5,                      # 0, CLS: identical to 5, must stay
                          e[0], e[0] + 0.01 * e[1],      # 2 -> 1: almost identical
                          e[1], e[2] + 0.1 * e[1],       # 4 -> 3: far
                          e[3], e[3]])[None]             # 6 -> 5: identical
    m = bipartite_soft_matching(metric, r=2, num_prefix=1)
    assert m.src.tolist() == [[6, 2]] and m.dst.tolist() == [[5, 1]]  # best match first
    # prefix, the unmerged A token (4), then every B token
    assert m.order.tolist() == [[0, 4, 1, 3, 5]]
    assert bipartite_soft_matching(metric, r=10, num_prefix=1).src.shape == (1, 3)  # r <= (7 - 1) // 2
    none = bipartite_soft_matching(metric, r=0, num_prefix=1)
    assert none.src.shape == (1, 0) and none.order.tolist() == [list(range(7))]  # r = 0 reorders nothing


def test_matching_protects_a_prefix_token_in_b():
    # CLS + distillation token (position 1, in B): identical to A token 2, it receives nothing.
    e = torch.eye(3)
    metric = torch.stack([e[0], e[1], e[1], e[2], e[2] + 0.5 * e[0]])[None]  # A = 0, 2, 4; B = 1, 3
    m = bipartite_soft_matching(metric, r=1, num_prefix=2)
    assert m.src.tolist() == [[4]] and m.dst.tolist() == [[3]]
    assert m.order.tolist() == [[0, 1, 2, 3]]
    assert bipartite_soft_matching(metric, r=5, num_prefix=2).src.shape == (1, 1)  # (5 - 2) // 2


def test_merge_is_a_size_weighted_average_in_output_order():
    x = torch.tensor([[[9.0], [1.0], [4.0], [7.0], [10.0], [2.0]]])  # prefix, then 5 patches
    size = torch.tensor([[1.0, 3.0, 1.0, 1.0, 2.0, 1.0]])
    # A = 0 (prefix), 2, 4; B = 1, 3, 5. A token 4 merges into B token 1; A token 2 stays.
    match = Matching(src=torch.tensor([[4]]), dst=torch.tensor([[1]]), order=torch.tensor([[0, 2, 1, 3, 5]]))
    y, s = merge_wavg(x, size, match)
    assert s.tolist() == [[1.0, 1.0, 3.0 + 2.0, 1.0, 1.0]]
    assert y[0, :, 0].tolist() == pytest.approx([9.0, 4.0, (3 * 1.0 + 2 * 10.0) / 5.0, 7.0, 2.0])
    assert y[0, 1, 0] == x[0, 2, 0]  # a token that merges with nothing keeps its value


def test_proportional_attention_fused_equals_explicit():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    size = torch.rand(2, 7, generator=g) * 3 + 1
    fused = proportional_attention(q, k, v, size, 8 ** -0.5, fused=True)
    explicit = proportional_attention(q, k, v, size, 8 ** -0.5, fused=False)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    # size s on a key acts like s copies of it
    k2, v2 = torch.cat([k, k[:, :, :1]], 2), torch.cat([v, v[:, :, :1]], 2)
    ones = torch.ones(2, 8)
    two = ones.clone()[:, :7]
    two[:, 0] = 2.0
    torch.testing.assert_close(proportional_attention(q, k, v, two, 8 ** -0.5),
                               proportional_attention(q, k2, v2, ones, 8 ** -0.5), rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_distilled_model_keeps_both_prefix_tokens():
    model = random_model("deit_tiny_distilled_patch16_224")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    tome.patch(model, r=8)
    out = model(x)
    sizes = tome.sizes_of(model)
    assert sizes.shape == (1, 198 - 96) and sizes.sum() == 198
    assert sizes[0, :2].tolist() == [1.0, 1.0]
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------ source tracking


@torch.inference_mode()
def test_source_rows_sum_to_token_sizes_and_cover_every_patch(deit_tiny, image_batch):
    tome.patch(deit_tiny, r=8, trace_source=True)
    try:
        deit_tiny(image_batch)
        source, sizes, merged = tome.sources_of(deit_tiny), tome.sizes_of(deit_tiny), tome.merged_ids_of(deit_tiny)
        ids = deit_tiny._tome_state.ids  # the patch each surviving patch token started as
    finally:
        tome.unpatch(deit_tiny)
    n = 197 - 12 * 8
    assert source.shape == (2, n, 197)
    torch.testing.assert_close(source.sum(-1), sizes)            # each row sums to the token's size
    assert torch.equal(source.sum(1), torch.ones(2, 197))         # every original token is in exactly one
    assert ((source == 0) | (source == 1)).all()
    assert torch.equal(source[:, 0, 0], torch.ones(2))            # CLS stands for itself only
    assert source[:, 0].sum().item() == 2
    # merged ids per block: r each, distinct, and never a surviving token's own patch
    assert len(merged) == 12 and all(m.shape == (2, 8) for m in merged)
    for b in range(2):
        gone = torch.cat([m[b] for m in merged])
        assert gone.unique().numel() == 96 and gone.min() >= 0 and gone.max() < 196
        # with the surviving tokens' own patches, they name every patch exactly once
        survivors = ids[b].tolist()
        assert sorted(gone.tolist() + survivors) == list(range(196))
        assert all(source[b, 1 + i, 1 + pid] == 1 for i, pid in enumerate(survivors))


@torch.inference_mode()
def test_merged_ids_name_tokens_whose_patches_moved_into_partners(deit_tiny, image_batch):
    """After the forward, a merged-away patch lives in a row of size > 1 (its partner's)."""
    tome.patch(deit_tiny, r=[4] * 6 + [0] * 6, trace_source=True)
    try:
        deit_tiny(image_batch)
        source, merged = tome.sources_of(deit_tiny), tome.merged_ids_of(deit_tiny)
    finally:
        tome.unpatch(deit_tiny)
    assert [m.shape[1] for m in merged] == [4] * 6 + [0] * 6
    for b in range(2):
        for pid in torch.cat([m[b] for m in merged]).tolist():
            row = source[b, :, 1 + pid].nonzero().item()
            assert row >= 1 and source[b, row].sum() >= 2


@torch.inference_mode()
def test_each_merged_token_goes_into_a_live_partner_and_ends_with_it(deit_tiny, image_batch):
    """merged[i][b, j] went into merged_into[i][b, j]: a patch token still alive in block i
    (not merged away before or in it), and the two patches end up in the same final token."""
    tome.patch(deit_tiny, r=[4, 0, 12, 30, 8, 8, 16, 1, 0, 2, 6, 100], trace_source=True)
    try:
        deit_tiny(image_batch)
        source, merged, into = tome.sources_of(deit_tiny), tome.merged_ids_of(deit_tiny), tome.merged_into_of(deit_tiny)
    finally:
        tome.unpatch(deit_tiny)
    assert len(into) == 12 and [m.shape for m in into] == [m.shape for m in merged]
    assert into[1].shape == (2, 0) and into[3].shape == (2, 30)
    for b in range(2):
        gone_before: set[int] = set()
        for gone, partners in zip(merged, into):
            gone_here = set(gone[b].tolist())
            for pid, dst in zip(gone[b].tolist(), partners[b].tolist()):
                assert 0 <= dst < 196 and dst not in gone_before | gone_here
                assert torch.equal(source[b, :, 1 + pid], source[b, :, 1 + dst])  # the same final row
            gone_before |= gone_here
        shared = sum(len(p[b].unique()) < p.shape[1] for p in into)
        assert shared > 0  # several tokens do share a partner in some block


@torch.inference_mode()
def test_r0_with_source_tracking_removes_nothing_and_changes_nothing(deit_tiny, image_batch):
    ref = deit_tiny(image_batch)
    tome.patch(deit_tiny, r=0, trace_source=True)
    try:
        out = deit_tiny(image_batch)
        merged, source, into = tome.merged_ids_of(deit_tiny), tome.sources_of(deit_tiny), tome.merged_into_of(deit_tiny)
    finally:
        tome.unpatch(deit_tiny)
    assert torch.equal(out, ref)
    assert len(merged) == 12 and all(m.shape == (2, 0) for m in merged)
    assert len(into) == 12 and all(m.shape == (2, 0) for m in into)
    assert torch.equal(source, torch.eye(197).expand(2, 197, 197))


@torch.inference_mode()
def test_source_tracking_is_off_by_default_and_does_not_change_outputs(deit_tiny, image_batch):
    tome.patch(deit_tiny, r=8)
    try:
        plain = deit_tiny(image_batch)
        assert tome.sources_of(deit_tiny) is None and tome.merged_ids_of(deit_tiny) is None
        assert tome.merged_into_of(deit_tiny) is None and deit_tiny._tome_state.merged_into == []
        assert deit_tiny._tome_state.source is None
        tome.patch(deit_tiny, r=8, trace_source=True)  # reconfigure in place
        traced = deit_tiny(image_batch)
    finally:
        tome.unpatch(deit_tiny)
    assert torch.equal(plain, traced)


def test_merge_sum_adds_rows():
    x = torch.eye(5)[None]  # prefix, then 4 patches; A = 0, 2, 4; B = 1, 3
    match = Matching(src=torch.tensor([[2, 4]]), dst=torch.tensor([[3, 3]]), order=torch.tensor([[0, 1, 3]]))
    y = tome.merge_sum(x, match)
    assert y.tolist() == [[[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 1]]]


# ------------------------------------------------------ sync-free, static-shape forward
HOST_READS = ("nonzero", "argwhere", "_local_scalar_dense", "item", "is_nonzero", "masked_select", "equal",
              "unique", "_unique")  # op-name prefixes: nonzero also names nonzero_numpy (as_tuple=True)


def _count_ops(model, image_batch):
    """aten ops of one forward, by name ('aten.gather.default': count), seen by a dispatch mode;
    bool-tensor indexing (which hides a `nonzero`) is counted as 'bool-index'."""
    from collections import Counter
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func)] += 1
            if func.__name__.startswith("index") and any(
                    isinstance(t, torch.Tensor) and t.dtype == torch.bool
                    for a in args if isinstance(a, (list, tuple)) for t in a):
                self.ops["bool-index"] += 1
            return func(*args, **(kwargs or {}))

    with torch.inference_mode(), Count() as mode:
        model(image_batch)
    return mode.ops


@pytest.mark.parametrize("trace_source", [False, True], ids=["plain", "trace_source"])
def test_forward_has_no_host_reads_and_the_same_ops_at_any_batch(trace_source):
    """What issue 11 asks of the GPU path, checked on CPU: no op that waits on the device
    (nonzero, item, bool masks), and the same ops at batch 1 and 8 (no per-image loops)."""
    model = small_vit(reg_tokens=1)
    tome.patch(model, r=[5, 0, 9, 3], trace_source=trace_source)
    try:
        one = _count_ops(model, torch.randn(1, 3, 64, 64))
        eight = _count_ops(model, torch.randn(8, 3, 64, 64))
    finally:
        tome.unpatch(model)
    assert one == eight
    assert "aten.sort.default" in one or "aten.sort.stable" in one  # the merges did run
    waits = [op for op in one if op.startswith("aten.") and op.split(".")[1].startswith(HOST_READS)]
    assert not waits, waits
    assert "bool-index" not in one


def test_forward_runs_on_meta_tensors():
    """A forward on the meta device cannot read any value (nonzero, .item(), .tolist(),
    int(tensor), bool masks all raise there): the merge decisions stay on the device."""
    import copy
    model = copy.deepcopy(small_vit(class_token=True, reg_tokens=2))
    tome.patch(model, r=6, trace_source=True)
    model.to("meta")
    out = model(torch.empty(3, 3, 64, 64, device="meta"))
    assert out.shape == (3, 10) and out.device.type == "meta"
    assert tome.sizes_of(model).shape == (3, 3 + 64 - 4 * 6)
    assert [m.shape for m in tome.merged_ids_of(model)] == [(3, 6)] * 4
    assert [m.shape for m in tome.merged_into_of(model)] == [(3, 6)] * 4
