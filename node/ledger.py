r"""The node's privacy ledger: one budget per dataset, every release charged before it leaves.

Tables (SQLite file by default, PostgreSQL by URL; they can live in the node store's database):

* ``privacy_budgets(dataset, epsilon, delta)`` — the dataset's total budget.
* ``privacy_releases(id, dataset, study_id, query, sigma, sensitivity, noise_multiplier,
  epsilon, epsilon_after, created_at, status)`` — append-only; ``epsilon`` is what this
  release added, ``epsilon_after`` the dataset's total after it.

**Accounting.** ε is always recomputed by the accountant (:mod:`shared.dp.accounting`) over the
dataset's *whole persisted history* plus the new release, at the budget's δ — composition across
studies on the same dataset included. Nothing is summed by hand.

**Atomicity.** :meth:`PrivacyLedger.charge` reads the history, checks the budget and inserts the
release in one transaction that holds the dataset's write lock (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: ``SELECT … FOR UPDATE`` on the budget row), so two concurrent studies cannot both
spend the last of a budget. The caller adds noise and sends only *after* the charge committed
(:func:`node.privacy.charged_release`): a crash between charge and send leaves a charge without
a release — over-counting, never under-counting. Rows are never deleted; ``status`` goes from
``charged`` to ``sent`` when the caller confirms, but every row counts either way.

>>> import tempfile, os
>>> led = PrivacyLedger(f"sqlite:///{tempfile.mkdtemp()}/ledger.db")
>>> led.ensure_budget(dataset="cohort", epsilon=1.0, delta=1e-6).epsilon
1.0
>>> c = led.charge(dataset="cohort", study_id="s1", query="describe", sigma=20.0, sensitivity=1.0)
>>> 0 < c.epsilon < 1.0
True
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from sqlalchemy import (Column, DateTime, Engine, Float, Integer, MetaData, String, Table,
                        create_engine, event, func, insert, select, update)
from sqlalchemy.exc import DBAPIError, IntegrityError

from shared.dp.accounting import epsilon_of_history
from shared.errors import BudgetExceededError, PrivacyError, ReplayRefused

__all__ = ["BudgetState", "Charge", "PrivacyLedger", "ReleaseRecord"]

log = logging.getLogger("rehealth.node.ledger")

metadata = MetaData()

budgets = Table(
    "privacy_budgets", metadata,
    Column("dataset", String(200), primary_key=True),
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
)

releases = Table(
    "privacy_releases", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset", String(200), nullable=False, index=True),
    Column("study_id", String(128), nullable=False),
    Column("query", String(64), nullable=False),
    Column("sigma", Float, nullable=False),
    Column("sensitivity", Float, nullable=False),
    Column("noise_multiplier", Float, nullable=False),
    Column("sample_rate", Float, nullable=False, default=1.0),  # q < 1: DP-SGD (subsampled)
    Column("steps", Integer, nullable=False, default=1),  # applications of the mechanism
    Column("epsilon", Float, nullable=False),  # added by this release
    Column("epsilon_after", Float, nullable=False),  # dataset total after it
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),  # charged | sent
)

_EPS_TOL = 1e-9  # float noise of the accountant; never lets a real overspend through


@dataclass(frozen=True)
class _Release:
    """The fields every ledger row carries."""

    id: int
    dataset: str
    study_id: str
    query: str
    sigma: float
    sensitivity: float
    noise_multiplier: float
    epsilon: float  # this release's increment
    epsilon_after: float  # the dataset's total ε after it


@dataclass(frozen=True)
class Charge(_Release):
    """A committed charge: pay first, then release."""

    epsilon_left: float


@dataclass(frozen=True)
class ReleaseRecord(_Release):
    """One row of the ledger's history."""

    created_at: str
    status: str
    sample_rate: float = 1.0
    steps: int = 1


@dataclass(frozen=True)
class BudgetState:
    dataset: str
    epsilon: float
    delta: float
    spent: float
    left: float
    releases: int


class PrivacyLedger:
    """A persisted, append-only privacy ledger over SQLAlchemy.

    Args:
        url: database URL (``sqlite:///path/ledger.db`` or ``postgresql+psycopg2://…``).
        accountant: ``"rdp"`` (default) or ``"prv"``; must match the study plans'.
    """

    def __init__(self, url: str, *, accountant: str = "rdp"):
        self.url = url
        self.accountant = accountant
        self.engine = _make_engine(url)
        try:
            metadata.create_all(self.engine)
        except DBAPIError:  # another process created the tables between check and create
            metadata.create_all(self.engine)

    # -- budgets -------------------------------------------------------------------------------
    def ensure_budget(self, *, dataset: str, epsilon: float, delta: float) -> BudgetState:
        """Create the dataset's budget, or set it to these values (the node config is the
        authority). History is kept; spent ε is recomputed at the new δ.

        Raises:
            PrivacyError: ε not positive or δ outside (0, 1).
        """
        if not (math.isfinite(epsilon) and epsilon > 0) or not 0 < delta < 1:
            raise PrivacyError(f"budget of dataset {dataset}: need ε > 0 and 0 < δ < 1, "
                               f"got ε={epsilon!r}, δ={delta!r}")
        try:
            self._set_budget(dataset, float(epsilon), float(delta))
        except IntegrityError:  # a concurrent process inserted the same dataset first
            self._set_budget(dataset, float(epsilon), float(delta))
        return self.state(dataset)

    def _set_budget(self, dataset: str, epsilon: float, delta: float) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(select(budgets).where(budgets.c.dataset == dataset)
                               .with_for_update()).first()
            if row is None:
                conn.execute(insert(budgets).values(dataset=dataset, epsilon=epsilon, delta=delta))
            elif (row.epsilon, row.delta) != (epsilon, delta):
                log.warning("budget of dataset %s changed from ε=%g, δ=%g to ε=%g, δ=%g",
                            dataset, row.epsilon, row.delta, epsilon, delta)
                conn.execute(update(budgets).where(budgets.c.dataset == dataset)
                             .values(epsilon=epsilon, delta=delta))

    def datasets(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r.dataset for r in conn.execute(select(budgets.c.dataset).order_by(budgets.c.dataset))]

    # -- charging ------------------------------------------------------------------------------
    def charge(self, *, dataset: str, study_id: str, query: str, sigma: float,
               sensitivity: float, limit: int | None = None) -> Charge:
        r"""Charge one Gaussian release (:math:`\mu = \sigma/\Delta`) to ``dataset``, atomically.

        Returns:
            The committed :class:`Charge`.

        Raises:
            BudgetExceededError: the composed ε would exceed the budget (names budget, left, asked).
            ReplayRefused: ``study_id`` already had ``limit`` releases of ``query`` (a signed
                study gets the releases its plan names, once: a replayed grant gets nothing).
            PrivacyError: no budget for ``dataset``, or σ / Δ not positive.
        """
        sigma, sensitivity = float(sigma), float(sensitivity)
        if not (math.isfinite(sigma) and sigma > 0 and math.isfinite(sensitivity) and sensitivity > 0):
            raise PrivacyError(f"release {query!r} on dataset {dataset}: σ and sensitivity must be "
                               f"positive, got σ={sigma!r}, Δ={sensitivity!r}")
        return self._charge(dataset=dataset, study_id=study_id, query=query, sigma=sigma,
                            sensitivity=sensitivity, sample_rate=1.0, steps=1, limit=limit)

    def charge_sgd(self, *, dataset: str, study_id: str, query: str, noise_multiplier: float,
                   sample_rate: float, steps: int) -> Charge:
        r"""Charge one local DP-SGD run (``steps`` subsampled Gaussian steps, Poisson rate
        ``sample_rate``, noise multiplier μ = σ/C) before its weights leave, atomically.

        Raises:
            BudgetExceededError: the composed ε would exceed the budget.
            PrivacyError: no budget, or μ, q or steps out of range.
        """
        if not (0 < float(sample_rate) <= 1) or int(steps) < 1:
            raise PrivacyError(f"release {query!r} on dataset {dataset}: need 0 < q <= 1 and "
                               f"steps >= 1, got q={sample_rate!r}, steps={steps!r}")
        return self._charge(dataset=dataset, study_id=study_id, query=query,
                            sigma=float(noise_multiplier), sensitivity=1.0,
                            sample_rate=float(sample_rate), steps=int(steps))

    def _charge(self, *, dataset: str, study_id: str, query: str, sigma: float,
                sensitivity: float, sample_rate: float, steps: int,
                limit: int | None = None) -> Charge:
        if not (math.isfinite(sigma) and sigma > 0):
            raise PrivacyError(f"release {query!r} on dataset {dataset}: noise must be positive")
        mu = sigma / sensitivity
        entry = (mu, sample_rate, steps)
        with self.engine.begin() as conn:
            budget = conn.execute(select(budgets).where(budgets.c.dataset == dataset)
                                  .with_for_update()).first()
            if budget is None:
                raise PrivacyError(f"no privacy budget is set for dataset {dataset}: "
                                   "refusing to release")
            if limit is not None:
                done = conn.execute(select(func.count()).select_from(releases).where(
                    releases.c.dataset == dataset, releases.c.study_id == study_id,
                    releases.c.query == query)).scalar_one()
                if done >= limit:
                    raise ReplayRefused(f"study {study_id[:24]} already had {done} {query} "
                                        f"release(s), all its signed plan allows")
            history = self._history(conn, dataset)
            before = self._eps(history, budget.delta)
            after = self._eps(history + [entry], budget.delta)
            if after > budget.epsilon + _EPS_TOL:
                raise BudgetExceededError(
                    f"budget of dataset {dataset}: ε={budget.epsilon:.2f} total "
                    f"(δ={budget.delta:g}), {max(budget.epsilon - before, 0.0):.2f} left, "
                    f"this release ({query}, study {study_id[:12]}) needs {after - before:.2f}")
            rid = conn.execute(insert(releases).values(
                dataset=dataset, study_id=study_id, query=query, sigma=sigma,
                sensitivity=sensitivity, noise_multiplier=mu, sample_rate=sample_rate,
                steps=steps, epsilon=after - before, epsilon_after=after,
                created_at=datetime.now(timezone.utc), status="charged",
            )).inserted_primary_key[0]
        return Charge(id=int(rid), dataset=dataset, study_id=study_id, query=query, sigma=sigma,
                      sensitivity=sensitivity, noise_multiplier=mu, epsilon=after - before,
                      epsilon_after=after, epsilon_left=max(budget.epsilon - after, 0.0))

    def mark_sent(self, charge_id: int) -> None:
        """Record that the charged release left the node (informational: charges count anyway)."""
        with self.engine.begin() as conn:
            conn.execute(update(releases).where(releases.c.id == charge_id).values(status="sent"))

    def _eps(self, history: list[tuple[float, float, int]], delta: float) -> float:
        return epsilon_of_history(history=history, delta=delta, accountant=self.accountant)

    @staticmethod
    def _history(conn, dataset: str) -> list[tuple[float, float, int]]:
        """Every charged release of ``dataset`` as an accountant entry (μ, q, steps)."""
        rows = conn.execute(select(releases.c.noise_multiplier, releases.c.sample_rate,
                                   releases.c.steps).where(releases.c.dataset == dataset))
        return [(float(m), float(q), int(k)) for m, q, k in rows]

    # -- reading -------------------------------------------------------------------------------
    def spent(self, dataset: str) -> float:
        """ε spent on ``dataset``: the accountant over every charged release at the budget's δ.

        Raises:
            PrivacyError: no budget for ``dataset``.
        """
        return self.state(dataset).spent

    def state(self, dataset: str) -> BudgetState:
        """Budget, spent, left and number of releases of ``dataset``.

        Raises:
            PrivacyError: no budget for ``dataset``.
        """
        with self.engine.connect() as conn:
            budget = conn.execute(select(budgets).where(budgets.c.dataset == dataset)).first()
            if budget is None:
                raise PrivacyError(f"no privacy budget is set for dataset {dataset}")
            history = self._history(conn, dataset)
        spent = self._eps(history, budget.delta)
        return BudgetState(dataset=dataset, epsilon=budget.epsilon, delta=budget.delta,
                           spent=spent, left=max(budget.epsilon - spent, 0.0), releases=len(history))

    def history(self, dataset: str) -> list[ReleaseRecord]:
        """Every release charged to ``dataset``, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(releases).where(releases.c.dataset == dataset)
                                .order_by(releases.c.id)).mappings().all()
        return [ReleaseRecord(**{**r, "created_at": _iso(r["created_at"])}) for r in rows]

    def state_dict(self) -> dict:
        """JSON-ready snapshot: accountant, and per dataset its budget state and history."""
        return {"accountant": self.accountant,
                "datasets": {d: {**asdict(self.state(d)),
                                 "history": [asdict(r) for r in self.history(d)]}
                             for d in self.datasets()}}


def _iso(value) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # SQLite returns naive datetimes; they were stored as UTC
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat()
    return str(value)


def _make_engine(url: str) -> Engine:
    """An engine whose transactions take the write lock at BEGIN on SQLite (``BEGIN IMMEDIATE``)
    — pysqlite's own deferred BEGIN would let two processes read the same history and both
    insert. On PostgreSQL the budget row's ``FOR UPDATE`` lock serialises charges."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 60.0})

    @event.listens_for(engine, "connect")
    def _no_pysqlite_transactions(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
