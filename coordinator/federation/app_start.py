"""A longer start window for the SuperLink's app processes (the ServerApp), so a loaded machine
does not make Flower relaunch it forever.

How Flower 1.41 starts a ServerApp (read from the installed source): the SuperExec claims the
run's task (``CoreState.claim_task``), which gives the task a token valid for
``HEARTBEAT_DEFAULT_INTERVAL`` = 30 s while it is STARTING, then launches ``flwr-serverapp``. That
process must send its first heartbeat (the first thing it does once its imports are done) within
those 30 s; otherwise the SuperLink puts the task back to PENDING and revokes the token
(``_cleanup_expired_task_tokens``), the SuperExec claims it again and starts another process,
and the first one's calls all fail with "Runtime task-token authentication failed" (401).

On this 2-core machine a cold ``flwr-serverapp`` takes a few seconds to import when idle; with
twenty SuperNodes' ClientApp runtimes importing at the same moment (:mod:`node.flower.zygote`)
and other jobs running (load average 30–45), one attempt took over 30 s, and every new attempt
competed with the last: a 20-firm study waited 2 min 53 s (five relaunches) before its ServerApp
ran (measured, ``bench/bench_small_firms.py``, 2026-12-07). Each relaunch also costs a full
import, which slows the next one further.

:func:`widen_app_start_window` gives a claimed task :data:`APP_START_WINDOW_S` to send that first
heartbeat instead. Only the STARTING window changes: once the app has sent a heartbeat, Flower's
own bounds apply unchanged (a running app that stops heartbeating is failed 60 s after its last
one), and a launch that never starts is still retried, only later. Called in the SuperLink
process by its launcher (:func:`coordinator.federation.control_auth.main`).
"""

from __future__ import annotations

from datetime import timedelta

#: How long a claimed app task may take to send its first heartbeat (Flower: 30 s). The same
#: bound as a node's ClientApp runtime gets for its imports under load
#: (:data:`coordinator.federation.superexec.ZYGOTE_READY_TIMEOUT_S`).
APP_START_WINDOW_S = 120.0


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
