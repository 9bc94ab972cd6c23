"""The app in a real browser: headless Debian Chromium driven by Python Playwright.

Uploads a photo, waits for the models, moves the layer slider, plays the layer walk, switches
views and tabs, clicks a patch, opens the GTP / ToMe / pruning comparison, and checks every
panel shows a non-empty picture. Screenshots go
to artifacts/ (gitignored) for a person to look at. Skips where /usr/bin/chromium is absent;
never downloads a browser.
"""
from __future__ import annotations

import os
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
PHOTO = ROOT / "assets" / "coffee.png"
DINOV2_FILE = ROOT.parent / "shared" / "weights" / "vit_small_patch14_dinov2.safetensors"
MODEL_TIMEOUT_MS = 240_000   # a cold model load plus a run on a busy 2-core machine
VIEW_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def page(url):
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        page.errors = errors
        yield page
        browser.close()


def image_src(page, elem_id: str) -> str:
    """The src of the picture shown in an output gr.Image ('' when empty)."""
    img = page.locator(f"#{elem_id} img")
    return img.first.get_attribute("src") if img.count() else ""


def wait_for_image(page, elem_id: str, other_than: str = "", timeout: int = VIEW_TIMEOUT_MS) -> str:
    """Wait until the panel shows a loaded, non-empty picture (different from `other_than`)."""
    page.wait_for_function(
        """([id, old]) => {
            const img = document.querySelector(`#${id} img`);
            return img && img.src && img.src !== old && img.complete && img.naturalWidth > 50;
        }""", arg=[elem_id, other_than], timeout=timeout)
    return image_src(page, elem_id)


def click_picture(page, elem_id: str, fx: float, fy: float) -> None:
    """Click at a fraction (fx, fy) of the picture itself, not of its letterboxed <img> box."""
    img = page.locator(f"#{elem_id} img").first
    box = img.bounding_box()
    natural_w, natural_h = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    scale = min(box["width"] / natural_w, box["height"] / natural_h, 1.0)  # object-fit: scale-down
    w, h = natural_w * scale, natural_h * scale
    x0, y0 = box["x"] + (box["width"] - w) / 2, box["y"] + (box["height"] - h) / 2
    page.mouse.click(x0 + w * fx, y0 + h * fy)


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"browser_{name}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_walkthrough(page):
    # The page loads with the default model's weights banner and a first example explored.
    page.wait_for_function(  # chelsea.png, 451 x 300, is explored on page load
        "() => document.querySelector('#gtp-status') && "
        "document.querySelector('#gtp-status').innerText.includes('451 × 300')", timeout=MODEL_TIMEOUT_MS)
    # Upload a photo: the models run once and every panel fills.
    page.locator("#gtp-photo input[type=file]").set_input_files(str(PHOTO))
    page.wait_for_function(  # coffee.png is 600 x 400
        "() => document.querySelector('#gtp-status') && "
        "document.querySelector('#gtp-status').innerText.includes('600 × 400')", timeout=MODEL_TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelector('#gtp-metrics') && document.querySelector('#gtp-metrics').innerText.includes('GMACs')",
        timeout=MODEL_TIMEOUT_MS)
    banner = page.locator("#gtp-banner").inner_text()
    assert "randomly initialised" in banner or "Weights:" in banner
    assert page.locator("#gtp-full").inner_text().strip()
    shot(page, "1_prediction")

    # Layer walk: a picture per panel; the slider changes the picture without rerunning.
    open_tab(page, "Layer walk")
    first = wait_for_image(page, "gtp-layer")
    wait_for_image(page, "gtp-sizes")
    wait_for_image(page, "gtp-tokens")
    set_slider(page, "gtp-block", 6)
    sixth = wait_for_image(page, "gtp-layer", other_than=first)
    assert sixth != first
    shot(page, "2_layer_walk_block6")
    page.locator("#gtp-play").click()  # play advances the block by itself
    wait_for_image(page, "gtp-layer", other_than=sixth, timeout=VIEW_TIMEOUT_MS)
    page.locator("#gtp-play").click()  # pause

    # Graphs: switch the view and click a patch to pick a token.
    open_tab(page, "Graphs")
    graph = wait_for_image(page, "gtp-graph")
    wait_for_image(page, "gtp-similarity")
    page.locator("#gtp-graph-kind").get_by_text("spatial", exact=True).click()
    spatial = wait_for_image(page, "gtp-graph", other_than=graph)
    click_picture(page, "gtp-graph", 0.1, 0.1)  # 10% in from the top left: patch (1, 1) = token 15
    page.wait_for_function("() => document.querySelector('#gtp-token input').value === '15'", timeout=VIEW_TIMEOUT_MS)
    wait_for_image(page, "gtp-graph", other_than=spatial)
    shot(page, "3_graphs")

    # Attention: before/after maps, the numbers, the CLS map; another head redraws.
    open_tab(page, "Attention")
    before = wait_for_image(page, "gtp-attn-before")
    wait_for_image(page, "gtp-attn-after")
    wait_for_image(page, "gtp-cls")
    set_slider(page, "gtp-head", 2)
    wait_for_image(page, "gtp-attn-before", other_than=before)
    assert "zeroed" in page.locator("body").inner_text()
    shot(page, "4_attention")

    # Compare: opening the tab runs GTP, ToMe and pruning once; three pictures and the numbers.
    open_tab(page, "Compare")
    shown = {m: wait_for_image(page, f"gtp-compare-{m}", timeout=MODEL_TIMEOUT_MS) for m in ("gtp", "tome", "pruning")}
    page.wait_for_function(
        "() => document.querySelector('#gtp-compare-md').innerText.includes('Same photo, same token budget')",
        timeout=MODEL_TIMEOUT_MS)
    page.wait_for_function(  # the three methods' GMACs follow and agree
        "() => document.querySelector('#gtp-compare-md').innerText.includes('GMACs of the three differ by')",
        timeout=MODEL_TIMEOUT_MS)
    text = page.locator("#gtp-compare-md").inner_text()
    assert "ToMe" in text and "Pruning" in text and "GTP" in text
    set_slider(page, "gtp-compare-block", 4)  # another block: redrawn from the cache
    for m, src in shown.items():
        wait_for_image(page, f"gtp-compare-{m}", other_than=src)
    shot(page, "5_compare")

    # Trade-off: the published chart and a throughput measurement.
    open_tab(page, "Trade-off")
    wait_for_image(page, "gtp-tradeoff")
    page.locator("#gtp-measure").click()
    page.wait_for_function("() => document.body.innerText.includes('img/s')", timeout=MODEL_TIMEOUT_MS)
    shot(page, "6_tradeoff")

    # Learn: the formulas render (KaTeX) and the paper is linked.
    open_tab(page, "Learn")
    page.wait_for_selector(".katex", timeout=VIEW_TIMEOUT_MS)
    assert page.locator("a[href='https://arxiv.org/abs/2311.03035']").count() >= 1
    page.locator("#gtp-downloads").click()
    page.wait_for_function(
        "() => document.body.innerText.includes('.gif') && document.body.innerText.includes('.json')",
        timeout=MODEL_TIMEOUT_MS)
    shot(page, "7_learn")

    # An example photo (rocket.jpg, 640 x 427) runs like an upload.
    open_tab(page, "Prediction")
    page.locator("button.gallery-item").filter(has=page.locator("img[src$='rocket.jpg']")).click()
    page.wait_for_function(
        "() => document.querySelector('#gtp-status').innerText.includes('640 × 427')", timeout=MODEL_TIMEOUT_MS)

    # The published preset puts the controls back and reruns.
    page.locator("#gtp-preset").click()
    page.wait_for_function(
        "() => document.querySelector('#gtp-metrics').innerText.includes('GMACs')", timeout=MODEL_TIMEOUT_MS)

    # A headless checkpoint (the real DINOv2 weights, where present): feature similarity, no classes.
    if DINOV2_FILE.exists():
        page.locator("#gtp-model input").click()
        page.get_by_role("option", name="vit_small_patch14_dinov2", exact=False).click()
        page.wait_for_function(
            "() => document.querySelector('#gtp-metrics').innerText.includes('cosine similarity')",
            timeout=MODEL_TIMEOUT_MS)
        assert "Weights:" in page.locator("#gtp-banner").inner_text()
        page.wait_for_function(  # the GMACs of this new model follow the panels
            "() => !document.querySelector('#gtp-metrics').innerText.includes('counting')",
            timeout=MODEL_TIMEOUT_MS)
        shot(page, "8_dinov2")
        open_tab(page, "Compare")  # headless: the comparison reports only the cosine of the features
        page.wait_for_function(
            "() => document.querySelector('#gtp-compare-md').innerText.includes('cosine of final features')",
            timeout=MODEL_TIMEOUT_MS)
        for m in ("gtp", "tome", "pruning"):
            wait_for_image(page, f"gtp-compare-{m}")
        shot(page, "9_dinov2_compare")
    assert not page.errors, page.errors
