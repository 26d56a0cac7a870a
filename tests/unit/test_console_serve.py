"""The console as `rehealth coordinator run --console` serves it: a thread of the coordinator's
process, on loopback, over TLS with the federation's certificate when asked; and the users
file as `rehealth coordinator console adduser` writes it."""

from __future__ import annotations

import socket
import ssl

import httpx
from typer.testing import CliRunner

from coordinator.console.cli import app as console_app
from coordinator.console.cli import start_in_thread
from coordinator.console.users import UserStore
from coordinator.federation.provision import FederationFile, provision


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_console_serves_tls_with_the_federations_certificate(tmp_path):
    provision(FederationFile(coordinator="127.0.0.1:1", sites=[{"name": "a"}]), tmp_path, passphrase=None)
    port = _port()
    srv = start_in_thread(tmp_path, f"127.0.0.1:{port}", tls=True)
    try:
        ca = ssl.create_default_context(cafile=str(tmp_path / "coordinator" / "ca.crt"))
        with httpx.Client(verify=ca) as c:
            r = c.get(f"https://127.0.0.1:{port}/login")
            assert r.status_code == 200 and "Sign in" in r.text
            assert "Secure" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
            assert c.get(f"https://127.0.0.1:{port}/api/sites").status_code == 401
        with httpx.Client() as plain:  # the system's roots do not know the federation's CA
            try:
                plain.get(f"https://127.0.0.1:{port}/login")
                raise AssertionError("a client without the federation's CA was served")
            except httpx.ConnectError:
                pass
    finally:
        srv.should_exit = True
        srv.thread.join(timeout=10)
    assert not srv.thread.is_alive()


def test_adduser_hashes_the_password_and_refuses_a_short_one(tmp_path):
    runner = CliRunner()
    r = runner.invoke(
        console_app,
        ["adduser", "ops", "--federation-dir", str(tmp_path), "--password-stdin"],
        input="short\n",
    )
    assert r.exit_code == 1 and "at least 12" in r.output
    r = runner.invoke(
        console_app,
        ["adduser", "ops", "--federation-dir", str(tmp_path), "--password-stdin"],
        input="a sufficiently long one\n",
    )
    assert r.exit_code == 0, r.output
    store = UserStore(tmp_path / "console" / "users.json")
    assert store.check("ops", "a sufficiently long one") and not store.check("ops", "a sufficiently long on")
    assert "a sufficiently long one" not in store.path.read_text()
    r = runner.invoke(
        console_app, ["adduser", "ops", "--federation-dir", str(tmp_path), "--password-stdin"], input="x" * 20
    )
    assert r.exit_code == 1 and "exists" in r.output
