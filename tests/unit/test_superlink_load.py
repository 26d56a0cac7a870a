"""The SuperLink under load (:mod:`coordinator.federation.superlink_load`): the start window for
app processes on Flower's own state classes (SQL and in-memory), the clock moved forward; and
the SQLite busy timeout of the connections Flower opens.

Without the change, a ServerApp that has not sent its first heartbeat 30 s after its task was
claimed loses its token and its task goes back to pending (Flower relaunches it); that is what
kept a 20-firm study's ServerApp from starting for three minutes on a loaded machine."""

from datetime import timedelta

import pytest
from flwr.common.constant import Status
from flwr.supercore.corestate import in_memory_corestate, sql_corestate
from flwr.supercore.date import now
from flwr.supercore.object_store import ObjectStoreFactory

from coordinator.federation.superlink_load import (
    APP_START_WINDOW_S,
    SQLITE_BUSY_TIMEOUT_MS,
    configure_superlink,
    widen_app_start_window,
)


class _Sql(sql_corestate.SqlCoreState):
    def get_node_id(self) -> int:
        return 0

    def store_message_and_object_tree(self, *a, **k):
        raise NotImplementedError


class _Mem(in_memory_corestate.InMemoryCoreState):
    def get_node_id(self) -> int:
        return 0

    def store_message_and_object_tree(self, *a, **k):
        raise NotImplementedError


def _state(kind: str):
    store = ObjectStoreFactory().store()
    if kind == "mem":
        return _Mem(store), in_memory_corestate
    state = _Sql(":memory:", store)  # Flower's SQL state (SQLAlchemy on SQLite), in memory: fast
    state.initialize()
    return state, sql_corestate


@pytest.fixture
def restore_flower(monkeypatch):
    """Flower's classes as they were after the test (the patch is process-wide)."""
    from flwr.supercore import sql_mixin

    for cls in (sql_corestate.SqlCoreState, in_memory_corestate.InMemoryCoreState):
        monkeypatch.setattr(cls, "claim_task", cls.claim_task)
    monkeypatch.setattr(sql_mixin, "SQLITE_PRAGMAS", sql_mixin.SQLITE_PRAGMAS)
    return monkeypatch


def _at(monkeypatch, module, seconds: float) -> None:
    """Flower's state sees the clock ``seconds`` ahead (its expiry checks read ``now``)."""
    ahead = now() + timedelta(seconds=seconds)
    monkeypatch.setattr(module, "now", lambda: ahead)


def _claimed(state) -> tuple[int, str]:
    task_id = state.create_task("serverapp", 1)
    token = state.claim_task(task_id)
    assert token is not None
    return task_id, token


@pytest.mark.parametrize("kind", ["sql", "mem"])
def test_flowers_own_window_revokes_a_slow_starter_at_30_s(kind, restore_flower):
    state, module = _state(kind)
    task_id, token = _claimed(state)
    _at(restore_flower, module, 45)
    assert state.get_task_by_token(token) is None  # what the slow ServerApp's calls met (401)
    assert state.get_tasks(task_ids=[task_id])[0].status.status == Status.PENDING


@pytest.mark.parametrize("kind", ["sql", "mem"])
def test_a_claimed_app_keeps_its_token_for_the_start_window_and_no_longer(kind, restore_flower):
    widen_app_start_window()
    widen_app_start_window()  # idempotent: not wrapped twice
    state, module = _state(kind)
    task_id, token = _claimed(state)
    _at(restore_flower, module, 45)
    found = state.get_task_by_token(token)
    assert found is not None and found.task_id == task_id
    assert state.get_tasks(task_ids=[task_id])[0].status.status == Status.STARTING
    # a launch that never starts is still retried, after the window
    _at(restore_flower, module, APP_START_WINDOW_S + 5)
    assert state.get_task_by_token(token) is None
    assert state.get_tasks(task_ids=[task_id])[0].status.status == Status.PENDING


@pytest.mark.parametrize("kind", ["sql", "mem"])
def test_a_running_app_keeps_flowers_heartbeat_bound(kind, restore_flower):
    widen_app_start_window()
    state, module = _state(kind)
    task_id, token = _claimed(state)
    assert state.activate_task(task_id)
    _at(restore_flower, module, 50)  # within Flower's 2 × 30 s after activation
    assert state.get_task_by_token(token) is not None
    _at(restore_flower, module, 65)  # past it: failed, as without the change
    assert state.get_task_by_token(token) is None
    task = state.get_tasks(task_ids=[task_id])[0]
    assert task.status.status == Status.FINISHED


def test_a_window_shorter_than_flowers_is_refused():
    with pytest.raises(ValueError, match="30 s"):
        widen_app_start_window(10)


def _busy_timeout(path) -> int:
    from sqlalchemy import text

    state = _Sql(str(path), ObjectStoreFactory().store())
    state.initialize()
    with state.session() as session:
        return int(session.execute(text("PRAGMA busy_timeout")).scalar())


def test_flowers_sqlite_connections_wait_for_a_lock_as_long_as_we_set(tmp_path, restore_flower):
    """A real SQLite file opened by Flower's own state class: 5 s without the change (what made
    the SuperLink answer "database is locked" under load), ours with it."""
    assert _busy_timeout(tmp_path / "flowers.db") == 5000
    configure_superlink()
    assert _busy_timeout(tmp_path / "ours.db") == SQLITE_BUSY_TIMEOUT_MS
