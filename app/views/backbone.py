"""A backbone's own result (a model without classes, e.g. DINOv2): the PCA map of its final patch
features, the full model's beside GTP's, in the same colours.

The first three principal components of the full model's final patch tokens are shown as red,
green and blue (the usual way to look at DINOv2 features: parts of one object share a colour).
GTP's tokens are projected on the SAME components and scaled the same, so a patch of the same
colour in both maps has kept its meaning; a patch whose token GTP propagated away has no final
token and is drawn grey.
"""
from __future__ import annotations

import numpy as np

import gtp

from ..core.results import Exploration
from .base import Figure, Unavailable, figure, propagated_block, view

REMOVED_RGB = (128, 128, 128)   # a patch with no final token under GTP
LOW, HIGH = 1.0, 99.0           # percentiles of the full model's projections mapped to 0 and 255


def pca_basis(reference: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean [C], components [k, C], low [k], high [k]) of the reference features [N, C]: the
    top-k principal directions and the LOW/HIGH percentiles of the projections on them."""
    mean = reference.mean(0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    proj = (reference - mean) @ vt[:k].T
    return mean, vt[:k], np.percentile(proj, LOW, axis=0), np.percentile(proj, HIGH, axis=0)


def to_rgb(features: np.ndarray, basis: tuple) -> np.ndarray:
    """Features [M, C] as colours [M, 3] (uint8): their first three components in `basis`."""
    mean, comps, low, high = basis
    scaled = ((features - mean) @ comps.T - low) / np.maximum(high - low, 1e-12)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def pca_maps(full: np.ndarray, reduced: np.ndarray, reduced_ids: np.ndarray,
             grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(full map, GTP map), each [g_h, g_w, 3] uint8.

    full: [N, C] the full model's final patch tokens (patch id = row); reduced: [M, C] GTP's,
    whose original patch ids are `reduced_ids` [M] (-1: a merged token, with no place). Patches
    without a token under GTP are REMOVED_RGB."""
    gh, gw = grid
    basis = pca_basis(full)
    full_map = to_rgb(full, basis).reshape(gh, gw, 3)
    gtp_map = np.empty((gh * gw, 3), np.uint8)
    gtp_map[:] = REMOVED_RGB
    placed = reduced_ids >= 0
    gtp_map[reduced_ids[placed]] = to_rgb(reduced[placed], basis)
    return full_map, gtp_map.reshape(gh, gw, 3)


def pca_figure(trace: gtp.Trace, full: np.ndarray, reduced: np.ndarray, cosine: float, height: int = 230) -> Figure:
    """The two PCA maps side by side; hover: the patch, and whether GTP kept it to the end."""
    grid = trace.grid_size
    gh, gw = grid
    kept = np.asarray(trace.layers[-1].kept[0]) if trace.layers else np.arange(gh * gw)
    full_map, gtp_map = pca_maps(full, reduced, kept, grid)
    left_in = {pid: block + 1 for pid, block in propagated_block(trace).items()}   # 1-based blocks
    ids = np.arange(gh * gw).reshape(gh, gw)
    where = [[f"patch {p} (row {p // gw}, col {p % gw})" for p in row] for row in ids.tolist()]
    under_gtp = [[f"{w}<br>" + (f"propagated in block {left_in[p]}: no final token (grey)" if p in left_in
                                 else "kept to the last block") for w, p in zip(wr, pr)]
                 for wr, pr in zip(where, ids.tolist())]
    data = [dict(type="image", z=full_map.tolist(), xaxis="x", yaxis="y", hovertext=where,
                 hovertemplate="full model<br>%{hovertext}<extra></extra>", name="full model"),
            dict(type="image", z=gtp_map.tolist(), xaxis="x2", yaxis="y2", hovertext=under_gtp,
                 hovertemplate="GTP<br>%{hovertext}<extra></extra>", name="GTP")]
    hidden = dict(showgrid=False, zeroline=False, showticklabels=False, ticks="", fixedrange=True)
    # Square patches; each axis shrinks its domain to its map, so a map's title sits on it.
    square = dict(constrain="domain", **hidden)
    layout = {"xaxis": dict(domain=[0, 0.48], **square), "xaxis2": dict(domain=[0.52, 1], **square),
              "yaxis": dict(scaleanchor="x", autorange="reversed", **square),
              "yaxis2": dict(scaleanchor="x2", autorange="reversed", **square),
              "meta": {"role": "feature-pca", "cosine": cosine},
              "annotations": [dict(text=text, x=0.5, y=1.0, xref=f"x{axis} domain", yref=f"y{axis} domain",
                                   xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=12))
                              for text, axis in (("full model", ""), ("GTP (grey: propagated)", "2"))]}
    fig = figure(data, layout, height)
    fig["layout"]["margin"].update(t=24)
    return fig


def feature_pca(exp: Exploration):
    """The backbone's PCA maps of this run (a `gr.Plot` value)."""
    def make() -> Figure:
        full, reduced = exp.run.full.patches, exp.run.gtp.patches
        if full is None or reduced is None:
            raise Unavailable("this run kept no patch features (they are kept for a model without classes)")
        return pca_figure(exp.trace, full.float().numpy(), reduced.float().numpy(), exp.run.feature_cosine)
    return view(exp, ("feature-pca",), make)
