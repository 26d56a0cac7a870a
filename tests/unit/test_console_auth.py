"""The operator console's login, session, CSRF and lockout, attacked through its HTTP interface.

Each test is an attack that would succeed without the defence it names: a page or JSON endpoint
fetched without logging in, a forged or stale session cookie, a POST without (or with another
session's) CSRF token, password guessing past the lockout, a login form posted from elsewhere,
an open redirect after login. The app is the real one over a real provisioned kit; no SuperLink
runs (pages then say it could not be asked), which is beside the point here.
"""

from __future__ import annotations

import json
import re

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from coordinator.console import auth
from coordinator.console.app import COOKIE, ConsoleConfig, create_app
from coordinator.console.auth import LOCKOUT_S, MAX_FAILURES, MAX_PER_ADDRESS, Sessions
from coordinator.console.users import UserStore, verify_password
from coordinator.federation.provision import FederationFile, provision

PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def fed_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("console")
    spec = FederationFile(coordinator="127.0.0.1:1", sites=[{"name": "alpha"}, {"name": "beta"}])
    provision(spec, base, passphrase=None)
    UserStore(base / "console" / "users.json").add("alice", PASSWORD)
    UserStore(base / "console" / "users.json").add("bob", PASSWORD + "!")
    return base


@pytest.fixture()
def clock():
    return Clock()


@pytest.fixture()
def client(fed_dir, clock):
    cfg = ConsoleConfig(fed_dir, hosts=["testserver"])
    app = create_app(cfg, sessions=Sessions(clock=clock))
    with TestClient(app, base_url="http://testserver") as c:
        yield c


def _login_form(c: TestClient) -> dict:
    page = c.get("/login")
    assert page.status_code == 200
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return {"csrf": token, "next": "/"}


def login(c: TestClient, user="alice", password=PASSWORD):
    return c.post(
        "/login", data={**_login_form(c), "username": user, "password": password}, follow_redirects=False
    )


def _csrf(c: TestClient) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', c.get("/").text).group(1)


def _paths(app) -> list[tuple[str, str]]:
    """Every route of the app but login and the static files, path parameters filled in."""
    out = []
    for r in app.routes:
        if not isinstance(r, Route) or r.path.startswith("/login"):
            continue
        path = re.sub(r"\{[^}]+\}", "x", r.path)
        for m in sorted(r.methods - {"HEAD"}):
            out.append((m, path))
    return out


def test_every_page_and_endpoint_refuses_a_visitor_who_has_not_logged_in(client):
    routes = _paths(client.app)
    assert len(routes) >= 14, routes  # pages, JSON, files and actions all counted
    for method, path in routes:
        r = client.request(method, path, follow_redirects=False)
        if method == "GET" and not path.startswith("/api/"):
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), (method, path)
        else:
            assert r.status_code == 401, (method, path, r.status_code)
        assert "alpha" not in r.text and "federation" not in r.text.lower(), (method, path)


def test_after_login_the_same_pages_answer(client):
    r = login(client)
    assert r.status_code == 303 and r.headers["location"] == "/"
    for path in ("/", "/studies", "/reports", "/api/sites", "/api/runs", "/api/reports"):
        assert client.get(path).status_code == 200, path
    sites = client.get("/api/sites").json()
    assert [s["name"] for s in sites["sites"]] == ["alpha", "beta"]
    assert sites["superlink_error"]  # no SuperLink runs here: said, not hidden


def test_a_forged_or_altered_session_cookie_is_no_session(client, fed_dir):
    assert login(client).status_code == 303
    real = client.cookies[COOKIE]
    sid, mac = real.rsplit(".", 1)
    other = Sessions()  # another secret: a cookie minted elsewhere
    forged = [
        sid,  # the id without its MAC
        f"{sid}.{'0' * len(mac)}",
        f"{sid[:-1]}{'A' if sid[-1] != 'A' else 'B'}.{mac}",  # id altered, MAC kept
        other.cookie_value(other.create("alice")),
    ]
    for value in forged:
        fresh = TestClient(client.app, base_url="http://testserver")
        fresh.cookies.set(COOKIE, value)
        assert fresh.get("/api/sites").status_code == 401, value
        assert fresh.get("/", follow_redirects=False).status_code == 303, value
    ok = TestClient(client.app, base_url="http://testserver")
    ok.cookies.set(COOKIE, real)
    assert ok.get("/api/sites").status_code == 200  # the genuine cookie does work


def test_a_logged_out_or_idle_session_is_refused(client, clock):
    assert login(client).status_code == 303
    cookie = client.cookies[COOKIE]
    r = client.post("/logout", data={"csrf": _csrf(client)}, follow_redirects=False)
    assert r.status_code == 303
    replay = TestClient(client.app, base_url="http://testserver")
    replay.cookies.set(COOKIE, cookie)  # the cookie kept after logout
    assert replay.get("/api/sites").status_code == 401
    assert login(client).status_code == 303
    assert client.get("/api/sites").status_code == 200
    clock.t += 31 * 60  # idle past 30 minutes
    assert client.get("/api/sites").status_code == 401


def test_a_post_without_the_sessions_csrf_token_changes_nothing(client, fed_dir):
    assert login(client).status_code == 303
    study = fed_dir / "studies" / "s1"
    study.mkdir(parents=True, exist_ok=True)
    posts = ["/logout", "/studies/s1/start", "/runs/x/stop", "/runs/x/rerun"]
    other = TestClient(client.app, base_url="http://testserver")
    assert login(other, "bob", PASSWORD + "!").status_code == 303
    bobs_token = _csrf(other)
    for path in posts:
        for data in ({}, {"csrf": ""}, {"csrf": "x" * 43}, {"csrf": bobs_token}):
            r = client.post(path, data=data, follow_redirects=False)
            assert r.status_code == 403, (path, data, r.status_code)
    assert client.get("/api/sites").status_code == 200  # logout without a token did not log out
    assert not (fed_dir / "console" / "runs").exists() or not any((fed_dir / "console" / "runs").iterdir())
    # the right token passes the check (the start then fails for its own reason: no spec)
    r = client.post("/studies/s1/start", data={"csrf": _csrf(client)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/studies"
    assert "no study.toml" in client.get("/studies").text


def test_the_login_form_needs_its_own_token_and_cookie(client):
    no_token = client.post("/login", data={"username": "alice", "password": PASSWORD}, follow_redirects=False)
    assert no_token.status_code == 403 and COOKIE not in no_token.cookies
    form = _login_form(client)
    elsewhere = TestClient(client.app, base_url="http://testserver")  # token copied, no pre-login cookie
    r = elsewhere.post(
        "/login", data={**form, "username": "alice", "password": PASSWORD}, follow_redirects=False
    )
    assert r.status_code == 403 and COOKIE not in r.cookies


def test_repeated_wrong_passwords_lock_the_name_even_for_the_right_one(client, clock):
    for _ in range(MAX_FAILURES):
        r = login(client, "alice", "wrong password guess")
        assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = login(client)  # the right password, during the lockout
    assert r.status_code == 429 and COOKIE not in r.cookies and "Too many failed sign-ins" in r.text
    assert login(client, "bob", PASSWORD + "!").status_code == 303  # another user is not locked
    clock.t += LOCKOUT_S + 1
    assert login(client).status_code == 303


def test_one_address_cannot_spray_passwords_over_many_names(client, monkeypatch):
    assert MAX_PER_ADDRESS == 20
    monkeypatch.setattr(auth, "MAX_PER_ADDRESS", 6)  # the same rule, fewer scrypts to wait for
    for i in range(6):
        assert login(client, f"user{i}", "guess").status_code == 401
    r = login(client)  # a right password, but this address has used its attempts
    assert r.status_code == 429 and COOKIE not in r.cookies


def test_an_unknown_user_and_a_wrong_password_read_the_same(client):
    a = login(client, "nobody", PASSWORD)
    b = login(client, "alice", "not the password")
    assert a.status_code == b.status_code == 401
    strip = lambda t: re.sub(r'value="[^"]*"', "", t)  # noqa: E731 - token and echoed name differ
    assert strip(a.text) == strip(b.text)


def test_the_session_cookie_is_httponly_samesite_strict_and_secure_under_tls(fed_dir, clock):
    for tls in (False, True):
        app = create_app(
            ConsoleConfig(fed_dir, hosts=["testserver"], tls=tls), sessions=Sessions(clock=clock)
        )
        with TestClient(app, base_url="https://testserver" if tls else "http://testserver") as c:
            r = login(c)
            header = next(h for h in r.headers.get_list("set-cookie") if h.startswith(COOKIE + "="))
            assert "HttpOnly" in header and "SameSite=strict" in header.replace("Strict", "strict")
            assert ("Secure" in header) is tls


def test_login_redirects_only_within_the_console(client):
    for target, expected in (
        ("//evil.example/x", "/"),
        ("https://evil.example", "/"),
        ("/studies", "/studies"),
    ):
        r = client.post(
            "/login",
            data={**_login_form(client), "next": target, "username": "alice", "password": PASSWORD},
            follow_redirects=False,
        )
        assert r.status_code == 303 and r.headers["location"] == expected, target


def test_a_new_session_id_at_every_login(client):
    assert login(client).status_code == 303
    first = client.cookies[COOKIE]
    assert login(client).status_code == 303
    assert client.cookies[COOKIE] != first


def test_get_changes_nothing_and_foreign_hosts_are_refused(client):
    assert login(client).status_code == 303
    for path in ("/logout", "/studies/s1/start", "/runs/x/stop", "/runs/x/rerun"):
        assert client.get(path, follow_redirects=False).status_code in (404, 405), path
    assert client.get("/api/sites").status_code == 200  # GET /logout did not log out
    rebound = client.get("/api/sites", headers={"host": "attacker.example"})
    assert rebound.status_code == 400  # DNS rebinding: a page of another origin reaching 127.0.0.1


def test_passwords_are_stored_as_scrypt_hashes_only(fed_dir):
    text = (fed_dir / "console" / "users.json").read_text()
    assert PASSWORD not in text
    stored = json.loads(text)["users"]["alice"]["hash"]
    assert stored.startswith("scrypt$32768$8$1$")
    assert verify_password(PASSWORD, stored) and not verify_password(PASSWORD + "x", stored)
    assert not verify_password(PASSWORD, stored.replace("scrypt", "plain"))
    assert (fed_dir / "console" / "users.json").stat().st_mode & 0o077 == 0
