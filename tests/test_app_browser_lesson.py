"""The lesson and the links in a real browser (headless Debian Chromium, Playwright), on one app
launched for this module: a link opens its photo, setting, tab and block; "Copy link" reproduces
a changed setting in a fresh browser context; the lesson is walked with Next and Back, each step
showing a figure of the current run with the patch its text names highlighted; a refused weights
file leaves the upload box. Skips where
/usr/bin/chromium is absent; never downloads a browser."""
from __future__ import annotations

import os
import re

import pytest

from test_app_browser import (ARTIFACTS, CHROMIUM, MODEL_TIMEOUT_MS, VIEW_TIMEOUT_MS, WALK, plot_eval,
                              visible_block)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")]
pytest.importorskip("playwright.sync_api")   # the whole module skips where Playwright is absent

from app.core.inference import runs  # noqa: E402
from app.core.settings import make_settings  # noqa: E402
from app.ui import lesson as L  # noqa: E402
from app.views.base import RUN_TAG_CHARS  # noqa: E402

LINK_FIELD = "#gtp-link textarea, #gtp-link input"
HIGHLIGHTED = re.compile(r"Highlighted in green: patch (\d+) \(row \d+, col \d+\)")


def open_page(browser, link: str):
    """A fresh browser context (no shared state) on `link`; page errors collected in `page.errors`."""
    page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(link, wait_until="domcontentloaded", timeout=60_000)
    return page


def run_of(size: tuple[int, int], **hp):
    """The server's run (this process) of the photo of this size with the default model and these
    hyper-parameters (the others published)."""
    settings = make_settings(**hp)
    return next(e for e in runs() if tuple(e.photo_size) == size and e.settings == settings)


def walk_run(page) -> str:
    return plot_eval(page, "gtp-walk", "return gd && gd.layout.meta ? gd.layout.meta.run : null;")


def wait_walk(page, block: int, other_than: str = "") -> None:
    """The layer walk drawn, at `block` (0-based), for a run other than `other_than`."""
    page.wait_for_function(
        f"""([block, old]) => {{ const gd = document.querySelector('{WALK}');
            return gd && gd.data && gd.layout.meta && gd.layout.meta.run !== old
                   && (gd.layout.sliders[0].active || 0) === block; }}""", arg=[block, other_than],
        timeout=MODEL_TIMEOUT_MS)


def selected_tab(page) -> str:
    return page.locator("button[role=tab][aria-selected=true]").inner_text().strip()


def test_a_link_opens_its_view_and_copy_link_reproduces_it(browser, url):
    page = open_page(browser, url + "?example=2&num_prop=16&tab=layers&block=5")
    page.wait_for_function("() => (document.querySelector('#gtp-status') || {innerText: ''}).innerText"
                           ".includes('600 × 400')", timeout=MODEL_TIMEOUT_MS)   # photo 2: coffee.png
    wait_walk(page, 4)
    assert selected_tab(page) == "Layer walk" and visible_block(page) == 4
    assert page.locator("#gtp-hp-num_prop input[type=number]").input_value() == "16"
    caption = plot_eval(page, "gtp-walk", "return gd.layout.annotations[0].text;")
    assert caption.startswith("block 5/12: 16 propagated")
    assert walk_run(page) == run_of((600, 400), num_prop=16).key[:RUN_TAG_CHARS]

    # Change two settings (each reruns), then copy the link.
    before = walk_run(page)
    page.locator("#gtp-hp-graph input").click()
    page.get_by_role("option", name="semantic", exact=True).click()
    wait_walk(page, 4, other_than=before)
    before = walk_run(page)
    page.locator("#gtp-hp-token_scale input[type=checkbox]").click()
    wait_walk(page, 4, other_than=before)
    changed = run_of((600, 400), num_prop=16, graph="semantic", token_scale=False)
    assert walk_run(page) == changed.key[:RUN_TAG_CHARS]
    page.locator("#gtp-copy-link").click()
    page.wait_for_function(f"() => document.querySelector('{LINK_FIELD}').value.includes('?')",
                           timeout=VIEW_TIMEOUT_MS)
    link = page.locator(LINK_FIELD).first.input_value()
    assert link.startswith(url) and "example=2" in link and "num_prop=16" in link and "block=5" in link
    assert not page.errors, page.errors

    # The link, in a fresh browser context: the same photo, settings, tab and block.
    again = open_page(browser, link)
    again.wait_for_function("() => (document.querySelector('#gtp-status') || {innerText: ''}).innerText"
                            ".includes('600 × 400')", timeout=MODEL_TIMEOUT_MS)
    wait_walk(again, 4)
    assert walk_run(again) == changed.key[:RUN_TAG_CHARS]   # the very run of the first page, from the cache
    assert selected_tab(again) == "Layer walk" and visible_block(again) == 4
    assert again.locator("#gtp-hp-num_prop input[type=number]").input_value() == "16"
    assert again.locator("#gtp-hp-graph input").input_value() == "semantic"
    assert not again.locator("#gtp-hp-token_scale input[type=checkbox]").is_checked()
    again.screenshot(path=str(ARTIFACTS / "browser_link_reopened.png"), full_page=True)
    assert not again.errors, again.errors


def _step_shown(page, step: int, run_key: str) -> tuple[str, list[int]]:
    """Wait for lesson step `step` with its figure of this run; (its text, the highlighted patches)."""
    page.wait_for_function(
        "([step, title]) => { const c = document.querySelector('#gtp-lesson-counter');"
        "  const md = document.querySelector('#gtp-lesson-md');"
        "  return c && c.innerText.includes(`Step ${step} of 7`) && md && md.innerText.includes(`${step}. ${title}`); }",
        arg=[step, L.TITLES[step - 1]], timeout=MODEL_TIMEOUT_MS)
    last = step == L.NUM_STEPS   # the trade-off chart: the model's, not the photo's; the others: this run's
    plot_ready = ("return gd && gd.data && gd.data.some(t => t.meta && t.meta.role === 'measured');" if last else
                  f"return gd && gd.data && gd.layout.meta && gd.layout.meta.run === '{run_key}'"
                  " && gd.data.some(t => t.meta && t.meta.role === 'highlight');")
    page.wait_for_function(f"() => {{ const gd = document.querySelector('#gtp-lesson-plot .js-plotly-plot'); {plot_ready} }}",
                           timeout=VIEW_TIMEOUT_MS)
    marked = plot_eval(page, "gtp-lesson-plot",
                       "return gd.data.filter(t => t.meta && t.meta.role === 'highlight').map(t => t.meta.token);")
    return page.locator("#gtp-lesson-md").inner_text(), marked


def test_the_lesson_walks_forward_and_back(browser, url):
    page = open_page(browser, url + "?example=3&tab=lesson")         # rocket.jpg, 640 x 427
    page.wait_for_function("() => (document.querySelector('#gtp-status') || {innerText: ''}).innerText"
                           ".includes('640 × 427')", timeout=MODEL_TIMEOUT_MS)
    assert selected_tab(page) == "Lesson"
    exp = run_of((640, 427))                                          # the published setting
    key, token = exp.key[:RUN_TAG_CHARS], L.focus(exp).token
    forward = {}
    for step in range(1, L.NUM_STEPS + 1):
        if step > 1:
            page.locator("#gtp-lesson-next").click()
        text, marked = _step_shown(page, step, key)
        named = HIGHLIGHTED.search(text)
        if step < L.NUM_STEPS:
            assert named and marked == [int(named.group(1))] == [token], (step, marked, text)
        else:
            assert named is None and marked == [] and "GMACs" in text
        forward[step] = text
        if step == 5:
            page.screenshot(path=str(ARTIFACTS / "browser_lesson_step5.png"), full_page=True)
            # the followed patch's own edges, not the layer walk of every token
            assert plot_eval(page, "gtp-lesson-plot", "return !(gd.layout.sliders || []).length"
                             " && gd.data.some(t => t.meta && t.meta.role === 'received');")
        if step == 1:
            assert page.locator("#gtp-lesson-back").is_disabled() and page.locator("#gtp-lesson-next").is_enabled()
    assert len(set(forward.values())) == L.NUM_STEPS                 # a different text at every step
    # the last step: Next is disabled (it would lead nowhere), Back is not
    page.wait_for_function("() => document.querySelector('#gtp-lesson-next').disabled"
                           " && !document.querySelector('#gtp-lesson-back').disabled", timeout=VIEW_TIMEOUT_MS)
    assert "Step 7 of 7" in page.locator("#gtp-lesson-counter").inner_text()
    for step in range(L.NUM_STEPS - 1, 0, -1):
        page.locator("#gtp-lesson-back").click()
        text, marked = _step_shown(page, step, key)
        assert text == forward[step] and marked == [token]
    assert not page.errors, page.errors


def test_a_refused_weights_file_leaves_the_upload_box(browser, url, tmp_path):
    """A weights file the app refuses is not left listed under "Your own weights" (it would look in
    use); the message says why."""
    junk = tmp_path / "junk_weights.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"\x00" * 64)   # a header, no tensors
    page = open_page(browser, url)
    page.wait_for_function("() => (document.querySelector('#gtp-status') || {innerText: ''}).innerText.includes('Ran ')",
                           timeout=MODEL_TIMEOUT_MS)
    page.get_by_role("button", name="Your own weights").click()
    page.locator("#gtp-weights input[type=file]").set_input_files(str(junk))
    page.wait_for_function("() => document.querySelector('#gtp-weights').innerText.includes('junk_weights')",
                           timeout=VIEW_TIMEOUT_MS)   # listed while it is checked
    page.wait_for_selector(".toast-body", timeout=MODEL_TIMEOUT_MS)   # the message says why
    page.wait_for_function("() => !document.querySelector('#gtp-weights').innerText.includes('junk_weights')",
                           timeout=VIEW_TIMEOUT_MS)
