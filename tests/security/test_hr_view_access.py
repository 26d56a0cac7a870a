"""Attacks on the node's HR web view (in process, real SQLite store, ledger and keys file).

Each test would get in, or get a release made, without the defence it names: no cookie, a key
of another role, a forged or tampered cookie, an expired session, a revoked key, a POST from
another origin or without the session's CSRF token. And the view adds no new release: its GETs
charge nothing, and what it shows is the API's own stored view.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from node.api.auth import add_key, revoke_key
from node.store.models import persons
from node.web.session import COOKIE, Sessions
from tests.web_node import build_node

ORIGIN = {"Origin": "http://testserver"}
PAGES = ("/hr/", "/hr/?by=department,job_type", "/hr/programme", "/hr/evidence")


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    return build_node(tmp_path_factory.mktemp("hrsec"), staff=300)


def _client(node, sessions=None, **kw) -> TestClient:
    return TestClient(
        node.app(sessions=sessions if sessions is not None else Sessions()), follow_redirects=False, **kw
    )


def _login(c: TestClient, key: str, headers=ORIGIN):
    return c.post("/hr/login", data={"api_key": key}, headers=headers)


def _csrf(c: TestClient) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', c.get("/hr/").text).group(1)


def test_without_a_session_every_page_sends_to_sign_in(node) -> None:
    c = _client(node)
    for path in PAGES:
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/hr/login"), path
        assert "suppressed" not in r.text and "people" not in r.text


@pytest.mark.parametrize("role", ["underwriter", "ops", "admin"])
def test_a_key_of_another_role_is_refused(node, role, tmp_path) -> None:
    key = node.uw_key if role == "underwriter" else add_key(node.keys_path, role=role)[1]
    c = _client(node)
    r = _login(c, key)
    assert r.status_code == 401 and "not an HR key" in r.text
    assert COOKIE not in r.cookies
    assert c.get("/hr/").status_code == 303


def test_an_unknown_key_is_refused(node) -> None:
    r = _login(_client(node), "rh_" + "x" * 43)
    assert r.status_code == 401 and COOKIE not in r.cookies


def test_the_cookie_is_httponly_strict_and_secure_over_tls(node) -> None:
    plain = _login(_client(node), node.hr_key).headers["set-cookie"].lower()
    assert "httponly" in plain and "samesite=strict" in plain and "path=/hr" in plain
    assert "secure" not in plain
    tls = _client(node, base_url="https://testserver")
    cookie = _login(tls, node.hr_key, {"Origin": "https://testserver"}).headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie


def test_a_forged_or_tampered_cookie_gets_nothing(node) -> None:
    c = _client(node)
    sid = _login(c, node.hr_key).cookies[COOKIE]
    assert c.get("/hr/").status_code == 200
    for bad in ("forged-" + "A" * 40, sid[:-1] + ("A" if sid[-1] != "A" else "B"), sid + "x"):
        other = _client(node, sessions=None)
        other.cookies.set(COOKIE, bad, path="/hr")
        assert other.get("/hr/programme").status_code == 303
        fresh = TestClient(c.app, follow_redirects=False)  # the same server, a made-up cookie
        fresh.cookies.set(COOKIE, bad, path="/hr")
        assert fresh.get("/hr/programme").status_code == 303


def test_a_session_expires_when_idle_and_when_old(node) -> None:
    clock = Clock()
    sessions = Sessions(idle_s=60, absolute_s=300, clock=clock)
    c = _client(node, sessions=sessions)
    _login(c, node.hr_key)
    assert c.get("/hr/evidence").status_code == 200
    clock.t += 61
    r = c.get("/hr/evidence")
    assert r.status_code == 303 and "expired" in r.headers["location"]
    _login(c, node.hr_key)
    for _ in range(6):  # active every 59 s, but 8 × 59 s is past the absolute limit
        clock.t += 59
        last = c.get("/hr/evidence").status_code
    assert last == 303


def test_revoking_the_key_ends_its_session(node) -> None:
    entry, key = add_key(node.keys_path, role="hr")
    c = _client(node)
    _login(c, key)
    assert c.get("/hr/").status_code == 200
    revoke_key(node.keys_path, entry.key_id)
    assert c.get("/hr/").status_code == 303


def test_posts_from_another_origin_or_without_the_token_release_nothing(node) -> None:
    c = _client(node)
    _login(c, node.hr_key)
    token = _csrf(c)
    spent = node.ledger.state().spent
    attempts = [
        ({"by": "job_type", "csrf": token}, {"Origin": "http://127.0.0.1:9999"}),  # same site, other origin
        ({"by": "job_type", "csrf": token}, {"Origin": "null"}),
        ({"by": "job_type", "csrf": token}, {}),  # neither Origin nor Referer
        ({"by": "job_type", "csrf": token}, {"Referer": "http://evil.example/hr/"}),
        ({"by": "job_type", "csrf": "guess"}, ORIGIN),
        ({"by": "job_type"}, ORIGIN),
    ]
    for data, headers in attempts:
        r = c.post("/hr/release", data=data, headers=headers)
        assert r.status_code == 403, (data, headers)
    assert c.post("/hr/programme/release", data={"csrf": "guess"}, headers=ORIGIN).status_code == 403
    assert (
        c.post("/hr/logout", data={"csrf": token}, headers={"Origin": "http://evil.example"}).status_code
        == 403
    )
    assert c.get("/hr/").status_code == 200  # still signed in: the forged logout did nothing
    assert _login(_client(node), node.hr_key, {"Origin": "http://evil.example"}).status_code == 403
    assert node.ledger.state().spent == spent
    ok = c.post("/hr/release", data={"by": "job_type", "csrf": token}, headers=ORIGIN)
    assert ok.status_code == 303 and node.ledger.state().spent > spent  # the defence, not a broken route


def test_the_view_shows_the_apis_release_and_its_gets_charge_nothing(node) -> None:
    c = _client(node)
    _login(c, node.hr_key)
    token = _csrf(c)
    before = node.ledger.state().spent
    for path in PAGES:
        assert c.get(path).status_code == 200
    assert node.ledger.state().spent == before  # showing is free; releasing is a POST
    c.post("/hr/release", data={"by": "age_band", "csrf": token}, headers=ORIGIN)
    after = node.ledger.state().spent
    api = c.get("/v1/groups?by=age_band", headers={"X-API-Key": node.hr_key}).json()
    assert api["charged_now"] is False and node.ledger.state().spent == after  # the same stored view
    page = c.get("/hr/?by=age_band").text
    for g in api["groups"]:
        if g["people"] is not None:
            assert f"<td>{g['people']:,}</td>" in page


def test_no_page_carries_a_pseudonym(node) -> None:
    c = _client(node)
    _login(c, node.hr_key)
    token = _csrf(c)
    c.post("/hr/programme/release", data={"csrf": token}, headers=ORIGIN)
    engine = create_engine(node.store_url)
    with engine.connect() as conn:
        pseudonyms = set(conn.execute(select(persons.c.pseudonym)).scalars())
    engine.dispose()
    text = "".join(c.get(p).text for p in PAGES)
    assert "suppressed" in text
    assert not any(p in text for p in pseudonyms)
