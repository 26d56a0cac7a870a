"""persons: feature columns may be NULL (the ``indicator`` missing-value policy).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

A persons row may now hold a missing feature (stored NULL) when the node config's
``[ingest.missing]`` policy for it is ``indicator`` (see :class:`node.config.IngestSection`);
every reader of persons' features handles or explicitly excludes it
(:func:`node.trajectory.derive_cohort`). ``age`` stays NOT NULL: the age band is derived from it
and the ingest never keeps it missing. Existing rows are unchanged (none holds a NULL).
SQLite alters a column by copying the table (batch mode); PostgreSQL drops the constraint in
place. The downgrade refuses nothing: it fails if a NULL was stored since, as it must.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: The 15 features besides age (frozen here, not read from the code: a later revision may change them).
_FEATURES = (
    "sex",
    "sbp",
    "dbp",
    "bp_treated",
    "total_chol",
    "hdl",
    "ldl",
    "triglycerides",
    "glucose",
    "diabetes",
    "smoker",
    "bmi",
    "waist",
    "family_history",
    "physical_activity",
)


def _set_nullable(nullable: bool) -> None:
    with op.batch_alter_table("persons") as batch:
        for name in _FEATURES:
            batch.alter_column(name, existing_type=sa.Float(), nullable=nullable)


def upgrade() -> None:
    _set_nullable(True)


def downgrade() -> None:
    _set_nullable(False)
