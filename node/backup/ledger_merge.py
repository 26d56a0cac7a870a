"""The privacy ledger in a backup: exported as rows, restored as a union, never replaced.

A backup is older than the ledger it is restored beside: the node has released answers since.
Replacing the ledger with the backup's would forget those releases and hand their ε back — the
one thing a ledger must never do (restoring an old backup would reset the budget). So restoring
*merges*: the ledger afterwards holds every release of the current ledger **and** every release
of the backup (matched by what they were: study, query, time, noise, ε), so ε spent never drops:

- releases: the union; a release in both keeps "sent" if either says so;
- reservations: the union; one in both keeps the current ledger's state (it is newer);
- released answers kept for re-serving (``privacy_views``): the union, pointing at the
  merged release rows;
- the budget (ε, δ): the current ledger's; the backup's only when the current ledger has none
  (a node restored onto an empty machine). ``node.toml`` stays the authority either way;
- the ledger's id (``privacy_ledger_meta``): the current ledger's; the backup's when the
  current ledger never charged anything (a new machine), so the restored ledger is the same
  ledger as the restored store's anchor names (:mod:`node.ledger_anchor`).

When the current ledger is lost too (a new machine), the union is the backup's ledger: the
releases made after the backup cannot be known. Keep the ledger on storage that outlives the
node's disk, or back up after every study (see docs/USAGE.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Table, func, insert, select, text, update

from node.ledger import (
    META_LEDGER_ID,
    PrivacyLedger,
    _aware,
    budgets,
    ledger_exists,
    ledger_meta,
    releases,
    reservations,
    views,
)

log = logging.getLogger(__name__)

_TABLES: dict[str, Table] = {t.name: t for t in (budgets, releases, reservations, views, ledger_meta)}

__all__ = ["MergeReport", "backup_ledger_id", "export_ledger", "ledger_exists", "merge_ledger"]


@dataclass(frozen=True)
class MergeReport:
    """What restoring added to the ledger (ε spent before and after: never lower)."""

    releases_added: int
    reservations_added: int
    views_added: int
    releases_after: int
    spent_before: float | None
    spent_after: float | None
    budget_from_backup: bool


def backup_ledger_id(backup: dict[str, list[dict]]) -> str | None:
    """The id of the ledger a backup's rows are from (None: a backup made before ledger ids)."""
    return next((r["value"] for r in backup.get(ledger_meta.name, []) if r["name"] == META_LEDGER_ID), None)


def export_ledger(url: str) -> dict[str, list[dict]] | None:
    """Every row of every ledger table (one consistent read), JSON-ready; None: no ledger."""
    if not ledger_exists(url):
        return None
    ledger = PrivacyLedger(url)
    try:
        with ledger.engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE, one snapshot
            return {
                name: [
                    _jsonable(dict(r)) for r in conn.execute(select(t).order_by(*t.primary_key)).mappings()
                ]
                for name, t in _TABLES.items()
            }
    finally:
        ledger.engine.dispose()


def merge_ledger(url: str, backup: dict[str, list[dict]]) -> MergeReport:
    """Merge the backup's ledger rows into the ledger at ``url`` (created if missing) in one
    locked transaction (see the module notes)."""
    ledger = PrivacyLedger(url)
    try:
        before = ledger.state().spent if ledger.has_budget() else None
        with ledger.engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE
            _lock(conn)
            _merge_id(conn, backup)
            from_backup = _merge_budget(conn, backup.get("privacy_budgets", []))
            id_map, added = _merge_releases(conn, backup.get("privacy_releases", []))
            res_added = _merge_reservations(conn, backup.get("privacy_reservations", []))
            views_added = _merge_views(conn, backup.get("privacy_views", []), id_map)
        state = ledger.state() if ledger.has_budget() else None
        after = state.spent if state else None
        if before is not None and (after is None or after < before - 1e-12):
            raise AssertionError("a ledger merge lowered ε spent")  # cannot happen: rows only added
        return MergeReport(
            releases_added=added,
            reservations_added=res_added,
            views_added=views_added,
            releases_after=state.releases if state else 0,
            spent_before=before,
            spent_after=after,
            budget_from_backup=from_backup,
        )
    finally:
        ledger.engine.dispose()


def _lock(conn: Connection) -> None:
    """No charge may commit between reading the ledger and adding to it (PostgreSQL; SQLite's
    ``BEGIN IMMEDIATE`` already holds the write lock)."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("LOCK TABLE privacy_budgets, privacy_releases, privacy_reservations IN EXCLUSIVE MODE")
        )


def _merge_id(conn: Connection, backup: dict[str, list[dict]]) -> None:
    """A ledger that never charged anything takes the backup's id (see the module notes)."""
    theirs = backup_ledger_id(backup)
    if theirs is None or conn.execute(select(func.count()).select_from(releases)).scalar_one():
        return
    conn.execute(update(ledger_meta).where(ledger_meta.c.name == META_LEDGER_ID).values(value=theirs))


def _merge_budget(conn: Connection, rows: list[dict]) -> bool:
    if conn.execute(select(budgets.c.dataset)).first() is not None or not rows:
        return False
    conn.execute(insert(budgets), [_typed(budgets, r) for r in rows])
    return True


def _release_key(r) -> tuple:
    return (
        r["dataset"],
        r["study_id"],
        r["query"],
        _aware(r["created_at"]).isoformat(),
        float(r["sigma"]),
        float(r["sensitivity"]),
        float(r["noise_multiplier"]),
        float(r["sample_rate"]),
        int(r["steps"]),
        float(r["epsilon"]),
    )


def _merge_releases(conn: Connection, rows: list[dict]) -> tuple[dict[int, int], int]:
    """Add the backup's releases the ledger lacks; return (backup id → ledger id, added)."""
    have = {_release_key(r): r for r in conn.execute(select(releases)).mappings()}
    id_map: dict[int, int] = {}
    added = 0
    for r in sorted(rows, key=lambda r: r["id"]):
        cur = have.get(_release_key(r))
        if cur is None:
            values = _typed(releases, {k: v for k, v in r.items() if k != "id"})
            new_id = conn.execute(insert(releases).values(values)).inserted_primary_key
            assert new_id is not None, "an insert has a primary key"
            id_map[r["id"]] = new_id[0]
            added += 1
            continue
        id_map[r["id"]] = cur["id"]
        if r["status"] == "sent" and cur["status"] != "sent":
            conn.execute(update(releases).where(releases.c.id == cur["id"]).values(status="sent"))
    return id_map, added


def _merge_reservations(conn: Connection, rows: list[dict]) -> int:
    have = {
        (r.study_id, _aware(r.created_at).isoformat())
        for r in conn.execute(select(reservations.c.study_id, reservations.c.created_at))
    }
    new = [r for r in rows if (r["study_id"], _aware(r["created_at"]).isoformat()) not in have]
    for r in new:
        conn.execute(
            insert(reservations).values(_typed(reservations, {k: v for k, v in r.items() if k != "id"}))
        )
    return len(new)


def _merge_views(conn: Connection, rows: list[dict], id_map: dict[int, int]) -> int:
    have = {k for (k,) in conn.execute(select(views.c.key))}
    new = [r for r in rows if r["key"] not in have and r["release_id"] in id_map]
    for r in new:
        conn.execute(insert(views).values(_typed(views, {**r, "release_id": id_map[r["release_id"]]})))
    return len(new)


def _jsonable(row: dict) -> dict:
    return {k: _aware(v).isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _typed(table: Table, row: dict) -> dict:
    """A JSON row back in the column types (datetimes from ISO text)."""
    out = {}
    for k, v in row.items():
        col = table.c[k]
        if v is not None and isinstance(v, str) and col.type.python_type is datetime:
            v = _aware(v)
        out[k] = v
    return out
