"""Static figures of a run for papers, theses and slides (matplotlib): `python -m gtp figure`, the
app's "Download figures", and the plots of `sweep --plot` / `bench --plot`.

One module per view, each drawing a `RunFigures` (what one run recorded: nothing is recomputed):

  walk       the layer walk: every block in one grid (propagated, received, kept)
  graphs     the spatial and the semantic graph of one token
  attention  one head's attention before and after sparsification
  compare    GTP and the compared methods: the block where each patch's token left
  tradeoff   the published accuracy-GMACs curves (with their source) and the GMACs measured now
  results    `sweep --plot` and `bench --plot`
  style      paper / slide sizes, vector output with text as text

The data each view reads is the library's (`gtp.facts`), the same the app's plotly views read.
matplotlib is imported only inside the drawing modules, which this package imports when a
figure is drawn, never at `import gtp`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from PIL import Image

from ..methods import BlockRecord
from ..trace import Trace

VIEWS = ("walk", "graphs", "attention", "compare", "tradeoff")


@dataclass(frozen=True)
class RunFigures:
    """What the five run figures draw: one photo, one setting, as recorded."""
    photo: Image.Image                               # the model's input as shown (the crop it saw)
    trace: Trace                                     # GTP's forward, with attention maps for `attention`
    model: str                                       # timm name
    removed: Mapping[str, Sequence[BlockRecord]]     # compared method -> per block what left (gtp included)
    gmacs: Mapping[str, Optional[float]]             # measured GMACs: "full", "gtp" (None: not counted)
    published: Mapping[str, Any]                     # assets/published_results.json as loaded
    pretrained: bool = True                          # False: random weights (the figures say so)
    sweep: Sequence[dict] = field(default_factory=tuple)   # `python -m gtp sweep` records to add


@dataclass(frozen=True)
class Choice:
    """Which block, head and token the views that show one of them draw (0-based)."""
    block: int = 0
    head: int = 0
    token: Optional[int] = None                      # None: the patch in the middle of the grid


def draw(view: str, run: RunFigures, style: str = "paper", choice: Choice = Choice()):
    """One view as a matplotlib Figure (draw and save it inside `style.using`)."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
    from . import style as S
    module = importlib.import_module(f"{__name__}.{view}")
    return module.draw(run, S.get(style), choice)


def write_all(run: RunFigures, out: Path, style: str = "paper", dpi: int = 300, choice: Choice = Choice(),
              formats: Sequence[str] = ("pdf", "svg", "png"), views: Sequence[str] = VIEWS,
              png_colours: int = 0) -> list[Path]:
    """Every view as `out/figure_<view>.<format>`; returns the files written. png_colours: palette
    PNGs of at most this many colours (0: full colour)."""
    from . import style as S
    chosen = S.get(style)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with S.using(chosen):
        for view in views:
            fig = draw(view, run, style, choice)
            written += S.save(fig, out / f"figure_{view}", dpi, formats, png_colours)
    return written
