"""The accuracy-GMACs trade-off: the paper's published curves (labelled with their source,
`assets/published_results.json` through `gtp.facts`, as the app's chart reads them) and the
GMACs measured now for the full and the GTP model, with any `python -m gtp sweep` records.

As in the app: the paper's curves are DeiT-B's; for another model they are drawn dotted and
labelled with their own model, never as this model's, and the figure says so.
"""
from __future__ import annotations

import textwrap

from .. import facts
from . import Choice, RunFigures
from . import style as S

MARKERS = {"circle": "o", "square": "s", "triangle-up": "^", "diamond": "D"}
SWEEP_MARKERS = ("X", "P", "*", "h", "v", "<")


def _published(ax, records: list[dict], model: str, other: bool, style: S.Style) -> None:
    name = facts.family(model)
    mine = [r for r in records if r["model"] == model and r.get("top1") is not None]
    for method in sorted({r["method"] for r in mine}, key=lambda m: (facts.is_full(m), m)):
        pts = sorted((r for r in mine if r["method"] == method), key=lambda r: r["gmacs"])
        x, y = [r["gmacs"] for r in pts], [r["top1"] for r in pts]
        if facts.is_full(method):
            ax.plot(x, y, ls="none", marker="*", ms=style.marker * 2.2, color=S.rgb(facts.COLOURS["full"]),
                    label=f"{name} full model ({pts[0]['tag']})")
            continue
        colour, marker = facts.METHOD_STYLES.get(method, ((127, 127, 127), "circle"))
        ax.plot(x, y, ls=":" if other else "-", marker=MARKERS.get(marker, "o"), ms=style.marker,
                color=S.rgb(colour), label=f"{name} {method} ({pts[0]['tag']})" if other else f"{method} ({pts[0]['tag']})")


def draw(run: RunFigures, style: S.Style, choice: Choice = Choice()):
    records = facts.published_records(run.published)
    model, name = run.model, facts.family(run.model)
    own = facts.has_curves(records, model)
    others = facts.curve_models(records, model)
    fig = S.new(style, "column", aspect=1.25)
    ax = fig.subplots()
    _published(ax, records, model, other=False, style=style)
    if not own:
        for other in others:
            _published(ax, records, other, other=True, style=style)
    measured = S.rgb(facts.COLOURS["measured"])
    for key, ls, lw, text in (("gtp", "-", 1.4, "GTP now"), ("full", ":", 1.0, "full model now")):
        value = run.gmacs.get(key)
        if value is not None:
            ax.axvline(value, color=measured, ls=ls, lw=lw, label=f"{text}: {value:.2f} GMACs (measured)")
    for rec in records:   # GMACs the paper gives for this model without an accuracy
        if rec["model"] == model and rec.get("top1") is None:
            ax.axvline(rec["gmacs"], color=S.rgb(facts.COLOURS["full"]), ls="--", lw=0.8,
                       label=f"{name}, P={rec.get('num_prop', '?')}: {rec['gmacs']} GMACs ({rec['tag']})")
    groups: dict[tuple, list[dict]] = {}
    for rec in run.sweep:
        if rec.get("gmacs") is not None and rec.get("top1") is not None:
            groups.setdefault((str(rec.get("model", "")), str(rec.get("method", "sweep"))), []).append(rec)
    for i, ((swept, method), recs) in enumerate(sorted(groups.items())):
        ax.plot([r["gmacs"] for r in recs], [r["top1"] for r in recs], ls="none", marker=SWEEP_MARKERS[i % 6],
                ms=style.marker * 1.2, color=(0.3, 0.3, 0.3, 1), label=f"{method}, {facts.family(swept)} (measured)")
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("ImageNet top-1 (%)")
    ax.grid(True, lw=0.3, alpha=0.5)
    fig.legend(loc="outside lower center", ncols=1 if not style.height else 2, fontsize=style.small,
               handlelength=1.8)
    source = run.published.get("citation", facts.CITATION)
    note = ("" if own else f" No published curve for {name}: "
            f"the curves of {', '.join(facts.family(o) for o in others) or 'other models'} are drawn dotted.")
    width = 58 if not style.height else 100
    fig.suptitle("\n".join(textwrap.wrap(f"{name}: published ({source}) and measured.{note}", width)),
                 fontsize=style.small, x=0.02, ha="left")
    return fig
