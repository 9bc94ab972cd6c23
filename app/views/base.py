"""What every interactive figure shares: the theme, the photo as one layout image, patch
coordinates, and the per-token facts read from a `gtp.Trace`.

Figures are plain `plotly.graph_objects.Figure`s built from library data only (a `gtp.Trace`,
the photo as shown, plain dicts and lists), so they do not depend on the app's own types.

Coordinates: the photo spans x in [0, g_w] and y in [0, g_h] (y pointing down), one unit per
patch, so patch id p = r * g_w + c sits at (c + 0.5, r + 0.5). Patch ids are the original,
row-major ids `gtp.trace` reports; the id -1 (a `propagation="mean"` token) has no place.
"""
from __future__ import annotations

import base64
import io
import json
from typing import Callable, Optional, Union

import numpy as np
import plotly.graph_objects as go
from gradio.components.plot import PlotData
from PIL import Image

import gtp

from ..core import limits
from ..core.caches import BoundedCache
from ..core.results import Exploration

PhotoLike = Union[Image.Image, np.ndarray]

FONT_COLOUR = "#8a8f98"            # mid grey: readable on Gradio's light and dark themes
GRID_COLOUR = "rgba(138,143,152,0.25)"
PHOTO_SIDE = 336                   # pixels of the embedded JPEG (the model input is 224)
JPEG_QUALITY = 80


def theme(fig: go.Figure, height: int, title: Optional[str] = None) -> go.Figure:
    """Transparent backgrounds, a neutral font and no plotly template (the default one adds
    ~8 kB of JSON to every figure and assumes a white page)."""
    fig.update_layout(
        template="none", height=height, paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
        font=dict(color=FONT_COLOUR, size=12), margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        hovermode="closest", hoverlabel=dict(font_size=12, align="left"),
        title=dict(text=escape(title), x=0.01, font=dict(size=14)) if title else None,
        legend=dict(bgcolor="rgba(0,0,0,0)"),
    )
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def escape(text: Optional[str]) -> Optional[str]:
    """Plain text for a plotly label: '$' would start LaTeX (MathJax) in plotly.js, '<' a tag."""
    if text is None:
        return None
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("$", "&#36;")


def photo_uri(photo: PhotoLike, side: int = PHOTO_SIDE) -> str:
    """The photo as a base64 JPEG data URI (one image per figure, shared by all slider steps)."""
    img = photo if isinstance(photo, Image.Image) else Image.fromarray(np.asarray(photo, dtype=np.uint8))
    img = img.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def photo_axes(fig: go.Figure, photo: PhotoLike, grid: tuple[int, int], xaxis: str = "x", yaxis: str = "y",
               opacity: float = 1.0) -> None:
    """Put the photo under axes (`xaxis`, `yaxis`) spanning the patch grid, square patches,
    y pointing down, no ticks."""
    gh, gw = grid
    fig.add_layout_image(source=photo_uri(photo), xref=xaxis, yref=yaxis, x=0, y=0, sizex=gw, sizey=gh,
                         xanchor="left", yanchor="top", sizing="stretch", layer="below", opacity=opacity)
    x_name = "xaxis" if xaxis == "x" else f"xaxis{xaxis[1:]}"
    y_name = "yaxis" if yaxis == "y" else f"yaxis{yaxis[1:]}"
    hidden = dict(showgrid=False, zeroline=False, showticklabels=False, ticks="", showline=False, fixedrange=True)
    fig.update_layout({x_name: dict(range=[0, gw], constrain="domain", **hidden),
                       y_name: dict(range=[gh, 0], scaleanchor=xaxis, scaleratio=1, constrain="domain", **hidden)})


def centres(ids: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the patch centres of original patch ids [K] (ids >= 0)."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids % grid[1] + 0.5, ids // grid[1] + 0.5


def patch_name(pid: int, grid: tuple[int, int]) -> str:
    """'patch 37 (row 2, col 9)' (rows and columns counted from 0, as the ids are)."""
    if pid < 0:
        return "the merged average token"
    r, c = divmod(int(pid), grid[1])
    return f"patch {pid} (row {r}, col {c})"


def segments(src: np.ndarray, dst: np.ndarray, grid: tuple[int, int]) -> tuple[list, list]:
    """Line segments between patch centres as one scatter's x and y (None between segments)."""
    xs, ys = centres(src, grid)
    xd, yd = centres(dst, grid)
    x = np.stack([xs, xd, np.full_like(xs, np.nan)], 1).ravel()
    y = np.stack([ys, yd, np.full_like(ys, np.nan)], 1).ravel()
    return [None if np.isnan(v) else round(float(v), 2) for v in x], [None if np.isnan(v) else round(float(v), 2) for v in y]


def numpy(t, image: int = 0) -> Optional[np.ndarray]:
    """One image's row of a trace tensor as float64/int64 numpy (None stays None)."""
    if t is None:
        return None
    a = t[image].detach().float().cpu().numpy() if t.is_floating_point() else t[image].detach().cpu().numpy()
    return a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.int64)


SCORE_FORMULAS = {  # how the selection score is made from its two factors (gtp/functional.py)
    "mixed_attn": "regeneration × broadcasting", "sum_attn": "regeneration + broadcasting",
    "diag_attn": "regeneration", "img_attn": "broadcasting",
}


def score_formula(selection: str) -> str:
    """'regeneration × broadcasting' for mixed_attn_*, etc.; '' where the factors are not used."""
    return SCORE_FORMULAS.get(selection.rsplit("_", 1)[0], "")


def propagated_block(trace: gtp.Trace, image: int = 0) -> dict[int, int]:
    """Original patch id -> the block (0-based) in which its token was propagated."""
    out: dict[int, int] = {}
    for layer in trace.layers:
        for pid in layer.propagated[image].tolist():
            if pid >= 0:
                out[int(pid)] = layer.block
    return out


def edges_of(layer: gtp.LayerTrace, image: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src [E], dst [E], weight alpha*W [E]) of one block's propagation (empty arrays if none)."""
    if not layer.edges:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    e = layer.edges[image]
    return (e.src.cpu().numpy().astype(np.int64), e.dst.cpu().numpy().astype(np.int64),
            e.weight.float().cpu().numpy().astype(np.float64))


def gtp_destinations(trace: gtp.Trace, image: int = 0) -> list[dict[int, list[int]]]:
    """Per block: propagated patch id -> the patch ids that received its features (for
    `compare_figure`'s GTP map)."""
    out = []
    for layer in trace.layers:
        src, dst, _ = edges_of(layer, image)
        per: dict[int, list[int]] = {}
        for s, d in zip(src.tolist(), dst.tolist()):
            per.setdefault(s, []).append(d)
        out.append(per)
    return out


# ----------------------------------------------------------------------------- the figure cache

FIGURES: BoundedCache = BoundedCache("figures", limits.FIGURE_CACHE_ENTRIES, limits.FIGURE_CACHE_BYTES)
"""Every view of a run, drawn once: by (run key, view), shared by all sessions."""


def cached(exp: Exploration, view: tuple, make: Callable):
    """The figure `view` of this run, drawn once (`make`) and then taken from the cache."""
    return FIGURES.get_or_make((exp.key,) + view, make)


def plot_data(fig: go.Figure) -> PlotData:
    """A figure as `gr.Plot` takes it, serialised once."""
    return PlotData(type="plotly", plot=fig.to_json())


def figure_of(value: PlotData) -> dict:
    """The figure JSON (data, layout) a view handed to `gr.Plot` (for tests and scripts)."""
    return json.loads(value.plot)


def message(text: str, height: int = 160) -> go.Figure:
    """A figure holding only a sentence: why this view has nothing to show."""
    fig = go.Figure()
    fig.add_annotation(text=escape(text), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font_size=14)
    theme(fig, height)
    hidden = dict(visible=False, fixedrange=True)
    fig.update_layout(xaxis=hidden, yaxis=hidden, meta={"message": text})
    return fig


def view(exp: Exploration, key: tuple, make: Callable[[], go.Figure]) -> PlotData:
    """The view's figure, made once per run and kept as JSON; a ValueError of the builder
    (data the run does not hold) becomes a figure saying so."""
    def draw() -> str:
        try:
            return make().to_json()
        except ValueError as e:
            return message(str(e)).to_json()
    return PlotData(type="plotly", plot=cached(exp, ("plotly",) + key, draw))
