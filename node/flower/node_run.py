"""``rehealth node run``: the node's SuperNode (and scoring API) from its one ``node.toml``.

Everything the SuperNode needs comes from the node's config file (the kit that
``rehealth federation provision`` wrote): the SuperLink's address, the federation's CA, the
node's SuperNode key, the pinned coordinator key, and the same ledger, budget, store and policy
that ``rehealth node ingest``/``serve`` use — so the SuperNode's ``--node-config`` is derived
here, never written by hand (it used to be a second config with its own δ default).

The command lines are :mod:`shared.flower_commands`' (the loopback launcher uses the same): TLS
to the SuperLink pinned to the federation's CA, node authentication, ``process`` isolation with
a SuperExec holding an auth secret, and the guard (:mod:`node.flower.guard`) first on the PATH
as ``flwr-clientapp``. The SuperNode's own Runtime API (loopback, where its ClientApp processes
fetch messages) gets a certificate from a throwaway CA made at each start, with a fresh auth
secret: neither is in the kit, neither outlives the run's folder.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from node.config import FederationSection, NodeConfig
from node.flower.supervisor import ChildExited, Supervisor
from shared.errors import SpecError
from shared.flower_commands import (
    FLOWER_PACE_ENV,
    RuntimeTLS,
    split_address,
    superexec_command,
    supernode_command,
    supernode_script_text,
)

log = logging.getLogger("rehealth.node.run")
RUNTIME_VALIDITY_DAYS = 30


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


def check_kit(fed: FederationSection) -> None:
    """The kit's files exist, and the node key is not readable by others (refused otherwise:
    a key others can read is a key others can join with)."""
    for what in ("root_certificates", "private_key", "coordinator_key"):
        path = getattr(fed, what)
        if not path.is_file():
            raise SpecError(f"federation.{what}: {path} not found")
    mode = stat.S_IMODE(fed.private_key.stat().st_mode)
    if mode & 0o077:
        raise SpecError(
            f"federation.private_key: {fed.private_key} is readable by others (mode {mode:o}); chmod 600 it"
        )
    host, _port = split_address(fed.runtime_address)
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SpecError("federation.runtime_address: the SuperNode's Runtime API must stay on loopback")


def runtime_tls(folder: Path) -> RuntimeTLS:
    """A fresh CA, a certificate for the loopback Runtime API and an auth secret, in ``folder``."""
    import datetime as dt

    from shared.tls import issue_server_cert, new_ca, pem_cert, pem_key

    folder = private_dir(folder)
    validity = dt.timedelta(days=RUNTIME_VALIDITY_DAYS)
    ca_key, ca = new_ca("ReHealth node runtime CA", validity)
    key, cert = issue_server_cert(ca_key, ca, ("127.0.0.1", "localhost"), validity)
    return RuntimeTLS(
        ca_cert=write_private(folder / "ca.crt", pem_cert(ca)),
        server_cert=write_private(folder / "server.pem", pem_cert(cert)),
        server_key=write_private(folder / "server.key", pem_key(key)),
        superexec_secret=write_private(folder / "superexec.secret", secrets.token_bytes(32)),
    )


def supernode_node_config(cfg: NodeConfig) -> dict:
    """The SuperNode's ``--node-config``, derived from ``node.toml`` (one source of truth)."""
    fed = _federation(cfg)
    out: dict = {
        "site": cfg.site_id,
        "ledger-url": cfg.ledger_url,
        "budget-epsilon": cfg.budget.epsilon,
        "budget-delta": cfg.budget.delta,
        "coordinator-key": str(fed.coordinator_key),
        "state-dir": str(fed.state_dir / "node-state"),
    }
    if fed.data_path is not None:
        out["data-path"] = str(fed.data_path)
    else:
        out["store-url"] = cfg.store_url
    if fed.policy_path is not None:
        out["policy-path"] = str(fed.policy_path)
    if fed.allow_exact:
        out["allow-exact"] = True
    if fed.secure_aggregation:
        out["secure-aggregation"] = True
    return out


def _federation(cfg: NodeConfig) -> FederationSection:
    if cfg.federation is None:
        raise SpecError("node config has no [federation] section (written by rehealth federation provision)")
    return cfg.federation


@dataclass(frozen=True)
class NodePlan:
    """What ``node run`` starts (built before anything is started, so errors come first)."""

    supernode: list[str]
    env: dict
    runtime: RuntimeTLS
    runtime_host: str
    runtime_port: int
    api: list[str] | None


def plan(cfg: NodeConfig, config_path: Path) -> NodePlan:
    fed = _federation(cfg)
    check_kit(fed)
    state = private_dir(fed.state_dir)
    private_dir(state / "node-state")
    runtime = runtime_tls(state / "runtime")
    bin_dir = private_dir(state / "bin")
    script = write_private(bin_dir / "flower-supernode", supernode_script_text())
    guard = private_dir(state / "guard-bin") / "flwr-clientapp"
    guard.unlink(missing_ok=True)
    guard.symlink_to(_venv_bin("rehealth-clientapp"))
    host, port = split_address(fed.runtime_address)
    env = dict(
        os.environ,
        FLWR_HOME=str(private_dir(state / "home")),
        PATH=os.pathsep.join(
            [str(guard.parent), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
        ),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONUNBUFFERED="1",
        **FLOWER_PACE_ENV,
    )
    supernode = supernode_command(
        sys.executable,
        script,
        superlink=fed.superlink,
        host=host,
        port=port,
        node_config=supernode_node_config(cfg),
        root_certificates=fed.root_certificates,
        private_key=fed.private_key,
        runtime=runtime,
    )
    api = None
    if cfg.api is not None:
        api = [
            sys.executable,
            "-m",
            "node.cli",
            "serve",
            "--config",
            str(config_path.resolve()),
            "--host",
            cfg.api.host,
            "--port",
            str(cfg.api.port),
        ]
    return NodePlan(supernode, env, runtime, host, port, api)


def _venv_bin(name: str) -> str:
    cand = Path(sys.executable).with_name(name)
    if not cand.exists():
        raise SpecError(f"{name} is not installed next to {sys.executable}: install rehealth-core")
    return str(cand)


def run(config_path: Path, *, restart_max_s: float = 30.0) -> int:
    """Start the node's processes and supervise them until SIGTERM/SIGINT; the exit code.

    A SuperNode that exits is started again (with its SuperExec), after 2 s, doubling to
    ``restart_max_s``: Flower's SuperNode ends when the SuperLink stops knowing its node id —
    after a SuperLink restart, which gives every registered key a new one — and a fresh start
    re-activates it with its key. A revoked key stays refused at every attempt (logged).
    """
    cfg = NodeConfig.from_toml(config_path)
    if _federation(cfg).data_path is None:
        # studies read the store: migrate it now, and refuse to start on a corrupt store or a
        # schema newer than this code (node.store.schema), not at the first study's query
        from node.store import open_store

        open_store(cfg.store_url).engine.dispose()
    p = plan(cfg, config_path)
    fed = _federation(cfg)
    sup = Supervisor()
    sup.install_signals()
    log.info(
        "site %s: joining %s (TLS, node key %s), Runtime API %s:%d",
        cfg.site_id,
        fed.superlink,
        fed.public_key.name,
        p.runtime_host,
        p.runtime_port,
    )
    backoff = 2.0
    try:
        if p.api is not None and cfg.api is not None:
            sup.spawn("api", p.api, env=p.env)
            sup.wait_port("api", cfg.api.host, cfg.api.port)
            log.info(
                "scoring API on %s://%s:%d",
                "https" if cfg.api.tls_cert else "http",
                cfg.api.host,
                cfg.api.port,
            )
        while True:
            started = time.monotonic()
            try:
                _start_supernode(sup, p)
                log.info("site %s: node running (stop with SIGTERM or Ctrl-C)", cfg.site_id)
                sup.run_forever()
                return 0
            except ChildExited as e:
                if e.name == "api":
                    raise
                _stop_federation_children(sup)
                backoff = 2.0 if time.monotonic() - started > 60 else min(backoff * 2, restart_max_s)
                log.warning("site %s: %s; restarting the SuperNode in %.0f s", cfg.site_id, e, backoff)
                if not sup.sleep(backoff):
                    return 0
    except Exception as e:  # noqa: BLE001 - reported and turned into an exit code
        log.error("site %s: %s", cfg.site_id, e)
        return 1
    finally:
        sup.stop()


def _start_supernode(sup: Supervisor, p: NodePlan) -> None:
    node = sup.spawn("supernode", p.supernode, env=p.env)
    sup.wait_port("supernode", p.runtime_host, p.runtime_port)
    sup.spawn(
        "superexec",
        superexec_command(
            sys.executable,
            runtime_api=f"{p.runtime_host}:{p.runtime_port}",
            runtime=p.runtime,
            parent_pid=node.pid,
        ),
        env=p.env,
    )


def _stop_federation_children(sup: Supervisor) -> None:
    """Stop the SuperNode and its SuperExec (the API keeps serving)."""
    rest = {k: v for k, v in sup.procs.items() if k == "api"}
    sup.procs = {k: v for k, v in sup.procs.items() if k != "api"}
    sup.stop()
    sup.procs = rest
