"""`python -m gtp figure` and the static figures (gtp/figures): the files open and are vector with
text kept as text, each view draws what the run recorded, the plots of `bench --plot`, the app's
"Download figures", and matplotlib stays out of `import gtp` and the app's start-up."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gtp import cli, facts
from gtp.figures import Choice, command, draw, write_all
from gtp.figures import style as S

from conftest import ROOT, small_vit

CAT = str(ROOT / "assets" / "chelsea.png")
TINY = "deit_tiny_patch16_224"
DPI = 50
SVG = "{http://www.w3.org/2000/svg}"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """(output folder, the run the command drew): `python -m gtp figure` once, in paper style."""
    out = tmp_path_factory.mktemp("figs")
    seen = []
    collect = command.collect
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(command, "collect", lambda *a, **k: seen.append(collect(*a, **k)) or seen[-1])
        assert cli.main(["figure", CAT, "--model", TINY, "--out", str(out), "--style", "paper", "--dpi", str(DPI),
                         "--block", "3", "--head", "1", "--token", "40"]) == 0
    return out, seen[0]


def svg_texts(path: Path) -> list[str]:
    return ["".join(t.itertext()) for t in ET.parse(path).getroot().iter(f"{SVG}text")]


def test_the_command_writes_five_figures_that_open(figures):
    out, run = figures
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"figure_{v}.{f}" for v in ("walk", "graphs", "attention", "compare", "tradeoff")
                           for f in ("pdf", "svg", "png"))
    for pdf in out.glob("*.pdf"):
        data = pdf.read_bytes()
        assert data.startswith(b"%PDF-") and b"/FontFile2" in data    # TrueType fonts embedded (Type 42)
        assert b"/Type3" not in data and b"/CreationDate" not in data
    for svg in out.glob("*.svg"):
        assert ET.parse(svg).getroot().tag == f"{SVG}svg"
    widths = {"walk": 7.0, "compare": 7.0, "graphs": 3.3, "attention": 3.3, "tradeoff": 3.3}  # paper: page / column
    for view, inches in widths.items():
        with Image.open(out / f"figure_{view}.png") as img:
            assert img.size[0] == round(inches * DPI) and img.size[1] > 0.3 * img.size[0]


def test_the_walk_grid_has_one_panel_per_block_and_its_text_is_text(figures):
    out, run = figures
    depth = len(run.trace.layers)
    root = ET.parse(out / "figure_walk.svg").getroot()
    panels = [g for g in root.iter(f"{SVG}g") if g.get("id", "").startswith("axes_")
              and any(True for _ in g.iter(f"{SVG}image"))]
    assert depth == 12 and len(panels) == depth
    texts = svg_texts(out / "figure_walk.svg")
    assert [t for t in texts if t.startswith("block ")] == [f"block {b}" for b in range(1, depth + 1)]
    assert "propagated in this block" in texts
    assert 'id="DejaVuSans-' not in (out / "figure_walk.svg").read_text()   # no text drawn as glyph paths
    assert f"Block 3, head 1: {run.trace.layers[2].tokens_in} tokens" in svg_texts(out / "figure_attention.svg")
    assert "The graphs of patch 40 (row 2, col 12)" in svg_texts(out / "figure_graphs.svg")


def _marked(ax, colour) -> set[tuple[float, float]]:
    """Centres of the scatter points of one colour in a panel."""
    out = set()
    for coll in ax.collections:
        faces = coll.get_facecolors()
        if len(faces) and np.allclose(faces[0][:3], S.rgb(colour)[:3]):
            out |= {(float(x), float(y)) for x, y in coll.get_offsets()}
    return out


def test_each_walk_panel_marks_what_its_block_did(figures):
    _, run = figures
    with S.using(S.get("paper")):
        fig = draw("walk", run, "paper")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    grid = run.trace.grid_size
    for b, (ax, layer) in enumerate(zip(panels, run.trace.layers)):
        assert ax.get_title() == f"block {b + 1}"
        sent = {(p % grid[1] + 0.5, p // grid[1] + 0.5) for p in layer.propagated[0].tolist()}
        got = {(p % grid[1] + 0.5, p // grid[1] + 0.5) for p in layer.edges[0].dst.tolist()}
        assert _marked(ax, facts.COLOURS["propagated"]) == sent and len(sent) == 8
        assert _marked(ax, facts.COLOURS["received"]) == got


def test_compare_reads_each_methods_record_and_slide_is_16_9(figures):
    _, run = figures
    with S.using(S.get("slide")):
        fig = draw("compare", run, "slide")
        assert tuple(fig.get_size_inches()) == (10.0, 5.625)
        maps = [ax.get_images()[1].get_array() for ax in fig.axes if len(ax.get_images()) == 2]
    assert len(maps) == len(run.removed) == 3
    for z, (name, blocks) in zip(maps, run.removed.items()):
        for b, record in enumerate(blocks):
            for pid in record.removed:
                assert z.ravel()[pid] == b + 1, (name, b, pid)
        assert int(np.isfinite(z.filled(np.nan)).sum()) == sum(len(r.removed) for r in blocks)


def test_bad_choices_are_refused_with_a_message(figures, capsys, monkeypatch, tmp_path):
    _, run = figures
    monkeypatch.setattr(command, "collect", lambda *a, **k: run)
    assert cli.main(["figure", CAT, "--model", TINY, "--out", str(tmp_path), "--block", "13"]) == 2
    assert "--block must be from 1 to 12" in capsys.readouterr().err
    assert cli.main(["figure", CAT, "--model", TINY, "--out", str(tmp_path), "--dpi", "5"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_bench_plot_draws_the_ratios_and_their_spread(tmp_path):
    from gtp.figures.results import bench_figure, plot_bench
    from gtp.measure import bench
    from gtp.methods import method_fn
    result = bench.benchmark(small_vit(), {"full": method_fn("full"), "gtp": method_fn("gtp", 4)}, batch_sizes=(1, 2),
                             img_size=64, repeats=3, warmup=0, log=lambda line: None)
    with S.using(S.get("paper")):
        ax = bench_figure(result).axes[0]
    bars = [p.get_height() for p in ax.patches]
    assert bars == pytest.approx([r["speedup"][m] for m in ("full", "gtp") for r in result["runs"]])
    whiskers = [c for c in ax.collections if c.get_segments() and len(c.get_segments()) == 2]
    for coll, name in zip(whiskers, ("full", "gtp")):
        for seg, r in zip(coll.get_segments(), result["runs"]):
            spread, mid = r["per_round_speedup"][name], r["speedup"][name]
            assert seg[:, 1] == pytest.approx([min(spread["q1"], mid), max(spread["q3"], mid)])
    assert plot_bench(result, tmp_path / "bench.svg").read_text().count("<svg") == 1
    with pytest.raises(ValueError, match=r"\.pdf, \.svg or \.png"):
        plot_bench(result, tmp_path / "bench.jpg")


def test_app_download_figures_zips_the_pages_run(monkeypatch):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.core import inference
    from app.core.settings import make_settings
    from app.ui import handlers as H
    state = next(iter(H.run(CAT, make_settings(TINY, None, ""))))["state"]
    drawn = []
    import gtp.figures as F
    monkeypatch.setattr(F, "write_all", lambda run, *a, **k: drawn.append((run, a, k)) or write_all(run, *a, **k))
    path = H.download_figures(state, attn_block=2, head=1, token=98)["figures_file"]
    run, args, kwargs = drawn[0]
    done = inference.compared(state)
    assert run.trace is done.trace and run.photo is done.model_input               # the page's run, not a new one
    assert {m: list(b) for m, b in run.removed.items()} == {m.method: list(m.blocks) for m in done.comparison.methods}
    assert args[1:] == ("paper", 150, Choice(1, 1, 98)) and kwargs["formats"] == ("pdf", "png")   # the view on the page
    with zipfile.ZipFile(path) as z:
        names = sorted(z.namelist())
        assert names == sorted(f"figure_{v}.{f}" for v in ("walk", "graphs", "attention", "compare", "tradeoff")
                               for f in ("pdf", "png"))
        assert all(z.read(n).startswith(b"%PDF-") for n in names if n.endswith(".pdf"))
    with pytest.raises(Exception, match="Run a photo first"):
        H.download_figures(None)


def test_matplotlib_is_not_imported_by_gtp_or_the_apps_start_up():
    code = ("import sys, os; os.environ['HF_HUB_OFFLINE'] = '1'; import gtp, gtp.cli; gtp.cli.build_parser(); "
            "assert 'matplotlib' not in sys.modules, 'gtp'; "
            "from app.ui.layout import create_app; create_app(); "
            "assert 'matplotlib' not in sys.modules, 'app'; "
            "import gtp.figures.walk; assert 'matplotlib' in sys.modules; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
