"""PiToMe (Tran et al., "Accelerating Transformers with Spectrum-Preserving Token Merging",
NeurIPS 2024): ToMe's merging, but an ENERGY score first protects the informative tokens.

A training-free baseline at equal token counts (r = P tokens merged per block). Written from
the paper and from what the authors' timm patch (hchautran/PiToMe, `algo/pitome`) does with
a fixed r per block; no code is copied. `tests/pitome_reference.py` is an independent
per-image loop of the same rules, and the tests hold this module to it.

Per block, between the attention and the MLP, on the N patch tokens (prefix tokens never
take part and stay in front):
  1. the metric is the attention keys averaged over heads (as ToMe), cosine-normalised;
     S [N, N] is their cosine similarity;
  2. each token's energy is E_i = mean_j ELU(S_ij - m_l) (alpha = 1; j runs over all N
     tokens, itself included), with the margin m_l = 0.9 - 0.8 l / L in block l of L
     (l = 0 .. L-1): a token similar to many others has a high energy (redundant);
  3. r = min(r, N // 2); the tokens are sorted by energy, highest first (ties: lower
     position first); the first 2r are mergeable, the rest are PROTECTED;
  4. the mergeable ones alternate into A (sorted positions 0, 2, 4, ...) and B (1, 3, 5,
     ...); every A token merges into its most similar B token (ties: the first B token)
     by a size-weighted average; sizes add up (so all r A tokens leave);
  5. the output order is [prefix; protected tokens in energy order; B tokens in energy order].
Proportional attention (+ log size on each key) as ToMe. Everything else (the forward, the
sizes, source tracking) is `gtp.tome`'s, which takes this module's matching.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import tome
from .tome import Matching


def margin(block: int, depth: int) -> float:
    """m_l = 0.9 - 0.8 l / L: tight margins early (few tokens count as similar), loose late."""
    return 0.9 - 0.8 * block / depth


def energy(metric: Tensor, m: float) -> tuple[Tensor, Tensor]:
    """(energy [B, N], cosine similarity [B, N, N]) of patch-token metrics [B, N, d]."""
    unit = F.normalize(metric.float(), dim=-1)
    sim = unit @ unit.transpose(1, 2)
    return F.elu(sim - m, alpha=1.0).mean(-1), sim


def energy_matching(metric: Tensor, r: int, num_prefix: int, block: int, depth: int) -> Matching:
    """PiToMe's matching (module docstring, steps 1-5) as a `gtp.tome.Matching` in token positions.

    metric: [B, n, d] one vector per token, prefix first. Returns src [B, r] (the A
    tokens, in energy order), dst [B, r] (each one's B partner) and order [B, n - r].
    """
    B, n, _ = metric.shape
    p = num_prefix
    r = max(0, min(r, (n - p) // 2))
    device = metric.device
    if r == 0:
        empty = torch.empty(B, 0, dtype=torch.long, device=device)
        return Matching(empty, empty, torch.arange(n, device=device).expand(B, n))
    score, sim = energy(metric[:, p:], margin(block, depth))
    ranked = score.sort(dim=-1, descending=True, stable=True).indices      # [B, N] highest energy first
    a, b = ranked[:, : 2 * r : 2], ranked[:, 1 : 2 * r : 2]                 # [B, r] each
    sim_ab = sim.gather(1, a.unsqueeze(-1).expand(-1, -1, sim.shape[-1])).gather(
        2, b.unsqueeze(1).expand(-1, r, -1))                               # [B, r, r]
    partner = sim_ab.argmax(dim=-1)                                         # first maximum on ties
    prefix = torch.arange(p, device=device).expand(B, p)
    order = torch.cat([prefix, ranked[:, 2 * r:] + p, b + p], dim=1)
    return Matching(a + p, b.gather(1, partner) + p, order)


def patch(model: nn.Module, r: Union[int, Sequence[int]] = 8, prop_attn: bool = True,
          trace_source: bool = False) -> nn.Module:
    """Apply PiToMe to a timm VisionTransformer in place (r tokens merged per block, one int or
    one per block); `gtp.tome.unpatch` restores it, `gtp.tome`'s source tracking works alike."""
    return tome.patch(model, r, prop_attn=prop_attn, trace_source=trace_source, matching=energy_matching)
