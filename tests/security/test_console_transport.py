"""The operator console refuses plain HTTP off loopback.

The attack: an operator starts the console with ``--listen 0.0.0.0:8480`` (to reach it from a
workstation) and without ``--tls``; anyone on the network path then reads the operator's
password at sign-in, the session cookie and the API tokens the console issues, and with them
signs studies. Before the check the console served that plainly (the server was built and
bound); now it is refused with an error that says how to serve it. Loopback stays allowed, and
TLS on any host.
"""

from __future__ import annotations

import pytest

from coordinator.console.cli import server
from coordinator.federation.provision import FederationFile, provision
from shared.errors import ReHealthError


@pytest.fixture
def federation(tmp_path):
    provision(FederationFile(coordinator="127.0.0.1:1", sites=[{"name": "a"}]), tmp_path, passphrase=None)
    return tmp_path


@pytest.mark.parametrize("listen", ["0.0.0.0:8480", "192.0.2.10:8480", "[::]:8480", "console.example:8480"])
def test_plain_http_off_loopback_is_refused(federation, listen):
    with pytest.raises(ReHealthError, match="in the clear.*--tls"):
        server(federation, listen, tls=False)


@pytest.mark.parametrize(
    "listen, tls", [("127.0.0.1:8480", False), ("localhost:8480", False), ("0.0.0.0:8480", True)]
)
def test_loopback_or_tls_is_served(federation, listen, tls):
    srv = server(federation, listen, tls=tls)  # built, not started
    assert srv.config.port == 8480
    assert (srv.config.ssl_certfile is not None) == tls
