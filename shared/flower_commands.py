"""The command lines of a federation's Flower processes, built in one place.

Three programs start Flower processes: the loopback launcher (``coordinator.federation.launcher``),
``rehealth coordinator run`` (a SuperLink from a provisioned kit) and ``rehealth node run`` (a
SuperNode from a site's kit). They must agree on every security flag — TLS on the Fleet API and
on each Runtime API, node authentication, ``process`` isolation next to a SuperExec that holds the
auth secret — or one of them silently drifts to a weaker setup. So each command line is built
here, from paths and addresses only: this module starts nothing and reads no file (``shared``
stays pure), the callers spawn what it returns.

Two helpers run as Python modules by name (not imported here): the SuperExec that hands tokens
through a descriptor (:data:`SUPEREXEC_MODULE`) and the SuperNode with a 10 s heartbeat
(:data:`SUPERNODE_MODULE`). Both ship in the same distribution as the node and the coordinator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shared.errors import SpecError

SUPEREXEC_MODULE = "coordinator.federation.superexec"
SUPERNODE_MODULE = "coordinator.federation.supernode"

#: Environment every SuperExec (and so every Flower process we start) gets. Flower's SuperExec
#: asks its Runtime API for a new app task once a second (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``,
#: ``supercore/superexec/run_superexec.py``, 0.01–60 s): each message to a node waited 0.5 s on
#: average for it, each run's ServerApp too. A tenth of that is one cheap loopback call per
#: 0.1 s per SuperExec (docs/benchmarks/roundtrip.md).
#: Set to "0" in a node's environment: its ClientApp zygote never imports the risk model's
#: libraries (torch: ~300 MB and ~3 s of CPU per node, :mod:`node.flower.zygote`). A local
#: federation started for a study sets it; one for risk training does not.
ZYGOTE_RISK_IMPORTS_ENV = "REHEALTH_ZYGOTE_RISK_IMPORTS"

TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
FLOWER_PACE_ENV = {TASK_POLL_ENV: "0.1"}


@dataclass(frozen=True)
class RuntimeTLS:
    """What a Runtime API (a SuperLink's or a SuperNode's) serves and its SuperExec trusts."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    superexec_secret: Path


def toml_value(v: object) -> str:
    """A Python scalar as a TOML value (strings quoted) for ``--run-config``/``--node-config``."""
    if isinstance(v, bool):
        return str(v).lower()
    return json.dumps(v) if isinstance(v, str) else repr(v)


def node_config_arg(cfg: dict) -> str:
    """``--node-config`` string: space-separated TOML key=value pairs."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in cfg.items())


def superlink_command(
    superlink_bin: str,
    *,
    host: str,
    port: int,
    database: Path,
    tls: RuntimeTLS | None,
) -> list[str]:
    """``flower-superlink`` serving TLS with SuperNode authentication (``tls`` None: Flower's
    plaintext, unauthenticated mode, for debugging only)."""
    security = (
        ["--insecure"]
        if tls is None
        else [
            "--ssl-ca-certfile",
            str(tls.ca_cert),
            "--ssl-certfile",
            str(tls.server_cert),
            "--ssl-keyfile",
            str(tls.server_key),
            "--enable-supernode-auth",
            "--isolation",
            "process",
            "--superexec-auth-secret-file",
            str(tls.superexec_secret),
        ]
    )
    return [
        superlink_bin,
        *security,
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(database),
    ]


def supernode_command(
    python: str,
    script: Path,
    *,
    superlink: str,
    host: str,
    port: int,
    node_config: dict,
    root_certificates: Path | None,
    private_key: Path | None,
    runtime: RuntimeTLS | None,
) -> list[str]:
    """The SuperNode (``script`` runs :data:`SUPERNODE_MODULE`'s ``main``): TLS to the SuperLink
    pinned to ``root_certificates``, authenticated with ``private_key``, its own Runtime API on
    ``host:port`` served with ``runtime``'s certificate. All three None: plaintext (debugging)."""
    if runtime is None or root_certificates is None or private_key is None:
        if not (runtime is None and root_certificates is None and private_key is None):
            raise ValueError("a SuperNode is either fully secured (CA, key, runtime TLS) or insecure")
        security = ["--insecure"]
    else:
        security = [
            "--root-certificates",
            str(root_certificates),
            "--auth-supernode-private-key",
            str(private_key),
            "--ssl-ca-certfile",
            str(runtime.ca_cert),
            "--ssl-certfile",
            str(runtime.server_cert),
            "--ssl-keyfile",
            str(runtime.server_key),
            "--isolation",
            "process",
            "--superexec-auth-secret-file",
            str(runtime.superexec_secret),
        ]
    return [
        python,
        str(script),
        *security,
        "--superlink",
        superlink,
        "--host",
        host,
        "--port",
        str(port),
        "--node-config",
        node_config_arg(node_config),
    ]


def superexec_command(python: str, *, runtime_api: str, runtime: RuntimeTLS, parent_pid: int) -> list[str]:
    """The SuperExec (:data:`SUPEREXEC_MODULE`) of one Runtime API; it exits with ``parent_pid``."""
    return [
        python,
        "-m",
        SUPEREXEC_MODULE,
        "--runtime-api-address",
        runtime_api,
        "--root-certificates",
        str(runtime.ca_cert),
        "--superexec-auth-secret-file",
        str(runtime.superexec_secret),
        "--parent-pid",
        str(parent_pid),
    ]


def supernode_script_text() -> bytes:
    """The body of the ``flower-supernode`` script callers write (run by their Python)."""
    return f"from {SUPERNODE_MODULE} import main\n\nmain()\n".encode()


def is_loopback(host: str) -> bool:
    """``host`` is reached from this machine only (127.0.0.0/8, ::1, ``localhost``): the only
    place HTTP may go unencrypted (the node's scoring API and plans webhook, the coordinator's
    console: keys, scores, passwords and session cookies cross it)."""
    if host.lower() == "localhost":
        return True
    try:
        import ipaddress

        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name or a wildcard (0.0.0.0 is not loopback either)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port).

    Raises:
        SpecError: not host:port with a port in 1–65535 (a ValueError, so a pydantic validator
            that calls it reports a validation error).
    """
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(f"{address!r} is not host:port")
    return host, int(port)
