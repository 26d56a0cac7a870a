"""The layout of the start-up kits and the text files in them (``node.toml``, README, start.sh).

A site's kit is a folder the insurer's IT copies to the node's machine as a whole: every path
in its ``node.toml`` is relative to that folder, so the kit works wherever it is unpacked.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from coordinator.federation.pki import write_private
from shared.errors import SpecError

MANIFEST = "federation.json"


@dataclass(frozen=True)
class SiteKit:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def private_key(self) -> Path:
        return self.root / "supernode.key"

    @property
    def public_key(self) -> Path:
        return self.root / "supernode.pub"

    @property
    def coordinator_pub(self) -> Path:
        return self.root / "coordinator.pub"

    @property
    def node_toml(self) -> Path:
        return self.root / "node.toml"

    @property
    def readme(self) -> Path:
        return self.root / "README.md"

    @property
    def start_sh(self) -> Path:
        return self.root / "start.sh"


@dataclass(frozen=True)
class CoordinatorKit:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:  # encrypted: only for adding sites
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "superlink.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "superlink.key"

    @property
    def superexec_secret(self) -> Path:
        return self.root / "superexec.secret"

    @property
    def signing_key(self) -> Path:  # the operator's study-signing key, encrypted
        return self.root / "signing" / "coordinator.key"

    @property
    def signing_pub(self) -> Path:
        return self.root / "signing" / "coordinator.pub"

    @property
    def signing_cert(self) -> Path:  # the CA's certificate of signing_pub, naming the operator
        return self.root / "signing" / "coordinator.crt"

    @property
    def registered(self) -> Path:
        return self.root / "registered"

    @property
    def state(self) -> Path:  # the SuperLink's database, FLWR_HOME and logs
        return self.root / "state"

    def registered_sites(self) -> dict[str, Path]:
        """Site name -> its registered SuperNode public key."""
        if not self.registered.is_dir():
            return {}
        return {p.stem: p for p in sorted(self.registered.glob("*.pub"))}

    def manifest(self) -> dict:
        try:
            return json.loads((self.root / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SpecError(f"{self.root} is not a coordinator kit ({MANIFEST}: {e})") from None

    def write_manifest(self, spec, *, encrypted: bool) -> None:
        data = {
            "name": spec.name,
            "coordinator": spec.coordinator,
            "keys_encrypted": encrypted,
            "created": _now(),
            "history": [{"added": s.name, "at": _now()} for s in spec.sites],
        }
        write_private(self.root / MANIFEST, (json.dumps(data, indent=2) + "\n").encode())

    def update_manifest(self, **event: str) -> None:
        data = self.manifest()
        data["history"].append({**event, "at": _now()})
        write_private(self.root / MANIFEST, (json.dumps(data, indent=2) + "\n").encode())

    @property
    def address(self) -> str:
        return str(self.manifest()["coordinator"])


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def node_toml(site: str, superlink: str, time_zone: str, runtime_address: str) -> bytes:
    """The site's commented ``node.toml``: the node's one config file (data, ledger, policy
    and how its SuperNode joins the federation)."""
    return f'''# ReHealth Core node configuration for site "{site}"
# (written by `rehealth federation provision`).
# Relative paths resolve against this file's folder: keep the kit together.
# Start the node with:  rehealth node run -c node.toml   (or ./start.sh)

# This site's name in studies. Mixed into every pseudonym: do not change it later.
site_id = "{site}"

# Where the node keeps its data (SQLite by default; PostgreSQL by URL).
store_url = "sqlite:///node.db"

# The privacy ledger: every release of this node is charged here. Back it up, never reset it.
ledger_url = "sqlite:///ledger.db"

# The 32-byte pseudonym key, created on first ingest with mode 0600. Never leaves this machine.
key_path = "node.key"

# The site's time zone (IANA): dates are calendar dates here.
time_zone = "{time_zone}"

# API keys and roles for the node's REST API.
api_keys_path = "api_keys.toml"

# The node's total privacy budget for its population; the ledger refuses releases beyond it.
[budget]
epsilon = 10.0
delta = 1e-6

# How this node's SuperNode joins the federation (TLS + node authentication).
[federation]
# The coordinator's SuperLink (host:port); its certificate must be signed by root_certificates.
superlink = "{superlink}"
# The federation's CA certificate: the only authority this node trusts for the SuperLink.
root_certificates = "ca.crt"
# This node's SuperNode key pair (OpenSSH ECDSA P-384). The private key is this kit's only
# secret (0600): whoever holds it can join as this site. The public key is registered at the
# coordinator; ask the operator to revoke it if the key leaks.
private_key = "supernode.key"
public_key = "supernode.pub"
# The coordinator's study-signing public key, pinned: this node answers only studies it signed.
coordinator_key = "coordinator.pub"
# Where the SuperNode serves its own Runtime API for the node's ClientApp processes (loopback).
runtime_address = "{runtime_address}"
# Flower's working folder for this node (its state, logs, the node-local Runtime-API TLS).
state_dir = "flower"
# Answer studies from a cohort file instead of the store (optional):
# data_path = "data/cohort.csv"
# The node's policy file (default policy if unset), e.g. policy_path = "policy.toml"
# allow_exact = false          # exact (non-DP) answers: only for a single data owner's federation
# secure_aggregation = false   # accept SecAgg+ studies with a 1/sqrt(K) noise share

# Optional: also serve the scoring API (same as `rehealth node serve`).
# [api]
# host = "127.0.0.1"
# port = 8080
'''.encode()


def site_start_sh() -> bytes:
    return b"""#!/bin/sh
# Start this node: its guarded SuperNode (TLS, authenticated) and, if configured, its scoring API.
# Stops everything on Ctrl-C or SIGTERM.
set -eu
cd "$(dirname "$0")"
exec rehealth node run -c node.toml
"""


def site_readme(site: str, superlink: str) -> bytes:
    return f"""# Start-up kit of site `{site}`

Written by `rehealth federation provision`. Copy this folder as a whole to the node's machine.

| file | what | secret? |
|---|---|---|
| `supernode.key` | this node's SuperNode private key (P-384) | **yes** (0600; this kit's only secret) |
| `supernode.pub` | its public half, registered at the coordinator | no |
| `ca.crt` | the federation's CA certificate (TLS to the SuperLink) | no |
| `coordinator.pub` | the coordinator's study-signing key, pinned | no |
| `node.toml` | the node's one config file (data, ledger, budget, federation) | no |
| `start.sh` | `rehealth node run -c node.toml` | no |

1. Install ReHealth Core on the node's machine (see the repository README).
2. Check that the machine reaches the coordinator at `{superlink}` (outbound TCP only).
3. Ingest the site's data: `rehealth node ingest -c node.toml ...` (or set `data_path`).
4. Start: `./start.sh`. Stop: Ctrl-C or SIGTERM (all child processes stop with it).

See `deploy/PROVISIONING.md` in the repository for the whole procedure.
""".encode()


def coordinator_readme(address: str) -> bytes:
    return f"""# Coordinator kit

Start the SuperLink: `REHEALTH_KEY_PASSPHRASE=... rehealth coordinator run --kit .`
(the passphrase is not needed to start it; it opens `ca.key` and `signing/coordinator.key`).
Sites reach it at `{address}`. Keep this folder 0700 and back it up: `ca.key` and
`signing/coordinator.key` are encrypted, `superlink.key` and `superexec.secret` are not
(Flower reads them as they are). `signing/coordinator.crt` is the CA's certificate of the
signing key for the operator's name: evidence reports signed with the key carry it, and whoever
holds `ca.crt` checks them with `rehealth report verify report.json --ca ca.crt` or
`node verify-report.mjs report.json --ca ca.crt` (deploy/verify/ in the repository).
See `deploy/PROVISIONING.md`.
""".encode()
