"""Run a study: against a running federation, or on a local one started for the purpose.

Everything goes through the SuperLink's Control API, in process (:mod:`coordinator.federation.
control`): the spec and the signed grant travel in the run's config, and the ServerApp's
progress, result or error come back as events in the run's log stream
(:mod:`coordinator.federation.run_events`). The operator's machine needs no file of the
SuperLink's and the SuperLink's host gets none of the operator's. The runner keeps its own
record in the output folder: ``progress.jsonl`` (every event as it arrived), ``error.json``
on failure and the result file.

One run at a time per output folder: each run holds an exclusive lock on ``run.lock`` in it
(:func:`exclusive_folder`) from before its federation starts until it ends, and a second run
is refused naming the folder and the holder's pid (two runs would otherwise interleave their
events in one progress file and overwrite each other's result). The kernel drops the lock when
its holder dies, however it dies, so a killed run never leaves the folder locked.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

import coordinator.flower
from coordinator.federation.control import ControlClient, missing_sites
from coordinator.federation.launcher import LocalFederation, NodeSpec
from coordinator.federation.run_events import EventParser
from coordinator.files import load_spec, write_result
from shared.errors import FederationError, ReHealthError, SpecError
from shared.flower_commands import ZYGOTE_RISK_IMPORTS_ENV
from shared.result import StudyResult
from shared.study import StudySpec

APP_DIR = Path(coordinator.flower.__file__).parent / "app"
OnEvent = Callable[[dict], None]


LOCK_NAME = "run.lock"
log = logging.getLogger("rehealth.coordinator.runner")


class FolderBusy(ReHealthError):
    """Another run holds the output folder."""


@contextmanager
def exclusive_folder(folder: Path):
    """Hold an exclusive lock on ``folder`` for the ``with`` block, or raise :class:`FolderBusy`
    naming the folder and the holder's pid at once (never wait: the other run may take an hour).
    """
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise FolderBusy(
                f"{folder} is in use by another run (pid {holder}): wait for it to finish, or "
                "give this run another output folder (--out)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock (the file stays: unlinking it would race a waiter)


def coordinator_keys(key_dir: Path, key_path: Path | None = None) -> tuple[Path, Path]:
    """The operator's Ed25519 key pair: ``key_path`` (its public half beside it, ``.pub``) or
    one made on first use in ``key_dir`` (0600). It signs studies and evidence reports."""
    from coordinator.report import ensure_keypair
    from coordinator.report.signing import PUBLIC_KEY_NAME

    if key_path is None:
        return ensure_keypair(key_dir)
    pub = key_path.with_name(PUBLIC_KEY_NAME)
    if not pub.exists():
        raise SpecError(f"{pub}: the public half of {key_path} is missing (it is pinned in every node)")
    return key_path, pub


def _signed(grant, key_path: Path) -> str:
    """``grant`` signed with the operator's key at ``key_path``, as the JSON a run config carries."""
    from coordinator.federation.provision import load_signing_key
    from shared.grant import sign_grant

    # a provisioned kit's key is encrypted (passphrase from REHEALTH_KEY_PASSPHRASE)
    return sign_grant(grant, load_signing_key(key_path)).model_dump_json()


def sign_study(spec: StudySpec, key_path: Path) -> str:
    """The operator's signed grant for ``spec`` (JSON), one new grant id per call."""
    from shared.grant import new_grant_id
    from shared.protocol import StudyQuery

    return _signed(StudyQuery.study_grant(spec, new_grant_id(spec.spec_hash())), key_path)


def node_state_dir(data: str | Path) -> Path:
    """A local site's state folder, ``<data file>.rehealth/`` beside its data (mode 0700).

    It holds the site's privacy ledger, so the budget belongs to the data, not to a run: every
    ``--out`` folder, demo or local federation over the same file charges the same budget.
    """
    data = Path(data).resolve()
    state = data.with_name(data.name + ".rehealth")
    state.mkdir(mode=0o700, exist_ok=True)
    state.chmod(0o700)
    return state


def site_nodes(spec: StudySpec, workdir: Path, coordinator_pub: Path) -> list[NodeSpec]:
    """Node configs for a local federation: one SuperNode per site of the spec, each pinning
    ``coordinator_pub``.

    Each site's state (and ledger) lives beside its data file (:func:`node_state_dir`), not in
    ``workdir``: a new output folder must not be a fresh privacy budget. The sites' operator is
    the one running them, so an exact spec (``[privacy] enabled = false``, written by that
    operator) opts them into exact answers — a single data owner's federation; a DP spec leaves
    them DP-only.
    """
    if not spec.sites:
        raise SpecError("sites: a local study needs at least one [[sites]] entry")
    nodes = []
    for s in spec.sites:
        if not s.data:
            raise SpecError(f"sites[{s.name}].data: a local study needs each site's data file")
        state = node_state_dir(s.data)
        config: dict[str, str | bool] = {
            "data-path": s.data,
            "state-dir": str(state),
            "ledger-url": f"sqlite:///{state / 'ledger.db'}",
            "coordinator-key": str(coordinator_pub.resolve()),
        }
        if not spec.privacy.enabled:
            config["allow-exact"] = True
        if spec.negative_controls:  # the sites' operator lists the columns it runs them on
            config["policy-path"] = str(_local_policy(state, spec))
        if spec.privacy.secure_aggregation:  # the local sites' operator is the one running it
            config["secure-aggregation"] = True
        nodes.append(NodeSpec(s.name, config))
    return nodes


def _local_policy(state: Path, spec: StudySpec) -> Path:
    """A local site's policy file listing the spec's outcomes and negative controls (the node's
    default policy lists the three default outcomes only): written by the operator running the
    sites, as its exact opt-in is. Other policy keys keep their defaults."""
    import tomli_w

    path = state / "policy.toml"
    outcomes = [o.model_dump(mode="json") for o in spec.analysed_outcomes]
    path.write_text(tomli_w.dumps({"outcomes": outcomes}))
    return path


def spec_json(spec: StudySpec) -> str:
    """The spec as it travels in a run's config: the public spec (site data paths as
    written, never this machine's), whose hash the grant names."""
    return spec.public().model_dump_json()


@dataclass
class RunOutcome:
    """A finished run as its log told it."""

    run_id: int
    status: str
    events: list[dict] = field(default_factory=list)
    log_text: list[str] = field(default_factory=list)  # the log's other lines
    delays_s: list[float] = field(default_factory=list)  # event written -> received

    def last(self, name: str) -> dict | None:
        return next((e for e in reversed(self.events) if e.get("event") == name), None)

    @property
    def started(self) -> bool:
        return self.last("started") is not None

    @property
    def error(self) -> dict | None:
        return self.last("failed")

    @property
    def done(self) -> dict | None:
        return self.last("done")


class RunRecord:
    """The runner's own record of a run in its output folder: ``progress.jsonl`` (each event
    as it arrives) and ``error.json`` (the failure event)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in ("error.json", "progress.jsonl"):
            (folder / stale).unlink(missing_ok=True)

    def event(self, ev: dict) -> None:
        with (self.folder / "progress.jsonl").open("a") as f:
            f.write(json.dumps(ev) + "\n")
        if ev.get("event") == "failed":
            (self.folder / "error.json").write_text(json.dumps(_error_fields(ev), indent=2) + "\n")


def _error_fields(ev: dict) -> dict:
    return {k: ev.get(k) for k in ("error", "message", "node", "round")}


def follow_run(
    control: ControlClient,
    run_id: int,
    *,
    timeout_s: float,
    on_event: OnEvent | None = None,
) -> RunOutcome:
    """Follow run ``run_id``'s log until the run finishes: every event goes to ``on_event``
    as it arrives (within Flower's log upload and stream intervals, 0.2 s + 0.5 s). No process
    and no status poll: the stream itself ends when the run has finished and its whole log was
    sent. A broken stream is resumed after the last chunk seen; a run still going after
    ``timeout_s`` raises."""
    outcome = RunOutcome(run_id, "")
    parser = EventParser()
    chunks: queue.SimpleQueue = queue.SimpleQueue()
    # a connection of its own: closing it on a timeout ends the blocked read, nothing else
    stream_client = ControlClient(
        control.address,
        root_certificates=control.root_certificates,
        insecure=control.insecure,
        timeout_s=control.timeout_s,
        credential=control.credential,
    )

    def pump() -> None:
        after, failures = 0.0, 0
        while True:
            try:
                for text, ts in stream_client.stream_logs(run_id, after=after):
                    chunks.put(("log", text))
                    after, failures = max(after, ts), 0
                chunks.put(("end", None))
                return
            except Exception as e:  # transport trouble of any kind: resume, or hand it over
                failures += 1
                if stream_client.closed or failures > 5:
                    wrapped = FederationError(f"logs of run {run_id}: {e}")
                    chunks.put(("error", e if isinstance(e, FederationError) else wrapped))
                    return
                time.sleep(min(0.5 * 2**failures, 5.0))

    threading.Thread(target=pump, name=f"rehealth-run-{run_id}-log", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                kind, item = chunks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise FederationError(f"run {run_id} did not finish within {timeout_s:.0f} s") from None
            if kind == "error":
                raise item
            events = parser.feed(item) if kind == "log" else parser.close()
            received = time.time()
            for ev in events:
                outcome.events.append(ev)
                if isinstance(ev.get("t"), (int, float)):
                    outcome.delays_s.append(received - float(ev["t"]))
                if on_event:
                    on_event(ev)
            if kind == "end":
                break
    finally:
        stream_client.close()
    outcome.log_text = parser.text
    outcome.status = control.status(run_id)
    return outcome


def start_and_follow(
    control: ControlClient,
    run_config: dict,
    *,
    timeout_s: float,
    on_event: OnEvent | None = None,
) -> RunOutcome:
    """Start the app's run and follow it to its end.

    A run whose ServerApp never reached its main (no ``started`` event: the app emits it
    before any message to a node) is started once more, and said so in the log. Seen in CI:
    Flower's app process failed to connect to the SuperLink ("SSL: UNEXPECTED_EOF_WHILE_
    READING") two seconds after the previous run ended. That attempt asked no node anything
    and charged nothing, so trying again is safe; a run that did start is never restarted
    (its queries may have been charged).
    """
    for attempt in (1, 2):
        run_id = control.start_run(APP_DIR, run_config)
        log.info("run %d started", run_id)
        if on_event:
            on_event({"t": time.time(), "event": "submitted", "run_id": run_id})
        outcome = follow_run(control, run_id, timeout_s=timeout_s, on_event=on_event)
        if outcome.started or outcome.status == "finished:completed" or attempt == 2:
            return outcome
        log.warning(
            "run %d ended %r before its ServerApp started (no query was sent): starting it once more",
            run_id,
            outcome.status,
        )
    raise AssertionError("unreachable")


def await_sites(control: ControlClient, sites: list[str], *, timeout_s: float) -> None:
    """Wait until every site of ``sites`` has an online SuperNode (registered under the site's
    name); else fail naming the sites missing. Nodes registered without names (set up by hand
    with ``flwr supernode register``) can only be counted."""
    if not sites:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = control.nodes()
        named = any(n.name for n in nodes)
        online = [n for n in nodes if n.status == "online"]
        missing = missing_sites(nodes, sites) if named else sites[len(online) :]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if not missing:
        return
    if named:
        raise FederationError(
            f"site(s) {', '.join(missing)} not connected to the SuperLink at {control.address} "
            f"after {timeout_s:.0f} s ({len(sites) - len(missing)} of {len(sites)} sites online"
            + (f": {', '.join(s for s in sites if s not in missing)}" if len(missing) < len(sites) else "")
            + ")",
            round_name="connect",
        )
    raise FederationError(
        f"only {len(online)} of {len(sites)} nodes online at the SuperLink at {control.address} "
        f"after {timeout_s:.0f} s; its nodes carry no site names (register each with "
        "`flwr supernode register KEY --name SITE`) so the missing ones cannot be named",
        round_name="connect",
    )


def run_app(
    control: ControlClient,
    run_config: dict,
    out_dir: Path,
    *,
    timeout_s: float = 900.0,
    on_event: OnEvent | None = None,
    sites: list[str] | None = None,
    connect_timeout_s: float = 60.0,
) -> dict:
    """Check the ``sites`` are online, start the ReHealth Flower app with ``run_config``,
    follow its progress; the ``done`` event (its result), or raise with its error, or with the
    run's log. Events are recorded in ``out_dir`` (:class:`RunRecord`)."""
    record = RunRecord(out_dir.resolve())

    def seen(ev: dict) -> None:
        record.event(ev)
        if on_event:
            on_event(ev)

    await_sites(control, list(sites or []), timeout_s=connect_timeout_s)
    outcome = start_and_follow(
        control,
        {**run_config, "connect-timeout": float(connect_timeout_s)},
        timeout_s=timeout_s,
        on_event=seen,
    )
    if outcome.delays_s:
        log.info(
            "run %d: %d events, delay median %.2f s",
            outcome.run_id,
            len(outcome.delays_s),
            sorted(outcome.delays_s)[len(outcome.delays_s) // 2],
        )
    if outcome.error:
        err = outcome.error
        message = str(err.get("message"))
        if err.get("round") == "connect" and sites:
            missing = missing_sites(control.nodes(), list(sites))
            if missing:
                message += f" (not online now: {', '.join(missing)})"
        raise FederationError(message, node=err.get("node"), round_name=err.get("round"))
    done = outcome.done
    if outcome.status != "finished:completed" or done is None:
        raise FederationError(
            f"run {outcome.run_id} ended with status {outcome.status!r} and no result; "
            "its log:\n" + "\n".join(outcome.log_text)[-3000:]
        )
    return done


def run_with_client(
    control: ControlClient,
    spec_path: Path,
    out_dir: Path,
    *,
    key_path: Path,
    startup_s: float = 0.0,
    timeout_s: float = 900.0,
    connect_timeout_s: float = 60.0,
    on_event: OnEvent | None = None,
) -> StudyResult:
    """Sign the study with the operator's key, start the study app with the spec and the
    grant, follow its progress, return (and record in ``out_dir``) its result."""
    spec = load_spec(spec_path)
    done = run_app(
        control,
        {"spec": spec_json(spec), "grant": sign_study(spec, key_path)},
        out_dir,
        timeout_s=timeout_s,
        on_event=on_event,
        sites=[s.name for s in spec.sites],
        connect_timeout_s=connect_timeout_s,
    )
    try:
        result = StudyResult.model_validate(done.get("result"))
    except ValidationError as e:
        raise FederationError(f"the run's result is not a study result: {e.errors()[0]['msg']}") from None
    timings = dict(result.timings, startup_s=startup_s, total_s=result.timings.get("total_s", 0) + startup_s)
    result = result.model_copy(update={"timings": timings, "truth": _truth(spec_path)})
    write_result(result, out_dir / "result.json")
    return result


@contextmanager
def local_federation(
    spec_path: Path,
    out_dir: Path,
    coordinator_pub: Path,
    on_event: OnEvent | None = None,
    *,
    risk: bool = False,
):
    """A SuperLink and one SuperNode per site of the spec on 127.0.0.1, stopped on exit.

    Only a federation for risk training (``risk``) lets the nodes' ClientApp zygotes import
    torch when idle: a study never uses it, and twenty nodes' copies were ~6 GB."""
    spec = load_spec(spec_path)
    workdir = out_dir.resolve() / "federation"
    env = {} if risk else {ZYGOTE_RISK_IMPORTS_ENV: "0"}
    with LocalFederation(workdir, site_nodes(spec, workdir, coordinator_pub), env_extra=env) as fed:
        if on_event:
            on_event({"event": "federation_up", "seconds": fed.startup_s, "nodes": len(fed.nodes)})
        yield fed


def sign_risk_job(job, key_path: Path) -> str:
    """The operator's signed grant for a risk-training job (JSON): the whole job."""
    from shared.grant import Grant

    return _signed(Grant(kind="risk", grant_id=job.job_id, sites=job.sites, terms=job.terms()), key_path)


def train_risk_local(
    spec_path: Path,
    out_dir: Path,
    job,
    *,
    on_event: OnEvent | None = None,
    timeout_s: float = 900.0,
    key_path: Path | None = None,
) -> dict:
    """Federated DP training of the risk model over one local SuperNode per site of the spec."""
    with exclusive_folder(out_dir):
        key, pub = coordinator_keys(out_dir.resolve() / "keys", key_path)
        with local_federation(spec_path, out_dir, pub, on_event, risk=True) as fed:
            done = run_app(
                fed.control,
                {
                    "workflow": "risk",
                    "risk-job": job.model_dump_json(),
                    "grant": sign_risk_job(job, key),
                    "expected-nodes": len(fed.nodes),
                },
                out_dir,
                timeout_s=timeout_s,
                on_event=on_event,
                sites=[n.site for n in fed.nodes],
            )
        summary = done["result"]
        out = out_dir.resolve()
        (out / "risk_model.npz").write_bytes(base64.b64decode(done["model_npz"]))
        (out / "risk_result.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def run_local(
    spec_path: Path,
    out_dir: Path,
    *,
    on_event: OnEvent | None = None,
    timeout_s: float = 900.0,
    key_path: Path | None = None,
) -> StudyResult:
    """Start a SuperLink and one SuperNode per site on 127.0.0.1 (each pinning the operator's
    public key), run the signed study, stop them. Without ``key_path`` a key pair is made in
    ``out_dir/keys`` on first use."""
    with exclusive_folder(out_dir):
        key, pub = coordinator_keys(out_dir.resolve() / "keys", key_path)
        with local_federation(spec_path, out_dir, pub, on_event) as fed:
            return run_with_client(
                fed.control,
                spec_path,
                out_dir,
                key_path=key,
                startup_s=fed.startup_s,
                timeout_s=timeout_s,
                on_event=on_event,
            )


def _truth(spec_path: Path) -> dict[str, float] | None:
    """Simulated true ATT per outcome when the spec sits beside a synthetic ``truth.json``."""
    path = spec_path.parent / "truth.json"
    if not path.exists():
        return None
    truth = json.loads(path.read_text())
    pooled = truth.get("pooled", {})
    att = pooled.get("att_capped") or pooled.get("att") or {}
    return {k: float(v) for k, v in att.items()} or None


def run_remote(
    spec_path: Path,
    out_dir: Path,
    *,
    key_path: Path,
    superlink: str | None = None,
    root_certificates: Path | None = None,
    on_event: OnEvent | None = None,
    timeout_s: float = 900.0,
    connect_timeout_s: float = 60.0,
) -> StudyResult:
    """Run the study on an already running federation (SuperLink address from the flag or
    the spec's ``[federation] superlink``), from any machine that reaches its Control API:
    spec and grant go out in the run's config, progress and result come back in its log."""
    spec = load_spec(spec_path)
    address = superlink or spec.federation.superlink
    if not address:
        raise SpecError("federation.superlink: give the SuperLink address (or use --local)")
    from coordinator.federation.control_auth import OperatorCredential
    from coordinator.federation.provision import load_signing_key

    credential = OperatorCredential(load_signing_key(key_path))  # the key that signs the study
    with (
        exclusive_folder(out_dir),
        ControlClient(address, root_certificates=root_certificates, credential=credential) as control,
    ):
        return run_with_client(
            control,
            spec_path,
            out_dir,
            key_path=key_path,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            on_event=on_event,
        )
