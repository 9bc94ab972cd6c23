"""The run's figures for a paper or a slide, as a download: "Download figures" zips the five
static figures of `gtp.figures` (layer walk grid, token graphs, attention, compared methods,
trade-off) in PDF and PNG.

They are drawn from the same data as the page: the run's trace and photo, its comparison's
per-block records, the GMACs the page shows and the published numbers (`gtp.facts`), with the
block, head and token on view. Nothing runs a model here. Bounded like the other downloads
(`app.core.limits`): a fixed size and resolution (FIGURE_DPI), one view at a time in the models'
queue, written into a download folder that is deleted past DOWNLOAD_FOLDERS_KEPT, and refused
past FIGURE_ZIP_MAX_BYTES. matplotlib is imported here only when a zip is made.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional, Sequence

from ..core import limits
from ..core.assets import published_results
from ..core.results import Costs, Exploration
from .tradeoff import bounded_sweep


def figures_zip(exp: Exploration, costs: Costs, folder: Path, block: int = 0, head: int = 0,
                token: Optional[int] = None, sweep: Optional[Sequence[dict]] = None) -> str:
    """`folder/gtp_figures_<model>.zip` holding figure_<view>.pdf and .png of every view; returns its
    path. `exp` must hold its comparison (`app.core.inference.compared`); block and head 0-based."""
    from gtp.figures import Choice, RunFigures, write_all   # matplotlib: only now
    if exp.comparison is None:
        raise ValueError("the exploration has no comparison yet: call inference.compared(exp) first")
    run = RunFigures(photo=exp.model_input, trace=exp.trace, model=exp.model_name,
                     removed={m.method: m.blocks for m in exp.comparison.methods},
                     gmacs={"full": costs.of("full"), "gtp": costs.of("gtp")}, published=published_results(),
                     pretrained=exp.pretrained, sweep=tuple(bounded_sweep(sweep or ())))
    drawn = folder / "figures"
    files = write_all(run, drawn, "paper", limits.FIGURE_DPI, Choice(block, head, token), formats=("pdf", "png"))
    size = sum(f.stat().st_size for f in files)
    if size > limits.FIGURE_ZIP_MAX_BYTES:
        raise RuntimeError(f"the figures came to {size} bytes, past FIGURE_ZIP_MAX_BYTES")
    path = folder / f"gtp_figures_{exp.model_name}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:   # PDF and PNG are compressed already
        for f in files:
            z.write(f, f.name)
    for f in files:
        f.unlink()
    drawn.rmdir()
    return str(path)
