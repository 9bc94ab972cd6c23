"""The accuracy-GMACs trade-off: published curves of the selected model's family only, the
current configuration's measured GMACs, the user's sweep results and measured throughput.

Published numbers come from `assets/published_results.json` (its records are found by their
fields, in whatever list they sit: `model`, `method`, `gmacs`, and `top1` where published).
The paper's trade-off figure is DeiT-B's; for another model its curves are NOT drawn under the
model's measured GMACs (a DeiT-B curve is not a DeiT-S result): the chart says so instead,
unless `other_families=True` asks for them, labelled with their own family.
"""
from __future__ import annotations

import textwrap
from typing import Iterable, Optional, Sequence

from gradio.components.plot import PlotData

from gtp.facts import METHOD_STYLES, family, published_records  # noqa: F401 - re-exported

from ..core import limits
from .base import GRID_COLOUR, Figure, escape, figure, plot_data

STYLES = {name: (f"rgb{colour}".replace(" ", ""), marker) for name, (colour, marker) in METHOD_STYLES.items()}
TRADEOFF_HEIGHT = 560   # the legend lies under the chart: its entries need room
TITLE_CHARS = 46        # a title line at 11 px fits a phone's 320 px wide chart
TITLE_LINE_PX = 15
SWEEP_SYMBOLS = ("x", "cross", "star-triangle-up", "hexagram", "asterisk-open", "y-down-open")


def _published_traces(records: list[dict], model: str, label_family: bool) -> list[dict]:
    """One line per method of `model`'s published curves, and its full-model point(s)."""
    name = family(model)
    prefix = f"{name} · " if label_family else ""
    traces = []
    mine = [r for r in records if r["model"] == model and r.get("top1") is not None]
    methods = sorted({r["method"] for r in mine}, key=lambda m: (m.startswith("none"), m))
    for method in methods:
        pts = sorted((r for r in mine if r["method"] == method), key=lambda r: r["gmacs"])
        full = method.startswith("none")
        colour, symbol = ("rgb(138,143,152)", "star") if full else STYLES.get(method, ("rgb(127,127,127)", "circle"))
        tag = pts[0]["tag"]   # "published, <authors> <year>": every published entry names its source
        label = f"{name} full model ({tag})" if full else f"{prefix}{method} ({tag})"
        traces.append(dict(
            type="scatter", x=[r["gmacs"] for r in pts], y=[r["top1"] for r in pts], mode="markers" if full else "lines+markers",
            name=escape(label), marker=dict(color=colour, symbol=symbol, size=13 if full else 8),
            line=dict(color=colour, dash="dot" if label_family else "solid"), meta={"role": "published", "model": model},
            customdata=[[escape(method), escape(name), escape(r["source"])] for r in pts],
            hovertemplate="%{customdata[0]} on %{customdata[1]}<br>%{x:.2f} GMACs · top-1 %{y:.2f} %"
                          "<br>%{customdata[2]}<extra></extra>"))
    return traces


def _sweep_traces(sweep: Sequence[dict]) -> list[dict]:
    """The user's measurements, one series per (model, method, quantity): top-1 on the left
    axis, top-1 agreement with the full model on the right one."""
    groups: dict[tuple, list[dict]] = {}
    for rec in sweep:
        if rec.get("gmacs") is None:
            continue
        quantity = "top1" if rec.get("top1") is not None else "agreement" if rec.get("agreement") is not None else None
        if quantity:
            groups.setdefault((str(rec.get("model", "")), str(rec.get("method", "sweep")), quantity), []).append(rec)
    traces = []
    for i, ((model, method, quantity), recs) in enumerate(sorted(groups.items())):
        what = "top-1" if quantity == "top1" else "top-1 agreement"
        label = recs[0].get("label") or f"your sweep: {method}, {family(model) if model else 'model ?'}, {what}"
        traces.append(dict(
            type="scatter", x=[r["gmacs"] for r in recs], y=[r[quantity] for r in recs], mode="markers", name=escape(label),
            yaxis="y2" if quantity == "agreement" else "y", meta={"role": "sweep"},
            marker=dict(symbol=SWEEP_SYMBOLS[i % len(SWEEP_SYMBOLS)], size=10, color="rgb(230,230,230)",
                        line=dict(width=1, color="rgb(60,60,60)")),
            customdata=[[escape(_describe(r))] for r in recs],
            hovertemplate=f"{escape(label)}<br>%{{customdata[0]}}<br>%{{x:.2f}} GMACs · {what} %{{y:.2f}} %"
                          "<br>measured by you (python -m gtp sweep)<extra></extra>"))
    return traces


def _describe(rec: dict) -> str:
    """'P=8, θ=0.6, α=0.1, M=8, 500 images' from a sweep record (the fields it has)."""
    parts = [f"{sym}={rec[k]}" for k, sym in (("num_prop", "P"), ("sparsity", "θ"), ("alpha", "α"),
                                              ("num_neighbours", "M")) if rec.get(k) is not None]
    if rec.get("images") is not None:
        parts.append(f"{rec['images']} images")
    return ", ".join(parts)


CURVE_STYLES = {"gtp": "rgb(214,39,40)", "tome": "rgb(31,119,180)", "pruning": "rgb(44,160,44)",
                "random": "rgb(127,127,127)", "downsample": "rgb(140,86,75)", "pitome": "rgb(148,103,189)"}


def _curve_traces(curves: dict) -> list[dict]:
    """The fidelity bench's curves of this model and weights (`app.core.curves`), on the right axis:
    top-1 agreement with the full model (%) where it has a head, else the cosine of the features."""
    from gtp import methods
    head = curves.get("has_head")
    key = "agreement" if head else "cosine_mean"
    groups: dict[str, list[dict]] = {}
    for row in curves.get("rows", ()):
        if row.get("method") != "full" and row.get(key) is not None:
            groups.setdefault(row["method"], []).append(row)
    n = curves.get("photos")
    traces = []
    for method, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["gmacs"])
        label = methods.METHODS[method].label if method in methods.METHODS else method
        scale = 100 if head else 1
        traces.append(dict(
            type="scatter", x=[r["gmacs"] for r in rows], y=[scale * r[key] for r in rows], yaxis="y2",
            mode="lines+markers", name=escape(f"{label} (measured on {n} photos)"),
            line=dict(color=CURVE_STYLES.get(method, "rgb(90,90,90)"), dash="dash"), meta={"role": "curve"},
            marker=dict(size=7, symbol="circle-open"), customdata=[[r["num_prop"]] for r in rows],
            hovertemplate=(f"{escape(label)}, P=%{{customdata[0]}}<br>%{{x:.2f}} GMACs · "
                           + ("top-1 agreement %{y:.1f} %" if head else "feature cosine %{y:.4f}")
                           + f"<br>measured on {n} bundled photos<extra></extra>")))
    return traces


def _current_lines(model: str, current: dict, published_gmacs: Iterable[dict]) -> tuple[list, list, list]:
    """(shapes, annotations, legend traces): vertical lines at the measured GMACs of the full and
    the GTP model now, and at the GMACs the paper gives for this model (no accuracy published
    with them)."""
    name = family(model)
    shapes, notes, traces = [], [], []
    line = dict(type="line", xref="x", yref="y domain", y0=0, y1=1)
    for key, dash, width, text in (("gtp", "solid", 2, "GTP now"), ("full", "dot", 1, "full model now")):
        if current.get(key) is not None:
            style = dict(color="rgb(255,127,14)", dash=dash, width=width)
            shapes.append(dict(line, x0=current[key], x1=current[key], line=style))
            traces.append(dict(  # an invisible point carrying the line's legend entry
                type="scatter", x=[current[key]], y=[None], mode="lines", line=style, meta={"role": "measured"},
                name=escape(f"{text}: {current[key]:.2f} GMACs ({name}, measured)")))
    measured = [v for v in current.values() if v is not None]
    for rec in published_gmacs:
        # the label on the side of its line away from a measured line next to it (GTP's own GMACs are
        # often within a few hundredths of the published ones): written over that line otherwise
        right = any(0 <= v - rec["gmacs"] < 0.5 for v in measured)
        shapes.append(dict(line, x0=rec["gmacs"], x1=rec["gmacs"], line=dict(color="rgb(138,143,152)", dash="dash",
                                                                            width=1)))
        notes.append(dict(text=escape(f"{name}, P={rec.get('num_prop', '?')}: {rec['gmacs']} GMACs ({rec['tag']})"),
                          x=rec["gmacs"], xref="x", y=1, yref="y domain", showarrow=False, font=dict(size=10),
                          textangle=-90, xanchor="right" if right else "left", yanchor="top"))
    return shapes, notes, traces


def _throughput_traces(throughput: Sequence[dict]) -> list[dict]:
    """Images per second against batch size, full and GTP (measured; `measure_throughput`)."""
    rows = sorted(throughput, key=lambda r: r["batch_size"])
    device = escape(rows[0].get("device", "")) if rows else ""
    out = []
    for key, label, colour in (("full_img_per_s", "full model", "rgb(138,143,152)"), ("gtp_img_per_s", "GTP", "rgb(214,39,40)")):
        out.append(dict(
            type="scatter", x=[r["batch_size"] for r in rows], y=[r[key] for r in rows], xaxis="x2", yaxis="y3", mode="lines+markers",
            name=f"{label}: img/s (measured)", line=dict(color=colour), meta={"role": "throughput"},
            hovertemplate=f"{label}, batch %{{x}}: %{{y:.1f}} img/s<br>measured on {device}<extra></extra>"))
    return out


def _cosine_traces(model: str, current: dict) -> list[dict]:
    """A backbone's points: the feature cosine to the full model of GTP on this photo, at its
    GMACs, and the full model itself (cosine 1), both measured now."""
    name = escape(family(model))
    out = []
    for key, label, colour, symbol in (("full", "full model", "rgb(138,143,152)", "star"), ("gtp", "GTP", "rgb(214,39,40)", "circle")):
        if current.get(key) is None:
            continue
        y = 1.0 if key == "full" else current["cosine"]
        out.append(dict(type="scatter", x=[current[key]], y=[y], mode="markers", meta={"role": "measured-cosine"},
                        name=f"{label} on this photo: cosine {y:.4f} (measured)",
                        marker=dict(color=colour, symbol=symbol, size=13 if key == "full" else 10),
                        hovertemplate=f"{label} on {name}, this photo<br>%{{x:.2f}} GMACs · feature cosine to the "
                                      "full model %{y:.4f}<br>measured now<extra></extra>"))
    return out


def tradeoff_figure(published: dict, model: str, current: Optional[dict] = None, sweep: Sequence[dict] = (),
                    throughput: Sequence[dict] = (), other_families: bool = False, height: int = 380,
                    curves: Optional[dict] = None, has_head: bool = True) -> Figure:
    """Top-1 against GMACs for `model` (a timm name); for a backbone (`has_head` False: no
    classes, so no top-1 and nothing published) the feature cosine to the full model instead.

    published: the contents of assets/published_results.json; current: {"full": GMACs,
    "gtp": GMACs} measured now (either may be None; a backbone's also "cosine", GTP's feature
    cosine to the full model on this photo); sweep: records of `python -m gtp sweep`
    (gmacs, top1 or agreement, method, model, ...; an optional "label" is shown as plain
    text); throughput: `measure_throughput` results ({batch_size, full_img_per_s,
    gtp_img_per_s, device}), drawn in a second panel when given; other_families: also draw
    other models' published curves, labelled with their family; curves: this model's measured
    curves (`app.core.curves`), on the right axis, labelled "measured on N photos".
    """
    records = published_records(published) if has_head else []   # top-1 curves: of classifiers only
    name = family(model)
    data = _published_traces(records, model, label_family=False)
    has_curves = any(r["model"] == model and r.get("top1") is not None and not str(r["method"]).startswith("none")
                     for r in records)
    others = sorted({r["model"] for r in records if r["model"] != model and r.get("top1") is not None
                     and not str(r["method"]).startswith("none")})
    if other_families:
        for other in others:
            data += _published_traces(records, other, label_family=True)
    shapes, notes, measured = _current_lines(model, current or {}, [r for r in records if r["model"] == model
                                                                    and r.get("top1") is None] if current else [])
    if not has_head and current and current.get("cosine") is not None:
        measured += _cosine_traces(model, current)
    data += measured + _sweep_traces(sweep) + (_throughput_traces(throughput) if throughput else [])
    data += _curve_traces(curves) if curves else []
    if not has_head:
        note = ("A backbone has no classes. Plotted: the feature cosine of GTP to the full model on this "
                "photo, at the GMACs measured now.")
    else:
        note = ("" if has_curves else
                f"No published trade-off curve for {name}: the paper's curves are "
                f"{', '.join(family(o) for o in others) or 'of other models'}"
                + (", drawn dotted and labelled with their model." if other_families else ", not drawn here."))
    axis = dict(gridcolor=GRID_COLOUR, zeroline=False, automargin=True)   # tick labels inside the figure
    layout = dict(
        xaxis=dict(domain=[0, 0.58] if throughput else [0, 1], title=dict(text="GMACs per image"), **axis),
        yaxis=dict(title=dict(text="ImageNet top-1 (%)" if has_head else "feature cosine to the full model"), **axis),
        legend=dict(orientation="h", y=-0.28, yanchor="top", x=0, font=dict(size=10), bgcolor="rgba(0,0,0,0)"),
        meta={"family": name, "has_family_curves": has_curves}, shapes=shapes)
    xs = [float(v) for t in data if t.get("xaxis", "x") == "x" for v in t["x"] if v is not None]
    xs += [float(sh["x0"]) for sh in shapes]
    if xs:  # vertical lines do not widen plotly's autorange: pad around everything drawn
        pad = 0.08 * max(max(xs) - min(xs), 0.5)
        layout["xaxis"]["range"] = [min(xs) - pad, max(xs) + pad]
    if any(t.get("yaxis") == "y2" for t in data):
        right = ("feature cosine to the full model" if curves and not curves.get("has_head")
                 else "top-1 agreement with the full model (%)")
        layout["yaxis2"] = dict(overlaying="y", side="right", title=dict(text=right), showgrid=False)
    if throughput:
        layout["xaxis2"] = dict(domain=[0.76, 1], type="log", title=dict(text="batch size"), **axis)
        layout["yaxis3"] = dict(anchor="x2", title=dict(text="images / s (measured)"), rangemode="tozero", **axis)
    title = textwrap.wrap(f"{name}: published ({published.get('citation', '')}) and measured" if has_head
                          else f"{name}: measured now", TITLE_CHARS)
    lines = [escape(line) for line in title] + [f"<i>{escape(line)}</i>" for line in textwrap.wrap(note, TITLE_CHARS)]
    layout["annotations"] = notes + [dict(text="<br>".join(lines), xref="paper",
                                          yref="paper", x=0, y=1.02, xanchor="left", yanchor="bottom",
                                          showarrow=False, font=dict(size=11), align="left")]
    fig = figure(data, layout, height)
    fig["layout"]["margin"].update(t=TITLE_LINE_PX * len(lines) + 10, b=10)
    return fig


def bounded_sweep(records: Sequence[dict]) -> list[dict]:
    """Sweep records with at most limits.MAX_SWEEP_METHODS method names; past them the rest are one
    series ("N other methods"), so a file with thousands of names stays one readable chart."""
    names = sorted({str(r.get("method", "sweep")) for r in records})
    rest = set(names[limits.MAX_SWEEP_METHODS:])
    other = f"{len(rest)} other methods"
    return [dict(r, method=other) if str(r.get("method", "sweep")) in rest else r for r in records]


def tradeoff(published: dict, model: str, current: Optional[dict], sweep: Sequence[dict] = (),
             throughput: Sequence[dict] = (), curves: Optional[dict] = None, has_head: bool = True) -> PlotData:
    """The compact trade-off chart beside the prediction: the published curves of `model`'s
    family, its GMACs measured now, the user's sweep and the measured throughput. Where the
    paper has no curve for this model's family (it has DeiT-B's), the other families' curves
    are drawn dotted and labelled with their model, never as this model's. A backbone
    (`has_head` False) has no top-1: its chart plots the feature cosine measured now."""
    own = any(r["model"] == model and r.get("top1") is not None and not str(r.get("method", "none")).startswith("none")
              for r in published_records(published))
    return plot_data(tradeoff_figure(published, model, current=current, sweep=bounded_sweep(sweep),
                                       throughput=throughput, other_families=not own, height=TRADEOFF_HEIGHT,
                                       curves=curves, has_head=has_head))
