"""The app on a phone (390 x 844, an iPhone 12-14's viewport) in headless Debian Chromium: the
results come before the hyper-parameters, every tab is in sight and opens without an overflow
menu, no figure or title is wider than the screen; on a phone and a portrait tablet (768 x 1024)
no part of a figure (plot areas, legends, titles, captions, axis titles, tick labels, colour bars)
lies over another and every table fits or scrolls with its first column fixed; and a request
waiting in the queue says where it stands. Skips where /usr/bin/chromium is absent; never downloads a browser."""
from __future__ import annotations

import os
import threading

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
    """While one student's run holds the models, another's request shows its queue position. The
    first run is held by an Event this test sets, not for a guessed time."""
    from app.ui import handlers as H
    first, second = phone_page(browser, url), phone_page(browser, url)
    real = H.run
    holding, release = threading.Event(), threading.Event()
    calls = []

    def held(*args, **kwargs):   # the first run holds the models' queue until the test releases it
        calls.append(args)
        if len(calls) == 1:
            holding.set()
            release.wait(timeout=MODEL_TIMEOUT_MS / 1000)
        yield from real(*args, **kwargs)
    monkeypatch.setattr(H, "run", held)
    try:
        first.locator("#gtp-run").click()
        assert holding.wait(timeout=MODEL_TIMEOUT_MS / 1000), "the first run never started"
        second.locator("#gtp-run").click()
        second.wait_for_function("() => /queue: 1\\/\\d+/.test(document.querySelector('#gtp-status').innerText)",
                                 timeout=VIEW_TIMEOUT_MS)
        assert len(calls) == 1 and not release.is_set()   # the second waits while the first is held
    finally:
        release.set()
    second.wait_for_function("() => document.querySelector('#gtp-status').innerText.startsWith('Ran ')",
                             timeout=MODEL_TIMEOUT_MS)
    assert len(calls) == 2
    for page in (first, second):
        page.close()


# Every part of every figure on view, in page pixels: plot areas (`_fullLayout._plots`, visible
# axes only), and the texts around them: the title, paper-placed annotations (captions, panel
# titles), axis titles, each tick label, the legend and colour bars.
PARTS_JS = """() => {
    const out = [];
    for (const gd of document.querySelectorAll('.js-plotly-plot')) {
        const box = gd.getBoundingClientRect(), fl = gd._fullLayout;
        if (!box.width || !fl) continue;
        const id = gd.parentElement.closest('[id]')?.id, parts = [];
        for (const [name, sp] of Object.entries(fl._plots || {})) {
            const xa = sp.xaxis, ya = sp.yaxis;
            if (xa.visible === false || ya.visible === false) continue;
            parts.push(['area ' + name, true, box.left + xa._offset, box.top + ya._offset,
                        box.left + xa._offset + xa._length, box.top + ya._offset + ya._length]);
        }
        const add = (what, el) => { const r = el.getBoundingClientRect();
            if (r.width > 0 && r.height > 0) parts.push([what + ': ' + (el.textContent || '').slice(0, 30), false,
                                                         r.left, r.top, r.right, r.bottom]); };
        gd.querySelectorAll('.gtitle').forEach(e => add('title', e));
        gd.querySelectorAll('.legend').forEach(e => add('legend', e));
        gd.querySelectorAll('.colorbar').forEach(e => add('colour bar', e));
        gd.querySelectorAll('.infolayer g[class^="g-"][class$="title"] text').forEach(e => add('axis title', e));
        gd.querySelectorAll('g[class$="tick"] > text').forEach(e => e.closest('.colorbar') || add('tick', e));
        gd.querySelectorAll('.annotation[data-index]').forEach(e => {
            const a = fl.annotations[+e.dataset.index];
            if (a && a.xref === 'paper' && a.yref === 'paper') add('annotation', e);
        });
        out.push([id, parts]);
    }
    return out;
}"""


def overlapping(page) -> list:
    """Pairs of parts of one figure that lie over each other by more than a pixel (two plot areas,
    two texts, or a text over a plot area)."""
    found = []
    for panel, parts in page.evaluate(PARTS_JS):
        for i, (a, a_area, *r) in enumerate(parts):
            for b, b_area, *q in parts[i + 1:]:
                if r[0] < q[2] - 1 and q[0] < r[2] - 1 and r[1] < q[3] - 1 and q[1] < r[3] - 1:
                    found.append((panel, a, b))
    return found


TABLES_JS = """() => [...document.querySelectorAll('#gtp-results table')].filter(t => t.offsetParent).map(t => {
    const r = t.getBoundingClientRect(), first = t.querySelector('td');
    return {fits: t.scrollWidth <= t.clientWidth + 1, right: r.right, scrolls: getComputedStyle(t).overflowX === 'auto',
            sticky: first ? getComputedStyle(first).position === 'sticky' : true};
})"""


@pytest.mark.parametrize("size", [PHONE, {"width": 768, "height": 1024}], ids=["phone", "tablet"])
def test_no_part_of_a_figure_lies_over_another_and_tables_fit(browser, url, size):
    from app.ui.layout import TABS
    page = browser.new_page(viewport=size, is_mobile=size["width"] < 500, has_touch=size["width"] < 500)
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_function("() => !(document.querySelector('#gtp-metrics') || {innerText: 'counting'}).innerText"
                           ".match(/counting|^$/)", timeout=MODEL_TIMEOUT_MS)
    problems = {}
    for title, tab_id, _ in TABS:
        page.get_by_role("tab", name=title, exact=True).click()
        # the tab's figures drawn, each in its narrow layout where its panel is narrow
        page.wait_for_function("""() => { const shown = [...document.querySelectorAll('.js-plotly-plot')]
                .filter(gd => gd.getBoundingClientRect().width > 0);
            return shown.length > 0 && shown.every(gd => gd.data && gd._fullLayout && (!(gd.layout.meta || {}).narrow
                || gd.getBoundingClientRect().width >= gd.layout.meta.narrow.below || gd._gtpNarrowFor === gd.layout)); }""",
                               timeout=MODEL_TIMEOUT_MS)
        page.wait_for_timeout(300)   # plotly redraws just after a relayout
        tables = page.evaluate(TABLES_JS)
        cut = [t for t in tables if t["right"] > size["width"] + 1 or not (t["fits"] or (t["scrolls"] and t["sticky"]))]
        for panel, a, b in overlapping(page):
            problems.setdefault(title, []).append(f"{panel}: {a} over {b}")
        if cut:
            problems.setdefault(title, []).append(f"tables cut: {cut}")
        page.locator("#gtp-results").screenshot(path=str(ARTIFACTS / f"size{size['width']}_{tab_id}.png"))
    page.close()
    assert problems == {}, "\n".join(f"{size['width']} px, {t}: {p}" for t, ps in problems.items() for p in ps)
