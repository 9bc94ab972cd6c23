"""Token Merging (ToMe; Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023).

GTP's main baseline at equal token counts (r merged tokens per block = P propagated
tokens per block, so the GMACs match). Off the shelf: no training, weights untouched.

It behaves like the authors' implementation (facebookresearch/ToMe, `tome.patch.timm`),
which every published ToMe number comes from. It is written from a description of that
behaviour; no code is copied (theirs carries a non-commercial licence).
`tests/tome_reference.py` is an independent per-image loop of the same rules, and the
tests hold this module to it.

Per block, between the attention and the MLP, on the n tokens x[:, 0..n-1] (the p
prefix tokens first: class, distillation, register tokens):
  1. the similarity metric is the attention KEYS, averaged over heads: [B, n, d];
  2. the tokens are split by ABSOLUTE position, prefix included: even positions form A
     (the class token at 0, then patches 1, 3, 5, ... when p = 1), odd positions form B;
  3. each A token draws an edge to its most cosine-similar B token. Prefix tokens are
     protected by setting their scores to -inf: the rows of prefix tokens in A and the
     columns of prefix tokens in B (for class + distillation: the class token's row and
     the distillation token's column, as the authors do);
  4. r = min(r, (n - p) // 2); the A tokens are ranked by a descending argsort of their
     best score (the same call as the authors', so ties break the same way) and the
     first r are merged into their B partner (several may share one partner) by a
     size-weighted average: sum(size * x) / sum(size); sizes add up;
  5. the output order is [prefix tokens in their order; the unmerged A tokens in their
     original order; all B tokens in their order]. For class (+ distillation) models
     this is exactly the authors' order ([class, (distillation,) unmerged A, B]); it
     changes which tokens form A and B in the next block.
Proportional attention: every later attention adds log(size_j) to the logits of key j.

Where the authors' code does not cover a model the same way, the rule above is extended:
  - register tokens (timm `reg_tokens`): all p prefix tokens are protected and stay in
    front (their code protects only the class and distillation tokens);
  - no prefix at all (average pooling): p = 0, so patch 0 is in A and nothing is
    protected; the unmerged A tokens are kept in their original order (their code sorts
    them only when there is a class token, so without one they come in score order);
  - layer scale (`ls1`, `ls2`, e.g. DINOv2) and q/k norms are applied as timm's block
    does (their block predates them and skips layer scale).

The forward is sync-free and static-shape (no `nonzero`, `.item()` or boolean-mask
indexing; the same ops at every batch size), so it runs on CUDA without host waits.

Source tracking (optional, `patch(..., trace_source=True)`; off by default, so the plain
forward does no extra work), as ToMe's own `trace_source`: a per-token source matrix
[B, n, n0] says which of the n0 tokens that entered block 1 (prefix first, then the N0
patches in row-major order) each token stands for; it is merged like the features, by
adding the rows of the tokens merged away into their partners' rows, then reordered. So
each row sums to the token's size. Alongside, each patch token keeps the original patch
id it started as (surviving B tokens keep their own id), which gives, per block, the
original patch ids (0 .. N0-1) of the r tokens that stopped being their own token there
(`merged_ids_of`), and, in the same shape and order, the token each went into
(`merged_into_of`), named by the same rule: the original patch id of the B partner
itself. A B token is never merged away in the block it receives in, so that id keeps
naming the partner until the partner is merged away itself (it then appears in a later
block's `merged_ids_of`, and following `merged_into_of` from there gives the chain). The
partner is never a prefix token (nothing merges into one), so every entry is a patch id.
All of these are in ORIGINAL coordinates, whatever the order of the tokens.

The first section is pure maths on tensors (no timm); the second patches a vision
transformer (timm, or transformers through `gtp.hf_adapter`) in place by swapping block classes, like `gtp.patch`.
"""
from __future__ import annotations

import functools
import sys
from types import ModuleType
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import adapters, block_swap
from .steps import sdpa


# ------------------------------------------------------------------------ pure maths
class Matching(NamedTuple):
    """The result of bipartite soft matching on n tokens (positions 0 .. n-1, prefix included).

    src: [B, r] positions of the A tokens merged away, best match first.
    dst: [B, r] positions of the B tokens each of them merges into.
    order: [B, n - r] positions of the tokens that remain, in output order
        ([prefix; unmerged A ascending; B ascending]).
    """
    src: Tensor
    dst: Tensor
    order: Tensor


def bipartite_soft_matching(metric: Tensor, r: int, num_prefix: int = 1) -> Matching:
    """Pick r tokens to merge (ToMe, section 3.2 of the paper, as the authors' code does).

    metric: [B, n, d] one vector per token, the first `num_prefix` being prefix tokens,
    which are never merged. A = even positions, B = odd positions (prefix included).
    r is clipped to (n - num_prefix) // 2. Returns a `Matching` in token positions.
    """
    B, n, _ = metric.shape
    p = num_prefix
    r = max(0, min(r, (n - p) // 2))
    if r == 0:  # as the authors: nothing merged, nothing reordered
        empty = torch.empty(B, 0, dtype=torch.long, device=metric.device)
        return Matching(empty, empty, torch.arange(n, device=metric.device).expand(B, n))
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]            # [B, na, d], [B, nb, d]
    scores = a @ b.transpose(1, 2)                    # [B, na, nb] cosine similarity
    pa, pb = (p + 1) // 2, p // 2                     # prefix tokens in A (even) and in B (odd)
    scores[:, :pa, :] = float("-inf")                 # a prefix token in A merges into nothing
    scores[:, :, :pb] = float("-inf")                 # nothing merges into a prefix token in B
    best, partner = scores.max(dim=-1)                # [B, na] each A token's best B token
    ranked = best.argsort(dim=-1, descending=True)    # the authors' tie order
    chosen = ranked[:, :r]                            # [B, r] A indices, best first
    # The prefix rows score -inf and r <= the number of non-prefix A tokens, so the
    # unmerged A tokens, sorted, start with the prefix ones 0 .. pa-1.
    unmerged = ranked[:, r:].sort(dim=-1).values[:, pa:]
    src = chosen * 2
    dst = partner.gather(1, chosen) * 2 + 1
    device = metric.device
    order = torch.cat([torch.arange(p, device=device).expand(B, p),
                       unmerged * 2,
                       torch.arange(2 * pb + 1, n, 2, device=device).expand(B, -1)], dim=1)
    return Matching(src, dst, order)


def merge_sum(x: Tensor, match: Matching) -> Tensor:
    """Merge the matched tokens by adding the rows merged away into their partners' rows.

    x: [B, n, K] one row per token (prefix first), e.g. the source matrix or size * x.
    Returns [B, n - r, K] in the matching's output order; rows that receive nothing are
    only moved.
    """
    K = x.shape[-1]
    moved = x.gather(1, match.src.unsqueeze(-1).expand(-1, -1, K))
    x = x.scatter_add(1, match.dst.unsqueeze(-1).expand(-1, -1, K), moved)
    return x.gather(1, match.order.unsqueeze(-1).expand(-1, -1, K))


def merge_wavg(x: Tensor, size: Tensor, match: Matching) -> tuple[Tensor, Tensor]:
    """Merge the matched tokens by a size-weighted average; sizes add up.

    x: [B, n, C] all tokens (prefix first); size: [B, n] tokens' sizes (tokens they stand
    for). Returns (x [B, n - r, C], size [B, n - r]) in the matching's output order:
    each token becomes sum(size * x) / sum(size) over itself and what merged into it.
    """
    weighted = merge_sum(x * size.to(x.dtype).unsqueeze(-1), match)
    new_size = merge_sum(size.unsqueeze(-1), match)  # [B, n - r, 1]
    return weighted / new_size.to(x.dtype), new_size.squeeze(-1)


def proportional_attention(q: Tensor, k: Tensor, v: Tensor, size: Optional[Tensor],
                           scale: float, fused: bool = True) -> Tensor:
    """softmax(q k^T * scale + log s_j) v.

    q, k, v: [B, H, n, d]; size: [B, n] or None (plain attention). Returns [B, H, n, d].
    The fused kernel takes the size term as an additive mask; `fused=False` runs the
    explicit matmuls (which PyTorch's FLOP counter can see on CPU).
    """
    if fused:
        return sdpa(q, k, v, size, scale)
    logits = (q * scale) @ k.transpose(-2, -1)
    if size is not None:
        logits = logits + size.log().to(q.dtype)[:, None, None, :]
    return logits.softmax(dim=-1) @ v


# ------------------------------------------------------------------- patching
# (metric [B, n, d], r, num_prefix, block index, depth) -> the block's Matching. ToMe's is
# `bipartite_soft_matching`; `gtp.pitome` patches the same blocks with its own.
Matcher = Callable[[Tensor, int, int, int, int], Matching]


def tome_matching(metric: Tensor, r: int, num_prefix: int, block: int, depth: int) -> Matching:
    """ToMe's matching in every block (the same rule at every depth)."""
    return bipartite_soft_matching(metric, r, num_prefix)


class ToMeState:
    """Per-model, per-forward state shared by the patched blocks."""

    def __init__(self, r: list[int], num_prefix: int, prop_attn: bool, trace_source: bool = False,
                 adapter: object = None, matching: Matcher = tome_matching):
        # The model family's adapter module, held by name: a module object cannot be deep-copied,
        # and `bench` and `cost` copy patched models.
        self.adapter_name = (adapter or adapters.timm_adapter).__name__
        self.r = r                          # tokens merged in each block
        self.matching = matching            # which tokens merge into which (ToMe, or PiToMe's rule)
        self.num_prefix = num_prefix
        self.prop_attn = prop_attn
        self.size: Optional[Tensor] = None  # [B, n] token sizes; None until the first merge
        self.trace_source = trace_source
        self.source: Optional[Tensor] = None  # [B, n, n0] tokens each token stands for (trace_source)
        self.ids: Optional[Tensor] = None     # [B, n - num_prefix] original patch id each patch token started as
        self.merged: list[Tensor] = []        # per block: [B, r_i] original patch ids merged away there
        self.merged_into: list[Tensor] = []   # per block: [B, r_i] original patch id of each one's partner

    @property
    def adapter(self) -> ModuleType:
        """The model family's adapter module (`gtp.timm_adapter` or `gtp.hf_adapter`)."""
        return sys.modules[self.adapter_name]

    def start_source(self, x: Tensor) -> None:
        """Block 1: every token stands for itself."""
        B, n, _ = x.shape
        self.source = torch.eye(n, device=x.device, dtype=torch.float32).expand(B, n, n).clone()
        self.ids = torch.arange(n - self.num_prefix, device=x.device).expand(B, -1).clone()
        self.merged = []
        self.merged_into = []

    def record_merge(self, match: Optional[Matching], x: Tensor) -> None:
        """Bookkeeping of one block's merge (match None: nothing merged in this block)."""
        if match is None:
            self.merged.append(self.ids.new_empty(x.shape[0], 0))
            self.merged_into.append(self.ids.new_empty(x.shape[0], 0))
            return
        p = self.num_prefix  # merged and receiving tokens are never prefix tokens: src, dst >= p
        self.merged.append(self.ids.gather(1, match.src - p))
        self.merged_into.append(self.ids.gather(1, match.dst - p))  # the partner's own id, before merging
        self.ids = self.ids.gather(1, match.order[:, p:] - p)
        self.source = merge_sum(self.source, match)


def _attend_keys(A, attn: nn.Module, x: Tensor, size: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The attention's forward (A: the model family's adapter) with proportional attention,
    also returning the keys. x: [B, n, C]. Returns (output [B, n, C], keys [B, H, n, d]).
    """
    heads = A.heads(attn, x)
    out = proportional_attention(heads.q, heads.k, heads.v, size, A.scale(attn),
                                 fused=getattr(attn, "fused_attn", True))
    return A.output(attn, out, heads.gate), heads.k


@functools.lru_cache(maxsize=None)
def _tome_block_class(block_cls: type) -> type:
    """A subclass of a block class (any family) whose forward merges tokens between attention and MLP.

    One class per Block class (cached), so torch.compile sees one forward for all blocks."""

    class ToMeBlock(block_cls):
        _tome_state: ToMeState
        _tome_index: int

        def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
            state = self._tome_state
            p0, A = state.num_prefix, state.adapter
            block_swap.no_mask("ToMe", args, kwargs)
            if self._tome_index == 0:
                state.size = None
                if state.trace_source:
                    state.start_source(x)
            r = min(state.r[self._tome_index], (x.shape[1] - p0) // 2)
            if r == 0 and state.size is None:
                if state.trace_source:
                    state.record_merge(None, x)
                return super().forward(x, *args, **kwargs)  # nothing merged yet: exactly the model's block
            size = state.size if state.prop_attn else None
            y, keys = _attend_keys(A, A.attention(self), A.attention_input(self, x), size)
            x = A.add_attention(self, x, y)
            match = None
            if r > 0:
                match = state.matching(keys.mean(1), r, p0, self._tome_index, len(state.r))
                current = state.size if state.size is not None else x.new_ones(x.shape[:2], dtype=torch.float32)
                x, state.size = merge_wavg(x, current, match)
            if state.trace_source:
                state.record_merge(match, x)
            return A.add_mlp(self, x)

    ToMeBlock.__name__ = f"ToMe{block_cls.__name__}"
    ToMeBlock.__qualname__ = ToMeBlock.__name__
    return ToMeBlock


def patch(model: nn.Module, r: Union[int, Sequence[int]] = 8, prop_attn: bool = True,
          trace_source: bool = False, matching: Matcher = tome_matching) -> nn.Module:
    """Apply ToMe to a vision transformer in place and return it (timm, or transformers: `gtp.adapters`).

    Args:
        r: tokens merged per block: one int, or a list with one per block.
        prop_attn: proportional attention on the token sizes (the paper's default).
        trace_source: keep, during each forward, which original tokens every token stands
            for (`sources_of`), which patches were merged away in each block
            (`merged_ids_of`) and into which token (`merged_into_of`). Off by default: it
            costs time and memory.
        matching: which tokens merge (`Matcher`); the default is ToMe's bipartite soft
            matching, `gtp.pitome` passes PiToMe's energy-guided one.

    Calling it again reconfigures the model; `gtp.tome.unpatch` restores it.
    """
    if getattr(model, "_gtp_state", None) is not None:
        raise ValueError("the model is patched with GTP; call gtp.unpatch(model) first")
    A = adapters.of(model)
    A.check_model(model, "gtp.tome.patch")
    depth = len(A.blocks(model))
    schedule = [r] * depth if isinstance(r, int) else list(r)
    if len(schedule) != depth or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in schedule):
        raise ValueError(f"r must be an int >= 0 or a list of {depth} of them; got {r!r}")
    state = getattr(model, "_tome_state", None)
    if state is not None:
        state.r, state.prop_attn, state.trace_source = schedule, bool(prop_attn), bool(trace_source)
        state.matching = matching
        return model
    state = ToMeState(schedule, A.num_prefix(model), bool(prop_attn), bool(trace_source), A, matching)
    model._tome_state = state
    A.swap_block_classes(model, _tome_block_class, state, "tome")
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `gtp.tome.patch`: the model behaves exactly as before."""
    if getattr(model, "_tome_state", None) is None:
        return model
    adapters.of(model).restore_block_classes(model, "tome")
    del model._tome_state
    return model


def sizes_of(model: nn.Module) -> Optional[Tensor]:
    """Token sizes [B, n] after the last forward of a ToMe-patched model (None before any merge)."""
    state = getattr(model, "_tome_state", None)
    return None if state is None else state.size


def sources_of(model: nn.Module) -> Optional[Tensor]:
    """The source matrix [B, n, n0] after the last forward of a model patched with
    `trace_source=True` (None otherwise): entry [b, i, j] is 1 when token i stands for the
    j-th token that entered block 1 (prefix tokens first, then the patches in row-major
    order), else 0. Each row sums to the token's size."""
    state = getattr(model, "_tome_state", None)
    return None if state is None or not state.trace_source else state.source


def merged_ids_of(model: nn.Module) -> Optional[list[Tensor]]:
    """Per block, the original patch ids (0 .. N0-1, row-major on the patch grid) of the
    tokens merged away in that block, [B, r_i] each, after the last forward of a model
    patched with `trace_source=True` (None otherwise). A token is named by the patch it
    started as; the patches it had absorbed earlier go with it into its partner."""
    state = getattr(model, "_tome_state", None)
    return None if state is None or not state.trace_source else list(state.merged)


def merged_into_of(model: nn.Module) -> Optional[list[Tensor]]:
    """Per block, the token each merged-away token went into, [B, r_i] each, in the shape
    and order of `merged_ids_of` (`merged[i][b, j]` went into `merged_into[i][b, j]`), after
    the last forward of a model patched with `trace_source=True` (None otherwise).

    The partner (a B token) is named by the original patch id (0 .. N0-1) it started as,
    as `merged_ids_of` names tokens: it is the partner's own patch, one of the patches the
    partner stands for after the merge, and it names the partner until it is merged away
    itself in a later block. Several tokens may share one partner. The partner is never a
    prefix token (their columns score -inf and a patch partner always exists when r > 0),
    so there is no sentinel value."""
    state = getattr(model, "_tome_state", None)
    return None if state is None or not state.trace_source else list(state.merged_into)
