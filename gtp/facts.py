"""What every picture of a run shows, as plain data: ONE source for the app's interactive views
(`app/views`) and the static figures (`gtp/figures`), so both draw the same run the same way.

A run is read, never recomputed: a `gtp.Trace` (patch ids are the ORIGINAL row-major ids on the
patch grid; -1 is a `propagation="mean"` token, which has no place on the grid), the compared
methods' `gtp.methods.BlockRecord`s, and the paper's published numbers
(`assets/published_results.json`). The colours of the statuses and methods live here too, so the
page, the GIF and the figures share one legend. No plotting library is imported here.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .trace import LayerTrace, Trace

PUBLISHED_FILE = Path(__file__).resolve().parents[1] / "assets" / "published_results.json"
CITATION = "Xu et al., WACV 2024, arXiv:2311.03035"

# ----------------------------------------------------------------------------- the shared legend
# RGB 0-255. A token's status in a block of the layer walk, the edges it sends along, the
# sparsity charts, and the methods of the trade-off chart.
COLOURS = {
    "propagated": (235, 50, 50),     # propagated in this block (red square)
    "received": (255, 205, 0),       # kept, received features in this block (yellow diamond)
    "edges": (255, 205, 0),          # propagated token -> receiver, width by weight alpha * W
    "earlier": (60, 60, 60),         # propagated in an earlier block (dark cross)
    "kept": (255, 255, 255),         # kept, nothing received (white dot)
    "tokens_left": (31, 119, 180),
    "zeroed": (214, 39, 40),         # share of attention entries zeroed by sparsification
    "mass": (255, 127, 14),          # share of attention mass those entries held
    "spatial": (80, 200, 255),       # spatial graph edges
    "semantic": (255, 120, 220),     # semantic graph edges
    "highlight": (0, 255, 120),      # the token a view or text names
    "measured": (255, 127, 14),      # GMACs measured now (trade-off chart)
    "full": (138, 143, 152),         # the full model (published)
}
STATUS_WORDS = {"propagated": "propagated in this block", "received": "received features",
                "earlier": "propagated earlier", "kept": "kept"}
METHOD_STYLES = {  # published method -> (colour, plotly marker); matplotlib maps the marker
    "GTP": ((214, 39, 40), "circle"), "ToMe": ((31, 119, 180), "square"),
    "EViT": ((44, 160, 44), "triangle-up"), "ATS": ((148, 103, 189), "diamond")}
FAMILIES = {  # timm name -> the name papers use
    "deit_tiny_patch16_224": "DeiT-Ti", "deit_small_patch16_224": "DeiT-S", "deit_base_patch16_224": "DeiT-B",
    "deit_small_distilled_patch16_224": "DeiT-S distilled", "vit_small_patch16_224.augreg_in21k_ft_in1k": "ViT-S/16",
    "vit_base_patch16_224.augreg_in21k_ft_in1k": "ViT-B/16", "vit_small_patch14_dinov2": "DINOv2 ViT-S/14",
}


def rgba(name: str, alpha: float = 1.0) -> str:
    """A colour of COLOURS as plotly text: 'rgba(235,50,50,0.9)'."""
    r, g, b = COLOURS[name]
    return f"rgba({r},{g},{b},{alpha:g})"


def unit(colour: tuple[int, int, int], alpha: float = 1.0) -> tuple[float, float, float, float]:
    """An RGB 0-255 colour as matplotlib's (r, g, b, a) in [0, 1]."""
    return (colour[0] / 255, colour[1] / 255, colour[2] / 255, alpha)


# ----------------------------------------------------------------------------- one traced run

def ids(t, image: int = 0) -> list[int]:
    """One image's row of an id tensor of the trace as ints."""
    return [int(v) for v in t[image].tolist()]


def propagated_block(trace: Trace, image: int = 0) -> dict[int, int]:
    """Original patch id -> the block (0-based) in which its token was propagated."""
    out: dict[int, int] = {}
    for layer in trace.layers:
        for pid in ids(layer.propagated, image):
            if pid >= 0:
                out[pid] = layer.block
    return out


def edges_of(layer: LayerTrace, image: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src [E], dst [E], weight alpha*W [E]) of one block's propagation (empty arrays if none)."""
    if not layer.edges:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    e = layer.edges[image]
    return (e.src.cpu().numpy().astype(np.int64), e.dst.cpu().numpy().astype(np.int64),
            e.weight.float().cpu().numpy().astype(np.float64))


def max_edge_weight(trace: Trace, image: int = 0) -> float:
    """The largest propagation weight alpha*W of the run (0 where nothing was propagated): the
    walk scales every block's line widths by it."""
    return max((float(w.max()) for w in (edges_of(layer, image)[2] for layer in trace.layers) if len(w)),
               default=0.0)


def statuses(trace: Trace, block: int, image: int = 0) -> dict[str, list[int]]:
    """Block `block`'s patches by status (the walk's legend): "earlier" (propagated in an earlier
    block), "kept" (kept, received nothing), "received" (kept, received features here),
    "propagated" (propagated here). Every patch id is in exactly one list."""
    left = propagated_block(trace, image)
    receivers = set(edges_of(trace.layers[block], image)[1].tolist())
    out: dict[str, list[int]] = {"earlier": [], "kept": [], "received": [], "propagated": []}
    for p in range(trace.num_patches):
        b = left.get(p)
        status = ("earlier" if b is not None and b < block else "propagated" if b == block else
                  "received" if p in receivers else "kept")
        out[status].append(p)
    return out


def sparsity_per_block(trace: Trace, image: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(zeroed, mass): [depth, H] percent of attention entries zeroed and of the mass they held."""
    zeroed = np.stack([layer.zeroed_fraction[image].float().cpu().numpy() for layer in trace.layers]) * 100
    mass = np.stack([layer.mass_removed[image].float().cpu().numpy() for layer in trace.layers]) * 100
    return zeroed.astype(np.float64), mass.astype(np.float64)


def gtp_destinations(trace: Trace, image: int = 0) -> list[dict[int, list[int]]]:
    """Per block: propagated patch id -> the patch ids that received its features."""
    out = []
    for layer in trace.layers:
        src, dst, _ = edges_of(layer, image)
        per: dict[int, list[int]] = {}
        for s, d in zip(src.tolist(), dst.tolist()):
            per.setdefault(s, []).append(d)
        out.append(per)
    return out


def neighbours(trace: Trace, token: int, image: int = 0) -> dict[str, list[int]]:
    """A token's out-neighbours in the spatial and the semantic graph (recorded before block 1)."""
    out: dict[str, list[int]] = {"spatial": [], "semantic": []}
    edges = {"spatial": trace.spatial_edges, "semantic": trace.semantic_edges[image] if trace.semantic_edges else None}
    for name, e in edges.items():
        if e is not None:
            src, dst = e.src.cpu().numpy(), e.dst.cpu().numpy()
            out[name] = [int(j) for j in dst[src == token]]
    return out


# ----------------------------------------------------------------------------- compared methods

def left_in(removed: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """[n] block (0-based) in which each patch's token left; -1 where it stayed to the end.
    removed: per block, the original patch ids that left there (`BlockRecord.removed`)."""
    out = np.full(n, -1, dtype=np.int64)
    for b, gone in enumerate(removed):
        for pid in gone:
            if 0 <= pid < n:
                out[pid] = b
    return out


def tome_destinations(merged: Sequence[Sequence[int]], merged_into: Sequence[Sequence[int]]
                      ) -> list[dict[int, list[int]]]:
    """Per block: merged patch id -> [the patch id naming the token it merged into].

    merged, merged_into: one image's `gtp.tome.merged_ids_of` / `merged_into_of`, per block
    the ids in the same order (`BlockRecord.removed` / `BlockRecord.into`).
    """
    if len(merged) != len(merged_into):
        raise ValueError(f"merged has {len(merged)} blocks but merged_into has {len(merged_into)}")
    out = []
    for block, (gone, into) in enumerate(zip(merged, merged_into)):
        if len(gone) != len(into):
            raise ValueError(f"block {block}: {len(gone)} merged ids but {len(into)} partners")
        out.append({int(pid): [int(dst)] for pid, dst in zip(gone, into)})
    return out


# ----------------------------------------------------------------------------- published numbers

@lru_cache(maxsize=1)
def published_results() -> dict:
    """The paper's numbers as published (`assets/published_results.json`); never measured here."""
    with open(PUBLISHED_FILE, encoding="utf-8") as f:
        return json.load(f)


def family(model: str) -> str:
    """'DeiT-S' for deit_small_patch16_224; the timm name itself where no short name is known."""
    return FAMILIES.get(model, model)


def published_tag(citation: str) -> str:
    """The words a legend entry of a published number carries: "published, Xu et al. 2024"
    from "Xu et al., GTP-ViT, WACV 2024, arXiv:2311.03035" (its authors and year)."""
    authors = citation.split(",")[0].strip()
    year = re.search(r"\b(19|20)\d\d\b", citation)
    return f"published, {authors} {year.group(0)}" if year else f"published, {authors}"


def published_records(published: Mapping) -> list[dict]:
    """Every record of the published JSON that names a model and GMACs, with its source
    ("published: <citation>") and its legend tag (`published_tag`); records are found by
    their fields, in whatever list they sit."""
    source = published.get("citation", CITATION)
    out = []
    for value in published.values():
        if isinstance(value, list):
            for rec in value:
                if isinstance(rec, dict) and "model" in rec and rec.get("gmacs") is not None:
                    citation = rec.get("citation", source)
                    out.append({**rec, "source": f"published: {citation}", "tag": published_tag(citation)})
    return out


def is_full(method: str) -> bool:
    """A published record of the full model ("none (full model)")."""
    return str(method).startswith("none")


def has_curves(records: Sequence[dict], model: str) -> bool:
    """Whether the paper publishes a trade-off curve (a method's top-1 at some GMACs) for `model`."""
    return any(r["model"] == model and r.get("top1") is not None and not is_full(r["method"]) for r in records)


def curve_models(records: Sequence[dict], model: str) -> list[str]:
    """The models other than `model` the paper gives trade-off curves for."""
    return sorted({r["model"] for r in records if r["model"] != model and r.get("top1") is not None
                   and not is_full(r["method"])})
