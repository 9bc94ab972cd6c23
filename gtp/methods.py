"""The token-reduction methods compared side by side: ONE description of each (`Method`), read by
the CLI (`eval --method`, `sweep --methods`, `bench --methods`), the measurements, the app's
GMACs, its Compare tab and its `compare` API endpoint.

A method is applied in place to a timm ViT at an `amount` of tokens removed per block (P for GTP
and its presets, r for ToMe; one int, or one per block), always starting from the unpatched
model, so equal amounts mean equal token counts and (nearly) equal GMACs:

  full     the unpatched model (amount ignored)
  gtp      GTP, `gtp.patch(num_prop=P, **options)` (defaults: the published setting)
  gtp_dense  the same GTP setting with theta = 1: what GTP does without its sparsification
  tome     ToMe, our implementation (`gtp.tome.patch(r=P)`)
  pruning  GTP's own switches as pure pruning: the CLS token's attention (mean over heads) picks
           the P tokens, which are dropped (propagation="none")
  evit     EViT-style fusion: the same selection; the P tokens become one average token
           (propagation="mean")
  random   P patch tokens drawn at random (seeded, the same draws on every forward) are dropped
           per block: GTP's switches selection="random", propagation="none"
  downsample  the unpatched model on a smaller input whose GMACs come closest to GTP's at P
           (`gtp.downsample`; no token leaves, every block sees fewer)
  pitome   PiToMe (NeurIPS 2024), r = P tokens merged per block after an energy score protects
           the informative ones (`gtp.pitome`)

The pruning, EViT and random presets use neither sparsification (theta = 1) nor token scale, as those
methods have neither. Only "gtp" reads the GTP options.

Each method can also run one forward that records, per block, which patches' tokens left and
how many tokens remain (`Method.run_recorded`, a list of `BlockRecord`): GTP and its presets
through `gtp.trace`, ToMe and PiToMe through their source tracking. `Method.adds` says what a method
approximates besides removing tokens (sparsified attention, proportional attention, a resized
input): the confounds a comparison at equal GMACs must name. `register(Method(...))` adds a
method everywhere at once.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence, TypeVar, Union

from torch import nn

from . import adapters, downsample, pitome, tome
from .config import PUBLISHED, GTPConfig
from .patch import patch as gtp_patch
from .patch import unpatch as gtp_unpatch
from .trace import Trace, trace

T = TypeVar("T")
Amount = Union[int, Sequence[int]]

# The options a GTP record carries besides P: the other fields of `GTPConfig`.
GTP_OPTIONS = tuple(f.name for f in dataclasses.fields(GTPConfig) if f.name != "num_prop")

PRUNING = dict(propagation="none", selection="cls_attn_mean", sparsity=1.0, token_scale=False)
EVIT = dict(propagation="mean", selection="cls_attn_mean", sparsity=1.0, token_scale=False)
RANDOM = dict(propagation="none", selection="random", sparsity=1.0, token_scale=False)
RANDOM_SEED = 0


class BlockRecord(NamedTuple):
    """What left one block in one image, named by ORIGINAL patch ids (row-major on the grid)."""
    removed: tuple[int, ...]                 # patches whose token left here (-1: a "mean" token)
    tokens_left: int                         # tokens leaving the block, prefix included
    into: Optional[tuple[int, ...]] = None   # ToMe: per removed id, the patch naming its partner


class How(NamedTuple):
    """How a method's tokens leave, in words: '<verb> in block 3 <preposition> <receiver>patch 12'."""
    verb: str                                # "propagated", "merged", "dropped"
    preposition: str = ""                    # "to", "into"; "" where nothing receives
    receiver: str = ""                       # what each named patch is: "the token of " for ToMe


def reset(model: nn.Module) -> nn.Module:
    """Undo any GTP or ToMe patch: the model is the unpatched one again."""
    return downsample.unpatch(tome.unpatch(gtp_unpatch(model)))


def records_of_trace(rec: Trace, image: int = 0) -> list[BlockRecord]:
    """A `gtp.trace` record as one BlockRecord per block for image `image`."""
    return [BlockRecord(tuple(layer.propagated[image].tolist()), left)
            for layer, left in zip(rec.layers, rec.tokens_per_block())]


def _traced(model: nn.Module, forward: Callable[[nn.Module], T], image: int) -> tuple[T, list[BlockRecord]]:
    with trace(model) as rec:
        out = forward(model)
    return out, records_of_trace(rec, image)


def _tome_traced(model: nn.Module, forward: Callable[[nn.Module], T], image: int) -> tuple[T, list[BlockRecord]]:
    out = forward(model)
    left = tome.sources_of(model).shape[-1]          # tokens entering block 1
    records = []
    for ids, into in zip(tome.merged_ids_of(model), tome.merged_into_of(model)):
        left -= ids.shape[-1]
        records.append(BlockRecord(tuple(ids[image].tolist()), left, tuple(into[image].tolist())))
    return out, records


@dataclass(frozen=True)
class Method:
    """One token-reduction method, as everything that runs, counts or shows it sees it."""
    name: str                                # the CLI's and the records' name
    label: str                               # as the app and the tables print it
    about: str                               # one sentence: what it does with `amount`
    how: How
    # (model, amount, record, **options) -> the model patched in place; `model` is unpatched and
    # `record` asks for whatever `recorder` reads (ToMe: source tracking, which costs time).
    patch: Callable[..., nn.Module]
    # (amount, **options) -> the hyper-parameters it really runs with (see `describe`).
    settings: Callable[..., dict[str, Any]]
    # (patched model, forward, image) -> (forward's output, one BlockRecord per block); None: nothing leaves.
    recorder: Optional[Callable[..., tuple[Any, list[BlockRecord]]]] = None
    compared: bool = True                    # one of the methods the app compares on a photo
    needs_cls: bool = False                  # reads the CLS token's attention: no run on a model without one

    def runs_on(self, model: nn.Module) -> bool:
        """Whether the method can run on `model` (a CLS-attention method needs a class token;
        SigLIP's vision tower, for one, has none)."""
        return not self.needs_cls or adapters.num_prefix(model) > 0
    mapped: bool = True                      # Compare draws its map of where tokens left
    # What it approximates besides removing tokens (the confounds of a comparison at equal GMACs).
    adds: str = "nothing else"

    def apply(self, model: nn.Module, amount: Amount = PUBLISHED["num_prop"], record: bool = False,
              **options: Any) -> nn.Module:
        """The method on `model`, in place, from whatever patch it had; returns the model."""
        reset(model)
        return self.patch(model, amount, record, **options)

    def describe(self, amount: Amount = PUBLISHED["num_prop"], **options: Any) -> dict[str, Optional[Any]]:
        """The hyper-parameters the method really runs with, for result records: the fields of
        `GTPConfig` (num_prop first), None where the method has no such parameter or leaves it unread."""
        return {**dict.fromkeys(("num_prop",) + GTP_OPTIONS), **self.settings(amount, **options)}

    def cost_key(self, amount: Amount = PUBLISHED["num_prop"], **options: Any) -> str:
        """What the method's GMACs depend on besides the architecture (the same text, the same cost)."""
        return json.dumps([self.name, self.describe(amount, **options)], sort_keys=True)

    def run_recorded(self, model: nn.Module, forward: Callable[[nn.Module], T], amount: Amount = 8,
                     image: int = 0, **options: Any) -> tuple[T, list[BlockRecord]]:
        """Apply the method and run `forward(model)` once, recording per block what left image
        `image`; the model stays patched (call `reset`)."""
        if self.recorder is None:
            raise ValueError(f"{self.label} removes no token: nothing to record")
        self.apply(model, amount, record=True, **options)
        return self.recorder(model, forward, image)


# ----------------------------------------------------------------------------- the methods

def _gtp_settings(amount: Amount, **options: Any) -> dict[str, Any]:
    cfg = {k: options.get(k, PUBLISHED[k]) for k in GTP_OPTIONS}
    if cfg["propagation"] != "graph":      # no graph is built: these have no effect
        cfg["alpha"] = cfg["graph"] = cfg["num_neighbours"] = None
    elif cfg["graph"] == "spatial":
        cfg["num_neighbours"] = None
    return {"num_prop": amount, **cfg}


def _gtp_dense_settings(amount: Amount, **options: Any) -> dict[str, Any]:
    return _gtp_settings(amount, **{**options, "sparsity": 1.0})


def _downsample_traced(model: nn.Module, forward: Callable[[nn.Module], T], image: int
                       ) -> tuple[T, list[BlockRecord]]:
    """No token leaves a downsampled model: every block keeps the smaller grid's tokens."""
    out = forward(model)
    rows, cols = downsample.grid_of(model)
    left = rows * cols + int(model.num_prefix_tokens)
    return out, [BlockRecord((), left) for _ in model.blocks]


def _preset(values: dict[str, Any], seed: Optional[int] = None,
            ) -> tuple[Callable[..., nn.Module], Callable[..., dict[str, Any]]]:
    """(patch, settings) of a preset of GTP's own switches (pruning, EViT, random)."""
    def patch(model: nn.Module, amount: Amount, record: bool, **options: Any) -> nn.Module:
        return gtp_patch(model, num_prop=amount, seed=seed, **values)
    return patch, lambda amount, **options: {"num_prop": amount, **values}


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add (or replace) a method by its name; it then appears everywhere methods are listed."""
    METHODS[method.name] = method
    return method


register(Method(
    "full", "Full model", "the unpatched model: every token to the end",
    How("kept"), patch=lambda model, amount, record, **options: model,
    settings=lambda amount, **options: {"num_prop": 0}, compared=False))
register(Method(
    "gtp", "GTP", "propagates P tokens per block to their graph neighbours (the hyper-parameters chosen)",
    How("propagated", "to"),
    patch=lambda model, amount, record, **options: gtp_patch(
        model, num_prop=amount, **{k: v for k, v in options.items() if k in GTP_OPTIONS}),
    settings=_gtp_settings, recorder=_traced,
    adds="sparsifies attention (theta < 1 zeroes the smallest entries) and scales attention by token size"))
register(Method(
    "gtp_dense", "GTP (θ = 1)", "GTP with the hyper-parameters chosen but no sparsification (theta = 1)",
    How("propagated", "to"),
    patch=lambda model, amount, record, **options: gtp_patch(
        model, num_prop=amount, **{**{k: v for k, v in options.items() if k in GTP_OPTIONS}, "sparsity": 1.0}),
    settings=_gtp_dense_settings, recorder=_traced, mapped=False,
    adds="scales attention by token size (theta = 1: no sparsification)"))
register(Method(
    "tome", "ToMe", "merges r = P tokens per block into their most similar partners (our implementation, "
    "gtp.tome)", How("merged", "into", "the token of "),
    patch=lambda model, amount, record, **options: tome.patch(model, r=amount, trace_source=record),
    settings=lambda amount, **options: {"num_prop": amount, "token_scale": True}, recorder=_tome_traced,
    adds="proportional attention on the merged tokens' sizes"))
register(Method(
    "pruning", "Pruning", "drops the P tokens the CLS token attends to least (GTP's own switches)",
    How("dropped"), *_preset(PRUNING), recorder=_traced, needs_cls=True))
register(Method(
    "evit", "EViT", "fuses the P tokens the CLS token attends to least into one average token (GTP's switches)",
    How("fused into the average token"), *_preset(EVIT), recorder=_traced, compared=False, needs_cls=True))
register(Method(
    "random", "Random drop", "drops P patch tokens drawn at random (seeded) per block",
    How("dropped at random"), *_preset(RANDOM, seed=RANDOM_SEED), recorder=_traced, mapped=False))
register(Method(
    "downsample", "Downsample", "runs the unpatched model on a smaller image whose GMACs match GTP's at P "
    "(position embeddings resampled as timm does)", How("kept"),
    patch=lambda model, amount, record, **options: downsample.patch(model, downsample.matched_grid(model, amount)),
    settings=lambda amount, **options: {"num_prop": amount}, recorder=_downsample_traced, mapped=False,
    adds="resizes the image and resamples the position embeddings; GMACs matched as closely as the grid allows"))
register(Method(
    "pitome", "PiToMe", "merges r = P tokens per block after an energy score protects the informative ones "
    "(our implementation, gtp.pitome)", How("merged", "into", "the token of "),
    patch=lambda model, amount, record, **options: pitome.patch(model, r=amount, trace_source=record),
    settings=lambda amount, **options: {"num_prop": amount, "token_scale": True}, recorder=_tome_traced,
    mapped=False, adds="proportional attention on the merged tokens' sizes"))


def get(name: str) -> Method:
    """The method called `name`; ValueError naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {name!r}")
    return METHODS[name]


def compared(model: Optional[nn.Module] = None) -> list[Method]:
    """The methods the app compares on a photo, in registration order (those that run on `model`, if given)."""
    return [m for m in METHODS.values() if m.compared and (model is None or m.runs_on(model))]


def apply_method(model: nn.Module, method: str, amount: Amount = 8, **options: Any) -> nn.Module:
    """Apply method `method` at `amount` tokens per block, in place; returns the model."""
    return get(method).apply(model, amount, **options)


def method_fn(method: str, amount: Amount = 8, **options: Any) -> Callable[[nn.Module], nn.Module]:
    """A one-argument function applying the method (the form `gtp.measure.bench.benchmark` takes)."""
    chosen = get(method)
    return lambda model: chosen.apply(model, amount, **options)


def describe(method: str, amount: Amount = 8, **options: Any) -> dict[str, Optional[Any]]:
    """`Method.describe` of the method called `method`."""
    return get(method).describe(amount, **options)
