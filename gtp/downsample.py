"""The plainest baseline: the UNPATCHED model on a smaller input, at the GMACs of GTP at P.

Every block then sees fewer tokens from the start instead of losing P per block. The input
is resized (bilinear, antialiased) to a patch grid (rows, columns) whose GMACs come closest
to GTP's at that P (the published setting), among grids whose aspect ratio stays within 20%
of the model's; the position embeddings are resampled as timm itself does for
`dynamic_img_size=True` models (`timm.layers.resample_abs_pos_embed`, bicubic): this module
switches that timm path on and restores it on `unpatch`.

The GMACs of the unpatched model are a quadratic in the token count N (linear layers and
the patch embedding grow with N, attention with N squared), so three counted forwards fit it
exactly and every candidate grid is then priced without running it (`grid_for`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import timm_adapter as timm_vit

ASPECT_SLACK = 1.2
"""A candidate grid's aspect ratio may differ from the model's by this factor at most."""


def _set_dynamic(model: nn.Module, on: bool, saved: Optional[dict] = None) -> dict:
    """Switch timm's dynamic-image-size path on (returns the settings it replaced) or restore them."""
    from timm.layers import Format
    pe = model.patch_embed
    if not on:
        for name, value in saved["patch_embed"].items():
            setattr(pe, name, value)
        model.dynamic_img_size = saved["dynamic_img_size"]
        return saved
    old = dict(dynamic_img_size=model.dynamic_img_size,
               patch_embed=dict(strict_img_size=pe.strict_img_size, flatten=pe.flatten, output_fmt=pe.output_fmt))
    model.dynamic_img_size = True
    pe.strict_img_size, pe.flatten, pe.output_fmt = False, False, Format.NHWC
    return old


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `patch`: full-size inputs and timm's settings as before."""
    state = getattr(model, "_downsample_state", None)
    if state is None:
        return model
    state["hook"].remove()
    _set_dynamic(model, False, state["saved"])
    del model._downsample_state
    return model


def patch(model: nn.Module, grid: tuple[int, int]) -> nn.Module:
    """Run `model` on inputs resized to `grid` patches (rows, columns), in place; `unpatch` undoes it."""
    timm_vit.check_model(model, "gtp.downsample.patch")
    unpatch(model)
    patch_size = tuple(model.patch_embed.patch_size)

    def resize(module: nn.Module, args: tuple) -> Optional[tuple]:
        return (resized(args[0], grid, patch_size), *args[1:])

    saved = _set_dynamic(model, True)
    # On the patch embedding, not on the model: `forward_features` (what the features of
    # `gtp.measure` and Compare come from) and `forward` both pass through it.
    model._downsample_state = dict(grid=tuple(grid), saved=saved,
                                   hook=model.patch_embed.register_forward_pre_hook(resize))
    return model


def grid_of(model: nn.Module) -> Optional[tuple[int, int]]:
    """The grid a downsample-patched model runs at, or None."""
    state = getattr(model, "_downsample_state", None)
    return None if state is None else state["grid"]


def _full_cost(model: nn.Module, grid: tuple[int, int]) -> float:
    """Counted GMACs of the unpatched model at a patch grid."""
    from .flops import gmacs
    ph, pw = model.patch_embed.patch_size
    patch(model, grid)
    try:
        return gmacs(model, (grid[0] * ph, grid[1] * pw))
    finally:
        unpatch(model)


def cost_curve(model: nn.Module) -> tuple[float, float, float]:
    """(a, b, c): the unpatched model's GMACs at N patch tokens are a + b N + c N^2, fitted
    exactly from three counted forwards (full grid, and two smaller square-ish grids)."""
    gh, gw = timm_vit.grid_size(model)
    grids = [(gh, gw), (max(1, gh * 3 // 4), max(1, gw * 3 // 4)), (max(1, gh // 2), max(1, gw // 2))]
    ns = [float(h * w) for h, w in grids]
    cs = [_full_cost(model, g) for g in grids]
    A = torch.tensor([[1.0, n, n * n] for n in ns], dtype=torch.float64)
    a, b, c = torch.linalg.solve(A, torch.tensor(cs, dtype=torch.float64)).tolist()
    return a, b, c


def grid_for(target_gmacs: float, curve: Sequence[float], full_grid: tuple[int, int]) -> tuple[int, int]:
    """The grid (rows, columns), no larger than `full_grid`, with aspect ratio within
    ASPECT_SLACK of it, whose modelled GMACs come closest to `target_gmacs` (ties: the more
    square one)."""
    a, b, c = curve
    gh, gw = full_grid
    aspect = gh / gw
    best, best_key = full_grid, None
    for h in range(1, gh + 1):
        for w in range(1, gw + 1):
            if max((h / w) / aspect, aspect / (h / w)) > ASPECT_SLACK:
                continue
            n = h * w
            key = (abs(a + b * n + c * n * n - target_gmacs), abs(math.log((h / w) / aspect)))
            if best_key is None or key < best_key:
                best, best_key = (h, w), key
    return best


def _arch_key(model: nn.Module) -> tuple:
    """What the GMACs of a timm ViT depend on (two models with the same key cost the same)."""
    return (type(model).__name__, tuple(timm_vit.grid_size(model)), tuple(model.patch_embed.patch_size),
            model.embed_dim, len(model.blocks), timm_vit.num_prefix(model),
            sum(p.numel() for p in model.parameters()))


_MATCHED: dict[tuple, tuple[int, int]] = {}


def matched_grid(model: nn.Module, amount: Union[int, Sequence[int]]) -> tuple[int, int]:
    """The grid at which the unpatched `model` costs about what GTP (published setting) costs
    at P = `amount`; counted once per architecture and P (a few one-image forwards)."""
    from .flops import gmacs
    from .patch import patch as gtp_patch
    from .patch import unpatch as gtp_unpatch
    key = (_arch_key(model), json_key(amount))
    if key not in _MATCHED:
        unpatch(model)
        curve = _curve(model)
        gtp_patch(model, num_prop=amount)
        try:
            target = gmacs(model, _image_size(model))
        finally:
            gtp_unpatch(model)
        _MATCHED[key] = grid_for(target, curve, timm_vit.grid_size(model))
    return _MATCHED[key]


def json_key(amount: Union[int, Sequence[int]]) -> Union[int, tuple[int, ...]]:
    """A per-block schedule as a hashable key."""
    return amount if isinstance(amount, int) else tuple(amount)


_CURVES: dict[tuple, tuple[float, float, float]] = {}


def _curve(model: nn.Module) -> tuple[float, float, float]:
    """`cost_curve`, fitted once per architecture."""
    key = _arch_key(model)
    if key not in _CURVES:
        _CURVES[key] = cost_curve(model)
    return _CURVES[key]


def _image_size(model: nn.Module) -> tuple[int, int]:
    gh, gw = timm_vit.grid_size(model)
    ph, pw = model.patch_embed.patch_size
    return gh * ph, gw * pw


def resized(x: Tensor, grid: tuple[int, int], patch_size: tuple[int, int]) -> Tensor:
    """The input a downsampled model sees: x [B, 3, H, W] -> [B, 3, rows * ph, cols * pw]."""
    size = (grid[0] * patch_size[0], grid[1] * patch_size[1])
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
