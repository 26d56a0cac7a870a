"""Run a study: against a running federation, or on a local one started for the purpose.

The ServerApp writes ``result.json`` (or ``error.json``) and ``progress.jsonl`` into the output
folder on the SuperLink's host; the runner follows the progress file, waits for the run to
finish and returns the result, adding the start-up time it measured itself.

One run at a time per output folder: each run holds an exclusive lock on ``run.lock`` in it
(:func:`exclusive_folder`) from before its federation starts until it ends, and a second run
is refused naming the folder and the holder's pid (two runs would otherwise interleave their
events in one progress file and overwrite each other's result). The kernel drops the lock when
its holder dies, however it dies, so a killed run never leaves the folder locked.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import coordinator.flower
from coordinator.federation.flwr_cli import FlwrClient
from coordinator.federation.launcher import LocalFederation, NodeSpec
from coordinator.files import load_spec, read_result, write_result
from shared.errors import FederationError, ReHealthError, SpecError
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
        if spec.privacy.secure_aggregation:  # the local sites' operator is the one running it
            config["secure-aggregation"] = True
        nodes.append(NodeSpec(s.name, config))
    return nodes


class ProgressTail:
    """Reads new lines of the ServerApp's progress file."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new_events(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open() as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def submit_until_started(
    client: FlwrClient, run_config: dict, out_dir: Path, *, timeout_s: float, on_poll=None
) -> tuple[int, str]:
    """Submit the app and wait for its run; ``(run_id, final status)``.

    A run whose ServerApp never reached its main (no ``progress.jsonl``: the app writes
    ``started`` before any message to a node) is submitted once more, and said so in the log.
    Seen in CI: Flower's app process failed to connect to the SuperLink
    ("SSL: UNEXPECTED_EOF_WHILE_READING") two seconds after the previous run ended. That
    attempt asked no node anything and charged nothing, so trying again is safe; a run that
    did start is never resubmitted (its queries may have been charged).
    """
    progress = out_dir / "progress.jsonl"
    for attempt in (1, 2):
        run_id = client.submit(APP_DIR, {**run_config, "out-dir": str(out_dir)})
        status = client.wait(run_id, timeout_s=timeout_s, on_poll=on_poll)
        if progress.exists() or status == "finished:completed" or attempt == 2:
            return run_id, status
        log.warning(
            "run %d ended %r before its ServerApp started (no query was sent): submitting once more",
            run_id,
            status,
        )
    raise AssertionError("unreachable")


def run_app(
    client: FlwrClient,
    run_config: dict,
    out_dir: Path,
    *,
    result_name: str,
    timeout_s: float = 900.0,
    on_event: OnEvent | None = None,
) -> Path:
    """Submit the ReHealth Flower app with ``run_config``, follow its progress, and return the
    path of the result file it wrote (or raise with its error, or with the run's log)."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (result_name, "error.json", "progress.jsonl"):
        (out_dir / stale).unlink(missing_ok=True)
    tail = ProgressTail(out_dir / "progress.jsonl")

    def poll(_status: str) -> None:
        for ev in tail.new_events():
            if on_event:
                on_event(ev)

    run_id, status = submit_until_started(client, run_config, out_dir, timeout_s=timeout_s, on_poll=poll)
    poll(status)
    error_file, result_file = out_dir / "error.json", out_dir / result_name
    if error_file.exists():
        err = json.loads(error_file.read_text())
        raise FederationError(err["message"], node=err.get("node"), round_name=err.get("round"))
    if status != "finished:completed" or not result_file.exists():
        raise FederationError(
            f"run {run_id} ended with status {status!r} and no result; "
            f"its log:\n{client.logs(run_id)[-3000:]}"
        )
    return result_file


def run_with_client(
    client: FlwrClient,
    spec_path: Path,
    out_dir: Path,
    *,
    key_path: Path,
    startup_s: float = 0.0,
    timeout_s: float = 900.0,
    on_event: OnEvent | None = None,
) -> StudyResult:
    """Sign the study with the operator's key, submit the study app, follow its progress,
    return the result it wrote."""
    grant = sign_study(load_spec(spec_path), key_path)
    result_file = run_app(
        client,
        {"spec-path": str(spec_path.resolve()), "grant": grant},
        out_dir,
        result_name="result.json",
        timeout_s=timeout_s,
        on_event=on_event,
    )
    result = read_result(result_file)
    timings = dict(result.timings, startup_s=startup_s, total_s=result.timings.get("total_s", 0) + startup_s)
    result = result.model_copy(update={"timings": timings, "truth": _truth(spec_path)})
    write_result(result, result_file)
    return result


@contextmanager
def local_federation(spec_path: Path, out_dir: Path, coordinator_pub: Path, on_event: OnEvent | None = None):
    """A SuperLink and one SuperNode per site of the spec on 127.0.0.1, stopped on exit."""
    spec = load_spec(spec_path)
    workdir = out_dir.resolve() / "federation"
    with LocalFederation(workdir, site_nodes(spec, workdir, coordinator_pub)) as fed:
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
        with local_federation(spec_path, out_dir, pub, on_event) as fed:
            path = run_app(
                fed.client,
                {
                    "workflow": "risk",
                    "risk-job": job.model_dump_json(),
                    "grant": sign_risk_job(job, key),
                    "expected-nodes": len(fed.nodes),
                },
                out_dir,
                result_name="risk_result.json",
                timeout_s=timeout_s,
                on_event=on_event,
            )
        return json.loads(path.read_text())


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
                fed.client,
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
) -> StudyResult:
    """Run the study on an already running federation (SuperLink address from the flag or
    the spec's ``[federation] superlink``). The result lands on the SuperLink's host."""
    spec = load_spec(spec_path)
    address = superlink or spec.federation.superlink
    if not address:
        raise SpecError("federation.superlink: give the SuperLink address (or use --local)")
    with exclusive_folder(out_dir):
        client = FlwrClient(
            home=out_dir.resolve() / "flwr-home", address=address, root_certificates=root_certificates
        )
        return run_with_client(
            client, spec_path, out_dir, key_path=key_path, timeout_s=timeout_s, on_event=on_event
        )
