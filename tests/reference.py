"""A slow, obviously-correct GTP written straight from SPEC.md, one image at a time.

It shares no code with `gtp`: plain loops over tokens and heads, using only the
timm block's own layers. Tests compare the fast batched implementation with it.
"""
from __future__ import annotations

import math

import torch


def _graph(patches: torch.Tensor, grid: tuple[int, int], graph: str, num_neighbours: int) -> torch.Tensor:
    """SPEC.md section 1 for one image: patches [N, C] -> W [N, N]."""
    N = patches.shape[0]
    gh, gw = grid
    adj = [[0.0] * N for _ in range(N)]
    if graph in ("spatial", "mixed"):
        for i in range(N):
            for j in range(N):
                if i != j and abs(i // gw - j // gw) <= 1 and abs(i % gw - j % gw) <= 1:
                    adj[i][j] = 1.0
    if graph in ("semantic", "mixed"):
        unit = patches / patches.norm(dim=-1, keepdim=True)
        sim = (unit @ unit.T).tolist()
        for i in range(N):
            others = sorted((j for j in range(N) if j != i), key=lambda j: -sim[i][j])
            for j in others[:num_neighbours]:
                adj[i][j] = 1.0
    deg = [sum(row) for row in adj]
    w = [[adj[i][j] / math.sqrt(deg[i] * deg[j]) if adj[i][j] else 0.0 for j in range(N)] for i in range(N)]
    return torch.tensor(w)


def _attention(blk, x: torch.Tensor, size: list[float], token_scale: bool, sparsity: float):
    """Attention of one image, head by head: x [n, C] -> (output [n, C], maps [H, n, n])."""
    attn = blk.attn
    n, C = x.shape
    H, d = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(n, 3, H, d)
    outs, maps = [], []
    for h in range(H):
        q, k, v = qkv[:, 0, h], qkv[:, 1, h], qkv[:, 2, h]
        logits = (q * attn.scale) @ k.T
        if token_scale:
            logits = logits + torch.tensor([math.log(s) for s in size])[None, :]
        a = logits.softmax(-1)
        num_zero = int(n * n * (1 - sparsity))
        if sparsity < 1 and num_zero > 0:
            threshold = a.flatten().sort().values[num_zero - 1]  # the num_zero-th smallest
            a = torch.where(a <= threshold, torch.zeros_like(a), a)
        maps.append(a)
        outs.append(a @ v)
    out = attn.proj(torch.cat(outs, dim=-1))
    return out, torch.stack(maps)


def _scores(maps: torch.Tensor, p0: int, selection: str) -> list[float]:
    """SPEC.md section 3 for one image: maps [H, n, n] -> one score per patch token."""
    H, n, _ = maps.shape
    reduce = max if selection.endswith("_max") else (lambda vals: sum(vals) / len(vals))
    scores = []
    for j in range(p0, n):
        regen = reduce([float(maps[h, j, j]) for h in range(H)])
        broad = reduce([float(maps[h, :, j].sum()) for h in range(H)])
        if selection.startswith("mixed_attn"):
            scores.append(regen * broad)
        elif selection.startswith("sum_attn"):
            scores.append(regen + broad)
        elif selection.startswith("diag_attn"):
            scores.append(regen)
        elif selection.startswith("img_attn"):
            scores.append(broad)
        elif selection.startswith("cls_attn"):
            scores.append(reduce([float(maps[h, 0, j]) for h in range(H)]))
        elif selection.startswith("cos_sim"):
            stack = torch.stack([maps[h, p0:, :] for h in range(H)])  # [H, N, n]
            rows = stack.amax(0) if selection.endswith("_max") else stack.mean(0)
            unit = rows / rows.norm(dim=-1, keepdim=True)
            scores.append(-float((unit @ unit[j - p0]).sum()))
        else:
            raise ValueError(selection)
    return scores


@torch.no_grad()
def reference_forward(model, image: torch.Tensor, num_prop, sparsity: float = 0.6, alpha: float = 0.1,
                      graph: str = "mixed", num_neighbours: int = 8, selection: str = "mixed_attn_max",
                      propagation: str = "graph", token_scale: bool = True):
    """One image [3, H, W] -> (output of the model [D], propagated original ids per block)."""
    x = model.patch_embed(image[None])
    x = model.norm_pre(model.patch_drop(model._pos_embed(x)))[0]  # [n, C]
    p0 = model.num_prefix_tokens
    grid = tuple(model.patch_embed.grid_size)
    schedule = num_prop if isinstance(num_prop, list) else [num_prop] * len(model.blocks)
    ids = list(range(x.shape[0] - p0))             # original id of each current patch token
    size = [1.0] * x.shape[0]
    w = _graph(x[p0:], grid, graph, num_neighbours) if propagation == "graph" else None
    propagated_per_block = []
    for b, blk in enumerate(model.blocks):
        out, maps = _attention(blk, blk.norm1(x), size, token_scale, sparsity)
        x = x + blk.ls1(out)
        n_patch = x.shape[0] - p0
        P = schedule[b] if n_patch > schedule[b] else 0
        gone = []
        if P > 0:
            scores = _scores(maps, p0, selection)
            order = sorted(range(n_patch), key=lambda j: scores[j])
            prop = sorted(order[:P])
            keep = [j for j in range(n_patch) if j not in prop]
            gone = [ids[j] for j in prop]
            rows = [x[:p0]]
            new_size = size[:p0]
            if propagation == "graph":
                for kk in keep:
                    xk = x[p0 + kk].clone()
                    sk = size[p0 + kk]
                    for r in prop:
                        xk = xk + alpha * w[kk, r] * x[p0 + r]
                        sk = sk + alpha * float(w[kk, r]) * size[p0 + r]
                    rows.append(xk[None])
                    new_size.append(sk)
                w = w[keep][:, keep]
            else:
                for kk in keep:
                    rows.append(x[p0 + kk][None])
                    new_size.append(size[p0 + kk])
                if propagation == "mean":
                    rows.append(torch.stack([x[p0 + r] for r in prop]).mean(0, keepdim=True))
                    new_size.append(sum(size[p0 + r] for r in prop))
            ids = [ids[j] for j in keep] + ([-1] if propagation == "mean" else [])
            x = torch.cat(rows)
            size = new_size
        propagated_per_block.append(sorted(gone))
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    x = model.norm(x[None])
    return model.forward_head(x)[0], propagated_per_block
