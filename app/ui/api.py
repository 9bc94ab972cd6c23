"""The public API endpoints `explore` and `compare` (gradio_client: `api_name="/explore"`).

Their parameters are explicit and documented (their names and order are the API); each
becomes a `Settings` through `app.core.settings.make_settings`, which checks every value's type.
"""
from __future__ import annotations

from typing import Any, Optional

from gtp.models import SUPPORTED_MODELS

from ..core import costs as K
from ..core.inference import compared, explore_photo
from ..core.photos import open_photo
from ..core.results import Costs, Exploration, TopClass
from ..core.settings import DEFAULT_MODEL, make_settings
from ..core.settings import PUBLISHED_SETTINGS as P
from . import text

API_PARAMETERS = ["model", "num_prop", "schedule", "sparsity", "alpha", "num_neighbours", "graph",
                  "selection", "propagation", "token_scale"]


def _top5(top: Optional[tuple[TopClass, ...]]) -> Optional[list[dict]]:
    return None if top is None else [t.json() for t in top]


def prediction_json(exp: Exploration, costs: Costs) -> dict:
    """The `explore` endpoint's prediction: top-5s, agreement, GMACs, latency, all measured."""
    run = exp.run
    full_ms, gtp_ms = run.latency_ms
    settings = exp.settings.json()
    prediction: dict[str, Any] = {
        "model": exp.model_name,
        "weights": "pretrained" if exp.pretrained else "random (predictions meaningless)",
        "weights_message": exp.model.weights_message,
        "device": run.device,
        "settings": settings,
        "gtp_config": run.trace.config,
        "gmacs": costs.gmacs_json(),
        "latency_ms": {"full": full_ms, "gtp": gtp_ms, "how": f"one forward each, batch 1, on {run.device}"},
        "tokens_per_block": run.trace.tokens_per_block(),
        "input_notes": list(exp.photo_notes),
    }
    if exp.has_head:
        prediction.update({
            "full": {"top5": _top5(run.full_top5)},
            "gtp": {"top5": _top5(run.gtp_top5)},
            "agree": run.full_top5[0].index == run.gtp_top5[0].index,
            "top5_overlap": len({t.index for t in run.full_top5} & {t.index for t in run.gtp_top5}),
        })
    else:  # a backbone: compare the final features instead of classes
        prediction["feature_cosine_similarity"] = run.feature_cosine
    return prediction


def comparison_json(exp: Exploration, costs: Costs) -> dict:
    """The `compare` endpoint's numbers (JSON-ready) of a compared exploration."""
    comp = exp.comparison
    return {
        "budget": list(comp.budget), "full_gmacs": costs.of("full"), "seconds": round(comp.seconds, 3),
        "full_top5": _top5(comp.full_top5),
        "methods": {m.method: {"method": m.method, "label": m.label, "removed": [list(ids) for ids in m.removed],
                               "tokens_per_block": list(m.tokens_per_block), "cosine": m.cosine,
                               "top5": _top5(m.top5), "agree": m.agree, "kl": m.kl,
                               "gmacs": costs.of(m.method), "also_approximates": text.also(m.method, exp)}
                    for m in comp.methods},
    }


def explore(image: str, model: str = DEFAULT_MODEL, num_prop: float = P.config.num_prop,
            schedule: str = "", sparsity: float = P.config.sparsity,
            alpha: float = P.config.alpha, num_neighbours: float = P.config.num_neighbours,
            graph: str = P.config.graph, selection: str = P.config.selection,
            propagation: str = P.config.propagation,
            token_scale: bool = P.config.token_scale) -> tuple[dict, dict]:
    """Run a pretrained Vision Transformer on an image twice, as it is and with GTP (Graph-based Token Propagation, WACV 2024), and report what GTP changed: the prediction, the cost, and which patch tokens left in each block.

    Args:
        image: the photo (a file; a URL or a data: URI through MCP). Any size; it is resized and centre-cropped as the model expects.
        model: the timm model, one of {models}.
        num_prop: P, patch tokens propagated (removed) in every block; the published setting is 8. More removes more tokens and saves more GMACs.
        schedule: optional per-block P as comma-separated whole numbers, one per block (e.g. 0,0,8,8,8,8,8,8,8,8,8,8); overrides num_prop. Empty string for none.
        sparsity: theta in (0, 1], the share of attention entries kept in each block (1 = no sparsification; published 0.6).
        alpha: weight of the propagated features added to the tokens that receive them (published 0.1).
        num_neighbours: M, neighbours per token in the semantic graph (published 8).
        graph: the token graph the features travel along: spatial, semantic or mixed (published).
        selection: how the tokens to propagate are scored: mixed_attn_max (published) or an ablation such as cls_attn_mean or random.
        propagation: graph (published), mean (removed tokens become one average token) or none (pruning).
        token_scale: proportional attention on the token sizes (true, published).

    Returns:
        prediction: model, weights (pretrained or random), the top-5 classes of the full and the GTP model and whether their top-1 agrees (for a backbone without classes, the cosine similarity of the final features instead), GMACs of both and the reduction, latency, tokens per block; all measured now.
        trace_summary: per block, the original patch ids propagated and kept, token sizes, the propagation edges with their weights, and the share of attention zeroed.
    """
    settings = make_settings(model, None, schedule, num_prop=num_prop, sparsity=sparsity, alpha=alpha,
                             num_neighbours=num_neighbours, graph=graph, selection=selection,
                             propagation=propagation, token_scale=token_scale)
    exp = explore_photo(open_photo(image), settings)
    return prediction_json(exp, K.costs(exp, ("full", "gtp"))), exp.trace.summary()


def compare(image: str, model: str = DEFAULT_MODEL, num_prop: float = P.config.num_prop,
            schedule: str = "", sparsity: float = P.config.sparsity,
            alpha: float = P.config.alpha, num_neighbours: float = P.config.num_neighbours,
            graph: str = P.config.graph, selection: str = P.config.selection,
            propagation: str = P.config.propagation,
            token_scale: bool = P.config.token_scale) -> dict:
    """Run GTP and the other token-reduction methods (ToMe token merging, and pruning) on one image, each removing the same number of tokens per block (so the same GMACs), and report how far each moves from the full model.

    Args:
        image: the photo (a file; a URL or a data: URI through MCP). Any size; it is resized and centre-cropped as the model expects.
        model: the timm model, one of {models}.
        num_prop: tokens every method removes per block (P for GTP and pruning, r for ToMe); the published setting is 8.
        schedule: optional per-block token budget as comma-separated whole numbers, one per block; overrides num_prop. Empty string for none.
        sparsity: GTP's theta in (0, 1], the share of attention entries kept (1 = no sparsification; published 0.6).
        alpha: GTP's weight of the propagated features (published 0.1).
        num_neighbours: GTP's M, neighbours per token in the semantic graph (published 8).
        graph: GTP's token graph: spatial, semantic or mixed (published).
        selection: how GTP and pruning score the tokens to remove: mixed_attn_max (published) or an ablation such as cls_attn_mean.
        propagation: GTP's propagation: graph (published), mean or none.
        token_scale: proportional attention on the token sizes (true, published).

    Returns:
        comparison: the token budget per block, the full model's GMACs and top-5, and per method (gtp, tome, pruning) the original patch ids removed in each block, tokens per block, top-5, top-1 agreement with the full model, KL divergence and cosine similarity of the features to the full model, GMACs; all measured now.
    """
    settings = make_settings(model, None, schedule, num_prop=num_prop, sparsity=sparsity, alpha=alpha,
                             num_neighbours=num_neighbours, graph=graph, selection=selection,
                             propagation=propagation, token_scale=token_scale)
    exp = compared(explore_photo(open_photo(image), settings))
    return comparison_json(exp, K.costs(exp, K.all_methods()))


# The docstrings are the MCP tools' descriptions (Gradio reads their Args): the model list comes
# from the one list of supported models.
_MODELS = ", ".join(f"{name} (a backbone without classes)" if "no classifier" in about else name
                    for name, about in SUPPORTED_MODELS.items())
for _endpoint in (explore, compare):
    _endpoint.__doc__ = _endpoint.__doc__.replace("{models}", _MODELS)
