"""The app in a real browser: headless Debian Chromium driven by Python Playwright.

Every view is an interactive plotly figure. Uploads a photo, hovers a published point of the
trade-off chart beside the prediction, hovers a token of the layer walk and reads its score
(checked against the server's own trace), scrubs the block slider and plays it while checking
that no request reached the server, hovers the graph, attention and compare views, measures
throughput into the chart, and looks at the dark theme. Screenshots go to artifacts/
(gitignored) for a person to look at. Skips where /usr/bin/chromium is absent;
never downloads a browser.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import ARTIFACTS, CHROMIUM, DINOV2_FILE

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed"),
]
playwright_api = pytest.importorskip("playwright.sync_api")   # the whole module skips where it is absent

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.views.base import RUN_TAG_CHARS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "assets" / "coffee.png"
MODEL_TIMEOUT_MS = 240_000   # a cold model load plus a run on a busy 2-core machine
VIEW_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def page(browser, url):
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.errors = errors
    yield page
    page.close()


WALK = "#gtp-walk .js-plotly-plot"
TRADEOFF = "#gtp-tradeoff .js-plotly-plot"


def wait_for_plot(page, elem_id: str, timeout: int = VIEW_TIMEOUT_MS) -> None:
    """Wait until the panel shows a plotly figure with at least one drawn trace."""
    page.wait_for_function(
        """(id) => { const gd = document.querySelector(`#${id} .js-plotly-plot`);
                     return gd && gd.data && gd.data.length > 0 && gd._fullLayout; }""", arg=elem_id, timeout=timeout)


def plot_eval(page, elem_id: str, body: str, arg=None):
    """Evaluate `body` (JS using gd, the panel's plotly div, and arg) in the page."""
    return page.evaluate(f"([id, arg]) => {{ const gd = document.querySelector(`#${{id}} .js-plotly-plot`); {body} }}",
                         [elem_id, arg])


def point_on_page(page, plot: str, x: float, y: float, xaxis: str = "xaxis", yaxis: str = "yaxis") -> tuple[float, float]:
    """Page coordinates of data point (x, y) on the plot's axes (through plotly's own axes)."""
    return page.evaluate(
        """([sel, x, y, xname, yname]) => {
            const gd = document.querySelector(sel);
            const xa = gd._fullLayout[xname], ya = gd._fullLayout[yname];
            const box = gd.getBoundingClientRect();
            return [box.left + xa._offset + xa.l2p(x), box.top + ya._offset + ya.l2p(y)];
        }""", [plot, x, y, xaxis, yaxis])


HOVER_TRY_MS = 2_000


def hover(page, plot: str, x: float, y: float, **axes) -> str:
    """The hover label of data point (x, y). The point's place on the page is found again on each
    try: the page may still move or redraw the plot under the pointer (a follow-up event of the
    run updating its panels on a busy machine), and a label is only drawn for a pointer that moves."""
    label = f"{plot} .hoverlayer .hovertext"
    for _ in range(VIEW_TIMEOUT_MS // HOVER_TRY_MS):
        page.mouse.move(0, 0)  # off any point first: a new hover label
        page.mouse.move(*point_on_page(page, plot, x, y, **axes))
        try:
            page.wait_for_selector(label, timeout=HOVER_TRY_MS)
            return page.locator(label).first.text_content()
        except playwright_api.TimeoutError:
            continue
    raise AssertionError(f"no hover label on {plot} at ({x}, {y}) within {VIEW_TIMEOUT_MS / 1000:.0f} s")


def active_step(page) -> int:
    return page.evaluate(f"() => document.querySelector('{WALK}').layout.sliders[0].active || 0")


def visible_block(page, with_step: bool = False):
    """The block whose token traces are visible now (from the traces' meta); with_step: and
    the slider's step, read in the same instant (while playing they move on their own)."""
    return page.evaluate(f"""() => {{
        const gd = document.querySelector('{WALK}');
        const shown = gd.data.filter(t => t.meta && t.meta.role === 'candidates' && t.visible !== false);
        const block = shown.length === 1 ? shown[0].meta.block : -1;
        return {'[block, gd.layout.sliders[0].active || 0]' if with_step else 'block'};
    }}""")


def explored(size: tuple[int, int]):
    """The app's run of the photo of this size in the published setting (from the server's run
    cache: this process, where other test files' runs of the same photo may be too)."""
    from app.core.inference import runs
    from app.core.settings import make_settings
    return next(e for e in runs() if tuple(e.photo_size) == size and e.settings == make_settings())


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"browser_{name}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _upload_and_prediction(page) -> None:
    """Upload a photo, see the top-5 beside the trade-off chart; a published point hovers its source."""
    # The page loads with the default model's weights banner and a first example explored.
    page.wait_for_function(  # chelsea.png, 451 x 300, is explored on page load
        "() => document.querySelector('#gtp-status') && "
        "document.querySelector('#gtp-status').innerText.includes('451 × 300')", timeout=MODEL_TIMEOUT_MS)
    # Upload a photo: the models run once and every panel fills.
    page.locator("#gtp-photo input[type=file]").set_input_files(str(PHOTO))
    page.wait_for_function(  # coffee.png is 600 x 400
        "() => document.querySelector('#gtp-status') && "
        "document.querySelector('#gtp-status').innerText.includes('600 × 400')", timeout=MODEL_TIMEOUT_MS)
    page.wait_for_function(  # the GMACs follow the panels (counted once per setting)
        "() => document.querySelector('#gtp-metrics') && document.querySelector('#gtp-metrics').innerText.includes('GMACs')"
        " && !document.querySelector('#gtp-metrics').innerText.includes('counting')", timeout=MODEL_TIMEOUT_MS)
    banner = page.locator("#gtp-banner").inner_text()
    assert "randomly initialised" in banner or "Weights:" in banner
    full_text = page.locator("#gtp-full").inner_text()
    # each class with its own probability; never Gradio's whole percent ("0%" for all five, random weights)
    assert len(re.findall(r"\(\d+(\.\d+)?(e-\d+)?%\)", full_text)) >= 5 and not re.search(r"(^|\s)0%", full_text), full_text

    # Prediction: the top-5 beside the trade-off chart; a published point hovers its source.
    wait_for_plot(page, "gtp-tradeoff")
    full = page.locator("#gtp-full").bounding_box()
    chart = page.locator(TRADEOFF).bounding_box()
    assert chart["x"] > full["x"] + full["width"] - 5 and chart["y"] < full["y"] + full["height"]  # beside
    point = plot_eval(page, "gtp-tradeoff", """
        const t = gd.data.find(t => t.meta && t.meta.role === 'published' && t.meta.model === 'deit_small_patch16_224');
        return t ? [t.x[0], t.y[0]] : null;""")
    assert point is not None, "the DeiT-S published point is drawn for DeiT-S"
    text = hover(page, TRADEOFF, *point)
    assert "published: Xu et al." in text and f"{point[0]:.2f} GMACs" in text and f"top-1 {point[1]:.2f}" in text
    # the published GMACs' rotated label never lies across the "GTP now" line
    crossed = plot_eval(page, "gtp-tradeoff", """
        const gtp = gd.layout.shapes.find(s => s.line && s.line.dash === 'solid');
        const box = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis;
        const x = box.left + xa._offset + xa.l2p(gtp.x0);
        return [...gd.querySelectorAll('.annotation')].filter(a => a.textContent.includes('GMACs (published'))
            .map(a => a.getBoundingClientRect()).filter(r => r.left < x && x < r.right).length;""")
    assert crossed == 0
    shot(page, "1_prediction_tradeoff_hover")


def _layer_walk(page) -> None:
    """Hover a token and read its score; scrub and play with no request to the server."""
    # Layer walk: hover a token and read its score; scrub and play with no request to the server.
    open_tab(page, "Layer walk")
    wait_for_plot(page, "gtp-walk")
    page.wait_for_selector(f"{WALK} .slider-container", timeout=VIEW_TIMEOUT_MS)
    run = explored((600, 400))
    page.wait_for_function(  # the walk of this run, not one drawn before it
        "(tag) => { const gd = document.querySelector('#gtp-walk .js-plotly-plot');"
        " return gd && gd.layout.meta && gd.layout.meta.run === tag; }",
        arg=run.key[:RUN_TAG_CHARS], timeout=VIEW_TIMEOUT_MS)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    rec = run.trace
    layer, gw = rec.layers[0], rec.grid_size[1]
    pid = layer.propagated[0, 0].item()
    score = layer.score[0, layer.candidates[0].tolist().index(pid)].item()
    text = hover(page, WALK, pid % gw + 0.5, pid // gw + 0.5)
    assert f"patch {pid} (row {pid // gw}, col {pid % gw})" in text and "block 1: propagated in this block" in text
    shown = float(re.search(r"selection score ([-0-9.e+]+)", text).group(1))
    assert shown == pytest.approx(score, rel=1e-3)
    shot(page, "2_layer_walk_hover_token")
    rail = page.locator(f"{WALK} .slider-rail-rect").first.bounding_box()
    y = rail["y"] + rail["height"] / 2
    page.mouse.move(rail["x"] + 2, y)
    page.mouse.down()
    for frac in (0.2, 0.45, 0.7, 0.99):
        page.mouse.move(rail["x"] + rail["width"] * frac, y, steps=5)
    page.mouse.up()
    page.wait_for_function(f"() => document.querySelector('{WALK}').layout.sliders[0].active === 11",
                           timeout=VIEW_TIMEOUT_MS)
    page.wait_for_function(f"""() => {{ const gd = document.querySelector('{WALK}');   // plotly applies a step just after moving the slider
        const shown = gd.data.filter(t => t.meta && t.meta.role === 'candidates' && t.visible !== false);
        return shown.length === 1 && shown[0].meta.block === 11; }}""", timeout=VIEW_TIMEOUT_MS)
    page.mouse.click(rail["x"] + rail["width"] * 0.27, y)   # step 4 of 12 is at 3/11 of the rail
    page.wait_for_function(f"() => document.querySelector('{WALK}').layout.sliders[0].active === 3",
                           timeout=VIEW_TIMEOUT_MS)
    page.wait_for_function(f"""() => {{ const gd = document.querySelector('{WALK}');   // plotly applies a step just after moving the slider
        const shown = gd.data.filter(t => t.meta && t.meta.role === 'candidates' && t.visible !== false);
        return shown.length === 1 && shown[0].meta.block === 3; }}""", timeout=VIEW_TIMEOUT_MS)
    shot(page, "3_layer_walk_scrubbed_block4")
    assert requests == [], f"scrubbing asked the server: {requests}"
    start = active_step(page)
    page.locator("#gtp-play").click()  # play: the slider advances by itself
    page.wait_for_function(f"() => (document.querySelector('{WALK}').layout.sliders[0].active || 0) >= {start + 2}",
                           timeout=VIEW_TIMEOUT_MS)
    block, step = visible_block(page, with_step=True)
    assert block == step
    page.locator("#gtp-play").click()  # pause
    page.wait_for_timeout(800)   # the page runs the button's script after the click: one tick may land
    paused = active_step(page)
    page.wait_for_timeout(1500)
    assert active_step(page) == paused
    shot(page, "4_layer_walk_played")
    assert requests == [], f"playing asked the server: {requests}"


def _graphs_and_attention(page) -> None:
    """Graph and attention views hover what they show; their controls redraw them."""
    # Graphs: hover a token for its neighbours; switch the graph.
    open_tab(page, "Graphs")
    wait_for_plot(page, "gtp-graph")
    wait_for_plot(page, "gtp-similarity")
    assert page.locator("#gtp-token input").input_value() == "105"   # row 7, col 7 of 14 x 14: the centre
    text = hover(page, "#gtp-graph .js-plotly-plot", 3.5, 2.5)   # patch 31 (row 2, col 3)
    assert "patch 31 (row 2, col 3)" in text and "spatial neighbours (8)" in text and "semantic neighbours" in text
    shot(page, "5_graphs_hover")
    page.locator("#gtp-graph-kind").get_by_text("spatial", exact=True).click()
    page.wait_for_function(  # only the spatial edges are drawn now
        "() => { const gd = document.querySelector('#gtp-graph .js-plotly-plot');"
        " return gd && gd.data.every(t => !(t.name || '').startsWith('semantic')); }", timeout=VIEW_TIMEOUT_MS)

    # Attention: before/after maps hover query, key and value; another head redraws.
    open_tab(page, "Attention")
    wait_for_plot(page, "gtp-attn")
    wait_for_plot(page, "gtp-cls")
    set_slider(page, "gtp-head", 2)
    page.wait_for_function("() => document.body.innerText.includes('Block 1, head 2')", timeout=VIEW_TIMEOUT_MS)
    text = hover(page, "#gtp-attn .js-plotly-plot", 10, 20, xaxis="xaxis2", yaxis="yaxis2")
    assert "query:" in text and "key:" in text and "after sparsification" in text
    shot(page, "6_attention_hover")


def _compare(page) -> None:
    """GTP, ToMe and pruning run once; each patch hovers when and how its token left."""
    # Compare: GTP, ToMe and pruning run once; each patch hovers when and how its token left.
    open_tab(page, "Compare")
    wait_for_plot(page, "gtp-compare-plot", timeout=MODEL_TIMEOUT_MS)
    page.wait_for_function(  # the methods' GMACs follow and agree
        "() => document.querySelector('#gtp-compare-md').innerText.includes('methods that remove tokens differ by')",
        timeout=MODEL_TIMEOUT_MS)
    text = page.locator("#gtp-compare-md").inner_text()
    assert "ToMe" in text and "Pruning" in text and "GTP" in text
    gw = explored((600, 400)).trace.grid_size[1]
    tome = explored((600, 400)).comparison.method("tome")
    pid, into = tome.removed[0][0], tome.merged_into[0][0]
    text = hover(page, "#gtp-compare-plot .js-plotly-plot", pid % gw + 0.5, pid // gw + 0.5, xaxis="xaxis2",
                 yaxis="yaxis2")
    assert f"merged in block 1 into the token of patch {into} " in text
    shot(page, "7_compare_hover")


def _throughput_learn_examples(page) -> None:
    """Throughput joins the chart, the Lesson tab, an example photo, the preset, DINOv2."""
    # Throughput, measured now, joins the trade-off chart.
    open_tab(page, "Prediction")
    page.get_by_text("Measure throughput, add your sweep results").click()
    page.locator("#gtp-measure").click()
    page.wait_for_function("() => document.body.innerText.includes('img/s')", timeout=MODEL_TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelector('#gtp-tradeoff .js-plotly-plot').data.some(t => t.meta && t.meta.role === 'throughput')",
        timeout=VIEW_TIMEOUT_MS)
    shot(page, "8_throughput")

    # Lesson: the formulas render (KaTeX) and the paper is linked.
    open_tab(page, "Lesson")
    page.wait_for_selector(".katex", timeout=VIEW_TIMEOUT_MS)
    assert page.locator("a[href='https://arxiv.org/abs/2311.03035']").count() >= 1
    page.locator("#gtp-downloads").click()
    page.wait_for_function(
        "() => document.body.innerText.includes('.gif') && document.body.innerText.includes('.json')",
        timeout=MODEL_TIMEOUT_MS)
    shot(page, "9_lesson")

    # An example photo (rocket.jpg, 640 x 427) runs like an upload.
    open_tab(page, "Prediction")
    page.locator("button.gallery-item").filter(has=page.locator("img[src$='rocket.jpg']")).click()
    page.wait_for_function(
        "() => document.querySelector('#gtp-status').innerText.includes('640 × 427')", timeout=MODEL_TIMEOUT_MS)

    # A value typed in a slider's number box runs on Enter; theta = 5 is out of bounds and the page says so.
    gmacs = "(t) => parseFloat((t.match(/GTP, ([0-9.]+) GMACs/) || [0, NaN])[1])"
    published = page.evaluate(f"() => ({gmacs})(document.querySelector('#gtp-gtp').innerText)")   # P = 8
    set_slider(page, "gtp-hp-num_prop", 4)
    page.wait_for_function(  # P = 4 leaves more tokens: more GMACs than the published P = 8's
        f"(p8) => ({gmacs})(document.querySelector('#gtp-gtp').innerText) > p8 + 0.1", arg=published,
        timeout=MODEL_TIMEOUT_MS)
    set_slider(page, "gtp-hp-sparsity", 5)
    page.wait_for_selector("#gtp-hp-sparsity .gtp-clamped", timeout=VIEW_TIMEOUT_MS)
    assert page.locator("#gtp-hp-sparsity .gtp-clamped").inner_text() == "θ (sparsity): 5 is outside 0.05 to 1; set to 1."
    # The published preset puts the controls back (the paper's P = 8, theta = 0.6) and reruns.
    page.locator("#gtp-preset").click()
    page.wait_for_function(
        "() => document.querySelector('#gtp-hp-num_prop input[type=number]').value === '8'"
        " && document.querySelector('#gtp-hp-sparsity input[type=number]').value === '0.6'", timeout=VIEW_TIMEOUT_MS)
    page.wait_for_function(  # the rerun: GTP's GMACs the published setting's again
        f"(p8) => ({gmacs})(document.querySelector('#gtp-gtp').innerText) === p8", arg=published, timeout=MODEL_TIMEOUT_MS)

    # Removing the photo: no error on any panel; the status says there is no photo.
    page.locator("#gtp-photo button[aria-label='Remove Image'], #gtp-photo button[title='Remove Image']").first.click()
    page.wait_for_function("() => document.querySelector('#gtp-status').innerText.includes('No photo')",
                           timeout=MODEL_TIMEOUT_MS)
    page.wait_for_timeout(1000)   # an error would come with the same event's answer; give the page a moment
    assert page.locator("#gtp-results .error:visible").count() == 0
    assert "Error" not in page.locator("#gtp-results").inner_text()
    assert page.locator("#gtp-full").inner_text().strip()            # the last run still on view
    page.locator("button.gallery-item").filter(has=page.locator("img[src$='rocket.jpg']")).click()
    page.wait_for_function(
        "() => document.querySelector('#gtp-status').innerText.includes('640 × 427')", timeout=MODEL_TIMEOUT_MS)

    # A headless checkpoint (the real DINOv2 weights, where present): feature similarity, no classes.
    if DINOV2_FILE.exists():
        page.locator("#gtp-model input").click()
        page.get_by_role("option", name="vit_small_patch14_dinov2", exact=False).click()
        page.wait_for_function(
            "() => { const m = document.querySelector('#gtp-backbone-md'); return m && m.innerText.includes('Cosine similarity'); }",
            timeout=MODEL_TIMEOUT_MS)
        assert "Weights:" in page.locator("#gtp-banner").inner_text()
        page.wait_for_function(  # the GMACs of this new model follow the panels
            "() => !document.querySelector('#gtp-metrics').innerText.includes('counting')",
            timeout=MODEL_TIMEOUT_MS)
        shot(page, "10_dinov2")
        open_tab(page, "Compare")  # headless: the comparison reports only the cosine of the features
        page.wait_for_function(
            "() => document.querySelector('#gtp-compare-md').innerText.includes('cosine of final features')",
            timeout=MODEL_TIMEOUT_MS)
        wait_for_plot(page, "gtp-compare-plot")
        shot(page, "11_dinov2_compare")


def test_walkthrough(page):
    _upload_and_prediction(page)
    _layer_walk(page)
    _graphs_and_attention(page)
    _compare(page)
    _throughput_learn_examples(page)
    assert not page.errors, page.errors


LOOKS_JS = """() => {
    const bg = (el) => { for (; el; el = el.parentElement) { const c = getComputedStyle(el).backgroundColor;
                                                          if (c && !c.endsWith(', 0)') && c !== 'transparent') return c; }
                         return 'rgb(255, 255, 255)'; };
    const plot = document.querySelector('#gtp-tradeoff .js-plotly-plot');
    const tick = plot.querySelector('g[class$="tick"] > text');
    return {background: bg(plot), text: getComputedStyle(document.querySelector('#gtp-metrics')).color,
            tick: getComputedStyle(tick).fill};
}"""


def luminance(colour: str) -> float:
    """Relative luminance (0 black to 1 white) of a CSS 'rgb(...)' / 'rgba(...)' colour."""
    r, g, b = (float(v) / 255 for v in re.findall(r"[\d.]+", colour)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_dark_theme(page, url):
    """The app in Gradio's dark theme: the figures' text stays readable (screenshots)."""
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    wait_for_plot(page, "gtp-tradeoff", timeout=MODEL_TIMEOUT_MS)
    light = page.evaluate(LOOKS_JS)
    page.goto(url + "?__theme=dark", wait_until="domcontentloaded", timeout=60_000)
    wait_for_plot(page, "gtp-tradeoff", timeout=MODEL_TIMEOUT_MS)
    dark = page.evaluate(LOOKS_JS)
    # the page really turned dark: a dark background behind the figures, light body text
    assert luminance(light["background"]) > 0.6 and luminance(dark["background"]) < 0.25, (light, dark)
    assert luminance(dark["text"]) > 0.6 > luminance(light["text"]), (light, dark)
    # the figures' text (mid grey, drawn on a transparent background) stands out on both
    for looks in (light, dark):
        assert abs(luminance(looks["tick"]) - luminance(looks["background"])) > 0.15, looks
    shot(page, "12_dark_prediction")
    open_tab(page, "Layer walk")
    wait_for_plot(page, "gtp-walk")
    shot(page, "13_dark_layer_walk")

