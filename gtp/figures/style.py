"""The look of every static figure: a two-column paper's sizes or a 16:9 slide's, vector output
with the text kept as text, and the photo under the patch grid.

matplotlib is imported here, and this module only when a figure is drawn (`gtp.figures` imports
it lazily), so `import gtp` and the app's start-up never load it. Figures are made with
`matplotlib.figure.Figure` directly (no pyplot): no global figure state, no GUI backend, safe in
a server thread.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

FORMATS = ("pdf", "svg", "png")
# Text stays text: TrueType fonts embedded whole in the PDF (Type 42, which journals accept and
# editors can change, rather than Type 3 glyph drawings), SVG text as <text> elements.
VECTOR_TEXT = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}


@dataclass(frozen=True)
class Style:
    """Sizes of one medium, in inches and points."""
    name: str
    column: float            # width of one column (paper) or of the slide
    full: float              # width of the full page (paper) or of the slide
    height: float            # the slide's height (16:9); 0 for a paper (each figure sets its own)
    font: float              # body text (axis labels, legend)
    small: float             # tick labels, captions
    title: float
    marker: float            # the walk's marker size for a propagated token, in points

    def size(self, width: str = "column", aspect: float = 0.75) -> tuple[float, float]:
        """(width, height) in inches: a paper figure `aspect` times as high as its column or full
        width; a slide figure always fills the 16:9 slide."""
        if self.height:
            return self.full, self.height
        w = self.full if width == "full" else self.column
        return w, w * aspect

    def params(self) -> dict:
        """matplotlib rcParams for this medium."""
        return {**VECTOR_TEXT, "font.size": self.font, "axes.titlesize": self.font, "axes.labelsize": self.font,
                "xtick.labelsize": self.small, "ytick.labelsize": self.small, "legend.fontsize": self.small,
                "figure.titlesize": self.title, "axes.linewidth": 0.6, "lines.linewidth": 1.0,
                "legend.frameon": False, "savefig.bbox": "standard", "figure.constrained_layout.use": True,
                "image.interpolation": "nearest", "axes.spines.top": False, "axes.spines.right": False}


STYLES = {
    # A two-column paper (IEEE/CVF, WACV's own): a column is ~3.3 in, the page ~7 in; 8-9 pt text.
    "paper": Style("paper", column=3.3, full=7.0, height=0.0, font=8.0, small=7.0, title=9.0, marker=3.2),
    # A 16:9 slide at 10 x 5.625 in (PowerPoint's and Beamer's 16:9 scale to it): text read from the back.
    "slide": Style("slide", column=10.0, full=10.0, height=5.625, font=14.0, small=12.0, title=16.0, marker=6.0),
}


def get(name: str) -> Style:
    if name not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}; got {name!r}")
    return STYLES[name]


@contextlib.contextmanager
def using(style: Style) -> Iterator[None]:
    """Draw and save inside this block: the style's rcParams apply to what is made and saved."""
    with matplotlib.rc_context(style.params()):
        yield


def new(style: Style, width: str = "column", aspect: float = 0.75) -> Figure:
    return Figure(figsize=style.size(width, aspect), layout="constrained")


def save(fig: Figure, stem: Path, dpi: int, formats: Sequence[str] = FORMATS, png_colours: int = 0) -> list[Path]:
    """`stem`.pdf/.svg/.png (PNG at `dpi`; the vector files carry the photo at its own pixels).
    No creation date is written, so the same figure gives the same vector files. png_colours: a
    palette PNG of at most this many colours (about a third of the bytes: a README, a web page);
    0 keeps full colour."""
    out = []
    images = [im for ax in fig.axes for im in ax.get_images()]
    drawn = [im.get_interpolation() for im in images]
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)
        for im, how in zip(images, drawn):   # vector files: each picture's own pixels, the viewer scales them
            im.set_interpolation("none" if fmt in ("pdf", "svg") else how)
        fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata)
        if fmt == "png" and png_colours:
            with Image.open(path) as img:
                small = img.convert("RGB").quantize(png_colours, method=Image.Quantize.MEDIANCUT,
                                                    dither=Image.Dither.NONE)
            small.save(path, optimize=True, dpi=(dpi, dpi))
        out.append(path)
    return out


def rgb(colour: tuple[int, int, int], alpha: float = 1.0) -> tuple[float, float, float, float]:
    return (colour[0] / 255, colour[1] / 255, colour[2] / 255, alpha)


def photo_axes(ax, photo, grid: tuple[int, int], alpha: float = 1.0) -> None:
    """The photo under axes spanning the patch grid, one unit per patch (patch p = r * g_w + c
    centred at (c + 0.5, r + 0.5)), y pointing down, no ticks."""
    gh, gw = grid
    ax.imshow(np.asarray(photo.convert("RGB")), extent=(0, gw, gh, 0), interpolation="bilinear", alpha=alpha)
    ax.set_xlim(0, gw)
    ax.set_ylim(gh, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def centres(ids: Sequence[int], grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the patch centres of original patch ids (>= 0)."""
    a = np.asarray(ids, dtype=np.int64)
    return a % grid[1] + 0.5, a // grid[1] + 0.5
