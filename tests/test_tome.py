"""ToMe (gtp.tome): exactness at r = 0, size bookkeeping, matching maths, equal GMACs with GTP."""
from __future__ import annotations

import pytest
import torch

import gtp
from gtp import tome
from gtp.tome import Matching, bipartite_soft_matching, merge_wavg, proportional_attention

from conftest import random_model


@pytest.fixture(autouse=True)
def _one_thread():
    """One CPU thread: far faster than two on a busy 2-core machine, same results."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return random_model("deit_tiny_patch16_224")


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@torch.inference_mode()
def test_r0_is_exactly_the_unpatched_model(tiny, images):
    ref = tiny(images)
    tome.patch(tiny, r=0)
    try:
        assert torch.equal(tiny(images), ref)
        assert type(tiny.blocks[0]).__name__.startswith("ToMe")
    finally:
        tome.unpatch(tiny)
    assert torch.equal(tiny(images), ref)
    assert not hasattr(tiny, "_tome_state")


@torch.inference_mode()
def test_sizes_sum_to_the_original_token_count(tiny, images):
    tome.patch(tiny, r=8)
    try:
        out = tiny(images)
        sizes = tome.sizes_of(tiny)
    finally:
        tome.unpatch(tiny)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert sizes.shape == (2, 197 - 12 * 8)          # 8 fewer tokens after each of 12 blocks
    assert torch.equal(sizes.sum(1), torch.full((2,), 197.0))
    assert torch.equal(sizes[:, 0], torch.ones(2))    # the CLS token is never merged
    assert (sizes[:, 1:] >= 1).all()


@torch.inference_mode()
def test_per_block_schedule_and_clipping(tiny, images):
    tome.patch(tiny, r=[0] * 11 + [100])  # the last block can merge at most half its patch tokens
    try:
        tiny(images)
        assert tome.sizes_of(tiny).shape == (2, 1 + 196 - 98)
    finally:
        tome.unpatch(tiny)
    with pytest.raises(ValueError):
        tome.patch(tiny, r=[1, 2])
    with pytest.raises(ValueError):
        tome.patch(tiny, r=-1)


def test_refuses_a_gtp_patched_model(tiny):
    gtp.patch(tiny, num_prop=4)
    try:
        with pytest.raises(ValueError, match="GTP"):
            tome.patch(tiny, r=4)
    finally:
        gtp.unpatch(tiny)


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


def test_matching_picks_the_most_similar_pairs_and_protects_prefix():
    # 1 prefix token, 6 patch tokens: A = positions 0, 2, 4; B = 1, 3, 5.
    e = torch.eye(4)
    metric = torch.stack([e[3] * 5,                      # prefix: identical to patch 5, must stay
                          e[0], e[0],                    # 0 -> 1: identical
                          e[1], e[2] + 0.1 * e[1],       # 2 -> 3: close
                          e[3], e[3]])[None]             # 4 -> 5: identical
    m = bipartite_soft_matching(metric, r=2, num_prefix=1)
    assert m.src.tolist() == [[0, 4]] and m.dst.tolist() == [[1, 5]]
    assert m.keep.tolist() == [[1, 2, 3, 5]]
    assert bipartite_soft_matching(metric, r=10, num_prefix=1).src.shape == (1, 3)  # r <= |A|


def test_merge_is_a_size_weighted_average():
    x = torch.tensor([[[9.0], [1.0], [4.0], [7.0], [10.0]]])  # prefix, then 4 patches
    size = torch.tensor([[1.0, 3.0, 1.0, 1.0, 2.0]])
    match = Matching(src=torch.tensor([[0, 2]]), dst=torch.tensor([[1, 1]]), keep=torch.tensor([[1, 3]]))
    y, s = merge_wavg(x, size, match, num_prefix=1)
    # patches 0 (x 1, size 3) and 2 (x 7, size 1) merge into patch 1 (x 4, size 1); patch 3 stays
    assert s.tolist() == [[1.0, 3.0 + 1.0 + 1.0, 2.0]]
    assert y[0, :, 0].tolist() == pytest.approx([9.0, (3 * 1.0 + 1 * 4.0 + 1 * 7.0) / 5.0, 10.0])
    assert y[0, 2, 0] == x[0, 4, 0]  # a token that merges with nothing is untouched


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
