"""Personalised intervention plans, their delivery and event trajectory, and opt-outs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

``plans`` holds one generated plan per person, model version and catalogue (node.plans);
``plan_events`` every sent, delivered, failed, dead-lettered, skipped, opened and completed
event (the callback's idempotency key is unique: a replay is refused); ``opt_outs`` the people
who receive no plan. New tables only (those a store lacks): existing rows are untouched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # only the tables a store lacks: one made by ``create_all`` from this code already has them
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "plans" not in have:
        _plans()
    if "plan_events" not in have:
        _plan_events()
    if "opt_outs" not in have:
        op.create_table(
            "opt_outs",
            sa.Column("pseudonym", sa.String(length=64), nullable=False),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("pseudonym"),
        )


def _plans() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("catalogue_sha", sa.String(length=64), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pseudonym", "model_version", "catalogue_sha", name="uq_plans_person_model"),
    )
    op.create_index("ix_plans_pseudonym", "plans", ["pseudonym"])


def _plan_events() -> None:
    op.create_table(
        "plan_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("plan_id", sa.String(length=32), nullable=False),
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=255), nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index("ix_plan_events_plan_id", "plan_events", ["plan_id"])
    op.create_index("ix_plan_events_pseudonym", "plan_events", ["pseudonym"])


def downgrade() -> None:
    op.drop_table("opt_outs")
    op.drop_index("ix_plan_events_pseudonym", table_name="plan_events")
    op.drop_index("ix_plan_events_plan_id", table_name="plan_events")
    op.drop_table("plan_events")
    op.drop_index("ix_plans_pseudonym", table_name="plans")
    op.drop_table("plans")
