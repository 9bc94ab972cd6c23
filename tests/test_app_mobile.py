"""The app on a phone (390 x 844, an iPhone 12-14's viewport) in headless Debian Chromium: the
results come before the hyper-parameters, every tab is in sight and opens without an overflow
menu, no figure or title is wider than the screen; and a request waiting in the queue says
where it stands. Skips where /usr/bin/chromium is absent; never downloads a browser."""
from __future__ import annotations

import os
import time

import pytest

from test_app_browser import ARTIFACTS, CHROMIUM, MODEL_TIMEOUT_MS, VIEW_TIMEOUT_MS

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")]

PHONE = {"width": 390, "height": 844}
FIRST_EXAMPLE = "451 × 300"   # chelsea.png, shown on page load


def phone_page(browser, url: str):
    page = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_function(f"() => (document.querySelector('#gtp-status') || {{}}).innerText?.includes('{FIRST_EXAMPLE}')",
                           timeout=MODEL_TIMEOUT_MS)
    return page


def box(page, selector: str) -> dict:
    return page.locator(selector).first.bounding_box()


def too_wide(page) -> list:
    """What reaches past the viewport's width (the page, a drawn figure) or past its figure (a
    title, caption or legend entry), and texts of one figure written over each other."""
    return page.evaluate("""(width) => {
        const out = [];
        if (document.documentElement.scrollWidth > width) out.push(['page', document.documentElement.scrollWidth]);
        for (const gd of document.querySelectorAll('.js-plotly-plot')) {
            const b = gd.getBoundingClientRect();
            if (b.width === 0) continue;   // a tab not on view
            if (b.left < 0 || b.right > width) out.push([gd.parentElement.closest('[id]')?.id, b.left, b.right]);
            const texts = [...gd.querySelectorAll('.annotation-text, .gtitle, .legendtext')].map(
                t => [t.textContent.slice(0, 40), t.getBoundingClientRect()]).filter(([, r]) => r.width);
            for (const [text, r] of texts)
                if (r.left < b.left - 1 || r.right > b.right + 1) out.push([text, r.left, r.right]);
            for (const [i, [text, r]] of texts.entries())   // two titles or captions written over each other
                for (const [other, q] of texts.slice(i + 1))
                    if (r.left < q.right - 1 && q.left < r.right - 1 && r.top < q.bottom - 1 && q.top < r.bottom - 1)
                        out.push([text, 'over', other]);
        }
        return out;
    }""", PHONE["width"])


def test_phone_results_first_every_tab_in_sight_figures_fit(browser, url):
    from app.ui.layout import TABS
    page = phone_page(browser, url)
    page.wait_for_function("() => { const gd = document.querySelector('#gtp-tradeoff .js-plotly-plot');"
                           " return gd && gd.data && gd.data.length > 0; }", timeout=MODEL_TIMEOUT_MS)
    page.wait_for_timeout(500)   # plotly lays the figure out after its data arrives
    # A result (the prediction) comes before the hyper-parameters, and so does the status line.
    full, status, hp = box(page, "#gtp-full"), box(page, "#gtp-status"), box(page, "#gtp-hp-num_prop")
    assert status["y"] < full["y"] < hp["y"], (status, full, hp)
    assert full["y"] < PHONE["height"], "the prediction starts on the first screen"
    # Every tab is a visible button inside the screen; no "More tabs" menu; each opens.
    assert page.locator("button[aria-label='More tabs']:visible").count() == 0
    tabs = page.get_by_role("tab")
    titles = [t for t, _, _ in TABS]
    assert set(titles) <= set(tabs.all_inner_texts())
    assert too_wide(page) == []
    for title in titles:
        tab = page.get_by_role("tab", name=title, exact=True)
        b = tab.bounding_box()
        assert tab.is_visible() and b["x"] >= 0 and b["x"] + b["width"] <= PHONE["width"], (title, b)
        tab.click()
        page.wait_for_function("(t) => [...document.querySelectorAll('[role=tab]')].some("
                               "e => e.innerText.trim() === t && e.getAttribute('aria-selected') === 'true')",
                               arg=title, timeout=VIEW_TIMEOUT_MS)
        if title in ("Layer walk", "Graphs", "Attention", "Compare"):   # wait for the tab's figures
            page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some("
                                   "gd => gd.getBoundingClientRect().width > 0 && gd.data && gd.data.length && gd.offsetParent"
                                   " && !gd.closest('#gtp-tradeoff'))", timeout=MODEL_TIMEOUT_MS)
            page.wait_for_timeout(500)
        assert too_wide(page) == [], title
        page.locator("#gtp-results").screenshot(path=str(ARTIFACTS / f"phone_{title.lower().replace(' ', '_')}.png"))
    assert not page.errors, page.errors
    page.close()


def test_a_waiting_request_says_where_it_stands(browser, url, monkeypatch):
    """While one student's run holds the models, another's request shows its queue position."""
    from app.ui import handlers as H
    first, second = phone_page(browser, url), phone_page(browser, url)
    real = H.run

    calls = []

    def slow(*args, **kwargs):   # the first run holds the models' queue for a few seconds
        calls.append(args)
        if len(calls) == 1:
            time.sleep(6)
        yield from real(*args, **kwargs)
    monkeypatch.setattr(H, "run", slow)
    first.locator("#gtp-run").click()
    first.wait_for_function("() => document.querySelector('#gtp-status').innerText.match(/processing|queue/)",
                            timeout=VIEW_TIMEOUT_MS)
    second.locator("#gtp-run").click()
    second.wait_for_function("() => /queue: 1\\/\\d+/.test(document.querySelector('#gtp-status').innerText)",
                             timeout=VIEW_TIMEOUT_MS)
    second.wait_for_function("() => document.querySelector('#gtp-status').innerText.startsWith('Ran ')",
                             timeout=MODEL_TIMEOUT_MS)
    for page in (first, second):
        page.close()
