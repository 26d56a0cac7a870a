"""Headless Chromium for the web console's end-to-end tests.

Playwright's Python client drives Debian's Chromium (``/usr/bin/chromium``, installed by
``deploy/browser.sh``): Playwright's own browser download needs a CDN this machine cannot reach.
The flags are those that keep Chromium from calling out to Google's hosts at every start (the
network here is closed, and those connections would fail noisily), plus ``--no-sandbox`` because
CI runs as root.

Every test in this folder gets ``page``; ``shot(page, name)`` keeps a full-page screenshot under
``test-artifacts/screenshots/`` (or ``$REHEALTH_TEST_ARTIFACTS``) so a person can look at what the
browser saw. Without Chromium the tests FAIL (never skip).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("REHEALTH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("REHEALTH_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium per test module (starting one costs ~1 s).

    Per module, not per session: while Playwright's sync API is open it keeps an asyncio loop
    running in the main thread, and every later test that calls ``asyncio.run`` (the API's
    ASGI tests in tests/unit) would fail with "cannot be called from a running event loop"."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `bash deploy/browser.sh`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser) -> Iterator[object]:
    """A fresh browser context per test: no cookie or storage leaks from one test to the next.

    A laptop-sized viewport (1366×768), the screen the issue names. Console errors are collected
    on ``page.console_errors`` so a test can assert that the page ran without a script error.
    """
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.console_errors = errors  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture()
def shot(request) -> Callable[[object, str], Path]:
    """``shot(page, "name")`` saves a full-page PNG named after the test, and returns its path."""

    def take(pg, name: str) -> Path:
        folder = ARTIFACTS / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{request.node.name}-{name}.png".replace("/", "_")
        pg.screenshot(path=str(path), full_page=True)
        return path

    return take
