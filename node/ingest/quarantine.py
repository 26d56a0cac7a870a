"""The quarantine: where invalid input rows go, with file, data-row number, field and reason.

A quarantine row never holds the offending value (it might be an identifier typed into the
wrong column); it holds the pseudonym when the row's id was valid, so a site can find the
person in its own system by re-running the pseudonymisation, and nothing else.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from sqlalchemy import Connection, func, insert, select

from node.store.models import quarantine

#: Reason of a row whose natural key is already stored with other values (a correction):
#: refused, the stored row unchanged (see :mod:`node.ingest.pipeline`).
CONFLICTS_WITH_STORED = "conflicts with stored"

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
