"""Faults around a real local federation, driven through the operator's CLI (issue #18).

* **No orphans.** ``rehealth study run --local`` is killed with SIGKILL (no handler runs) and
  with SIGHUP (a closed terminal) while its ServerApp runs a round: within a few seconds no
  process of its federation is left (found by the run's folder in their command line or their
  ``FLWR_HOME``).
* **Fast, named failure.** One SuperNode is killed with SIGKILL mid-study: the ServerApp fails
  within the documented bound (:data:`coordinator.federation.supernode.DETECTION_BOUND_S`) and
  the console's one-line error names the site and the round.
* **A drop is shown.** With ``federation.min_nodes`` allowing it, one SuperNode is stopped
  (SIGSTOP: alive but silent) mid-study: the study completes, the console prints the drop when
  it happens, and the result and the rendered report name the dropped site.
* **Re-runs.** The same study into the same ``--out`` right after a successful run reaches
  every node (each run starts from fresh Flower state); that run is the one whose SuperNode is
  then killed.
* **One run per output folder.** A run into a folder another run holds is refused before any
  federation starts, naming the folder and the holder's pid.

Lean on purpose: three small sites, an exact study (the sites are one owner's), each run
through the real CLI in its own session so a signal reaches only it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from coordinator.federation.supernode import DETECTION_BOUND_S
from coordinator.files import load_spec
from coordinator.study.runner import exclusive_folder
from coordinator.synth import write_federation
from shared.synth import generate_federation

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory) -> Path:
    fed = generate_federation(seed=3, sites=3, scale=0.05)
    return write_federation(fed, tmp_path_factory.mktemp("synth"), epsilon=None)


def _spec_with(spec_path: Path, name: str, extra: str) -> Path:
    path = spec_path.with_name(name)
    path.write_text(spec_path.read_text() + extra)
    return path


class Run:
    """``rehealth study run --local`` in a session of its own, its console in a file."""

    def __init__(self, spec: Path, out: Path, *extra: str):
        self.out = out
        self.work = out.parent / f".{out.stem}-run"  # the CLI's run folder beside --out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.console = out.parent / f"{out.stem}.{self.started:.3f}.console.txt"
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
            COLUMNS="400",  # one line per message: no wrapping inside a site's name
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
        )
        with self.console.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from coordinator.cli.root import main; main()",
                    "study",
                    "run",
                    "--local",
                    "--spec",
                    str(spec),
                    "--out",
                    str(out),
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                cwd=ROOT,
            )

    def text(self) -> str:
        return self.console.read_text(errors="replace")

    def events(self) -> list[dict]:
        path = self.work / "progress.jsonl"
        if not path.exists():
            return []
        lines = (json.loads(line) for line in path.read_text().splitlines() if line.endswith("}"))
        return [e for e in lines if e["t"] >= self.started]  # not a previous run's, not yet cleared

    def wait_for(self, what: str, predicate, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the run ended (rc {self.proc.returncode}) before {what}:\n{self.text()[-3000:]}"
                )
            time.sleep(0.1)
        pytest.fail(f"no {what} within {timeout_s:.0f} s:\n{self.text()[-3000:]}")

    def wait_round(self, round_name: str) -> None:
        self.wait_for(
            f"round {round_name}",
            lambda: any(
                e.get("event") == "round_start" and e.get("round") == round_name for e in self.events()
            ),
        )

    def finish(self, timeout_s: float = 300.0) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the run did not end within {timeout_s:.0f} s:\n{self.text()[-3000:]}")


def federation_procs(folder: Path) -> list[psutil.Process]:
    """Live processes of the federation under ``folder``: the folder in their command line
    (SuperLink, SuperNodes, SuperExecs) or their ``FLWR_HOME`` (app processes and ``flwr``)."""
    mark, found = str(folder), []
    for p in psutil.process_iter():
        try:
            if p.pid == os.getpid() or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(mark in a for a in p.cmdline()) or p.environ().get("FLWR_HOME", "").startswith(mark):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
        except psutil.Error:
            pass
    return out


def _supernode(folder: Path, site: str) -> psutil.Process:
    for p in federation_procs(folder):
        cmd = " ".join(p.cmdline())
        if "flower-supernode" in cmd and f'site="{site}"' in cmd:
            return p
    raise AssertionError(f"no SuperNode of {site} under {folder}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_killing_the_coordinator_leaves_no_process_of_its_federation(spec_path, tmp_path, sig):
    run = Run(spec_path, tmp_path / "result.json")
    # the ServerApp is running a round: every kind of process is up
    run.wait_round("describe")
    run.wait_for(
        "a ServerApp process",
        lambda: any("serverapp" in " ".join(p.cmdline()) for p in federation_procs(run.work)),
    )
    before = federation_procs(run.work)
    kinds = " ".join(" ".join(p.cmdline()) for p in before)
    assert all(k in kinds for k in ("rehealth-superlink", "flower-supernode", "superexec", "serverapp"))
    killed_at = time.monotonic()
    os.kill(run.proc.pid, sig)
    run.proc.wait(timeout=30)
    left = federation_procs(run.work)
    while left and time.monotonic() - killed_at < 10:
        time.sleep(0.1)
        left = federation_procs(run.work)
    print(
        f"{sig.name}: {len(before)} federation processes before, {len(left)} left "
        f"after {time.monotonic() - killed_at:.1f} s"
    )
    assert not left, f"{len(left)} of {len(before)} processes survived {sig.name}:\n" + "\n".join(
        _describe(left)
    )


@pytest.fixture(scope="module")
def dropped_run(spec_path, tmp_path_factory):
    """One study with ``min_nodes = 2`` of 3 whose third site's SuperNode is stopped (SIGSTOP)
    during the Newton rounds; it must finish without it, its report signed and rendered."""
    from coordinator.report import ensure_keypair

    folder = tmp_path_factory.mktemp("dropped")
    # tol 1e-4: three Newton rounds fewer than the default's 1e-8 (each round of ClientApp
    # processes costs ~6 s); the estimate is beside the point here
    spec = _spec_with(spec_path, "study-min2.toml", "\n[federation]\nmin_nodes = 2\ntol = 1e-4\n")
    key, _pub = ensure_keypair(folder / "report-keys")
    out = folder / "out" / "result.json"
    run = Run(spec, out, "--report-key", str(key))
    run.wait_round("ps-fit-1")
    victim = load_spec(spec).sites[-1].name
    _supernode(run.work, victim).suspend()
    stopped = time.time()
    rc = run.finish()
    assert rc == 0, run.text()[-3000:]
    dropped = next(e for e in run.events() if e.get("event") == "dropped")
    return {
        "run": run,
        "spec": spec,
        "victim": victim,
        "key": key,
        "detected_s": dropped["t"] - stopped,
        "dropped": dropped,
    }


def test_a_min_nodes_drop_is_printed_and_in_the_result_and_report(dropped_run):
    run, victim = dropped_run["run"], dropped_run["victim"]
    print(f"stopped SuperNode dropped after {dropped_run['detected_s']:.1f} s")
    assert dropped_run["dropped"]["site"] == victim
    assert dropped_run["detected_s"] <= DETECTION_BOUND_S + 3
    console = run.text()
    line = next(line for line in console.splitlines() if "dropped in round" in line)
    assert f"site {victim} dropped in round ps-fit-" in line, line
    result = json.loads(run.out.read_text())
    sites = {s["name"]: s for s in result["sites"]}
    assert sites[victim]["status"] == "failed" and "dropped in round ps-fit-" in sites[victim]["error"]
    assert all(s["status"] == "ok" for name, s in sites.items() if name != victim)
    assert any(victim in w for w in result["warnings"])
    html = next(run.out.parent.glob("*.html")).read_text()
    assert victim in html and "dropped in round" in html
    assert not federation_procs(run.work)


def test_a_rerun_right_after_passes_describe_and_a_killed_supernode_fails_it_fast_by_name(
    spec_path, dropped_run
):
    """The same ``--out`` right after the run above: describe reaches every (fresh) node — where
    a re-run used to fail, addressing the previous run's nodes still "online" in the SuperLink's
    database. Then one SuperNode is killed: the study fails within the bound, the console's one
    line naming site and round. (One federation for both: each costs a minute of CI.)"""
    first = dropped_run["run"]
    run = Run(spec_path, first.out)
    run.wait_round("ps-fit-1")  # describe answered: every node is known by its site
    described = next(e for e in run.events() if e.get("event") == "round_end")
    assert sorted(described["sites"]) == sorted(s.name for s in load_spec(spec_path).sites)
    victim = load_spec(spec_path).sites[1].name
    _supernode(run.work, victim).kill()
    killed = time.time()
    rc = run.finish()
    error_file = run.work / "error.json"
    assert rc == 1 and error_file.exists(), run.text()[-3000:]
    detected_s = error_file.stat().st_mtime - killed
    print(
        f"killed SuperNode detected after {detected_s:.1f} s; CLI exited after {time.time() - killed:.1f} s"
    )
    assert detected_s <= DETECTION_BOUND_S + 3, f"detected after {detected_s:.1f} s"
    failure = next(line for line in run.text().splitlines() if "study failed:" in line)
    assert f"site {victim}" in failure and "round ps-fit-" in failure, failure
    error = json.loads(error_file.read_text())
    assert error["node"] == victim and error["round"].startswith("ps-fit-"), error
    assert not federation_procs(run.work), _describe(federation_procs(run.work))


def test_a_second_run_into_a_held_output_folder_is_refused_naming_it(spec_path, tmp_path):
    out = tmp_path / "result.json"
    work = tmp_path / ".result-run"
    with exclusive_folder(work):  # this test process is "the other run"
        run = Run(spec_path, out)
        rc = run.finish(timeout_s=120)
    text = " ".join(run.text().split())
    assert rc == 1, text
    assert str(work) in text and f"pid {os.getpid()}" in text, text
    assert not (work / "federation").exists()  # refused before any federation started
    assert not federation_procs(work)
