"""The plotly figures in a real browser: scripts/plots_demo.py served on a free loopback port,
driven by headless Debian Chromium through Python Playwright.

Hovers a token of the layer walk and reads its selection score in the hover label, scrubs
the block slider and checks that no request reached the server meanwhile, presses Play and
sees the slider advance (again without a request), hovers a published point of the
trade-off chart. Screenshots go to artifacts/ (gitignored). Skips where /usr/bin/chromium is
absent; never downloads a browser.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed"),
]
playwright_api = pytest.importorskip("playwright.sync_api")

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
TIMEOUT_MS = 60_000
sys.path.insert(0, str(ROOT / "scripts"))

from conftest import free_port  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    from plots_demo import build_demo
    built = build_demo()
    port = free_port()
    built.blocks.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield built, f"http://127.0.0.1:{port}/"
    finally:
        built.blocks.close()


@pytest.fixture(scope="module")
def page(demo):
    ARTIFACTS.mkdir(exist_ok=True)
    _, url = demo
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="domcontentloaded", timeout=TIMEOUT_MS)
        page.errors = errors
        yield page
        browser.close()


WALK = "#gtp-walk .js-plotly-plot"
TRADEOFF = "#gtp-tradeoff-plot .js-plotly-plot"


def point_on_page(page, plot: str, x: float, y: float, xaxis: str = "xaxis", yaxis: str = "yaxis") -> tuple[float, float]:
    """Page coordinates of data point (x, y) on the plot's axes (through plotly's own axes)."""
    return page.evaluate(
        """([sel, x, y, xname, yname]) => {
            const gd = document.querySelector(sel);
            const xa = gd._fullLayout[xname], ya = gd._fullLayout[yname];
            const box = gd.getBoundingClientRect();
            return [box.left + xa._offset + xa.l2p(x), box.top + ya._offset + ya.l2p(y)];
        }""", [plot, x, y, xaxis, yaxis])


def hover_text(page, plot: str) -> str:
    page.wait_for_selector(f"{plot} .hoverlayer .hovertext", timeout=TIMEOUT_MS)
    return page.locator(f"{plot} .hoverlayer .hovertext").first.text_content()


def active_step(page) -> int:
    return page.evaluate(f"() => document.querySelector('{WALK}').layout.sliders[0].active || 0")


def visible_block(page) -> int:
    """The block whose token traces are visible now (from the traces' meta)."""
    return page.evaluate(f"""() => {{
        const gd = document.querySelector('{WALK}');
        const shown = gd.data.filter(t => t.meta && t.meta.role === 'candidates' && t.visible !== false);
        return shown.length === 1 ? shown[0].meta.block : -1;
    }}""")


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"plots_{name}.png"), full_page=True)


def test_layer_walk_and_tradeoff_in_the_browser(demo, page):
    built, url = demo
    rec = built.trace
    page.wait_for_selector(f"{WALK} .slider-container", timeout=TIMEOUT_MS)
    page.wait_for_selector(f"{TRADEOFF} .scatterlayer", timeout=TIMEOUT_MS)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    # Hover a token propagated in block 1: its label gives its score, as the trace has it.
    layer = rec.layers[0]
    pid = layer.propagated[0, 0].item()
    score = layer.score[0, layer.candidates[0].tolist().index(pid)].item()
    gw = rec.grid_size[1]
    page.mouse.move(*point_on_page(page, WALK, pid % gw + 0.5, pid // gw + 0.5))
    text = hover_text(page, WALK)
    assert f"patch {pid} (row {pid // gw}, col {pid % gw})" in text
    assert "block 1: propagated in this block" in text
    shown = float(re.search(r"selection score ([-0-9.e+]+)", text).group(1))
    assert shown == pytest.approx(score, rel=1e-3)
    shot(page, "1_hover_token")

    # Scrub the slider: the blocks change, the server hears nothing.
    rail = page.locator(f"{WALK} .slider-rail-rect").first.bounding_box()
    y = rail["y"] + rail["height"] / 2
    page.mouse.move(rail["x"] + 2, y)
    page.mouse.down()
    for frac in (0.2, 0.45, 0.7, 0.99):
        page.mouse.move(rail["x"] + rail["width"] * frac, y, steps=5)
    page.mouse.up()
    page.wait_for_function(f"() => document.querySelector('{WALK}').layout.sliders[0].active === 11", timeout=TIMEOUT_MS)
    page.wait_for_function(f"""() => {{ const gd = document.querySelector('{WALK}');   // plotly applies a step just after moving the slider
        const shown = gd.data.filter(t => t.meta && t.meta.role === 'candidates' && t.visible !== false);
        return shown.length === 1 && shown[0].meta.block === 11; }}""", timeout=TIMEOUT_MS)
    page.mouse.click(rail["x"] + rail["width"] * 0.27, y)   # step 4 of 12 is at 3/11 of the rail
    page.wait_for_function(f"() => document.querySelector('{WALK}').layout.sliders[0].active === 3", timeout=TIMEOUT_MS)
    page.wait_for_function(f"""() => {{ const gd = document.querySelector('{WALK}');   // plotly applies a step just after moving the slider
        const shown = gd.data.filter(t => t.meta && t.meta.role === 'candidates' && t.visible !== false);
        return shown.length === 1 && shown[0].meta.block === 3; }}""", timeout=TIMEOUT_MS)
    shot(page, "2_scrubbed_block4")
    assert requests == [], f"scrubbing asked the server: {requests}"

    # Play: the slider advances by itself, still without a request.
    start = active_step(page)
    page.locator("#gtp-play").click()
    page.wait_for_function(f"() => (document.querySelector('{WALK}').layout.sliders[0].active || 0) >= {start + 2}",
                           timeout=TIMEOUT_MS)
    shown_and_step = page.evaluate(f"""() => {{   // read in one instant: playing moves both
        const gd = document.querySelector('{WALK}');
        const shown = gd.data.filter(t => t.meta && t.meta.role === 'candidates' && t.visible !== false);
        return [shown.length === 1 ? shown[0].meta.block : -1, gd.layout.sliders[0].active || 0];
    }}""")
    assert shown_and_step[0] == shown_and_step[1]
    page.locator("#gtp-play").click()  # pause
    page.wait_for_timeout(800)   # the page runs the button's script after the click: one tick may land
    paused = active_step(page)
    page.wait_for_timeout(1500)
    assert active_step(page) == paused
    shot(page, "3_played")
    assert requests == [], f"playing asked the server: {requests}"

    # Hover the published DeiT-S point of the trade-off chart.
    full = next(r for r in built.tradeoff.data if r.meta and r.meta.get("role") == "published")
    page.locator(TRADEOFF).scroll_into_view_if_needed()
    page.mouse.move(*point_on_page(page, TRADEOFF, full.x[0], full.y[0]))
    text = hover_text(page, TRADEOFF)
    assert "published: Xu et al." in text and f"{full.x[0]:.2f} GMACs" in text and f"top-1 {full.y[0]:.2f}" in text
    shot(page, "4_tradeoff_hover")
    assert not page.errors, page.errors
    # the request log does hear the page talk to the server (so the empty logs above mean something)
    page.evaluate("(url) => fetch(url + 'config')", url)
    page.wait_for_timeout(500)
    assert any(r.endswith("/config") for r in requests), requests
