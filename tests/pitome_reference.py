"""An independent, per-image loop of PiToMe (NeurIPS 2024), written from the paper's algorithm.

Deliberately unlike `gtp.pitome`: one image at a time, Python lists and explicit sums,
no Matching, no gather. The rules, per block l of L, after attention and before the MLP:
  - metric: the attention keys averaged over heads, of the patch tokens only;
  - energy E_i = (1/N) sum_j f(cos(k_i, k_j)), f(s) = s - m if s >= m else exp(s - m) - 1,
    m = 0.9 - 0.8 l / L;
  - r = min(r, N // 2); tokens sorted by energy, highest first (ties: lower position);
    the first 2r alternate into A and B, the rest are protected;
  - each A token merges into its most cosine-similar B token (ties: the first B token),
    a size-weighted average; sizes add up;
  - new order: prefix, protected (energy order), B tokens (energy order).
Proportional attention adds log(size) of each key to the attention logits.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from tome_reference import _attention


def _f(s: float, m: float) -> float:
    return s - m if s >= m else math.exp(s - m) - 1.0


def _merge_one_image(x: Tensor, metric: Tensor, size: list[float], r: int, p: int, m: float
                     ) -> tuple[Tensor, list[float], list[int]]:
    """One block on one image. x: [n, C]; metric [n, d]. Returns (x, size, positions merged away)."""
    n = x.shape[0]
    patches = list(range(p, n))
    r = min(r, len(patches) // 2)
    if r <= 0:
        return x, size, []
    unit = [metric[i] / metric[i].norm() for i in range(n)]
    cos = {(i, j): float(unit[i] @ unit[j]) for i in patches for j in patches}
    energy = {i: sum(_f(cos[i, j], m) for j in patches) / len(patches) for i in patches}
    ranked = sorted(patches, key=lambda i: -energy[i])   # stable: ties keep position order
    mergeable, protected = ranked[: 2 * r], ranked[2 * r:]
    a_tokens, b_tokens = mergeable[0::2], mergeable[1::2]
    groups = {j: [j] for j in b_tokens}
    for i in a_tokens:
        best = max(b_tokens, key=lambda j: cos[i, j])    # max keeps the first of equal ones
        groups[best].append(i)
    order = list(range(p)) + protected + b_tokens
    new_x, new_size = [], []
    for t in order:
        group = groups.get(t, [t])
        total = sum(size[g] for g in group)
        new_x.append(sum(x[g] * size[g] for g in group) / total)
        new_size.append(total)
    return torch.stack(new_x), new_size, a_tokens


@torch.inference_mode()
def reference_forward(model: nn.Module, images: Tensor, r: Sequence[int], prop_attn: bool = True
                      ) -> tuple[Tensor, list[list[int]]]:
    """PiToMe on an unpatched timm VisionTransformer, one image at a time.

    Returns (outputs [B, ...] of `forward_head`, per image the token count after each block)."""
    p = model.num_prefix_tokens
    depth = len(model.blocks)
    outputs, counts = [], []
    for image in images:
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(image[None]))))[0]
        size, merged_yet, per_block = [1.0] * x.shape[0], False, []
        for l, (blk, r_l) in enumerate(zip(model.blocks, r)):
            y, metric = _attention(blk.attn, blk.norm1(x), size if (prop_attn and merged_yet) else None)
            x = x + blk.ls1(y)
            x, size, gone = _merge_one_image(x, metric, size, r_l, p, 0.9 - 0.8 * l / depth)
            merged_yet = merged_yet or bool(gone)
            per_block.append(x.shape[0])
            x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        outputs.append(model.forward_head(model.norm(x[None]))[0])
        counts.append(per_block)
    return torch.stack(outputs), counts
