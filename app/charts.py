"""The charts: tokens per block (PIL, redrawn on every slider move), the layer-walk GIF, and
the top-1 vs GMACs trade-off (matplotlib, Agg, no pyplot state: safe across threads).

Text from users (sweep method names) is shown as text: `$` is escaped so matplotlib never
parses it as mathtext, and at most `MAX_SWEEP_SERIES` series are drawn.
"""
from __future__ import annotations

from typing import Optional, Sequence

from PIL import Image, ImageDraw

from . import draw as D
from .figures import layer_frame
from .results import Exploration

MAX_SWEEP_SERIES = 12   # distinct method names drawn from a sweep file (each costs ~7 ms to draw)


def _plain(text: object) -> str:
    """User text for a matplotlib label: never mathtext."""
    return str(text).replace("$", r"\$")[:80]


def tokens_chart(exp: Exploration, block: int, width: int = 460, height: int = 230) -> Image.Image:
    """Bar chart of the tokens (prefix included) leaving each block, measured in this run;
    `block` in red. Drawn with PIL: it is redrawn on every slider move and must be cheap."""
    return D.cached(exp, ("tokens", block, width, height), lambda: _draw_tokens_chart(exp, block, width, height))


def _draw_tokens_chart(exp: Exploration, block: int, width: int, height: int) -> Image.Image:
    counts = exp.trace.tokens_per_block()
    start = exp.trace.layers[0].tokens_in
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 46, width - 10, 26, height - 34
    draw.text((width // 2, 4), "Tokens remaining per block (measured, this photo)", fill=(0, 0, 0),
              font=D.font(13), anchor="ma")
    y_max = start * 1.1

    def y_of(v: float) -> float:
        return bottom - (bottom - top) * v / y_max

    for tick in (0, start // 2, start):  # y axis with three ticks
        y = y_of(tick)
        draw.line([(left - 4, y), (right, y)], fill=(225, 225, 225))
        draw.text((left - 6, y), str(tick), fill=(60, 60, 60), font=D.font(11), anchor="rm")
    draw.line([(left, y_of(start)), (right, y_of(start))], fill=(150, 150, 150), width=1)
    slot = (right - left) / len(counts)
    for i, c in enumerate(counts):
        x0 = left + i * slot + slot * 0.15
        colour = (214, 39, 40) if i == block else (31, 119, 180)
        draw.rectangle((x0, y_of(c), x0 + slot * 0.7, bottom), fill=colour)
        draw.text((x0 + slot * 0.35, bottom + 3), str(i + 1), fill=(60, 60, 60), font=D.font(11), anchor="ma")
        if i == block:
            draw.text((x0 + slot * 0.35, y_of(c) - 2), str(c), fill=colour, font=D.font(11), anchor="md")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0))
    draw.text(((left + right) // 2, height - 4), f"block (tokens entering block 1: {start})", fill=(0, 0, 0),
              font=D.font(12), anchor="md")
    return img


def animation_gif(exp: Exploration, path: str, side: int = 336, ms_per_frame: int = 800) -> str:
    """The layer walk as an animated GIF at `path` (one frame per block); returns the path."""
    frames = [layer_frame(exp, b).resize((side, side), Image.Resampling.BILINEAR) for b in range(exp.depth)]
    frames = [f.quantize(colors=128, method=Image.Quantize.FASTOCTREE) for f in frames]  # fast
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0, optimize=False)
    return path


def tradeoff_chart(published: dict, current: Optional[dict] = None,
                   sweep: Sequence[dict] = ()) -> Image.Image:
    """ImageNet top-1 vs GMACs on DeiT-B as PUBLISHED (GTP, ToMe, EViT, ATS), the current
    configuration's GMACs measured now (vertical lines), and the user's own sweep points."""
    fig = D.figure(7.2, 4.4)
    ax = fig.add_subplot()
    styles = {"GTP": ("tab:red", "o"), "ToMe": ("tab:blue", "s"), "EViT": ("tab:green", "^"), "ATS": ("tab:purple", "D")}
    for method, (colour, marker) in styles.items():
        pts = sorted((r["gmacs"], r["top1"]) for r in published["tradeoff_deit_base"] if r["method"] == method)
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=colour, marker=marker, linewidth=1.5, markersize=5, label=f"{method} (published)")
    for base in published.get("baselines", []):
        if base["model"] == "deit_base_patch16_224":
            ax.plot([base["gmacs"]], [base["top1"]], marker="*", color="black", markersize=11, linestyle="none",
                    label="DeiT-B, no reduction (published)")
    if current is not None:
        ax.axvline(current["gtp"], color="tab:orange", linewidth=2,
                   label=f"GTP now: {current['gtp']:.2f} GMACs ({current['model']}, measured)")
        ax.axvline(current["full"], color="tab:orange", linewidth=1, linestyle=":",
                   label=f"full model now: {current['full']:.2f} GMACs (measured)")
    top1 = [r for r in sweep if r.get("top1") is not None]
    agreement = [r for r in sweep if r.get("top1") is None and r.get("agreement") is not None]
    markers = "xP+1*v"
    for i, (method, pts) in enumerate(_series(top1)):
        ax.scatter([r["gmacs"] for r in pts], [r["top1"] for r in pts], color="black", marker=markers[i % 6],
                   s=45, zorder=5, label=f"your measurements: {_plain(method)} top-1")
    if agreement:  # a different quantity: its own axis
        ax2 = ax.twinx()
        for i, (method, pts) in enumerate(_series(agreement)):
            ax2.scatter([r["gmacs"] for r in pts], [r["agreement"] for r in pts], color="tab:gray",
                        marker=markers[i % 6], s=45, label=f"your measurements: {_plain(method)} agreement")
        ax2.set_ylabel("your measurements: top-1 agreement with the full model (%)", fontsize=8)
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("ImageNet-1K top-1 (%)")
    ax.set_title(f"DeiT-B, no fine-tuning: published results ({D.CITATION})", fontsize=8)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if agreement:  # one legend for both axes
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=7, loc="lower right")
    return D.to_image(fig)


def _series(records: Sequence[dict]) -> list[tuple[str, list[dict]]]:
    """Records grouped by method name, sorted; past MAX_SWEEP_SERIES names the rest are drawn
    as one series ("N other methods"), so a file with thousands of names stays one chart."""
    by_method: dict[str, list[dict]] = {}
    for r in records:
        by_method.setdefault(str(r.get("method", "sweep")), []).append(r)
    names = sorted(by_method)
    series = [(name, by_method[name]) for name in names[:MAX_SWEEP_SERIES]]
    rest = names[MAX_SWEEP_SERIES:]
    if rest:
        series.append((f"{len(rest)} other methods", [r for name in rest for r in by_method[name]]))
    return series
