"""Studies from the operator's workstation (issue #20, item 3), against a real TLS federation.

The operator runs ``rehealth study run --superlink HOST:PORT`` in a mount namespace of its own
where a fresh tmpfs covers the folder holding the SuperLink's files: it sees none of them and
the SuperLink's host sees none of the operator's. The operator gets only what an operator
has — the spec, the CA certificate, the signing key — through a tar on stdin,
and hands back its whole folder as a tar on stdout. Before this change the ServerApp read the
spec from a path and wrote the result and progress on the SuperLink's host, so this run could
not have finished.

Then ``study list|status|logs|stop`` against the same SuperLink, a missing site named by name
before any run starts, and the Control API client itself: nodes listed by site, a SuperLink
whose certificate another CA signed refused.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.cli.study import app as study_app
from coordinator.federation.control import ControlClient
from coordinator.federation.launcher import LocalFederation
from coordinator.federation.pki import FederationPKI
from coordinator.files import load_spec
from coordinator.report.keys import DEMO_PASSPHRASE_NAME, PASSPHRASE_ENV, PASSPHRASE_FILE_ENV
from coordinator.study.runner import APP_DIR, coordinator_keys, site_nodes, spec_json
from coordinator.synth import write_federation
from shared.errors import FederationError
from shared.result import StudyResult
from shared.synth import generate_federation

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def coordinator_host(tmp_path_factory):
    """A TLS federation of two sites on 127.0.0.1 (the coordinator's host), its nodes pinning
    the operator's key; the operator's inputs staged apart."""
    base = tmp_path_factory.mktemp("coordinator-host")
    synth = generate_federation(seed=11, sites=2, scale=0.03)
    spec_path = write_federation(synth, base / "data", epsilon=None)
    # three Newton rounds fewer than the default tolerance: the estimate is beside the point
    spec_path.write_text(spec_path.read_text() + "\n[federation]\ntol = 1e-4\n")
    # the operator's own key and passphrase file, not one an earlier test left configured in
    # this process's environment (ensure_keypair would reuse that passphrase, and write no file)
    saved = {k: os.environ.pop(k) for k in (PASSPHRASE_ENV, PASSPHRASE_FILE_ENV) if k in os.environ}
    try:
        key, pub = coordinator_keys(base / "operator-keys")
        spec = load_spec(spec_path)
        with LocalFederation(base / "fed", site_nodes(spec, base / "fed", pub)) as fed:
            yield {"fed": fed, "spec_path": spec_path, "spec": spec, "key": key, "pub": pub, "base": base}
    finally:
        os.environ.pop(PASSPHRASE_FILE_ENV, None)
        os.environ.update(saved)


def _operator_inputs(host) -> bytes:
    """What the operator's workstation holds: spec, CA certificate, signing key pair."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(host["spec_path"], arcname="study.toml")
        tar.add(host["fed"].pki.ca_cert, arcname="ca.crt")
        tar.add(host["key"], arcname="keys/coordinator.key")
        tar.add(host["pub"], arcname="keys/coordinator.pub")
        # the key is encrypted at rest; the operator holds its passphrase (ensure_keypair wrote it)
        tar.add(Path(host["key"]).with_name(DEMO_PASSPHRASE_NAME), arcname="keys/passphrase")
    return buf.getvalue()


OPERATOR_SCRIPT = r"""
set -e
# a fresh tmpfs over the folder that holds every other party's files (not over /tmp:
# the checkout and its venv may live there)
mount -t tmpfs -o mode=0700 operator "$HIDE"
mkdir "$HIDE/op" && cd "$HIDE/op"
tar -xf -
export HOME="$HIDE/op" FLWR_HOME="$HIDE/op/.flwr" PYTHONDONTWRITEBYTECODE=1 COLUMNS=200
unset REHEALTH_KEY_PASSPHRASE
export REHEALTH_KEY_PASSPHRASE_FILE="$HIDE/op/keys/passphrase"
set +e
"$PY" -c 'from coordinator.cli.root import main; main()' study run --superlink "$ADDR" \
    --root-certificates ca.crt --spec study.toml --key keys/coordinator.key --out result.json \
    --format json --connect-timeout 30 --timeout 400 >stdout.json 2>console.txt
echo $? >rc
tar -cf - .
"""


def test_a_study_from_a_workstation_that_shares_no_files_with_the_superlink(coordinator_host):
    fed = coordinator_host["fed"]
    started = time.time()
    cp = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", OPERATOR_SCRIPT],
        input=_operator_inputs(coordinator_host),
        capture_output=True,
        env=dict(
            os.environ,
            PY=sys.executable,
            ADDR=f"127.0.0.1:{fed.port}",
            HIDE=str(coordinator_host["base"]),
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
        ),
        timeout=600,
    )
    assert cp.returncode == 0, cp.stderr.decode(errors="replace")[-3000:]
    with tarfile.open(fileobj=io.BytesIO(cp.stdout)) as tar:
        files = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    console = files["console.txt"].decode(errors="replace")
    assert files["rc"].strip() == b"0", console[-3000:]
    # the operator's folder holds what it brought and what it wrote, nothing else
    brought = {"study.toml", "ca.crt", "keys/coordinator.key", "keys/coordinator.pub", "keys/passphrase"}
    wrote = {"stdout.json", "console.txt", "rc", "result.json"}
    record = {".result-run/progress.jsonl", ".result-run/result.json", ".result-run/run.lock"}
    assert set(files) == brought | wrote | record, sorted(files)
    result = StudyResult.model_validate_json(files["result.json"])
    assert {s.name: s.status for s in result.sites} == {s.name: "ok" for s in coordinator_host["spec"].sites}
    printed = json.loads(files["stdout.json"])
    assert printed["outcomes"]
    events = [json.loads(line) for line in files[".result-run/progress.jsonl"].decode().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "submitted" and "round_end" in kinds and kinds[-1] == "done", kinds
    run_id = events[0]["run_id"]
    assert printed["run-id"] == run_id
    # the SuperLink's host got no file of the study: no result, progress or error anywhere, and
    # not the operator's path in any file (the spec travelled in the run, not as a path)
    for path in fed.workdir.rglob("*"):
        if path.is_file():
            assert path.name not in ("result.json", "progress.jsonl", "error.json"), path
            assert str(coordinator_host["base"] / "op").encode() not in path.read_bytes(), path
    assert all(e["t"] >= started - 1 for e in events)  # this run's events, sent as they happened
    coordinator_host["run_id"] = run_id


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(study_app, list(args))
    return r.exit_code, r.output


def test_study_list_status_and_logs_show_the_finished_run(coordinator_host):
    fed = coordinator_host["fed"]
    run_id = coordinator_host.get("run_id")
    if run_id is None:  # the study test above did not get that far
        pytest.fail("no study run to look at (see the test above)")
    conn = ["--superlink", f"127.0.0.1:{fed.port}", "--root-certificates", str(fed.pki.ca_cert)]
    conn += ["--key", str(coordinator_host["key"])]
    rc, out = _cli("list", *conn, "--format", "json")
    assert rc == 0, out
    runs = {r["run-id"]: r for r in json.loads(out)["runs"]}
    assert runs[run_id]["status"] == "finished:completed"
    rc, out = _cli("status", str(run_id), *conn, "--format", "json")
    assert rc == 0, out
    status = json.loads(out)
    assert status["status"] == "finished:completed" and status["last-event"]["event"] == "done"
    assert status["error"] is None
    rc, out = _cli("logs", str(run_id), *conn, "--format", "json")
    assert rc == 0, out
    kinds = [e["event"] for e in json.loads(out)["events"]]
    assert kinds[0] == "started" and "connected" in kinds and kinds[-1] == "done"
    rc, out = _cli("logs", str(run_id), *conn)
    assert rc == 0 and "» " in out and " done " in out, out
    rc, out = _cli("status", "999999", *conn)
    assert rc == 1 and "run 999999" in out and "not found" in out, out


def _spec_with_ghost(host) -> Path:
    """The study over its two sites and a third, "ghost", whose node never connects."""
    path = host["base"] / "data" / "ghost.toml"
    path.write_text(host["spec_path"].read_text() + '\n[[sites]]\nname = "ghost"\n')
    return path


def test_a_missing_site_is_named_and_no_run_starts(coordinator_host, tmp_path):
    fed = coordinator_host["fed"]
    before = {r.run_id for r in fed.control.runs()}
    rc, out = _cli(
        "run",
        "--superlink",
        f"127.0.0.1:{fed.port}",
        "--root-certificates",
        str(fed.pki.ca_cert),
        "--spec",
        str(_spec_with_ghost(coordinator_host)),
        "--key",
        str(coordinator_host["key"]),
        "--out",
        str(tmp_path / "result.json"),
        "--connect-timeout",
        "2",
    )
    text = " ".join(out.split())
    assert rc == 1, text
    sites = [s.name for s in coordinator_host["spec"].sites]
    assert "site(s) ghost not connected" in text and f"2 of 3 sites online: {', '.join(sites)}" in text, text
    assert {r.run_id for r in fed.control.runs()} == before  # refused before any run


def test_study_stop_ends_a_running_run(coordinator_host):
    fed = coordinator_host["fed"]
    spec = load_spec(_spec_with_ghost(coordinator_host))
    # started past the site check: its ServerApp waits for the ghost's node
    run_id = fed.control.start_run(APP_DIR, {"spec": spec_json(spec), "connect-timeout": 300.0})
    deadline = time.monotonic() + 120
    while fed.control.status(run_id) != "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert fed.control.status(run_id) == "running"
    conn = ["--superlink", f"127.0.0.1:{fed.port}", "--root-certificates", str(fed.pki.ca_cert)]
    conn += ["--key", str(coordinator_host["key"])]
    rc, out = _cli("stop", str(run_id), *conn, "--format", "json")
    assert rc == 0, out
    assert json.loads(out)["stopped"] is True
    while not fed.control.status(run_id).startswith("finished") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert fed.control.status(run_id) == "finished:stopped"


def test_the_control_client_names_nodes_by_site_and_pins_its_ca(coordinator_host, tmp_path):
    fed = coordinator_host["fed"]
    online = {n.name for n in fed.control.nodes() if n.status == "online"}
    assert online == {s.name for s in coordinator_host["spec"].sites}
    with pytest.raises(FederationError, match="run 987654321 .*not (found|known)"):
        fed.control.run(987654321)
    other = FederationPKI.create(tmp_path / "other-ca", [])
    with ControlClient(f"127.0.0.1:{fed.port}", root_certificates=other.ca_cert) as c:
        with pytest.raises(FederationError, match="cannot reach|certificate"):
            c.runs()
    shutil.rmtree(tmp_path / "other-ca")
