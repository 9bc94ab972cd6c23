"""The measurements' own plots: `python -m gtp sweep --plot FILE` (accuracy or fidelity against
GMACs, one line per method) and `python -m gtp bench --plot FILE` (throughput ratios to the
reference with the spread of the round-by-round ratios). FILE's suffix picks the format
(.pdf, .svg or .png); each plot reads the records its command wrote, nothing else.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .. import facts, methods
from . import style as S

PLOT_FORMATS = ("pdf", "svg", "png")
# (field, axis label) of a sweep record, best first: top-1 where the images were labelled, then
# the label-free fidelity to the full model (agreement; KL and cosine where no head).
SWEEP_QUANTITIES = (("top1", "top-1 accuracy (%)"), ("agreement", "top-1 agreement with the full model (%)"),
                    ("cosine", "cosine similarity to the full model's features"))


def check_plot_path(path: Union[str, Path]) -> Path:
    """The path of a --plot FILE, or ValueError naming the formats (checked before any work)."""
    path = Path(path)
    if path.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise ValueError(f"--plot must name a .pdf, .svg or .png file; got {path}")
    return path


def _save(fig, path: Path, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    S.save(fig, path.with_suffix(""), dpi, (path.suffix.lower().lstrip("."),))
    return path


def _series(records: Sequence[dict]) -> dict[str, list[dict]]:
    """One series per method; GTP split by theta where the sweep tried several."""
    thetas = {r.get("sparsity") for r in records if r.get("method") == "gtp"}
    out: dict[str, list[dict]] = {}
    for r in records:
        method = str(r.get("method", "?"))
        label = methods.METHODS[method].label if method in methods.METHODS else method
        if method == "gtp" and len(thetas) > 1:
            label += f", θ={r.get('sparsity')}"
        out.setdefault(label, []).append(r)
    return out


def plot_sweep(records: Sequence[dict], path: Union[str, Path], style: str = "paper", dpi: int = 300) -> Path:
    """`sweep_figure` saved at `path` (its suffix picks the format)."""
    path = check_plot_path(path)
    with S.using(S.get(style)):
        return _save(sweep_figure(records, style), path, dpi)


def plot_bench(result: dict, path: Union[str, Path], style: str = "paper", dpi: int = 300) -> Path:
    """`bench_figure` saved at `path` (its suffix picks the format)."""
    path = check_plot_path(path)
    with S.using(S.get(style)):
        return _save(bench_figure(result, style), path, dpi)


def sweep_figure(records: Sequence[dict], style: str = "paper"):
    """Accuracy (and the label-free fidelity) against GMACs per method, from `sweep` records: one
    panel per quantity measured (top-1, else agreement, else cosine; two at most), one line per
    method (GTP per theta when several were tried), the full model a star."""
    chosen = S.get(style)
    shown = [(k, label) for k, label in SWEEP_QUANTITIES if any(r.get(k) is not None for r in records)][:2]
    if not shown or not any(r.get("gmacs") is not None for r in records):
        raise ValueError("the sweep has no record with GMACs and a top-1, agreement or cosine to plot")
    with S.using(chosen):
        fig = S.new(chosen, "column", aspect=0.55 * len(shown) + 0.25)
        axes = np.atleast_1d(fig.subplots(len(shown), 1, sharex=True))
        for ax, (key, label) in zip(axes, shown):
            for name, recs in _series(records).items():
                pts = sorted((r for r in recs if r.get(key) is not None and r.get("gmacs") is not None),
                             key=lambda r: r["gmacs"])
                if not pts:
                    continue
                full = pts[0].get("method") == "full"
                ax.plot([r["gmacs"] for r in pts], [r[key] for r in pts], marker="*" if full else "o",
                        ls="none" if full else "-", ms=chosen.marker * (2 if full else 1), label=name,
                        color=S.rgb(facts.COLOURS["full"]) if full else None)
            ax.set_ylabel(label)
            ax.grid(True, lw=0.3, alpha=0.5)
        axes[-1].set_xlabel("GMACs per image (measured)")
        axes[0].legend(fontsize=chosen.small)
        first = records[0]
        fig.suptitle(f"{facts.family(str(first.get('model', '')))}: {first.get('images', '?')} images "
                     f"(measured, python -m gtp sweep)", fontsize=chosen.small)
    return fig


def bench_figure(result: dict, style: str = "paper"):
    """Per batch size, a bar per method at its throughput ratio to the reference (the ratio of the
    medians) with whiskers over the middle half of the round-by-round ratios, from `bench`'s result."""
    chosen = S.get(style)
    runs = result.get("runs") or []
    if not runs:
        raise ValueError("the benchmark has no run to plot")
    names = list(runs[0]["speedup"])
    with S.using(chosen):
        fig = S.new(chosen, "column", aspect=0.7)
        ax = fig.subplots()
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            x = np.arange(len(runs)) + (k - (len(names) - 1) / 2) * width
            mid = np.array([run["speedup"][name] for run in runs])
            spread = [run["per_round_speedup"][name] for run in runs]
            low = mid - np.array([s["q1"] for s in spread])
            high = np.array([s["q3"] for s in spread]) - mid
            ax.bar(x, mid, width * 0.9, label=name, yerr=np.clip([low, high], 0, None), capsize=2,
                   error_kw={"lw": 0.8})
        ax.axhline(1.0, color="black", lw=0.6, ls=":")
        ax.set_xticks(np.arange(len(runs)), [f"batch {run['batch_size']}" for run in runs])
        ax.set_ylabel(f"throughput / {names[0]} (measured)")
        fig.legend(loc="outside lower center", fontsize=chosen.small, ncols=min(4, len(names)))
        ax.grid(True, axis="y", lw=0.3, alpha=0.5)
        fig.suptitle(textwrap.fill(f"{result.get('model', '')} on {result.get('device', '?')}, "
                                   f"{result.get('dtype', '')}: median of {result.get('repeats', '?')} interleaved "
                                   f"rounds; whiskers: the middle half of the round-by-round ratios",
                                   58 if not chosen.height else 100), fontsize=chosen.small)
    return fig
