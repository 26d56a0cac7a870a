"""The quarantine: where invalid input rows go, with file, data-row number, field and reason.

A quarantine row never holds the offending value (it might be an identifier typed into the
wrong column); it holds the pseudonym when the row's id was valid, so a site can find the
person in its own system by re-running the pseudonymisation, and nothing else.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from sqlalchemy import Connection, func, insert, select

from node.store.models import ingested_files, quarantine
from shared.errors import DataError

#: Columns of a problems frame (see :class:`node.ingest.validate.ChunkResult`).
PROBLEM_COLUMNS = ("row", "field", "reason", "detail", "pseudonym")


def write_problems(conn: Connection, problems: pd.DataFrame, *, ingest_id: int, file: str, kind: str) -> int:
    """Insert one quarantine row per problem; returns how many."""
    if problems.empty:
        return 0
    now = dt.datetime.now(dt.timezone.utc)
    conn.execute(
        insert(quarantine),
        [
            {
                "ingest_id": ingest_id,
                "file": file[:255],
                "kind": kind,
                "row": int(r.row),
                "field": r.field,
                "reason": r.reason,
                "detail": str(r.detail)[:255],
                # NaN would reach PostgreSQL as the text 'NaN': only real pseudonyms pass
                "pseudonym": r.pseudonym if isinstance(r.pseudonym, str) else None,
                "ingested_at": now,
            }
            for r in problems.itertuples(index=False)
        ],
    )
    return len(problems)


def counts_by_reason(conn: Connection, ingest_id: int) -> dict[str, int]:
    """How many rows of one ingested file were quarantined, per reason."""
    q = quarantine
    rows = conn.execute(
        select(q.c.reason, func.count())
        .where(q.c.ingest_id == ingest_id)
        .group_by(q.c.reason)
        .order_by(q.c.reason)
    ).all()
    return {reason: int(n) for reason, n in rows}


def list_files(conn: Connection) -> list[dict]:
    """Every ingested file (newest first): id, name, kind, status, counts, the refusal reason."""
    f = ingested_files
    rows = conn.execute(
        select(
            f.c.id,
            f.c.name,
            f.c.kind,
            f.c.status,
            f.c.rows_done,
            f.c.loaded,
            f.c.already_present,
            f.c.quarantined,
            f.c.finished_at,
            f.c.error,
        ).order_by(f.c.id.desc())
    ).mappings()
    return [
        {
            **dict(r),
            "rows": r["rows_done"],
            "finished_at": str(r["finished_at"]) if r["finished_at"] else None,
        }
        for r in rows
    ]


def file_problems(conn: Connection, file_id: int, *, max_rows: int = 1000) -> dict:
    """One file's quarantine: counts and data-row numbers by field and reason, and each row's
    detail. Never a value and never a pseudonym: a quarantine row holds no value (see the
    module docstring), and the viewer leaves the pseudonym out too.

    Raises:
        DataError: no such file id.
    """
    f, q = ingested_files, quarantine
    job = conn.execute(
        select(f.c.id, f.c.name, f.c.kind, f.c.status, f.c.error).where(f.c.id == file_id)
    ).first()
    if job is None:
        raise DataError(f"no ingested file with id {file_id} (see: rehealth node quarantine list)")
    rows = conn.execute(
        select(q.c.row, q.c.field, q.c.reason, q.c.detail).where(q.c.ingest_id == file_id).order_by(q.c.row)
    ).all()
    groups: dict[str, dict] = {}
    for r in rows:
        g = groups.setdefault(
            f"{r.field}: {r.reason}", {"field": r.field, "reason": r.reason, "count": 0, "rows": []}
        )
        g["count"] += 1
        if len(g["rows"]) < max_rows:
            g["rows"].append(int(r.row))
    return {
        "file_id": job.id,
        "file": job.name,
        "kind": job.kind,
        "status": job.status,
        "error": job.error,
        "quarantined": len(rows),
        "by_field_and_reason": sorted(groups.values(), key=lambda g: -g["count"]),
        "rows": [
            {"row": int(r.row), "field": r.field, "reason": r.reason, "detail": r.detail}
            for r in rows[:max_rows]
        ],
    }
