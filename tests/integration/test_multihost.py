"""A federation across hosts (issue #20, item 6): every party on a network of its own.

A coordinator, three sites and the operator's workstation each get a Linux network namespace
with its own address on 10.77.0.0/24 (``tests/netns.py``: veth pairs to a private switch). The
federation is set up exactly as ``deploy/MULTIHOST.md`` tells a newcomer: ``rehealth federation
provision`` writes the kits for a coordinator at ``10.77.0.1:9093``, each host gets its own copy
of its kit, ``rehealth coordinator run --kit`` and ``rehealth node run -c node.toml`` start the
SuperLink and the SuperNodes (TLS pinned to the kit's CA, node authentication, signed studies),
and the operator runs ``rehealth study run --superlink 10.77.0.1:9093`` from its own namespace —
also in a mount namespace where a fresh tmpfs covers the test's folder (every host's files), so it
shares no file with anyone.

1. A DP study (ε = 3, ``federation.min_nodes = 2``) starts over the three sites, and one site's
   cable is pulled after the first propensity round (``ip link set … down`` at the switch): the
   study completes without that site and names it, or fails naming it — nothing else is
   acceptable (a hang, an unnamed error).
2. The cable is plugged back: the node re-joins by itself, and the same study run again completes
   on all three sites (the full study; its wall time and rounds are printed). A re-run that
   still loses the restored site is allowed once, reported as a warning with its reason and the
   site's log (seen once in CI, cause not yet known); the next must reach all three.

At the end no site's ledger shows less ε than the results say was released there (read from
each node's own ledger file), and at the end every namespace is empty: no process is left.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import pytest
from netns import Network
from typer.testing import CliRunner

from coordinator.cli.federation import app as federation_app
from coordinator.synth import write_federation
from node.ledger import PrivacyLedger
from shared.dp.accounting import epsilon_of_history
from shared.result import StudyResult
from shared.synth import generate_federation

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "multihost-test-passphrase"
PORT = 9093
CLI = "from coordinator.cli.root import main; main()"

# The operator's workstation: a fresh folder nobody else sees, its inputs untarred from stdin, its
# console (progress, then the outcome or the error) on stderr, a file the test reads as it grows,
# and its whole folder tarred to stdout at the end.
OPERATOR_NAME = "Multihost Evidence Operator"
OPERATOR_SCRIPT = r"""
set -e
# a fresh tmpfs over the folder that holds every other party's files (not over /tmp:
# the checkout and its venv may live there)
mount -t tmpfs -o mode=0700 operator "$HIDE"
mkdir "$HIDE/op" && cd "$HIDE/op"
tar -xf -
export HOME="$HIDE/op" FLWR_HOME="$HIDE/op/.flwr" PYTHONDONTWRITEBYTECODE=1 COLUMNS=400
set +e
"$PY" -c "$CLI" study run --superlink "$ADDR" --root-certificates ca.crt --spec study.toml \
    --key keys/coordinator.key --out result.json \
    --connect-timeout "$CONNECT" --timeout 400 >&2
echo $? >rc
if [ "$(cat rc)" = 0 ]; then
  # the signed evidence report, on the operator's side, checked as a reader would: against the CA
  "$PY" -c "$CLI" report render result.json --key keys/coordinator.key --out report >&2
  "$PY" -c "$CLI" report verify report/report.json --ca ca.crt --format json >verify.json
  echo $? >verify.rc
fi
tar -cf - .
"""


def _env(**extra: str) -> dict:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        REHEALTH_KEY_PASSPHRASE=PASSPHRASE,
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        **extra,
    )


class Operator:
    """One ``rehealth study run`` on the operator's host, in the background."""

    def __init__(self, net: Network, inputs: bytes, folder: Path, connect_timeout: int = 60):
        folder.mkdir(parents=True)
        self.folder = folder
        (folder / "in.tar").write_bytes(inputs)
        self.started = time.monotonic()
        with open(folder / "in.tar", "rb") as stdin, open(folder / "out.tar", "wb") as out:
            with open(folder / "console.txt", "wb") as err:
                self.proc = subprocess.Popen(
                    net.cmd("operator", ["unshare", "--mount", "--propagation", "private"])
                    + ["sh", "-c", OPERATOR_SCRIPT],
                    stdin=stdin,
                    stdout=out,
                    stderr=err,
                    env=_env(
                        PY=sys.executable,
                        CLI=CLI,
                        ADDR=f"{net.address('coordinator')}:{PORT}",
                        CONNECT=str(connect_timeout),
                        HIDE=str(folder.parent),  # the test's folder: every host's files
                    ),
                    start_new_session=True,
                )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def console(self) -> str:
        return (self.folder / "console.txt").read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.console():
            assert self.proc.poll() is None, f"operator ended before {text!r}:\n{self.console()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in {timeout_s} s:\n{self.console()[-3000:]}"
            time.sleep(0.2)

    def finish(self, timeout_s: float = 500) -> tuple[int, dict[str, bytes]]:
        assert self.proc.wait(timeout=timeout_s) == 0, self.console()[-3000:]
        self.seconds = time.monotonic() - self.started
        with tarfile.open(self.folder / "out.tar") as tar:
            files = {
                m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()
            }
        return int(files["rc"]), files


def _provision(tmp_path: Path, net: Network, sites: list[str], synth: Path) -> dict[str, Path]:
    """``rehealth federation provision``, then each kit copied to its host's own folder."""
    coordinator = f"{net.address('coordinator')}:{PORT}"
    entries = "".join(f'[[sites]]\nname = "{s}"\n\n' for s in sites)
    (tmp_path / "federation.toml").write_text(
        f'name = "multihost"\ncoordinator = "{coordinator}"\noperator = "{OPERATOR_NAME}"\n\n{entries}'
    )
    cp = CliRunner().invoke(
        federation_app,
        ["provision", str(tmp_path / "federation.toml"), "--out", str(tmp_path / "kits")],
        env={"REHEALTH_KEY_PASSPHRASE": PASSPHRASE},
    )
    assert cp.exit_code == 0, cp.output
    kits = {"coordinator": tmp_path / "hosts" / "coordinator" / "kit"}
    shutil.copytree(tmp_path / "kits" / "coordinator", kits["coordinator"])
    for s in sites:
        kit = kits[s] = tmp_path / "hosts" / s / "kit"
        shutil.copytree(tmp_path / "kits" / "sites" / s, kit)
        shutil.copy(synth / s / "cohort.csv", kit / "cohort.csv")
        toml = kit / "node.toml"
        toml.write_text(
            toml.read_text().replace('# data_path = "data/cohort.csv"', 'data_path = "cohort.csv"')
        )
    shutil.rmtree(tmp_path / "kits")
    return kits


def _start(net: Network, host: str, args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            net.cmd(host, [sys.executable, "-c", CLI, *args]),
            cwd=cwd,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _wait_log(log: Path, text: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (body := log.read_text(errors="replace") if log.exists() else ""):
        assert proc.poll() is None, f"{log.name} exited early:\n{body[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} not in {log.name} in {timeout_s} s:\n{body[-3000:]}"
        time.sleep(0.2)


def _listening(net: Network, host: str) -> set[str]:
    """The TCP addresses a host listens on (``ss`` inside its namespace)."""
    out = subprocess.run(net.cmd(host, ["ss", "-ltnH"]), capture_output=True, text=True, check=True).stdout
    return {line.split()[3] for line in out.splitlines()}


def _operator_inputs(spec: Path, kit: Path) -> bytes:
    """What the operator's workstation holds: the spec, the CA certificate, the signing keys."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(spec, arcname="study.toml")
        tar.add(kit / "ca.crt", arcname="ca.crt")
        tar.add(kit / "signing" / "coordinator.key", arcname="keys/coordinator.key")
        tar.add(kit / "signing" / "coordinator.pub", arcname="keys/coordinator.pub")
        tar.add(kit / "signing" / "coordinator.crt", arcname="keys/coordinator.crt")  # the CA's word
    return buf.getvalue()


def _ledger(kit: Path) -> tuple[float, list[float]]:
    """The node's own ledger: ε spent in all, and ε charged for each study it answered, oldest
    first (its accountant over that study's releases alone)."""
    ledger = PrivacyLedger(f"sqlite:///{kit / 'ledger.db'}")
    state = ledger.state()
    studies: dict[str, list[tuple[float, float, int]]] = {}
    for r in ledger.history():
        studies.setdefault(r.study_id, []).append((r.noise_multiplier, r.sample_rate, r.steps))
    per_study = [
        epsilon_of_history(history=h, delta=state.delta, accountant=ledger.accountant)
        for h in studies.values()
    ]
    return state.spent, per_study


def _tail(log: Path, lines: int = 60) -> str:
    """The end of a party's log, for a failure message: what the SuperNode or SuperLink saw."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _rounds(result: StudyResult) -> str:
    return ", ".join(f"{r.name} {r.seconds:.1f}" for r in result.rounds)


def test_a_federation_across_network_namespaces(tmp_path):
    synth = generate_federation(seed=7, sites=3, scale=0.03)
    spec = write_federation(synth, tmp_path / "synth", epsilon=3.0)  # two runs within a budget of 10
    spec.write_text(spec.read_text() + "\n[federation]\nmin_nodes = 2\ntol = 1e-2\n")
    sites = [s.name for s in synth.sites]
    victim = sites[-1]
    released: dict[str, list[float | None]] = {s: [] for s in sites}  # per run, as the results claim
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    operators: list[Operator] = []
    with Network(["coordinator", *sites, "operator"]) as net:
        try:
            kits = _provision(tmp_path, net, sites, tmp_path / "synth")
            inputs = _operator_inputs(spec, kits["coordinator"])
            coord = _start(
                net,
                "coordinator",
                ["coordinator", "run", "--kit", str(kits["coordinator"])],
                kits["coordinator"].parent,
                logs / "coordinator.log",
            )
            procs.append(coord)
            _wait_log(logs / "coordinator.log", "registered sites:", coord)
            for s in sites:
                procs.append(_start(net, s, ["node", "run", "-c", "node.toml"], kits[s], logs / f"{s}.log"))
            for s, p in zip(sites, procs[1:], strict=True):
                _wait_log(logs / f"{s}.log", "node running", p)
            # the SuperLink on its host's address only; a node accepts no connection from the
            # network (its Runtime API stays on its own loopback)
            expected = {"coordinator": {f"{net.address('coordinator')}:{PORT}"}}
            expected |= {s: {"127.0.0.1:9094"} for s in sites}
            deadline = time.monotonic() + 60  # a SuperNode binds its Runtime API once it is in
            while (found := {h: _listening(net, h) for h in expected}) != expected:
                assert time.monotonic() < deadline, found
                time.sleep(0.5)

            # 1. a DP study from the operator's host; the victim's cable pulled mid-study
            op = Operator(net, inputs, tmp_path / "run-1")
            operators.append(op)
            op.wait_for("round ps-fit-1:")
            net.cut(victim)
            cut_at = time.monotonic()
            rc, files = op.finish()
            print(f"cut run ended {time.monotonic() - cut_at:.1f} s after the cut (rc {rc})")
            text = " ".join(op.console().split())
            if rc == 0:
                first = StudyResult.model_validate_json(files["result.json"])
                status = {x.name: x.status for x in first.sites}
                assert status == {**dict.fromkeys(sites, "ok"), victim: "failed"}, status
                assert any(victim in w for w in first.warnings), first.warnings
                assert f"site {victim} dropped in round" in text, text[-3000:]
                for s in sites:  # the victim's releases before it dropped, if the result counts them
                    released[s].append(first.privacy.per_site.get(s))
            else:
                assert rc == 1 and f"site {victim}" in text and "Traceback" not in text, text[-3000:]
                for s in sites:
                    released[s].append(None)  # no result: nothing claimed, the ledger still has it

            # 2. the cable back: the node re-joins by itself, a re-run reaches all three. One
            # re-run may still lose the victim (seen once in CI, 2026-12-07: listed by the
            # SuperLink, then failed in its first round, reason not captured); the operator's
            # answer is to run again, so a second re-run must reach all three, and the first's
            # reason is reported as a warning (CI output) so the cause can be found.
            net.restore(victim)
            for attempt in (2, 3):
                op = Operator(net, inputs, tmp_path / f"run-{attempt}", connect_timeout=120)
                operators.append(op)
                rc, files = op.finish()
                assert rc == 0, op.console()[-3000:]
                second = StudyResult.model_validate_json(files["result.json"])
                status = {x.name: x.status for x in second.sites}
                if status == dict.fromkeys(sites, "ok"):
                    break
                assert attempt == 2, (status, second.warnings, _tail(logs / f"{victim}.log"))
                warnings.warn(
                    f"re-run after the cable came back lost {victim}: {status}; {second.warnings}; "
                    f"victim log: {_tail(logs / f'{victim}.log', 25)}",
                    stacklevel=1,
                )
                for s in sites:
                    released[s].append(second.privacy.per_site.get(s))
            # a signed report on the operator's side that the federation's CA vouches for
            assert files.get("verify.rc") == b"0\n", (files.get("verify.json"), op.console()[-3000:])
            verified = json.loads(files["verify.json"])
            assert verified["certified_issuer"] == OPERATOR_NAME and "report/report.pdf" in files, verified
            assert second.outcomes and second.privacy.enabled
            for s in sites:
                released[s].append(second.privacy.per_site[s])
            for s in sites:
                # a result's per-site ε is what that study charged at the node: the ledger
                # now holds at least every claim, and releases of every run (the victim's first
                # until its cable was pulled)
                total, per_study = _ledger(kits[s])
                assert all(total >= c - 1e-9 for c in released[s] if c is not None), (s, total, released[s])
                assert 2 <= len(per_study) <= len(released[s]) and min(per_study) > 0, (s, per_study)
                assert per_study[-1] >= second.privacy.epsilon - 1e-6, (s, per_study)  # run 2: its whole ε
            print(f"re-run, all three sites: {op.seconds:.1f} s; rounds (s): {_rounds(second)}")
        finally:
            for op in operators:
                op.kill()
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=30)
        time.sleep(0.5)
        left = {h: net.pids(h) for h in net.names if net.pids(h)}
        assert not left, f"processes left in namespaces: {left}"
