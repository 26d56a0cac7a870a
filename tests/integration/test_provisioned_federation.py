"""A federation brought up from provisioned kits only, as insurer IT and the operator would.

``rehealth federation provision`` writes the kits; each kit is copied to a folder of its own
(sharing no file with the others); ``rehealth coordinator run --kit`` and one
``rehealth node run -c node.toml`` per site start as separate processes; a DP study signed with
the kit's encrypted key runs against them over TLS with node authentication. Then a site is
revoked and the SuperLink restarted: the revoked site's SuperNode, still running with its old
key, is no longer let in. Every process is gone at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from coordinator.cli.federation import app as federation_app
from coordinator.federation.control import ControlClient
from coordinator.federation.control_auth import CoordinatorCredential
from coordinator.synth import write_federation
from shared.synth import generate_federation

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "integration-test-passphrase"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        REHEALTH_KEY_PASSPHRASE=PASSPHRASE,
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
    )


def _start(args: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", *args], cwd=cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT
        )


def _coordinator(kit: Path, log: Path) -> subprocess.Popen:
    code = "from coordinator.cli.coordinator import app; app()"
    return _start([code, "run", "--kit", str(kit)], log, kit.parent)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout_s: float = 40) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = log.read_text(errors="replace") if log.exists() else ""
        if text in body:
            return body
        assert proc.poll() is None, f"{log.name} exited early:\n{body[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {log.name} within {timeout_s} s:\n{body[-3000:]}")


def _tree(procs) -> set[int]:
    pids = set()
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            pids |= {root.pid, *(c.pid for c in root.children(recursive=True))}
        except psutil.NoSuchProcess:
            pass
    return pids


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_kits_alone_run_a_dp_study_and_a_revoked_site_is_refused(tmp_path):
    fed = generate_federation(seed=5, sites=2, scale=0.05)
    spec_path = write_federation(fed, tmp_path / "synth", epsilon=9.0)  # within the kit's budget of 10
    names = [s.name for s in fed.sites]
    address = f"127.0.0.1:{_free_port()}"
    sites = "".join(
        f'[[sites]]\nname = "{n}"\nruntime_address = "127.0.0.1:{_free_port()}"\n\n' for n in names
    )
    (tmp_path / "federation.toml").write_text(f'name = "it"\ncoordinator = "{address}"\n\n{sites}')
    cp = CliRunner().invoke(
        federation_app,
        ["provision", str(tmp_path / "federation.toml"), "--out", str(tmp_path / "kits")],
        env={"REHEALTH_KEY_PASSPHRASE": PASSPHRASE},
    )
    assert cp.exit_code == 0, cp.output
    # each kit moves to a folder of its own: nothing is shared but what the kit holds
    coord_kit = tmp_path / "coordinator-host" / "kit"
    shutil.copytree(tmp_path / "kits" / "coordinator", coord_kit)
    site_kits = {}
    for name in names:
        kit = tmp_path / f"{name}-host" / "kit"
        shutil.copytree(tmp_path / "kits" / "sites" / name, kit)
        data = (tmp_path / "synth" / name / "cohort.csv").resolve()
        toml = kit / "node.toml"
        toml.write_text(toml.read_text().replace('# data_path = "data/cohort.csv"', f'data_path = "{data}"'))
        site_kits[name] = kit
    shutil.rmtree(tmp_path / "kits")

    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    seen: set[int] = set()
    started = time.monotonic()
    try:
        coord = _coordinator(coord_kit, logs / "coordinator.log")
        procs.append(coord)
        body = _wait_for(logs / "coordinator.log", "registered sites:", coord)
        assert ", ".join(sorted(names)) in body
        nodes = {}
        for name, kit in site_kits.items():
            nodes[name] = _start(
                ["from node.cli import app; app()", "run", "-c", "node.toml"], logs / f"{name}.log", kit
            )
            procs.append(nodes[name])
        for name in names:
            _wait_for(logs / f"{name}.log", "node running", nodes[name])

        from coordinator.study.runner import run_remote

        os.environ["REHEALTH_KEY_PASSPHRASE"] = PASSPHRASE  # the study is signed with the kit's key
        try:
            result = run_remote(
                spec_path,
                tmp_path / "operator",
                key_path=coord_kit / "signing" / "coordinator.key",
                superlink=address,
                root_certificates=coord_kit / "ca.crt",
                timeout_s=400,  # minutes on a loaded machine; about one when idle
            )
        finally:
            del os.environ["REHEALTH_KEY_PASSPHRASE"]
        seen |= _tree(procs)
        assert {s.name for s in result.sites if s.status == "ok"} == set(names)
        assert result.outcomes and all(o.se > 0 for o in result.outcomes)
        study_s = time.monotonic() - started

        # revoke the second site, restart the SuperLink: its running SuperNode is refused
        revoked = names[1]
        cp = CliRunner().invoke(federation_app, ["revoke-site", revoked, "--kit", str(coord_kit)])
        assert cp.exit_code == 0, cp.output
        _stop(coord)
        mark = (logs / f"{revoked}.log").stat().st_size
        coord = _coordinator(coord_kit, logs / "coordinator-2.log")
        procs.append(coord)
        body = _wait_for(logs / "coordinator-2.log", "registered sites:", coord)
        assert f"registered sites: {names[0]}\n" in body
        client = ControlClient(
            address,
            root_certificates=coord_kit / "ca.crt",
            credential=CoordinatorCredential.from_file(coord_kit / "superexec.secret"),
        )
        # the kept site's SuperNode is restarted by its `node run` and re-activates with its
        # key; the revoked one is refused at every attempt
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            listed = [{"status": n.status} for n in client.nodes()]
            tail = (logs / f"{revoked}.log").read_bytes()[mark:].decode(errors="replace")
            refused = "Failed to activate SuperNode" in tail  # Flower's exit 305: key not registered
            if [n.get("status") for n in listed] == ["online"] and refused:
                break
            time.sleep(1)
        assert [n.get("status") for n in listed] == ["online"], listed  # the kept site only
        assert refused and "restarting the SuperNode" in tail, tail[-3000:]
        assert nodes[revoked].poll() is None  # still up, still refused: the operator sees why
        seen |= _tree(procs)
    finally:
        for p in procs:
            _stop(p)
    time.sleep(0.5)
    alive = [pid for pid in seen if _alive(pid)]
    assert not alive, alive
    assert len(seen) >= 7  # coordinator run, SuperLink, SuperExec, 2 x (node run, SuperNode, SuperExec)
    print(f"study after {study_s:.1f} s from a cold start; total {time.monotonic() - started:.1f} s")
