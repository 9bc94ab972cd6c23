"""An independent, per-image loop of ToMe as the authors' implementation behaves.

Written from the description of the behaviour of facebookresearch/ToMe's timm patch
(no code taken from it), deliberately unlike `gtp.tome`: one image at a time, Python
lists of token positions, one explicit group per B token. The tests compare the batched
`gtp.tome` with it.

The rules, per block, after attention and before the MLP (n tokens, p prefix tokens):
  - metric: the attention keys averaged over heads;
  - A = even positions, B = odd positions, prefix included; a prefix token in A has no
    edge, a prefix token in B receives none;
  - r = min(r, (n - p) // 2); the A tokens are ranked by their best cosine similarity,
    highest first (ties: lower position first), and the first r merge into their best
    B token by a size-weighted average; sizes add up;
  - new order: prefix tokens, unmerged A tokens in position order, B tokens in order.
Proportional attention adds log(size) of each key to the attention logits.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn


def _attention(attn: nn.Module, x: Tensor, size: Optional[list[float]]) -> tuple[Tensor, Tensor]:
    """One image's attention with the explicit softmax. x: [n, C]. Returns (out [n, C], metric [n, d])."""
    n = x.shape[0]
    heads, d = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(n, 3, heads, d).permute(1, 2, 0, 3)  # each [H, n, d]
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q @ k.transpose(-1, -2)) * attn.scale                      # [H, n, n]
    if size is not None:
        logits = logits + torch.tensor([math.log(s) for s in size])
    out = (logits.softmax(-1) @ v).transpose(0, 1).reshape(n, heads * d)
    return attn.proj(attn.norm(out)), k.mean(0)


def _merge_one_image(x: Tensor, metric: Tensor, size: list[float], ids: list, sources: list[set],
                     r: int, p: int) -> tuple[Tensor, list[float], list, list[set], list, list]:
    """One block's merge on one image. x: [n, C]; ids[i]: original patch id token i
    started as (None for prefix tokens); sources[i]: original token indices it stands for.
    Returns the new (x, size, ids, sources), the ids merged away, best match first, and
    for each of them the id of the B token it merged into (that token's own id)."""
    n = x.shape[0]
    r = min(r, (n - p) // 2)
    if r <= 0:
        return x, size, ids, sources, [], []
    unit = metric / metric.norm(dim=-1, keepdim=True)
    a_pos, b_pos = list(range(0, n, 2)), list(range(1, n, 2))
    candidates = [j for j in b_pos if j >= p]
    best, partner = {}, {}
    for i in a_pos:
        if i < p:
            continue  # a prefix token has no edge
        sims = unit[candidates] @ unit[i]
        k = int(sims.argmax())
        best[i], partner[i] = float(sims[k]), candidates[k]
    ranked = sorted(best, key=lambda i: -best[i])  # stable: ties keep position order
    chosen = ranked[:r]
    groups = {j: [j] + [i for i in chosen if partner[i] == j] for j in b_pos}
    order = list(range(p)) + [i for i in a_pos if i >= p and i not in chosen] + [j for j in b_pos if j >= p]
    new_x, new_size, new_ids, new_sources = [], [], [], []
    for t in order:
        group = groups.get(t, [t])
        total = sum(size[g] for g in group)
        new_x.append(sum(x[g] * size[g] for g in group) / total)
        new_size.append(total)
        new_ids.append(ids[t])
        new_sources.append(set().union(*(sources[g] for g in group)))
    return (torch.stack(new_x), new_size, new_ids, new_sources,
            [ids[i] for i in chosen], [ids[partner[i]] for i in chosen])


@torch.inference_mode()
def reference_forward(model: nn.Module, images: Tensor, r: Sequence[int], prop_attn: bool = True
                      ) -> tuple[Tensor, list[list[list[int]]], list[list[list[int]]], list[list[set]]]:
    """ToMe on an unpatched timm VisionTransformer, one image at a time.

    images: [B, 3, H, W]; r: tokens merged per block. Returns (logits [B, classes],
    merged ids [B][block][r_i] best match first, the ids of their partners [B][block][r_i]
    in the same order, final sources [B][token] as sets of indices of the tokens that
    entered block 1).
    """
    p = model.num_prefix_tokens
    logits, merged, merged_into, sources_out = [], [], [], []
    for image in images:
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(image[None]))))[0]
        n0 = x.shape[0]
        size, ids, sources = [1.0] * n0, [None] * p + list(range(n0 - p)), [{t} for t in range(n0)]
        per_block, into_per_block, merged_yet = [], [], False
        for blk, r_i in zip(model.blocks, r):
            use_size = size if (prop_attn and merged_yet) else None
            y, metric = _attention(blk.attn, blk.norm1(x), use_size)
            x = x + blk.ls1(y)
            x, size, ids, sources, gone, into = _merge_one_image(x, metric, size, ids, sources, r_i, p)
            merged_yet = merged_yet or bool(gone)
            per_block.append(gone)
            into_per_block.append(into)
            x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        logits.append(model.forward_head(model.norm(x[None]))[0])
        merged.append(per_block)
        merged_into.append(into_per_block)
        sources_out.append(sources)
    return torch.stack(logits), merged, merged_into, sources_out
