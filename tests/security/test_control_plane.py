"""The control plane of a local federation, attacked by a hostile local process (issue #16, item 5).

Each attack below worked against the launcher before this change (``--insecure``, no SuperNode
authentication, no SuperExec auth secret, tokens on command lines, 0644 state): the report of
the ``ctrl`` branch lists what each got then. Here each must fail against the default launcher.
One federation (two guarded SuperNodes) and one live run serve the whole module.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time

import pytest

from coordinator.federation.launcher import LocalFederation, NodeSpec

from . import attacks

pytestmark = pytest.mark.integration

SITES = ("a", "b")

APP = textwrap.dedent("""
    import json, time
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    client = ClientApp()
    server = ServerApp()

    @server.main()
    def main(grid, context):
        while len(list(grid.get_node_ids())) < 2:
            time.sleep(0.2)
        time.sleep(2)  # long enough for a `ps` sampler to see this process
        msgs = [Message(RecordDict({"q": ConfigRecord({"x": 1})}), dst_node_id=n,
                        message_type="query.ping") for n in grid.get_node_ids()]
        replies = list(grid.send_and_receive(msgs, timeout=90))
        open(context.run_config["out"], "w").write(json.dumps(len(replies)))
""")

PYPROJECT = textwrap.dedent("""
    [build-system]
    requires = ["hatchling"]
    build-backend = "hatchling.build"
    [project]
    name = "probe"
    version = "0.1.0"
    dependencies = []
    [tool.flwr.app]
    publisher = "tests"
    [tool.flwr.app.components]
    serverapp = "probe_app:server"
    clientapp = "probe_app:client"
    [tool.flwr.app.config]
    out = ""
""")


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("control-plane") / "fed"
    nodes = [NodeSpec(s, {"data-path": str(workdir.parent / "none.csv")}) for s in SITES]
    with LocalFederation(workdir, nodes) as federation:
        yield federation


def _pids(fed: LocalFederation) -> list[int]:
    return [p.pid for p in fed.procs.values()]


@pytest.fixture(scope="module")
def live_run(fed, tmp_path_factory):
    """Submit a run and, while it runs, race the SuperExec for its ServerApp task and sample
    every command line in the federation's process tree (what ``ps`` shows any local user)."""
    base = tmp_path_factory.mktemp("live-run")
    app = base / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "probe_app.py").write_text(APP)
    out = base / "out.json"
    secret = fed.pki.superexec_secret.read_bytes()
    seen: set[str] = set()
    leaks: list[str] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            leaks.extend(attacks.cmdline_leaks(_pids(fed), [secret]))
            for p in attacks._tree(_pids(fed)):
                try:
                    seen.add(" ".join(p.cmdline()))
                except Exception:  # noqa: BLE001 - a process that just ended
                    pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    race: list = []
    started = threading.Event()
    racer = threading.Thread(
        target=lambda: race.append(
            attacks.race_for_task(
                fed.port, "flwr-serverapp", ca_cert=fed.pki.ca_cert, seconds=8, started=started
            )
        )
    )
    racer.start()
    started.wait(10)
    run_id = fed.control.start_run(app, {"out": str(out)})
    racer.join()
    status = fed.control.wait(run_id, timeout_s=180)
    done.set()
    sampler.join()
    return {
        "status": status,
        "race": race[0],
        "leaks": leaks,
        "seen": seen,
        "out": out.read_text() if out.exists() else None,
    }


# -- a ---------------------------------------------------------------------------------------
def test_a_plaintext_client_cannot_talk_to_the_superlink(fed, tmp_path):
    cp = attacks.plaintext_list_runs(tmp_path / "mallory", fed.port)
    out = json.loads(cp.stdout) if cp.stdout.strip().startswith("{") else {}
    assert out.get("success") is not True and "runs" not in out, cp.stdout + cp.stderr
    # ... while the launcher's own client, pinning the federation's CA, does
    assert fed.control.runs() is not None


# -- b ---------------------------------------------------------------------------------------
def test_b_unregistered_supernode_never_joins(fed, tmp_path):
    def registered_ids() -> set[str]:
        return {n.node_id for n in fed.control.nodes()}

    before = registered_ids()
    assert len(before) == len(SITES)
    rogues = [
        attacks.rogue_supernode(
            tmp_path, fed.port, ca_cert=fed.pki.ca_cert, with_key=True, log_name="unregistered-key"
        ),
        attacks.rogue_supernode(
            tmp_path, fed.port, ca_cert=fed.pki.ca_cert, with_key=False, log_name="no-key"
        ),
        attacks.rogue_supernode(tmp_path, fed.port, ca_cert=None, with_key=False, log_name="plaintext"),
    ]
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert registered_ids() == before
            time.sleep(0.5)
    finally:
        for p in rogues:
            p.kill()
            p.wait(timeout=10)
    assert registered_ids() == before


# -- c ---------------------------------------------------------------------------------------
def test_c_superlink_runtime_api_refuses_acquire_task_without_the_secret(fed):
    res = attacks.acquire_task(fed.port, "flwr-serverapp", ca_cert=fed.pki.ca_cert)
    assert not res.ok and not res.token
    assert "401" in res.error or "403" in res.error or "authentication" in res.error.lower(), res


def test_c_supernode_runtime_apis_refuse_acquire_task_without_the_secret(fed):
    ports = attacks.runtime_ports(_pids(fed))
    assert set(ports) == set(SITES)
    for site, port in ports.items():
        for ca in (fed.pki.ca_cert, None):  # trusting the CA, and in plaintext
            res = attacks.acquire_task(port, "flwr-clientapp", ca_cert=ca)
            assert not res.ok and not res.token, (site, ca, res)


def test_c_racing_the_executor_for_a_live_runs_serverapp_task_fails(live_run):
    race = live_run["race"]
    assert not race.ok and not race.token, race
    # the run itself went through: the executor, holding the secret, got the task
    assert live_run["status"] == "finished:completed", live_run
    assert live_run["out"] == "2"


# -- d ---------------------------------------------------------------------------------------
def test_d_no_token_or_secret_on_any_command_line(live_run):
    assert live_run["leaks"] == []
    apps = [c for c in live_run["seen"] if "flwr-serverapp" in c or "flwr-clientapp" in c]
    assert any("flwr-serverapp" in c for c in apps), "the sampler never saw the ServerApp"
    assert all("--token-file /dev/fd/" in c for c in apps), apps


# -- e ---------------------------------------------------------------------------------------
def test_e_every_file_of_the_federation_is_private(fed, live_run):
    assert live_run["status"].startswith("finished")
    assert attacks.loose_modes(fed.workdir) == []


# -- f ---------------------------------------------------------------------------------------
def test_f_the_control_api_answers_no_caller_without_a_control_token(fed, live_run, tmp_path):
    """Before control tokens, anyone trusting the CA listed runs, read a run's log (where the
    study's result travels) and stopped runs: Flower's open-source Control API takes any caller."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from coordinator.federation.control import ControlClient
    from coordinator.federation.control_auth import CoordinatorCredential, OperatorCredential
    from shared.errors import FederationError

    assert live_run["status"] == "finished:completed"
    (run,) = fed.control.runs(limit=1)
    cp = attacks.tls_list_runs(tmp_path / "mallory", fed.port, fed.pki.ca_cert)
    listed = json.loads(cp.stdout) if cp.stdout.strip().startswith("{") else {}
    assert listed.get("success") is not True and not listed.get("runs"), cp.stdout + cp.stderr
    forged = {
        "no token": None,
        "another secret": CoordinatorCredential(b"x" * 32),
        "another operator key": OperatorCredential(Ed25519PrivateKey.generate()),
    }
    for what, credential in forged.items():
        with ControlClient(
            f"127.0.0.1:{fed.port}", root_certificates=fed.pki.ca_cert, credential=credential, timeout_s=10
        ) as mallory:
            for call in (mallory.runs, mallory.nodes, lambda: mallory.logs(run.run_id)):
                with pytest.raises(FederationError):
                    call()
                    pytest.fail(f"{what}: a Control API call went through")
    log = (fed.workdir / "logs" / "superlink.log").read_text(errors="replace")
    assert "control API call refused: no token" in log and "wrong MAC" in log
    assert "pins no operator key" in log or "not signed by the pinned operator key" in log
    assert fed.control.run(run.run_id).status == "finished:completed"  # the coordinator's own client
