"""What every view shares: figures as plain data, the theme, the photo under the patch grid, the
per-token facts read from a `gtp.Trace`, and the figure cache.

A figure is the plain dict plotly.js draws (`{"data": [...], "layout": {...}}`), built directly:
no plotly object validates each property on the hot path, numbers are rounded to what a hover
shows, numeric arrays of many floats travel as plotly.js typed arrays (`typed`: base64 of the raw
bytes), and a trace without "type" is a scatter (plotly.js's default).
Builders take library data only (a `gtp.Trace`, the photo, plain lists), never the app's types.

Coordinates: the photo spans x in [0, g_w] and y in [0, g_h] (y pointing down), one unit per
patch, so patch id p = r * g_w + c sits at (c + 0.5, r + 0.5). Heat maps over the photo whose
hover names rows and columns use `CENTRED` axes instead (the photo spans [-0.5, g - 0.5], so
patch (r, c) sits at (c, r) and the hover reads them as x and y). Patch ids are the original,
row-major ids `gtp.trace` reports; the id -1 (a `propagation="mean"` token) has no place.
"""
from __future__ import annotations

import base64
import io
import json
from typing import Any, Callable, Optional, Union

import numpy as np
from gradio.components.plot import PlotData
from PIL import Image

import gtp
from gtp.facts import edges_of, gtp_destinations, propagated_block  # noqa: F401 - re-exported

from ..core import files, limits
from ..core.caches import BoundedCache
from ..core.results import Exploration

Figure = dict[str, Any]
PhotoLike = Union[Image.Image, np.ndarray, str]     # a picture, or a ready image source (URI)

FONT_COLOUR = "#8a8f98"            # mid grey: readable on Gradio's light and dark themes
GRID_COLOUR = "rgba(138,143,152,0.25)"
JPEG_QUALITY = 80
CENTRED = -0.5                     # the photo's left/top edge for axes with patch centres at integers


class Unavailable(Exception):
    """The run holds no data for this view (no attention maps, no CLS token, no block): the view
    shows this sentence instead. Any other exception of a builder is a bug."""


def typed(values: Any, dtype: str = "f4") -> dict:
    """A numeric array as plotly.js takes it without text: {"dtype", "bdata" (base64), "shape"}.
    dtype: "f4" (NaN allowed: a gap), "u1", "u2", "i4", ..."""
    array = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    if array.size == 0:
        return []
    spec = {"dtype": dtype, "bdata": base64.b64encode(array.tobytes()).decode("ascii")}
    if array.ndim > 1:
        spec["shape"] = ",".join(map(str, array.shape))
    return spec


def to_json(fig: Figure) -> str:
    """A figure's JSON, compact (it is sent as it is)."""
    return json.dumps(fig, separators=(",", ":"), allow_nan=False)


def figure(data: list[dict], layout: dict, height: int, title: Optional[str] = None) -> Figure:
    """A figure with the theme: transparent backgrounds, a neutral font, no template (plotly.js
    draws none by default)."""
    themed = {"height": height, "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)",
              "font": {"color": FONT_COLOUR, "size": 12}, "hovermode": "closest",
              "margin": {"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
              "hoverlabel": {"font": {"size": 12}, "align": "left"}, "legend": {"bgcolor": "rgba(0,0,0,0)"}}
    if title:
        themed["title"] = {"text": escape(title), "x": 0.01, "font": {"size": 14}}
    return {"data": data, "layout": {**themed, **layout}}


NARROW_PX = 560   # a figure narrower than this on the page (a phone, a portrait tablet's column) takes its narrow layout


def narrow(fig: Figure, relayout: dict, below: int = NARROW_PX) -> Figure:
    """Give `fig` a layout for a narrow panel: `relayout` (plotly.relayout's {"path": value}) is
    applied in the page where the figure is drawn narrower than `below` px (`app.ui.layout.PAGE_JS`);
    a server cannot know the width a figure will get."""
    fig["layout"]["meta"] = {**fig["layout"].get("meta", {}), "narrow": {"below": below, "relayout": relayout}}
    return fig


def escape(text: Optional[str]) -> Optional[str]:
    """Plain text for a plotly label: '$' would start LaTeX (MathJax) in plotly.js, '<' a tag, and
    '%{...}' a template field where the label goes into a hover template. plotly.js turns the
    entities back into the characters when it draws the text, after filling the template."""
    if text is None:
        return None
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("$", "&#36;")
            .replace("%", "&#37;"))


def photo_uri(photo: PhotoLike) -> str:
    """The photo as a base64 JPEG data URI at its own size (the model's input: 224 px for most
    models; the browser scales it). A string is taken as a ready source."""
    if isinstance(photo, str):
        return photo
    img = photo if isinstance(photo, Image.Image) else Image.fromarray(np.asarray(photo, dtype=np.uint8))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def photo_axes(layout: dict, photo: PhotoLike, grid: tuple[int, int], axis: str = "", origin: float = 0.0,
               opacity: float = 1.0) -> None:
    """Put the photo under the axes `x{axis}`/`y{axis}` spanning the patch grid from `origin`
    (0: patch centres at +0.5; CENTRED: at integers), square patches, y pointing down, no ticks."""
    gh, gw = grid
    layout.setdefault("images", []).append(dict(
        source=photo_uri(photo), xref=f"x{axis}", yref=f"y{axis}", x=origin, y=origin, sizex=gw, sizey=gh,
        xanchor="left", yanchor="top", sizing="stretch", layer="below", opacity=opacity))
    hidden = dict(showgrid=False, zeroline=False, showticklabels=False, ticks="", showline=False, fixedrange=True)
    layout[f"xaxis{axis}"] = {**layout.get(f"xaxis{axis}", {}), "range": [origin, origin + gw], "constrain": "domain",
                              **hidden}
    layout[f"yaxis{axis}"] = {**layout.get(f"yaxis{axis}", {}), "range": [origin + gh, origin],
                              "scaleanchor": f"x{axis}", "scaleratio": 1, "constrain": "domain", **hidden}


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
    gap = [None] * len(xs)
    x = [v for triple in zip(xs.tolist(), xd.tolist(), gap) for v in triple]
    y = [v for triple in zip(ys.tolist(), yd.tolist(), gap) for v in triple]
    return x, y


HIGHLIGHT_COLOUR = "rgb(0,255,120)"   # green: apart from every view's own colours, on both themes


def highlight_mark(x: Any, y: Any, token: int, xaxis: str = "x", yaxis: str = "y", size: int = 18) -> dict:
    """A hollow square around the token a text names (the lesson's, `app.ui.lesson`) at (x, y) on
    the axes `xaxis`/`yaxis`; `meta` says which patch it marks ({"role": "highlight", "token": id})."""
    return dict(type="scatter", x=[x], y=[y], xaxis=xaxis, yaxis=yaxis, mode="markers", hoverinfo="skip",
                showlegend=False, name=f"patch {int(token)}", meta={"role": "highlight", "token": int(token)},
                marker=dict(symbol="square-open", size=size, color=HIGHLIGHT_COLOUR, line=dict(width=3)))


def patch_mark(token: int, grid: tuple[int, int]) -> dict:
    """`highlight_mark` at the centre of patch `token` on the photo's axes (origin 0)."""
    x, y = centres(np.array([token]), grid)
    return highlight_mark(float(x[0]), float(y[0]), token)


def g4(value: float) -> float:
    """A number rounded to the 4 significant digits a hover shows (a whole number as an int: '1', not '1.0')."""
    rounded = float(f"{value:.4g}")
    return int(rounded) if rounded.is_integer() and abs(rounded) < 1e15 else rounded


def numpy(t, image: int = 0) -> Optional[np.ndarray]:
    """One image's row of a trace tensor as float64/int64 numpy (None stays None)."""
    if t is None:
        return None
    a = t[image].detach().float().cpu().numpy() if t.is_floating_point() else t[image].detach().cpu().numpy()
    return a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.int64)


def ranks(score: np.ndarray) -> np.ndarray:
    """Each candidate's rank by selection score, 1 = lowest (leaves first); ties to the lower
    position, as gtp ranks them (SPEC.md section 3)."""
    order = np.argsort(score, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank


SCORE_FORMULAS = {  # how the selection score is made from its two factors (SPEC.md section 3)
    "mixed_attn": "regeneration × broadcasting", "sum_attn": "regeneration + broadcasting",
    "diag_attn": "regeneration", "img_attn": "broadcasting",
}


def score_formula(selection: str) -> str:
    """'regeneration × broadcasting' for mixed_attn_*, etc.; '' where the factors are not used."""
    return SCORE_FORMULAS.get(selection.rsplit("_", 1)[0], "")


# What a run shows (which block each patch left in, its edges, where its features went) is the
# library's (`gtp.facts`), shared with the static figures: propagated_block, edges_of, gtp_destinations.


# ----------------------------------------------------------------------------- the figure cache

FIGURES: BoundedCache = BoundedCache("figures", limits.FIGURE_CACHE_ENTRIES, limits.FIGURE_CACHE_BYTES)
"""Every view of a run, drawn once: by (run key, view), shared by all sessions."""


def cached(exp: Exploration, key: tuple, make: Callable):
    """The value `key` of this run (a figure's JSON, a GIF frame), made once (`make`) and then
    taken from the cache. An exception in `make` leaves nothing cached."""
    return FIGURES.get_or_make((exp.key,) + key, make)


def plot_data(fig: Figure) -> PlotData:
    """A figure as `gr.Plot` takes it, serialised once."""
    return PlotData(type="plotly", plot=to_json(fig))


def message(text: str, height: int = 160) -> Figure:
    """A figure holding only a sentence: why this view has nothing to show."""
    hidden = dict(visible=False, fixedrange=True)
    return figure([], {"xaxis": hidden, "yaxis": hidden, "meta": {"message": text},
                       "annotations": [dict(text=escape(text), x=0.5, y=0.5, xref="paper", yref="paper",
                                            showarrow=False, font={"size": 14})]}, height)


PHOTO_ROUTE = "gradio_api/file="   # Gradio's file route, relative to the page (which may sit under a path)


def photo_of(exp: Exploration) -> str:
    """The run's photo as every figure of the run names it: a file the page serves, sent once
    (`app.core.files.PHOTO_DIR`; `app.ui.layout` lets Gradio serve it), not a copy per figure."""
    return cached(exp, ("photo",), lambda: PHOTO_ROUTE + str(files.photo_file(exp.model_input)))


RUN_TAG_CHARS = 16


def view(exp: Exploration, key: tuple, make: Callable[[], Figure]) -> PlotData:
    """The view's figure, made once per run and kept as JSON, its `layout.meta.run` the start of
    the run's key (which run a figure on the page shows). Data the run does not hold
    (`Unavailable`) is a figure saying so; any other exception is a bug and propagates."""
    def draw() -> str:
        try:
            fig = make()
        except Unavailable as e:
            fig = message(str(e))
        fig["layout"]["meta"] = {**fig["layout"].get("meta", {}), "run": exp.key[:RUN_TAG_CHARS]}
        return to_json(fig)
    return PlotData(type="plotly", plot=cached(exp, ("plotly",) + key, draw))
