"""GTP and the compared methods at the same token budget (`gtp.methods.compared()`): one map per
method over the photo, each patch coloured by the block in which its token left (blank: it
stayed to the end), as the app's Compare tab. Read from each method's `BlockRecord`s.
"""
from __future__ import annotations

import textwrap

import numpy as np

from .. import facts, methods
from . import Choice, RunFigures
from . import style as S


def draw(run: RunFigures, style: S.Style, choice: Choice = Choice()):
    names = list(run.removed)
    if not names:
        raise ValueError("no compared method was recorded")
    grid = run.trace.grid_size
    gh, gw = grid
    depth = max(len(blocks) for blocks in run.removed.values())
    fig = S.new(style, "full", aspect=0.36)
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for ax, name in zip(axes, names):
        blocks = run.removed[name]
        left = facts.left_in([b.removed for b in blocks], gh * gw)
        S.photo_axes(ax, run.photo, grid)
        z = np.where(left < 0, np.nan, left + 1).reshape(gh, gw).astype(np.float64)
        image = ax.imshow(z, extent=(0, gw, gh, 0), cmap="plasma", vmin=1, vmax=max(depth, 2), alpha=0.7,
                          interpolation="nearest")
        label = methods.METHODS[name].label if name in methods.METHODS else name
        gone = int((left >= 0).sum())
        how = methods.METHODS[name].how.verb if name in methods.METHODS else "removed"
        ax.set_title(f"{label}: {gone} {how}")
    bar = fig.colorbar(image, ax=list(axes), shrink=0.85, pad=0.01, ticks=range(1, depth + 1, 1 if depth <= 12 else 2))
    bar.set_label("left in block")
    bar.ax.tick_params(labelsize=style.small)
    budget = [len(b.removed) for b in run.removed[names[0]]]
    per_block = str(budget[0]) if len(set(budget)) == 1 else "per block " + ",".join(map(str, budget))
    labels = ", ".join(methods.METHODS[n].label if n in methods.METHODS else n for n in names)
    fig.suptitle(textwrap.fill(f"Where each token left: {labels} removing {per_block} tokens per block "
                               f"(blank: kept to the end)", 70 if style.height else 120), fontsize=style.title)
    return fig
