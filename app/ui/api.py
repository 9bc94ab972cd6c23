"""The public API endpoints `explore` and `compare` (gradio_client: `api_name="/explore"`).

Their parameters are explicit and documented (their names and order are the API); each
becomes a `Settings` through `app.core.settings.make_settings`, which checks every value's type.
"""
from __future__ import annotations

from typing import Any, Optional

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
    """Run the full and the GTP model on an image.

    Returns (prediction, trace summary): the prediction holds both top-5s (or, for a headless
    model, the cosine similarity of the final features), whether top-1 agrees, GMACs and latency
    of each, measured now; the trace summary is `gtp.Trace.summary()`: per block the propagated
    and kept patch ids, token sizes, propagation edges and attention sparsity.
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
    """GTP (this setting) and the other compared methods (`gtp.methods.compared()`: ToMe and
    pruning) on an image, each removing the same tokens per block.

    Returns the compare view's numbers, all measured now: per method the original patch
    ids removed in each block, tokens per block, top-5, top-1 agreement with the full
    model, KL divergence and cosine similarity to the full model, GMACs.
    """
    settings = make_settings(model, None, schedule, num_prop=num_prop, sparsity=sparsity, alpha=alpha,
                             num_neighbours=num_neighbours, graph=graph, selection=selection,
                             propagation=propagation, token_scale=token_scale)
    exp = compared(explore_photo(open_photo(image), settings))
    return comparison_json(exp, K.costs(exp, K.all_methods()))
