"""ToMe (gtp.tome) behaves as the authors' code: held to tests/tome_reference.py, an independent
per-image loop written from the description of their behaviour (CLS, CLS + distillation, register
and no-prefix layouts, schedules, real DINOv2 weights on real photos)."""
from __future__ import annotations

import pytest
import torch

from gtp import tome

from conftest import DINOV2_FILE, ROOT, random_model, small_vit
from tome_reference import reference_forward

pytestmark = pytest.mark.usefixtures("one_thread")


# -------------------------------------------- the authors' behaviour (tests/tome_reference.py)
SCHEDULE = [4, 0, 12, 30, 0, 2, 8, 8, 16, 1, 0, 100]  # includes 0s and a clipped 100


def _run_patched(model, image_batch, r):
    """gtp.tome on `model` with source tracking: (logits, merged ids [B][block][r_i], their
    partners' ids [B][block][r_i], sources [B][token])."""
    tome.patch(model, r=r, trace_source=True)
    try:
        with torch.inference_mode():
            out = model(image_batch)
        merged, source, sizes = tome.merged_ids_of(model), tome.sources_of(model), tome.sizes_of(model)
        merged_into = tome.merged_into_of(model)
    finally:
        tome.unpatch(model)
    B = image_batch.shape[0]
    assert [m.shape for m in merged_into] == [m.shape for m in merged]
    ids = [[m[b].tolist() for m in merged] for b in range(B)]
    into = [[m[b].tolist() for m in merged_into] for b in range(B)]
    sets = [[set(row.nonzero()[:, 0].tolist()) for row in source[b]] for b in range(B)]
    if sizes is not None:  # a token's size is the number of tokens it stands for
        assert sizes.tolist() == [[float(len(s)) for s in image] for image in sets]
    return out, ids, into, sets


def _assert_matches_reference(model, image_batch, r):
    schedule = [r] * len(model.blocks) if isinstance(r, int) else r
    ref_out, ref_ids, ref_into, ref_sets = reference_forward(model, image_batch, schedule)
    out, ids, into, sets = _run_patched(model, image_batch, r)
    scale = ref_out.abs().max()
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5 * scale)
    assert ids == ref_ids      # the same patches merged, in the same order, block by block
    assert into == ref_into    # each into the same partner
    assert sets == ref_sets    # and every final token stands for the same original tokens


@pytest.fixture(scope="module")
def distilled():
    return random_model("deit_tiny_distilled_patch16_224")


@pytest.mark.parametrize("r", [0, 8, 16, SCHEDULE], ids=["r0", "r8", "r16", "schedule"])
@pytest.mark.parametrize("which", ["cls", "cls+distillation"])
def test_matches_the_authors_behaviour(which, r, deit_tiny, distilled, image_batch):
    model = deit_tiny if which == "cls" else distilled
    _assert_matches_reference(model, image_batch, r)


def test_matches_the_authors_behaviour_on_real_dinov2_photos():
    """Real weights (layer scale, 256 patches of 14 px) and real photos, where near-ties
    between similar background patches happen: the same merges, the same features."""
    from gtp.models import load_image, load_model
    if not DINOV2_FILE.exists():
        pytest.skip(f"real weights not found at {DINOV2_FILE}")
    photos = [ROOT / "assets" / name for name in ("chelsea.png", "coffee.png")]
    if not all(p.exists() for p in photos):
        pytest.skip("real photos missing from assets/")
    loaded = load_model("vit_small_patch14_dinov2", weights=DINOV2_FILE, device="cpu")
    # In float64: these photos hold A tokens whose best scores differ by ~2e-7, so in float32
    # the order of two near-equal scores depends on how this CPU's matmul rounds (batched
    # here, per image in the reference). float64 separates them on every machine.
    model = loaded.model.double()
    x = torch.stack([loaded.transform(load_image(p)) for p in photos]).double()
    _assert_matches_reference(model, x, 16)


def test_the_comparison_sees_the_token_order(deit_tiny, image_batch, monkeypatch):
    """The comparison can fail: keeping every token's relative order after a merge (what
    this module did before) changes the next blocks' partitions, hence the merged ids."""
    exact = tome.bipartite_soft_matching

    def relative_order(metric, r, num_prefix=1):
        m = exact(metric, r, num_prefix)
        return m._replace(order=m.order.sort(dim=-1).values)

    monkeypatch.setattr(tome, "bipartite_soft_matching", relative_order)
    with pytest.raises(AssertionError):
        _assert_matches_reference(deit_tiny, image_batch, 8)


@pytest.mark.parametrize("layout", [dict(reg_tokens=3), dict(class_token=False, global_pool="avg"),
                                    dict(class_token=False, reg_tokens=2, global_pool="avg")],
                         ids=["cls+registers", "no-prefix-avg", "registers-avg"])
def test_extended_layouts_follow_the_same_rule(layout):
    """Registers are protected like the class token; with no prefix, patch 0 is in A."""
    model = small_vit(**layout)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    _assert_matches_reference(model, x, 6)
    _assert_matches_reference(model, x, [0, 20, 3, 9])
    tome.patch(model, r=6)
    try:
        with torch.inference_mode():
            model(x)
        sizes = tome.sizes_of(model)
    finally:
        tome.unpatch(model)
    p = model.num_prefix_tokens
    assert sizes.shape == (2, p + 64 - 4 * 6)
    assert torch.equal(sizes[:, :p], torch.ones(2, p))  # every prefix token stays alone, in front
