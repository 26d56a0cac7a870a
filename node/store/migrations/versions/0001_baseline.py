"""Baseline: the tables ``create_all`` made before the store had schema versions.

Revision ID: 0001
Revises:
Create Date: 2026-12-06

Idempotent on purpose: a store created by an unversioned ReHealth Core already has these tables
(with its data) and gets only the ones it lacks, exactly as ``create_all`` would have done; a
new store gets them all. :func:`node.store.schema.migrate` checks the columns afterwards. The
columns are frozen here (not read from :mod:`node.store.models`): a later revision changes them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "ingested_files" not in have:
        op.create_table(
            "ingested_files",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("sha256", sa.String(length=64), nullable=False),
            sa.Column("kind", sa.String(length=16), nullable=False),
            sa.Column("name", sa.String(length=255), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("rows_done", sa.Integer(), nullable=False),
            sa.Column("loaded", sa.Integer(), nullable=False),
            sa.Column("already_present", sa.Integer(), nullable=False),
            sa.Column("quarantined", sa.Integer(), nullable=False),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("error", sa.String(length=255), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("sha256", "kind", name="uq_ingested_files_sha_kind"),
        )
    if "store_meta" not in have:
        op.create_table(
            "store_meta",
            sa.Column("name", sa.String(length=64), nullable=False),
            sa.Column("value", sa.String(length=255), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("name"),
        )
    if "cohort" not in have:
        op.create_table(
            "cohort",
            sa.Column("pseudonym", sa.String(length=64), nullable=False),
            sa.Column("department", sa.String(length=128), nullable=True),
            sa.Column("job_type", sa.String(length=128), nullable=True),
            sa.Column("age", sa.Float(), nullable=False),
            sa.Column("sex", sa.Float(), nullable=False),
            sa.Column("sbp", sa.Float(), nullable=False),
            sa.Column("dbp", sa.Float(), nullable=False),
            sa.Column("bp_treated", sa.Float(), nullable=False),
            sa.Column("total_chol", sa.Float(), nullable=False),
            sa.Column("hdl", sa.Float(), nullable=False),
            sa.Column("ldl", sa.Float(), nullable=False),
            sa.Column("triglycerides", sa.Float(), nullable=False),
            sa.Column("glucose", sa.Float(), nullable=False),
            sa.Column("diabetes", sa.Float(), nullable=False),
            sa.Column("smoker", sa.Float(), nullable=False),
            sa.Column("bmi", sa.Float(), nullable=False),
            sa.Column("waist", sa.Float(), nullable=False),
            sa.Column("family_history", sa.Float(), nullable=False),
            sa.Column("physical_activity", sa.Float(), nullable=False),
            sa.Column("treated", sa.SmallInteger(), nullable=False),
            sa.Column("extras", sa.JSON(), nullable=False),
            sa.Column("ingest_id", sa.Integer(), nullable=True),
            sa.Column("ingest_row", sa.Integer(), nullable=True),
            sa.ForeignKeyConstraint(["ingest_id"], ["ingested_files.id"]),
            sa.PrimaryKeyConstraint("pseudonym"),
        )
    if "interventions" not in have:
        op.create_table(
            "interventions",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("pseudonym", sa.String(length=64), nullable=False),
            sa.Column("code", sa.String(length=64), nullable=False),
            sa.Column("start", sa.Date(), nullable=False),
            sa.Column("end", sa.Date(), nullable=True),
            sa.Column("channel", sa.String(length=32), nullable=False),
            sa.Column("source", sa.String(length=16), nullable=False),
            sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("ingest_id", sa.Integer(), nullable=True),
            sa.Column("ingest_row", sa.Integer(), nullable=True),
            sa.ForeignKeyConstraint(["ingest_id"], ["ingested_files.id"]),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("pseudonym", "code", "start", name="uq_interventions_key"),
        )
        op.create_index("ix_interventions_pseudonym", "interventions", ["pseudonym"])
    if "outcomes" not in have:
        op.create_table(
            "outcomes",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("pseudonym", sa.String(length=64), nullable=False),
            sa.Column("period_start", sa.Date(), nullable=False),
            sa.Column("period_end", sa.Date(), nullable=False),
            sa.Column("claims_cost", sa.Float(), nullable=False),
            sa.Column("cv_event", sa.SmallInteger(), nullable=False),
            sa.Column("absence_days", sa.Float(), nullable=False),
            sa.Column("ingest_id", sa.Integer(), nullable=True),
            sa.Column("ingest_row", sa.Integer(), nullable=True),
            sa.ForeignKeyConstraint(["ingest_id"], ["ingested_files.id"]),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("pseudonym", "period_start", name="uq_outcomes_key"),
        )
        op.create_index("ix_outcomes_pseudonym", "outcomes", ["pseudonym"])
    if "persons" not in have:
        op.create_table(
            "persons",
            sa.Column("pseudonym", sa.String(length=64), nullable=False),
            sa.Column("site", sa.String(length=128), nullable=False),
            sa.Column("department", sa.String(length=128), nullable=True),
            sa.Column("job_type", sa.String(length=128), nullable=True),
            sa.Column("age_band", sa.String(length=8), nullable=False),
            sa.Column("index_date", sa.Date(), nullable=False),
            sa.Column("age", sa.Float(), nullable=False),
            sa.Column("sex", sa.Float(), nullable=False),
            sa.Column("sbp", sa.Float(), nullable=False),
            sa.Column("dbp", sa.Float(), nullable=False),
            sa.Column("bp_treated", sa.Float(), nullable=False),
            sa.Column("total_chol", sa.Float(), nullable=False),
            sa.Column("hdl", sa.Float(), nullable=False),
            sa.Column("ldl", sa.Float(), nullable=False),
            sa.Column("triglycerides", sa.Float(), nullable=False),
            sa.Column("glucose", sa.Float(), nullable=False),
            sa.Column("diabetes", sa.Float(), nullable=False),
            sa.Column("smoker", sa.Float(), nullable=False),
            sa.Column("bmi", sa.Float(), nullable=False),
            sa.Column("waist", sa.Float(), nullable=False),
            sa.Column("family_history", sa.Float(), nullable=False),
            sa.Column("physical_activity", sa.Float(), nullable=False),
            sa.Column("ingest_id", sa.Integer(), nullable=True),
            sa.Column("ingest_row", sa.Integer(), nullable=True),
            sa.ForeignKeyConstraint(["ingest_id"], ["ingested_files.id"]),
            sa.PrimaryKeyConstraint("pseudonym"),
        )
    if "quarantine" not in have:
        op.create_table(
            "quarantine",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("ingest_id", sa.Integer(), nullable=False),
            sa.Column("file", sa.String(length=255), nullable=False),
            sa.Column("kind", sa.String(length=16), nullable=False),
            sa.Column("row", sa.Integer(), nullable=False),
            sa.Column("field", sa.String(length=64), nullable=False),
            sa.Column("reason", sa.String(length=32), nullable=False),
            sa.Column("detail", sa.String(length=255), nullable=False),
            sa.Column("pseudonym", sa.String(length=64), nullable=True),
            sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(["ingest_id"], ["ingested_files.id"]),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_quarantine_ingest_id", "quarantine", ["ingest_id"])


def downgrade() -> None:
    for name in (
        "quarantine",
        "persons",
        "outcomes",
        "interventions",
        "cohort",
        "store_meta",
        "ingested_files",
    ):
        op.drop_table(name)
