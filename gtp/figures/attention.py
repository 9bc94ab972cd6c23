"""One head's attention in one block before and after sparsification (SPEC.md section 2): rows
are queries, columns keys, prefix tokens first; colours on a log scale over the three decades
below the map's largest entry (as the app's Attention tab), zeroed entries black. Sparsification
zeroes entries without renormalising, so an entry was zeroed where it is 0 after and was not
before. Read from the trace's maps (`gtp.trace(model, attention=True)`).
"""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm

from . import Choice, RunFigures
from . import style as S

DECADES = 3.0


def draw(run: RunFigures, style: S.Style, choice: Choice = Choice()):
    trace = run.trace
    depth = len(trace.layers)
    if not 0 <= choice.block < depth:
        raise ValueError(f"block must be from 1 to {depth}; got {choice.block + 1}")
    layer = trace.layers[choice.block]
    if layer.attn_before is None:
        raise ValueError("attention maps were not recorded: trace with gtp.trace(model, attention=True)")
    heads = layer.attn_before.shape[1]
    if not 0 <= choice.head < heads:
        raise ValueError(f"head must be from 0 to {heads - 1}; got {choice.head}")
    before = layer.attn_before[0, choice.head].float().cpu().numpy()
    after = layer.attn_after[0, choice.head].float().cpu().numpy()
    zmax = float(before.max())
    norm = LogNorm(vmin=zmax / 10 ** DECADES, vmax=zmax, clip=False)
    cmap = colormaps["viridis"].with_extremes(bad="black", under=colormaps["viridis"](0.0))
    share = 100 * float(layer.zeroed_fraction[0, choice.head])
    mass = 100 * float(layer.mass_removed[0, choice.head])
    fig = S.new(style, "column", aspect=0.6)
    axes = fig.subplots(1, 2)
    n = before.shape[0]
    for ax, values, title in ((axes[0], before, "before sparsification"),
                              (axes[1], after, f"after: {share:.1f} % zeroed,\n{mass:.1f} % of the mass")):
        shown = np.ma.masked_less_equal(values, 0.0)   # exact zeros (zeroed entries) are drawn black
        image = ax.imshow(shown, cmap=cmap, norm=norm, interpolation="nearest", extent=(-0.5, n - 0.5, n - 0.5, -0.5))
        ax.set_title(title)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(image, ax=list(axes), shrink=0.75, pad=0.02, extend="min")
    bar.set_label("attention (log); black: 0")
    bar.ax.tick_params(labelsize=style.small)
    fig.suptitle(f"Block {choice.block + 1}, head {choice.head}: {n} tokens",
                 fontsize=style.title)
    return fig
