"""What the SuperLink process changes so that a loaded machine with many nodes does not break it.

Both limits below were hit by a 20-firm study over real SuperNodes on this 2-core machine with
other jobs running (load average 23–45; ``bench/bench_small_firms.py``, 2026-12-07). Each is
Flower 1.41's own constant, read from the installed source; :func:`configure_superlink` changes
them in the SuperLink process only, called by its launcher
(:func:`coordinator.federation.control_auth.main`).

**The ServerApp's start window.** The SuperExec claims the run's task (``CoreState.claim_task``),
which gives the task a token valid for ``HEARTBEAT_DEFAULT_INTERVAL`` = 30 s while it is
STARTING, then launches ``flwr-serverapp``. That process must send its first heartbeat (the first
thing it does once its imports are done) within those 30 s; otherwise the SuperLink puts the task
back to PENDING and revokes the token (``_cleanup_expired_task_tokens``), the SuperExec claims it
again and starts another process, and the first one's calls all fail with "Runtime task-token
authentication failed" (401). With twenty ClientApp runtimes importing at once
(:mod:`node.flower.zygote`) each attempt took over 30 s and competed with the last: the study
waited 2 min 53 s (five relaunches) before its ServerApp ran. :func:`widen_app_start_window`
gives a claimed task :data:`APP_START_WINDOW_S` instead. Only the STARTING window changes: once
the app has sent a heartbeat, Flower's bounds apply unchanged (a running app that stops
heartbeating is failed 60 s after its last one), and a launch that never starts is still
retried, later.

**SQLite's busy timeout.** Flower opens its SQLite state with ``busy_timeout`` = 5 s
(``supercore/constant.py``, ``SQLITE_PRAGMAS``). Every node's heartbeat, pull and push is a
write from one of the SuperLink's many request threads; a thread that holds the write lock but
not the CPU (nor the GIL) keeps the others waiting, and after 5 s they fail with "database is
locked" (HTTP 500). In the same run 20 requests (node heartbeats, pulls, task polls) failed so
within six minutes, and the run ended failed while its nodes were still pulling ("Run is
finished").
:func:`lengthen_sqlite_busy_timeout` makes it :data:`SQLITE_BUSY_TIMEOUT_MS`: a request waits
for the lock instead of failing (WAL mode, so readers never wait).
"""

from __future__ import annotations

from datetime import timedelta

#: How long a claimed app task may take to send its first heartbeat (Flower: 30 s). The same
#: bound as a node's ClientApp runtime gets for its imports under load
#: (:data:`coordinator.federation.superexec.ZYGOTE_READY_TIMEOUT_S`).
APP_START_WINDOW_S = 120.0


#: How long a SuperLink request waits for SQLite's write lock before failing (Flower: 5 s).
#: Below the nodes' heartbeat bound (20 s), so a wait never outlasts what makes a node offline.
SQLITE_BUSY_TIMEOUT_MS = 15_000


def configure_superlink() -> None:
    """Everything this module changes, for the SuperLink process (before it opens its state)."""
    widen_app_start_window()
    lengthen_sqlite_busy_timeout()


def lengthen_sqlite_busy_timeout(timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> None:
    """Make every SQLite connection Flower opens in this process wait ``timeout_ms`` for a lock."""
    from flwr.supercore import sql_mixin

    pragmas = tuple(sql_mixin.SQLITE_PRAGMAS)
    if not any(name == "busy_timeout" for name, _ in pragmas):  # the patched site moved: fail loudly
        raise RuntimeError("Flower's SQLITE_PRAGMAS no longer set busy_timeout")
    sql_mixin.SQLITE_PRAGMAS = tuple(  # type: ignore[assignment]
        (name, str(timeout_ms) if name == "busy_timeout" else value) for name, value in pragmas
    )


def widen_app_start_window(window_s: float = APP_START_WINDOW_S) -> None:
    """Make every CoreState of this process (SQL and in-memory) give a claimed task
    ``window_s`` to start. Idempotent."""
    from flwr.supercore.corestate import in_memory_corestate as mem
    from flwr.supercore.corestate import sql_corestate as sql

    if window_s < 30:
        raise ValueError(f"app start window {window_s} s: less than Flower's own 30 s")
    for cls, extend in ((sql.SqlCoreState, _extend_sql), (mem.InMemoryCoreState, _extend_in_memory)):
        claim = getattr(cls.claim_task, "__wrapped__", cls.claim_task)

        def claim_task(self, task_id: int, _claim=claim, _extend=extend) -> str | None:
            token = _claim(self, task_id)
            if token is not None:
                _extend(self, task_id, token, window_s)
            return token

        claim_task.__wrapped__ = claim  # type: ignore[attr-defined]
        claim_task.__doc__ = claim.__doc__
        cls.claim_task = claim_task  # type: ignore[method-assign]


def _extend_sql(state, task_id: int, token: str, window_s: float) -> None:
    """Push the claim's expiry to ``window_s`` from now, if it is still this claim (the token
    matches: an expired claim has none) and still STARTING (not yet running or finished)."""
    from flwr.supercore.date import now
    from flwr.supercore.state.schema.corestate_models import Task as TaskModel
    from flwr.supercore.utils import uint64_to_int64
    from sqlalchemy import update

    with state.session() as session:
        session.execute(
            update(TaskModel)
            .where(
                TaskModel.task_id == uint64_to_int64(task_id),
                TaskModel.token == token,
                TaskModel.running_at.is_(None),
                TaskModel.finished_at.is_(None),
            )
            .values(active_until=now() + timedelta(seconds=window_s))
        )


def _extend_in_memory(state, task_id: int, token: str, window_s: float) -> None:
    from flwr.common.constant import Status
    from flwr.supercore.date import now

    with state.lock_task_store:
        record = state.task_token_store.get(task_id)
        task = state.task_store.get(task_id)
        if record is not None and record.token == token and task and task.status.status == Status.STARTING:
            record.active_until = now() + timedelta(seconds=window_s)
