"""The baselines beside GTP, each held to an independent loop written from its definition:
`random` (P random patch tokens dropped per block, seeded), `downsample` (the unpatched model on a
smaller image at GTP's GMACs, position embeddings resampled by timm's own dynamic-size path) and
`pitome` (PiToMe, NeurIPS 2024; tests/pitome_reference.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gtp import downsample, gmacs, methods, pitome
from gtp.measure.metrics import features_and_logits
from gtp.tome import Matching

from conftest import random_model, small_vit
from pitome_reference import reference_forward as pitome_reference

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ random
def _random_reference(model, images, num_prop, seed):
    """P tokens dropped per block, image by image: block l's scores are the l-th draw of
    torch.rand(B, N_l) from a generator seeded at the forward's start; the P lowest go."""
    p = model.num_prefix_tokens
    gen = torch.Generator().manual_seed(seed)
    n, draws = model.patch_embed.num_patches, []
    for _ in model.blocks:
        draws.append(torch.rand(images.shape[0], n, generator=gen) if n > num_prop else None)
        n -= num_prop if n > num_prop else 0
    outputs = []
    for b, image in enumerate(images):
        x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]
        for blk, draw in zip(model.blocks, draws):
            x = x + blk.ls1(blk.attn(blk.norm1(x[None]))[0])
            if draw is not None:
                scores = draw[b].tolist()
                gone = set(sorted(range(len(scores)), key=lambda i: scores[i])[:num_prop])
                x = torch.stack([x[i] for i in range(p)] + [x[p + i] for i in range(len(scores)) if i not in gone])
            x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        outputs.append(model.forward_head(model.norm(x[None]))[0])
    return torch.stack(outputs)


def test_random_drops_seeded_random_tokens_as_the_reference_loop(deit_tiny, image_batch):
    method = methods.get("random")
    with torch.inference_mode():
        out = method.apply(deit_tiny, 10)(image_batch)
        again = deit_tiny(image_batch)
        ref = _random_reference(deit_tiny, image_batch, 10, methods.RANDOM_SEED)
        _, blocks = method.run_recorded(deit_tiny, lambda m: m(image_batch), 10)
        pruned = methods.get("pruning").apply(deit_tiny, 10)(image_batch)
    methods.reset(deit_tiny)
    assert torch.equal(out, again)                              # seeded: the same tokens every forward
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert [len(b.removed) for b in blocks] == [10] * 12 and blocks[-1].tokens_left == 197 - 120
    assert not torch.allclose(out, pruned, atol=1e-3)           # not the CLS-attention choice


# -------------------------------------------------------------------------- downsample
def test_downsample_is_timms_dynamic_size_model_on_the_resized_image(deit_tiny, image_batch):
    with torch.inference_mode():
        out = methods.get("downsample").apply(deit_tiny, 8)(image_batch)
        grid = downsample.grid_of(deit_tiny)
        cost = gmacs(deit_tiny)
        methods.apply_method(deit_tiny, "gtp", 8)
        gtp_cost = gmacs(deit_tiny)
        methods.reset(deit_tiny)
        assert downsample.grid_of(deit_tiny) is None
        # timm's own path: the same weights in a model built with dynamic_img_size=True.
        timm_model = random_model("deit_tiny_patch16_224", dynamic_img_size=True)
        timm_model.load_state_dict(deit_tiny.state_dict())
        small = F.interpolate(image_batch, size=(grid[0] * 16, grid[1] * 16), mode="bilinear",
                              antialias=True, align_corners=False)
        ref = timm_model(small)
        assert torch.equal(deit_tiny(image_batch), random_model("deit_tiny_patch16_224")(image_batch))  # restored
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert grid[0] * grid[1] < 196
    # The features `gtp.measure` reads (forward_features, not forward) see the small image too.
    methods.apply_method(deit_tiny, "downsample", 8)
    with torch.inference_mode():
        feats, logits = features_and_logits(deit_tiny, image_batch)
        ref_feats = timm_model.forward_head(timm_model.forward_features(small), pre_logits=True)
    methods.reset(deit_tiny)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats, ref_feats, rtol=1e-5, atol=1e-5)
    # The grid is the closest to GTP's GMACs among its neighbours (each counted, not modelled).
    for h, w in ((grid[0] + 1, grid[1]), (grid[0] - 1, grid[1]), (grid[0], grid[1] + 1), (grid[0], grid[1] - 1)):
        downsample.patch(deit_tiny, (h, w))
        assert abs(gmacs(deit_tiny) - gtp_cost) >= abs(cost - gtp_cost), (h, w)
        downsample.unpatch(deit_tiny)


def test_the_cost_curve_is_exact_and_the_grid_search_picks_the_nearest():
    model = small_vit()                                          # 8 x 8 patches
    curve = downsample.cost_curve(model)
    for grid in ((5, 6), (7, 7), (3, 4)):
        downsample.patch(model, grid)
        a, b, c = curve
        n = grid[0] * grid[1]
        assert gmacs(model, 64) == pytest.approx(a + b * n + c * n * n, rel=1e-9)
        downsample.unpatch(model)
    a, b, c = curve
    target = a + b * 42 + c * 42 * 42                            # 6 x 7 costs exactly this
    assert sorted(downsample.grid_for(target, curve, (8, 8))) == [6, 7]
    assert downsample.grid_for(1e9, curve, (8, 8)) == (8, 8)


# ------------------------------------------------------------------------------ PiToMe
SCHEDULE = [6, 0, 10, 30, 2, 8, 8, 16, 1, 0, 100, 4]


@pytest.mark.parametrize("r", [8, SCHEDULE])
def test_pitome_matches_the_reference_loop(deit_tiny, image_batch, r):
    schedule = [r] * 12 if isinstance(r, int) else r
    with torch.inference_mode():
        out = pitome.patch(deit_tiny, r=schedule)(image_batch)
        tokens = []
        hooks = [blk.register_forward_hook(lambda mod, args, y: tokens.append(y.shape[1])) for blk in deit_tiny.blocks]
        deit_tiny(image_batch[:1])
        for h in hooks:
            h.remove()
    methods.reset(deit_tiny)
    ref, counts = pitome_reference(deit_tiny, image_batch, schedule)
    assert tokens == counts[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_pitome_protects_the_low_energy_tokens_and_merges_high_energy_pairs():
    # Tokens 0-3 are near-copies (high energy), 4 and 5 are unlike everything (low energy).
    metric = torch.tensor([[[9.0, 0.0], [1.0, 0.0], [1.0, 0.01], [1.0, 0.02], [1.0, 0.03],
                            [0.0, 1.0], [-1.0, 0.2]]])      # token 0 is the CLS token
    match = pitome.energy_matching(metric, 2, 1, block=0, depth=12)
    assert isinstance(match, Matching)
    assert set(match.src[0].tolist()) | set(match.dst[0].tolist()) <= {1, 2, 3, 4}
    assert match.order[0, 0] == 0 and {5, 6} <= set(match.order[0, 1:3].tolist())
    assert pitome.margin(0, 12) == pytest.approx(0.9) and pitome.margin(6, 12) == pytest.approx(0.5)


def test_the_new_methods_are_registered_with_matched_costs(deit_tiny):
    costs = {}
    for name in ("gtp", "tome", "random", "pitome", "downsample"):
        methods.apply_method(deit_tiny, name, 8)
        costs[name] = gmacs(deit_tiny)
    methods.reset(deit_tiny)
    for name in ("tome", "random", "pitome"):
        assert abs(costs[name] - costs["gtp"]) / costs["gtp"] < 0.03, (name, costs)
    assert abs(costs["downsample"] - costs["gtp"]) / costs["gtp"] < 0.06, costs  # 14 x 14 grid: coarse steps
