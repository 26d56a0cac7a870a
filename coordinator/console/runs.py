"""Studies started from the console: one folder and one thread per run.

A run is started only from a **registered** study (``studies/<name>/study.toml`` with the
``registration.json`` that ``rehealth study register`` signed with the kit's key): the
registration is verified under the kit's signing key and must name the spec's hash, so the
console cannot run a spec changed after it was registered. The run itself is the runner's
(:func:`coordinator.study.runner.run_with_client`): signed grant, Control API, events recorded
as they arrive in ``progress.jsonl`` of the run's folder — which is what the console's pages
and JSON endpoint read. At the end the evidence report is signed with the kit's key and the
registration (:func:`coordinator.report.write_signed_report`).

A run's folder ``console/runs/<key>/`` holds ``meta.json`` (study, who started it, the
SuperLink's run id, state), ``progress.jsonl``, and on success ``result.json`` and
``report.{json,html,pdf}``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import secrets
import threading
from pathlib import Path

from coordinator.federation.control import ControlClient
from coordinator.federation.kit_files import CoordinatorKit
from coordinator.federation.pki import private_dir, write_private
from shared.errors import FederationError, ReHealthError, SpecError

log = logging.getLogger("rehealth.console.runs")
KEY = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")
ACTIVE = ("starting", "running", "stopping")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RegisteredStudy:
    """``studies/<name>/``: a spec and its registration."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.name = folder.name

    @property
    def spec_path(self) -> Path:
        return self.folder / "study.toml"

    @property
    def registration_path(self) -> Path:
        return self.folder / "registration.json"

    def check(self, kit: CoordinatorKit):
        """(spec, registration) after checking the registration is signed by the kit's key and
        names this spec; SpecError saying what is wrong otherwise."""
        from coordinator.files import load_spec
        from coordinator.report.registration import load_verified
        from coordinator.report.signing import load_public_key

        if not self.spec_path.is_file():
            raise SpecError(f"study {self.name}: no study.toml")
        if not self.registration_path.is_file():
            raise SpecError(
                f"study {self.name} is not registered: no registration.json "
                "(rehealth study register --spec study.toml --key KIT/signing/coordinator.key)"
            )
        spec = load_spec(self.spec_path)
        try:
            record = load_verified(self.registration_path.read_bytes(), load_public_key(kit.signing_pub))
        except ReHealthError as e:
            raise SpecError(f"study {self.name}: {e}") from None
        if record.spec_hash != spec.spec_hash():
            raise SpecError(
                f"study {self.name}: the spec changed after registration (registered "
                f"{record.spec_hash[:12]}…, now {spec.spec_hash()[:12]}…): register it again"
            )
        return spec, record


class RunFolder:
    def __init__(self, folder: Path):
        self.folder = folder
        self.key = folder.name

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    def meta(self) -> dict:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return {"key": self.key, "state": "unknown"}

    _lock = threading.Lock()  # the run's thread and a stop request may both update

    def update(self, **fields) -> dict:
        """Merge ``fields`` into ``meta.json``, atomically (a reader never sees half a file)."""
        with RunFolder._lock:
            data = {**self.meta(), **fields}
            tmp = self.folder / ".meta.json.tmp"
            write_private(tmp, (json.dumps(data, indent=2) + "\n").encode())
            os.replace(tmp, self.meta_path)
        return data

    def events(self) -> list[dict]:
        path = self.folder / "progress.jsonl"
        out = []
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line being written
            if isinstance(ev, dict):
                out.append(ev)
        return out

    def file(self, name: str) -> Path | None:
        path = self.folder / name
        return path if path.is_file() else None


class RunManager:
    """Starts, stops and lists the console's runs against one SuperLink."""

    def __init__(
        self,
        kit: CoordinatorKit,
        studies_dir: Path,
        runs_dir: Path,
        *,
        address: str | None = None,
        timeout_s: float = 900.0,
        connect_timeout_s: float = 60.0,
        credential=None,
    ):
        self.kit = kit
        #: the token every Control API call carries (:mod:`coordinator.federation.control_auth`)
        self.credential = credential
        self.studies_dir = studies_dir
        self.runs_dir = runs_dir
        self.address = address or kit.address
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def control(self, timeout_s: float = 5.0) -> ControlClient:
        return ControlClient(
            self.address, root_certificates=self.kit.ca_cert, timeout_s=timeout_s, credential=self.credential
        )

    # -- studies and runs ------------------------------------------------------------------

    def studies(self) -> list[RegisteredStudy]:
        if not self.studies_dir.is_dir():
            return []
        return [RegisteredStudy(p) for p in sorted(self.studies_dir.iterdir()) if p.is_dir()]

    def study(self, name: str) -> RegisteredStudy:
        if not KEY.match(name) or not (self.studies_dir / name).is_dir():
            raise SpecError(f"no registered study named {name!r}")
        return RegisteredStudy(self.studies_dir / name)

    def runs(self) -> list[RunFolder]:
        if not self.runs_dir.is_dir():
            return []
        folders = [RunFolder(p) for p in self.runs_dir.iterdir() if p.is_dir() and KEY.match(p.name)]
        return sorted(folders, key=lambda r: r.meta().get("created", ""), reverse=True)

    def run(self, key: str) -> RunFolder:
        if not KEY.match(key) or not (self.runs_dir / key).is_dir():
            raise SpecError(f"no run {key!r}")
        return RunFolder(self.runs_dir / key)

    def alive(self, key: str) -> bool:
        t = self._threads.get(key)
        return t is not None and t.is_alive()

    # -- actions ---------------------------------------------------------------------------

    def start(self, study_name: str, *, user: str, rerun_of: str | None = None) -> RunFolder:
        """Check the study's registration, make its run folder, start the run in a thread."""
        study = self.study(study_name)
        study.check(self.kit)
        with self._lock:  # one run of a study at a time (a double click starts one)
            running = [
                k
                for k, t in self._threads.items()
                if t.is_alive() and RunFolder(self.runs_dir / k).meta().get("study") == study.name
            ]
            if running:
                raise SpecError(
                    f"study {study.name} is already running here (run {running[0]}): stop it first"
                )
            key, thread = self._begin(study, user=user, rerun_of=rerun_of)
        thread.start()
        return RunFolder(self.runs_dir / key)

    def _begin(self, study: RegisteredStudy, *, user: str, rerun_of: str | None):
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        key = f"{study.name}-{stamp}-{secrets.token_hex(2)}"
        run = RunFolder(private_dir(self.runs_dir / key))
        run.update(
            key=key,
            study=study.name,
            started_by=user,
            created=now_iso(),
            state="starting",
            run_id=None,
            rerun_of=rerun_of,
        )
        thread = threading.Thread(target=self._run, args=(run, study), name=f"console-run-{key}", daemon=True)
        self._threads[key] = thread
        return key, thread

    def _run(self, run: RunFolder, study: RegisteredStudy) -> None:
        from coordinator.report import write_signed_report
        from coordinator.study.runner import run_with_client

        def on_event(ev: dict) -> None:
            if ev.get("event") != "submitted":
                return
            if run.meta().get("stop_requested"):
                # the runner starts a run again when its first attempt ended before the
                # ServerApp ran (coordinator.study.runner.start_and_follow): a stop asked for
                # is meant for that one too
                run.update(run_id=int(ev["run_id"]))
                with self.control() as c:
                    c.stop(int(ev["run_id"]))
                return
            run.update(run_id=int(ev["run_id"]), state="running")

        try:
            with self.control(timeout_s=30.0) as control:
                result = run_with_client(
                    control,
                    study.spec_path,
                    run.folder,
                    key_path=self.kit.signing_key,
                    timeout_s=self.timeout_s,
                    connect_timeout_s=self.connect_timeout_s,
                    on_event=on_event,
                )
                write_signed_report(
                    result,
                    key_path=self.kit.signing_key,
                    out_dir=run.folder,
                    registration=study.registration_path,
                )
                run.update(state="completed", finished_at=now_iso())
        except ReHealthError as e:
            state = "failed"
            status = ""
            meta = run.meta()
            if meta.get("run_id") is not None:
                try:
                    with self.control() as c:
                        status = c.status(int(meta["run_id"]))
                except ReHealthError:
                    pass
            if status == "finished:stopped" or meta.get("stop_requested"):
                state = "stopped"
            message = str(e).split("\n", 1)[0][:2000]
            if state == "stopped":
                who = run.meta().get("stopped_by") or "an operator"
                message = (
                    f"stopped at the request of {who}; the SuperLink ended the run ({status or 'stopped'})"
                )
            run.update(
                state=state,
                finished_at=now_iso(),
                error={
                    "message": message,
                    "site": getattr(e, "node", None),
                    "round": getattr(e, "round_name", None),
                },
            )
            log.warning("console run %s %s: %s", run.key, state, e)
        except Exception as e:  # noqa: BLE001 - a bug must still end the run's record
            run.update(
                state="failed",
                finished_at=now_iso(),
                error={"message": f"internal error: {type(e).__name__}"},
            )
            log.exception("console run %s", run.key)

    def stop(self, key: str, *, user: str = "") -> bool:
        """Ask the SuperLink to stop the run (its thread then records it as stopped)."""
        run = self.run(key)
        meta = run.meta()
        if meta.get("run_id") is None:
            raise FederationError(f"run {key} has no SuperLink run yet: nothing to stop")
        run.update(stop_requested=True, stopped_by=user or None)
        with self.control() as c:
            stopped = c.stop(int(meta["run_id"]))
        if stopped and meta.get("state") in ACTIVE:
            run.update(state="stopping")
        return stopped
