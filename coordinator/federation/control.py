"""A SuperLink's Control API from inside this process: start, watch, stop and read runs.

``flwr run/ls/log/stop`` as subprocesses cost ~1 s of CPU each (their imports), and the runner
polled one every 2 s while it waited. Flower 1.41 serves its Control API as protobuf over HTTP
on the SuperLink's one port (``flwr/superlink/routers/control/router.py``; the gRPC server of
older releases starts only behind an internal switch), and its CLI talks to it through
``ControlHttpClient`` built by ``flwr.cli.utils.init_http_client_from_connection``: TLS against
the connection's root certificates, and the CLI's interceptors — client metadata, runtime
version, and account authentication from the same credential store ``flwr login`` fills (a
no-op on open-source SuperLinks). This module builds exactly that client once and keeps it:
one poll is one HTTP request on a kept-alive TLS connection.

What travels: :meth:`ControlClient.start_run` sends the app bundle (the FAB ``flwr run`` would
build from the same folder) and the run config; :meth:`stream_logs` yields the run's log as the
ServerApp writes it (the events of :mod:`.run_events` ride in it) and ends when the run
finishes; :meth:`nodes` lists the SuperNodes with the names they were registered under (the
site), so a missing site is named, not a node id.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from coordinator.federation.control_auth import Credential, cli_plugin
from shared.errors import FederationError

CONNECTION = "rehealth"
T = TypeVar("T")


@dataclass(frozen=True)
class RunInfo:
    """One run as the Control API lists it."""

    run_id: int
    status: str  # "pending", "starting", "running" or "finished:<completed|failed|stopped>"
    details: str
    fab: str
    pending_at: str
    running_at: str
    finished_at: str

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")

    def as_dict(self) -> dict:
        return {
            "run-id": self.run_id,
            "status": self.status,
            "details": self.details,
            "app": self.fab,
            "pending-at": self.pending_at,
            "running-at": self.running_at,
            "finished-at": self.finished_at,
        }


@dataclass(frozen=True)
class NodeInfo:
    node_id: int
    name: str  # the site, when registered with ``--name`` (ours always are)
    status: str  # "registered", "online", "offline", "unregistered"


def _status_text(status) -> str:
    return f"{status.status}:{status.sub_status}" if status.sub_status else str(status.status)


class ControlClient:
    """The Control API of the SuperLink at ``address`` (``host:port``), over TLS pinned to
    ``root_certificates`` (else the system's roots), or plaintext with ``insecure=True``
    (debugging only). ``timeout_s`` bounds each unary call's connect and read.

    ``credential`` mints the bearer token each request carries (:mod:`.control_auth`): the
    operator's (:class:`~.control_auth.OperatorCredential`, from the study-signing key) or the
    coordinator's own (:class:`~.control_auth.CoordinatorCredential`). A ReHealth SuperLink
    refuses every Control API call without one."""

    def __init__(
        self,
        address: str,
        *,
        root_certificates: Path | None = None,
        insecure: bool = False,
        timeout_s: float = 30.0,
        credential: Credential | None = None,
    ):
        if insecure and root_certificates:
            raise FederationError("a connection is either insecure or pins root certificates")
        self.address = address
        self.root_certificates = root_certificates
        self.insecure = insecure
        self.timeout_s = timeout_s
        self.credential = credential
        self._client: Any = None
        self._lock = threading.Lock()
        self.closed = False

    # -- connection --------------------------------------------------------------------------

    @property
    def http(self):
        """Flower's ``ControlHttpClient``, built as its CLI builds it, on first use."""
        with self._lock:
            if self.closed:
                raise FederationError(f"the connection to the SuperLink at {self.address} was closed")
            if self._client is None:
                import contextlib
                import io

                import httpx
                from flwr.cli.typing import SuperLinkConnection
                from flwr.cli.utils import init_http_client_from_connection

                if self.root_certificates is not None and not Path(self.root_certificates).is_file():
                    raise FederationError(f"root certificates {self.root_certificates} not found")
                connection = SuperLinkConnection(
                    name=CONNECTION,
                    address=self.address,
                    root_certificates=str(Path(self.root_certificates).resolve())
                    if self.root_certificates
                    else None,
                    insecure=self.insecure or None,
                )
                # the CLI prints "Using SuperLink: …" to stdout on every build: not ours to say
                auth = None if self.credential is None else cli_plugin(self.credential, self.address)
                with contextlib.redirect_stdout(io.StringIO()):
                    client = init_http_client_from_connection(connection, auth_plugin=auth)
                client._client.timeout = httpx.Timeout(self.timeout_s)
                self._client = client
            return self._client

    def close(self) -> None:
        """Close the connection for good (a stream blocked on it ends with an error)."""
        with self._lock:
            self.closed = True
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with transport and API errors as one-line :class:`FederationError`s."""
        import click
        import httpx

        try:
            return fn()
        except httpx.HTTPStatusError as e:
            raise FederationError(f"{what}: {_api_error(e.response)}") from None
        except httpx.TimeoutException:
            raise FederationError(
                f"{what}: the SuperLink at {self.address} did not answer within {self.timeout_s:.0f} s"
            ) from None
        except httpx.HTTPError as e:
            raise FederationError(f"{what}: cannot reach the SuperLink at {self.address} ({e})") from None
        except click.ClickException as e:  # Flower's own checks (a bad certificate file)
            raise FederationError(f"{what}: {e.message}") from None

    # -- runs --------------------------------------------------------------------------------

    def start_run(self, app_dir: Path, run_config: dict) -> int:
        """Submit a run of the app in ``app_dir`` (bundled as ``flwr run`` bundles it) with
        ``run_config`` overriding its ``[tool.flwr.app.config]``; its run id."""
        import hashlib

        from flwr.cli.build import build_fab_from_disk
        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.fab import Fab

        fab_bytes = build_fab_from_disk(Path(app_dir))
        fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
        req = StartRunRequest(fab=fab_to_proto(fab), override_config=user_config_to_proto(run_config))
        res = self._call("start the run", lambda: self.http.StartRun(req))
        if not res.HasField("run_id"):
            raise FederationError("start the run: the SuperLink created no run (see its log)")
        return int(res.run_id)

    def runs(self, run_id: int | None = None, *, limit: int | None = None) -> list[RunInfo]:
        """Runs, newest first (one run with ``run_id``)."""
        from flwr.proto.control_pb2 import ListRunsRequest

        req = ListRunsRequest(run_id=run_id) if run_id is not None else ListRunsRequest(limit=limit)
        what = "list runs" if run_id is None else f"run {run_id} on the SuperLink at {self.address}"
        res = self._call(what, lambda: self.http.ListRuns(req))
        out = [
            RunInfo(
                run_id=int(rid),
                status=_status_text(r.status),
                details=r.status.details,
                fab=f"{r.fab_id}=={r.fab_version}",
                pending_at=r.pending_at,
                running_at=r.running_at,
                finished_at=r.finished_at,
            )
            for rid, r in res.run_dict.items()
        ]
        return sorted(out, key=lambda r: (r.pending_at, r.run_id), reverse=True)

    def run(self, run_id: int) -> RunInfo:
        found = self.runs(run_id)
        if not found:
            raise FederationError(f"run {run_id} is not known to the SuperLink at {self.address}")
        return found[0]

    def status(self, run_id: int) -> str:
        """The run's status (``finished:completed`` …): one request, no process."""
        return self.run(run_id).status

    def wait(self, run_id: int, *, timeout_s: float = 600.0, poll_s: float = 0.5) -> str:
        """Poll until the run has finished; its final status.

        Raises:
            FederationError: it had not finished after ``timeout_s``.
        """
        import time

        deadline = time.monotonic() + timeout_s
        while not (status := self.status(run_id)).startswith("finished"):
            if time.monotonic() > deadline:
                raise FederationError(f"run {run_id} still {status} after {timeout_s:.0f} s")
            time.sleep(poll_s)
        return status

    def stop(self, run_id: int) -> bool:
        """Ask the SuperLink to stop the run; False if it was no longer running."""
        from flwr.proto.control_pb2 import StopRunRequest

        res = self._call(f"stop run {run_id}", lambda: self.http.StopRun(StopRunRequest(run_id=run_id)))
        return bool(res.success)

    def stream_logs(self, run_id: int, *, after: float = 0.0) -> Iterator[tuple[str, float]]:
        """The run's log as ``(text, latest timestamp)`` chunks since ``after``; the stream ends
        once the run has finished and all of its log was sent. Resume a broken stream with
        ``after`` = the last timestamp seen."""
        from flwr.proto.control_pb2 import StreamLogsRequest

        req = StreamLogsRequest(run_id=run_id, after_timestamp=after)
        stream = self._call(f"logs of run {run_id}", lambda: iter(self.http.StreamLogs(req)))
        while True:
            res = self._call(f"logs of run {run_id}", lambda: next(stream, None))
            if res is None:
                return
            yield res.log_output, res.latest_timestamp

    def logs(self, run_id: int) -> str:
        """The whole log of a run (waits for it to finish)."""
        return "".join(text for text, _ in self.stream_logs(run_id))

    # -- nodes -------------------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        from flwr.proto.control_pb2 import ListNodesRequest

        res = self._call("list nodes", lambda: self.http.ListNodes(ListNodesRequest()))
        return [NodeInfo(int(n.node_id), n.name, n.status) for n in res.nodes_info]

    def register_node(self, public_key: Path, name: str) -> int:
        """Register a SuperNode's public key (OpenSSH, NIST curve) under the site's ``name``."""
        from flwr.cli.supernode.register import try_load_public_key
        from flwr.proto.control_pb2 import RegisterNodeRequest

        key = try_load_public_key(Path(public_key))
        res = self._call(
            f"register site {name}",
            lambda: self.http.RegisterNode(RegisterNodeRequest(public_key=key, name=name)),
        )
        return int(res.node_id)


def _api_error(response) -> str:
    """A Control API error response as one line: Flower's structured error, else the body."""
    from flwr.supercore.error import FlowerError

    try:
        text = response.text
    except Exception:  # a streamed body: read it first
        response.read()
        text = response.text
    err = FlowerError.from_json(text)
    if err is not None:
        return " ".join(p for p in (err.message, err.public_details) if p)
    return f"HTTP {response.status_code}: {text[:300]}"


def missing_sites(nodes: list[NodeInfo], expected: list[str]) -> list[str]:
    """The sites of ``expected`` with no online SuperNode registered under their name."""
    online = {n.name for n in nodes if n.status == "online"}
    return [s for s in expected if s not in online]
