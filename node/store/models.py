"""Tables of the node store (SQLAlchemy 2 Core), the same on SQLite and PostgreSQL.

Every person-level table is keyed by the keyed pseudonym (``shared`` never sees it; it never
leaves the node). Natural keys make re-ingestion idempotent:

=============  ===============================  ==========================================
table          natural key                      what a row is
=============  ===============================  ==========================================
persons        pseudonym                        16 features at the index date + descriptors
interventions  (pseudonym, code, start)         one intervention given (the trajectory log)
outcomes       (pseudonym, period_start)        claims, CV event, absence over one period
cohort         pseudonym                        a flat cohort row: features, treated, extras
quarantine     id                               one rejected input row: file, row, field, why
ingested_files id; unique (sha256, kind)        one input file and its counts (resumable)
store_meta     name                             one fact about the store itself (see below)
plans          id; unique (pseudonym, model,    one personalised intervention plan and its
               catalogue)                       delivery state (node.plans)
plan_events    id; unique idempotency_key       sent, delivered, skipped, dead-lettered,
                                                opened, completed (the plan trajectory)
opt_outs       pseudonym                        a person who receives no plan
=============  ===============================  ==========================================

``cohort.extras`` is a JSON object of the numeric columns a flat cohort file has beyond the
16 features and ``treated`` (outcomes such as ``claims_cost``, or extra study covariates):
sites name their outcomes freely, so a fixed column list would not fit. ``(ingest_id, ingest_row)``
name the file (``ingested_files.id``) and data row a row came from (NULL for events appended
through the CLI or API); they let ingestion tell a duplicate inside the file being loaded from
a row that an earlier file already stored.

``store_meta`` holds what every stored pseudonym depends on: the fingerprint of the pseudonym
key (``key_fingerprint``, see :func:`node.pseudonym.key_fingerprint`) and the site id mixed into
each pseudonym (``pseudonym_site_id``). They let the node refuse to add rows under another key
or site id, which would store the same people twice under unrelated pseudonyms.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)

from shared.features import FEATURES

#: Length of a hex HMAC-SHA256 pseudonym.
PSEUDONYM_LEN = 64

metadata = MetaData()


def _feature_columns(*, nullable: bool = False) -> list[Column]:
    """The 16 feature columns; ``nullable`` for all but age (never kept missing: its band is
    derived from it). Schema revision 0002 made persons' nullable."""
    return [Column(f.name, Float, nullable=nullable and f.name != "age") for f in FEATURES]


def _pseudonym(primary_key: bool = False) -> Column:
    return Column(
        "pseudonym", String(PSEUDONYM_LEN), primary_key=primary_key, nullable=False, index=not primary_key
    )


def _provenance() -> list[Column]:
    """Which file and data row a row came from (NULL when appended through the CLI or API)."""
    return [
        Column("ingest_id", Integer, ForeignKey("ingested_files.id"), nullable=True),
        Column("ingest_row", Integer, nullable=True),
    ]


ingested_files = Table(
    "ingested_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("name", String(255), nullable=False),
    Column("status", String(16), nullable=False),  # running | done | failed | undone
    Column("rows_done", Integer, nullable=False, default=0),  # data rows committed so far
    Column("loaded", Integer, nullable=False, default=0),
    Column("already_present", Integer, nullable=False, default=0),
    Column("quarantined", Integer, nullable=False, default=0),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # why a failed file was refused and rolled back (names file, line or row group; no value)
    Column("error", String(255), nullable=True),
    UniqueConstraint("sha256", "kind", name="uq_ingested_files_sha_kind"),
)

persons = Table(
    "persons",
    metadata,
    _pseudonym(primary_key=True),
    Column("site", String(128), nullable=False),
    Column("department", String(128), nullable=True),
    Column("job_type", String(128), nullable=True),
    Column("age_band", String(8), nullable=False),
    Column("index_date", Date, nullable=False),
    # NULL only under the node's ``indicator`` missing-value policy (node.config IngestSection):
    # whoever reads persons' features must handle or explicitly exclude it
    *_feature_columns(nullable=True),
    *_provenance(),
)

interventions = Table(
    "interventions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _pseudonym(),
    Column("code", String(64), nullable=False),
    Column("start", Date, nullable=False),
    Column("end", Date, nullable=True),
    Column("channel", String(32), nullable=False),
    Column("source", String(16), nullable=False),  # file | cli | api
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    *_provenance(),
    UniqueConstraint("pseudonym", "code", "start", name="uq_interventions_key"),
)

outcomes = Table(
    "outcomes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _pseudonym(),
    Column("period_start", Date, nullable=False),
    Column("period_end", Date, nullable=False),
    Column("claims_cost", Float, nullable=False),
    Column("cv_event", SmallInteger, nullable=False),
    Column("absence_days", Float, nullable=False),
    *_provenance(),
    UniqueConstraint("pseudonym", "period_start", name="uq_outcomes_key"),
)

cohort = Table(
    "cohort",
    metadata,
    _pseudonym(primary_key=True),
    Column("department", String(128), nullable=True),
    Column("job_type", String(128), nullable=True),
    *_feature_columns(),
    Column("treated", SmallInteger, nullable=False),
    Column("extras", JSON, nullable=False),
    *_provenance(),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ingest_id", Integer, ForeignKey("ingested_files.id"), nullable=False, index=True),
    Column("file", String(255), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("row", Integer, nullable=False),  # 1-based data row (the header is not counted)
    Column("field", String(64), nullable=False),
    Column("reason", String(32), nullable=False),  # a code from node.ingest.reasons
    Column("detail", String(255), nullable=False),  # never holds the offending value
    Column("pseudonym", String(PSEUDONYM_LEN), nullable=True),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
)

store_meta = Table(
    "store_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

plans = Table(
    "plans",
    metadata,
    Column("id", String(32), primary_key=True),  # random hex; the webhook's idempotency key
    _pseudonym(),
    Column("model_version", String(32), nullable=False),
    Column("catalogue_sha", String(64), nullable=False),
    Column("risk", Float, nullable=False),  # predicted risk when generated (never sent)
    # ranked recommendations: code, intervention, factor, reason, text, channel, reduction
    Column("items", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # pending | sending | delivered | dead | skipped
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", String(255), nullable=True),  # HTTP status or error type, never a value
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("pseudonym", "model_version", "catalogue_sha", name="uq_plans_person_model"),
)

plan_events = Table(
    "plan_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("plan_id", String(32), ForeignKey("plans.id"), nullable=False, index=True),
    _pseudonym(),
    # sent | delivered | failed | dead_lettered | skipped | opened | completed
    Column("event", String(16), nullable=False),
    Column("code", String(64), nullable=True),  # the plan item (completed), else NULL
    Column("channel", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("source", String(16), nullable=False),  # delivery | callback | import
    Column("detail", String(255), nullable=True),  # attempt number, HTTP status; never a value
    # a callback's Idempotency-Key: a replayed callback is refused
    Column("idempotency_key", String(128), nullable=True, unique=True),
)

opt_outs = Table(
    "opt_outs",
    metadata,
    _pseudonym(primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)

#: What re-keying deletes (``rehealth node store rekey``), children before parents: every table
#: whose rows carry a pseudonym, and the ingest history (a file loaded under the old key must be
#: read again under the new one, not skipped as "already ingested").
PERSON_LINKED = (
    "quarantine",
    "plan_events",
    "plans",
    "opt_outs",
    "persons",
    "interventions",
    "outcomes",
    "cohort",
    "ingested_files",
)

#: Natural key columns of each ingestible table.
NATURAL_KEYS: dict[str, tuple[str, ...]] = {
    "persons": ("pseudonym",),
    "interventions": ("pseudonym", "code", "start"),
    "outcomes": ("pseudonym", "period_start"),
    "cohort": ("pseudonym",),
}
