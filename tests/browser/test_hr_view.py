"""The node's HR view in headless Chromium, against a real node: SQLite store with a synthetic
480-person company and plans in every stage, a privacy ledger, an API keys file, an imported
signed report, the node's app under uvicorn on 127.0.0.1.

An HR analyst signs in with the keyboard, releases and reads the risk profile (a suppressed cell
shown as the word "suppressed"), a crossed view, the programme's uptake and the report's HR
summary, and signs out; an underwriter key is refused; a page on another origin that posts to
the node with the analyst's cookie is refused and releases nothing.
"""

from __future__ import annotations

import http.server
import threading

import pytest

from tests.web_node import Served, build_node

A11Y = """() => {
  const unlabelled = [...document.querySelectorAll('input:not([type=hidden]), textarea, select')]
    .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'));
  return {lang: document.documentElement.lang, main: !!document.querySelector('main'),
          h1: document.querySelectorAll('h1').length, unlabelled: unlabelled.length,
          wide: document.documentElement.scrollWidth > window.innerWidth};
}"""


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = build_node(tmp_path_factory.mktemp("hrnode"))
    served = Served(n.app())
    try:
        yield n, served.url
    finally:
        served.stop()


def _accessible(page) -> None:
    a = page.evaluate(A11Y)
    assert a == {"lang": "en", "main": True, "h1": 1, "unlabelled": 0, "wide": False}, a


def _sign_in(page, url: str, key: str) -> None:
    page.goto(f"{url}/hr/")
    assert page.url.endswith("/hr/login")
    page.wait_for_selector("#api_key:focus")  # the key field has the focus: keyboard only
    page.keyboard.type(key)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def test_hr_signs_in_reads_every_page_and_signs_out(node, page, shot) -> None:
    n, url = node
    _sign_in(page, url, n.uw_key)
    assert "not an HR key" in page.inner_text("#login-error")
    _accessible(page)
    shot(page, "login-refused-underwriter")
    assert [e for e in page.console_errors if "status of 401" not in e] == []  # the refusal is a 401
    page.console_errors.clear()

    page.fill("#api_key", n.hr_key)
    page.click("button[type=submit]")
    assert page.url.endswith("/hr/")
    assert "not been released" in page.inner_text("main")
    _accessible(page)
    shot(page, "profile-unreleased")
    page.click("text=Release this breakdown")
    suppressed = page.locator("td.suppressed")
    assert suppressed.count() > 0
    assert all(t.startswith("suppressed") for t in suppressed.all_inner_texts())  # never 0 or blank
    assert page.locator("svg.chart rect").count() > 0
    _accessible(page)
    shot(page, "profile-department")

    page.click("text=Department × age band")
    page.click("text=Release this breakdown")
    assert page.locator("td.suppressed").count() > 0
    _accessible(page)
    shot(page, "profile-department-age")

    page.click("nav[aria-label=Main] >> text=Programme uptake")
    page.click("text=Release current figures")
    kpis = page.inner_text(".kpis")
    assert "people with a plan" in kpis and "completed an item" in kpis
    assert page.locator("table td.suppressed").count() > 0
    _accessible(page)
    shot(page, "programme")

    page.click("nav[aria-label=Main] >> text=Evidence report")
    assert "For HR, management and ESG reporting" in page.inner_text("main")
    assert "533 people who received the intervention" in page.inner_text("main")
    _accessible(page)
    shot(page, "evidence")

    page.click("text=Sign out")
    assert page.url.endswith("/hr/login?why=out")
    page.goto(f"{url}/hr/programme")
    assert page.url.endswith("/hr/login")
    assert page.console_errors == []


class _Evil(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = (
            '<!doctype html><html lang="en"><body><main><form id="f" method="post" '
            f'action="{self.target}/hr/release"><input name="by" value="job_type">'
            '<input name="csrf" value="guess"></form><script>document.getElementById("f").submit()'
            "</script></main></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_page_on_another_origin_cannot_post_with_the_analysts_cookie(node, page, shot) -> None:
    n, url = node
    _sign_in(page, url, n.hr_key)
    assert page.url.endswith("/hr/")
    spent = n.ledger.state().spent
    _Evil.target = url
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Evil)  # same site, other origin
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{evil.server_port}/")
        page.wait_for_url(f"{url}/hr/release")
        assert "did not come from this server" in page.inner_text("main")
        shot(page, "csrf-refused")
    finally:
        evil.shutdown()
    assert n.ledger.state().spent == spent  # nothing was released or charged
    page.goto(f"{url}/hr/?by=job_type")
    assert "not been released" in page.inner_text("main")
