"""The console's pages by keyboard, and in the states an operator meets when things go wrong.

No federation runs here (that is ``test_operator_console.py``): the console serves a
provisioned kit whose SuperLink is down, with three reports to check — genuine, changed after
signing, unsigned. The browser signs in with the keyboard only after one wrong password, and
each page is photographed as the operator would see it.
"""

from __future__ import annotations

import json
import re
import socket

import pytest
from playwright.sync_api import expect

from coordinator.console.cli import start_in_thread
from coordinator.console.users import UserStore
from coordinator.federation.kit_files import CoordinatorKit
from coordinator.federation.provision import FederationFile, provision
from tests.unit.test_console_reports import _signed

PASSWORD = "a long console password"


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    fed = tmp_path_factory.mktemp("console-pages")
    provision(
        FederationFile(
            name="demo", coordinator="127.0.0.1:1", sites=[{"name": "insurer_a"}, {"name": "employer_b"}]
        ),
        fed,
        passphrase=None,
    )
    genuine = _signed(CoordinatorKit(fed / "coordinator"))
    (fed / "reports").mkdir()
    (fed / "reports" / "genuine.json").write_bytes(genuine)
    (fed / "reports" / "changed.json").write_bytes(genuine.replace(b'"n_treated":', b'"n_treated":1', 1))
    (fed / "reports" / "unsigned.json").write_text(json.dumps({"report": json.loads(genuine)["report"]}))
    (fed / "studies" / "unregistered").mkdir(parents=True)
    (fed / "studies" / "unregistered" / "study.toml").write_text('[study]\nname = "x"\n')
    UserStore(fed / "console" / "users.json").add("operator", PASSWORD)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = start_in_thread(fed, f"127.0.0.1:{port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        srv.thread.join(timeout=10)


def _labelled(page) -> None:
    """Every visible form control has a <label for> naming it."""
    for field in page.locator("input:not([type=hidden]), select, textarea").all():
        ident = field.get_attribute("id")
        assert ident and page.locator(f"label[for='{ident}']").count() == 1, ident


def test_keyboard_sign_in_and_every_page_in_trouble(console, page, shot):
    page.goto(f"{console}/")
    assert "/login" in page.url
    expect(page.get_by_label("User name")).to_be_focused()  # typing can start at once
    _labelled(page)
    page.get_by_label("User name").fill("operator")
    page.get_by_label("Password").fill("not the password")
    page.keyboard.press("Enter")
    alert = page.get_by_role("alert")
    assert "Wrong user name or password" in alert.inner_text()
    shot(page, "1-login-wrong-password")
    page.get_by_label("Password").focus()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{console}/")
    assert "could not be asked" in page.get_by_role("alert").inner_text()
    for site in ("insurer_a", "employer_b"):
        assert "unknown" in page.get_by_role("row", name=site).inner_text()
    page.goto(f"{console}/")
    page.keyboard.press("Tab")  # the first stop is the skip link, shown when focused
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    assert skip.is_visible() and skip.bounding_box()["x"] >= 0
    page.keyboard.press("Tab")  # the product name (home), then the first nav link
    expect(page.get_by_role("link", name="ReHealth", exact=True)).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Sites")).to_be_focused()  # its focus ring is drawn
    shot(page, "2-sites-superlink-down")

    page.get_by_role("link", name="Studies").click()
    row = page.get_by_role("row", name="unregistered").inner_text()
    assert "cannot start" in row and "not registered" in row, row
    assert page.get_by_role("button", name=re.compile("Start")).count() == 0
    shot(page, "3-studies-unregistered")

    page.get_by_role("link", name="Reports").click()
    states = {n: page.get_by_role("row", name=n).inner_text() for n in ("genuine", "changed", "unsigned")}
    assert (
        "verified" in states["genuine"] and "failed" in states["changed"] and "unsigned" in states["unsigned"]
    )
    shot(page, "4-reports-three-states")
    page.get_by_role("link", name="changed.json").click()
    assert page.locator("#verification").inner_text().startswith("Failed")
    shot(page, "5-report-changed")
    page.go_back()
    page.get_by_role("link", name="genuine.json").click()
    assert page.locator("#verification").inner_text().startswith("Verified")
    shot(page, "6-report-genuine")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{console}/login")
    page.goto(f"{console}/reports")
    assert "/login" in page.url  # signed out means signed out
    # the one error is the deliberate wrong password's page, answered 401 Unauthorized
    assert len(page.console_errors) == 1 and "401" in page.console_errors[0], page.console_errors
