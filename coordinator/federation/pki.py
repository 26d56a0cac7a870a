"""Credentials for one local federation, generated at its start and never reused.

A loopback federation still needs three secrets, because every other local process is hostile:

- a **CA and a server certificate** for ``127.0.0.1``/``localhost``, so the SuperLink (and each
  SuperNode's Runtime API) speaks TLS and a client that pins the CA knows it talks to this
  federation, not to a process that grabbed the port first;
- one **SuperNode key pair per node** (OpenSSH ECDSA P-384: Flower refuses ed25519 and RSA),
  whose public half is registered with the SuperLink, so an unregistered process cannot join
  as a node and receive queries;
- a **SuperExec auth secret**, raw random bytes that Flower's SuperLink, SuperNodes and
  SuperExecs read from a file (``--superexec-auth-secret-file``) and turn into an HMAC key for
  ``AcquireTask``: without it no process can take a run's ServerApp or ClientApp task ahead of
  the executor. Flower derives one signing key from the bytes and checks it wherever the
  Runtime API runs, so each component pair (SuperLink + its SuperExec, SuperNode + its
  SuperExec) only has to agree; one secret per federation keeps the launcher simple and is no
  weaker, since every component runs as the same user from the same folder.

Everything is written with the ``cryptography`` library (no ``openssl`` CLI) into a 0700 folder
as 0600 files; nothing is ever committed or reused across federations.

>>> creds = FederationPKI.create(workdir / "pki", ["a", "b"])  # doctest: +SKIP
>>> creds.ca_cert, creds.node_keys["a"].private_key, creds.superexec_secret  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from shared.tls import issue_server_cert, new_ca, node_key_pair

VALIDITY = dt.timedelta(days=7)  # a federation lives for one session; a stale cert is refused
SECRET_BYTES = 32


def private_dir(path: Path) -> Path:
    """Create ``path`` and each missing parent as 0700 (``mkdir(parents=True)`` would give the
    parents the process umask) and return it."""
    if not path.is_dir():
        if not path.parent.is_dir():
            private_dir(path.parent)
        path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new 0600 file (created with that mode, never world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


@dataclass(frozen=True)
class NodeKey:
    private_key: Path  # OpenSSH private key, for --auth-supernode-private-key
    public_key: Path  # OpenSSH public key, for `flwr supernode register`


@dataclass(frozen=True)
class FederationPKI:
    folder: Path
    ca_cert: Path  # PEM; --ssl-ca-certfile / --root-certificates / root-certificates
    server_cert: Path
    server_key: Path
    node_keys: dict[str, NodeKey]
    superexec_secret: Path

    @classmethod
    def create(
        cls, folder: Path, sites: list[str], *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> "FederationPKI":
        folder = private_dir(folder)
        ca_key, ca = new_ca("ReHealth local federation CA", VALIDITY)
        server_key, server = issue_server_cert(ca_key, ca, hosts, VALIDITY)
        # The CA key signs once and is dropped: nobody can mint another server certificate.
        pem = serialization.Encoding.PEM
        write_private(folder / "ca.crt", ca.public_bytes(pem))
        write_private(folder / "server.pem", server.public_bytes(pem))
        write_private(
            folder / "server.key",
            server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )
        keys_dir = private_dir(folder / "supernode-keys")
        node_keys = {site: _node_key(keys_dir, site) for site in sites}
        write_private(folder / "superexec.secret", secrets.token_bytes(SECRET_BYTES))
        return cls(
            folder=folder,
            ca_cert=folder / "ca.crt",
            server_cert=folder / "server.pem",
            server_key=folder / "server.key",
            node_keys=node_keys,
            superexec_secret=folder / "superexec.secret",
        )

    def add_node(self, site: str) -> NodeKey:
        """A key pair for a node that joins after the federation started."""
        key = self.node_keys.get(site) or _node_key(self.folder / "supernode-keys", site)
        self.node_keys[site] = key
        return key


def _node_key(folder: Path, site: str) -> NodeKey:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in site)
    priv, pub = node_key_pair()
    return NodeKey(
        private_key=write_private(folder / stem, priv), public_key=write_private(folder / f"{stem}.pub", pub)
    )


__all__ = [
    "FederationPKI",
    "NodeKey",
    "issue_server_cert",
    "new_ca",
    "node_key_pair",
    "private_dir",
    "write_private",
]
