r"""The node's privacy ledger: one budget for the node's population, every release charged
before it leaves.

**One ledger, one population, one budget.** Studies, risk-model training and HR group views all
read the same people, so they all draw from one budget. A ledger database holds exactly that
budget, under the constant key :data:`POPULATION`; no caller can open a fresh budget by choosing
a name (the ``dataset`` arguments accept only ``None`` or :data:`POPULATION`, anything else is
refused). Where the ledger lives is the node operator's choice (``ledger_url`` in ``node.toml``,
``ledger-url`` / ``state-dir`` in the SuperNode's node config), never a query's.

Tables (SQLite file by default, PostgreSQL by URL):

* ``privacy_budgets(dataset, epsilon, delta)`` — the population's total budget (one row,
  ``dataset`` = :data:`POPULATION`).
* ``privacy_releases(id, dataset, study_id, query, sigma, sensitivity, noise_multiplier,
  epsilon, epsilon_after, created_at, status)`` — append-only; ``epsilon`` is what this
  release added, ``epsilon_after`` the total after it; ``study_id``/``query`` say what spent it
  (:func:`release_kind`: study queries, risk training, group views).
* ``privacy_views(key, release_id, body, created_at)`` — a released answer kept so that it is
  served again instead of being re-drawn and re-charged (:meth:`PrivacyLedger.release_once`).

A ledger written before budgets were per population (one row per dataset name) is migrated when
opened: its releases all count against the population, at the smallest ε and δ it held.

**Accounting.** ε is always recomputed by the accountant (:mod:`shared.dp.accounting`) over the
*whole persisted history* plus the new release, at the budget's δ — composition across studies,
training runs and group views included. Nothing is summed by hand.

**Atomicity.** :meth:`PrivacyLedger.charge` reads the history, checks the budget and inserts the
release in one transaction that holds the dataset's write lock (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: ``SELECT … FOR UPDATE`` on the budget row), so two concurrent studies cannot both
spend the last of a budget. The caller adds noise and sends only *after* the charge committed
(:func:`node.privacy.charged_release`): a crash between charge and send leaves a charge without
a release — over-counting, never under-counting. Rows are never deleted; ``status`` goes from
``charged`` to ``sent`` when the caller confirms, but every row counts either way.

>>> import tempfile, os
>>> led = PrivacyLedger(f"sqlite:///{tempfile.mkdtemp()}/ledger.db")
>>> led.ensure_budget(epsilon=1.0, delta=1e-6).epsilon
1.0
>>> c = led.charge(study_id="s1", query="describe", sigma=20.0, sensitivity=1.0)
>>> 0 < c.epsilon < 1.0
True
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

from shared.dp.accounting import epsilon_of_history
from shared.errors import BudgetExceededError, PrivacyError, ReplayRefused

__all__ = ["POPULATION", "BudgetState", "Charge", "PrivacyLedger", "ReleaseRecord", "release_kind"]

log = logging.getLogger("rehealth.node.ledger")

#: The one key of a ledger's budget: the node's population. A name, not a choice.
POPULATION = "population"

metadata = MetaData()

budgets = Table(
    "privacy_budgets",
    metadata,
    Column("dataset", String(200), primary_key=True),  # always POPULATION
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
)

releases = Table(
    "privacy_releases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset", String(200), nullable=False, index=True),  # always POPULATION
    Column("study_id", String(128), nullable=False),
    Column("query", String(64), nullable=False),
    Column("sigma", Float, nullable=False),
    Column("sensitivity", Float, nullable=False),
    Column("noise_multiplier", Float, nullable=False),
    Column("sample_rate", Float, nullable=False, default=1.0),  # q < 1: DP-SGD (subsampled)
    Column("steps", Integer, nullable=False, default=1),  # applications of the mechanism
    Column("epsilon", Float, nullable=False),  # added by this release
    Column("epsilon_after", Float, nullable=False),  # population total after it
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),  # charged | sent
)

views = Table(
    "privacy_views",
    metadata,
    Column("key", String(128), primary_key=True),  # what was released, from what (caller's hash)
    Column("release_id", Integer, nullable=False),  # the privacy_releases row that paid for it
    Column("body", Text, nullable=False),  # the released (noisy) answer, served again as is
    Column("created_at", DateTime(timezone=True), nullable=False),
)

_EPS_TOL = 1e-9  # float noise of the accountant; never lets a real overspend through

#: Kinds of release, as ``rehealth node budget`` groups them.
KINDS = {"study": "study queries", "risk": "risk training", "group_view": "group views"}


def release_kind(query: str) -> str:
    """``study``, ``risk`` or ``group_view``: what kind of release a ledger row's query is."""
    if query.startswith("group_view"):
        return "group_view"
    if query.startswith("risk_"):
        return "risk"
    return "study"


def _population(dataset: str | None) -> str:
    """The ledger's one budget key; any other name is refused, so none opens a fresh budget."""
    if dataset is None or dataset == POPULATION:
        return POPULATION
    raise PrivacyError(
        f"a ledger holds one budget, for the node's whole population: dataset "
        f"{dataset!r} does not name another budget (omit it)"
    )


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
    epsilon_after: float  # the population's total ε after it


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

    @property
    def kind(self) -> str:
        return release_kind(self.query)


@dataclass(frozen=True)
class BudgetState:
    dataset: str
    epsilon: float
    delta: float
    spent: float
    left: float
    releases: int


class PrivacyLedger:
    """A persisted, append-only privacy ledger over SQLAlchemy: one population's budget.

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
        self._migrate_named_budgets()

    def _migrate_named_budgets(self) -> None:
        """Fold a ledger written with one budget per dataset name into the population's: every
        release counts against it (over-counting if the names were different people, never
        under-counting), at the smallest ε and δ any name had until the config sets them."""
        with self.engine.connect() as conn:
            stale = conn.execute(
                select(func.count()).select_from(budgets).where(budgets.c.dataset != POPULATION)
            ).scalar_one()
            stale += conn.execute(
                select(func.count()).select_from(releases).where(releases.c.dataset != POPULATION)
            ).scalar_one()
        if not stale:
            return
        with self.engine.begin() as conn:
            rows = conn.execute(select(budgets).with_for_update()).all()
            names = sorted(
                {r.dataset for r in rows if r.dataset != POPULATION}
                | {
                    r.dataset
                    for r in conn.execute(
                        select(releases.c.dataset).where(releases.c.dataset != POPULATION).distinct()
                    )
                }
            )
            if not names:  # another process migrated it meanwhile
                return
            conn.execute(update(releases).where(releases.c.dataset != POPULATION).values(dataset=POPULATION))
            if rows:
                conn.execute(delete(budgets))
                conn.execute(
                    insert(budgets).values(
                        dataset=POPULATION,
                        epsilon=min(r.epsilon for r in rows),
                        delta=min(r.delta for r in rows),
                    )
                )
        log.warning(
            "ledger %s: budgets of datasets %s folded into the population's one budget",
            _redact(self.url),
            ", ".join(names),
        )

    # -- budgets -------------------------------------------------------------------------------
    def ensure_budget(self, *, epsilon: float, delta: float, dataset: str | None = None) -> BudgetState:
        """Create the population's budget, or set it to these values (the node config is the
        authority). History is kept; spent ε is recomputed at the new δ.

        Raises:
            PrivacyError: ε not positive or δ outside (0, 1), or a ``dataset`` other than
                :data:`POPULATION`.
        """
        key = _population(dataset)
        if not (math.isfinite(epsilon) and epsilon > 0) or not 0 < delta < 1:
            raise PrivacyError(f"privacy budget: need ε > 0 and 0 < δ < 1, got ε={epsilon!r}, δ={delta!r}")
        try:
            self._set_budget(key, float(epsilon), float(delta))
        except IntegrityError:  # a concurrent process inserted the budget first
            self._set_budget(key, float(epsilon), float(delta))
        return self.state()

    def _set_budget(self, key: str, epsilon: float, delta: float) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(select(budgets).where(budgets.c.dataset == key).with_for_update()).first()
            if row is None:
                conn.execute(insert(budgets).values(dataset=key, epsilon=epsilon, delta=delta))
            elif (row.epsilon, row.delta) != (epsilon, delta):
                log.warning(
                    "privacy budget changed from ε=%g, δ=%g to ε=%g, δ=%g",
                    row.epsilon,
                    row.delta,
                    epsilon,
                    delta,
                )
                conn.execute(
                    update(budgets).where(budgets.c.dataset == key).values(epsilon=epsilon, delta=delta)
                )

    def datasets(self) -> list[str]:
        """``[POPULATION]`` once a budget is set, else ``[]``."""
        with self.engine.connect() as conn:
            return [r.dataset for r in conn.execute(select(budgets.c.dataset).order_by(budgets.c.dataset))]

    def has_budget(self) -> bool:
        return bool(self.datasets())

    # -- charging ------------------------------------------------------------------------------
    def charge(
        self,
        *,
        study_id: str,
        query: str,
        sigma: float,
        sensitivity: float,
        dataset: str | None = None,
        limit: int | None = None,
    ) -> Charge:
        r"""Charge one Gaussian release (:math:`\mu = \sigma/\Delta`) to the population, atomically.

        Returns:
            The committed :class:`Charge`.

        Raises:
            BudgetExceededError: the composed ε would exceed the budget (names budget, left, asked).
            ReplayRefused: ``study_id`` already had ``limit`` releases of ``query`` (a signed
                study gets the releases its plan names, once: a replayed grant gets nothing).
            PrivacyError: no budget, σ / Δ not positive, or a ``dataset`` other than
                :data:`POPULATION`.
        """
        _population(dataset)
        sigma, sensitivity = self._gaussian(query, sigma, sensitivity)
        with self.engine.begin() as conn:
            return self._charge(
                conn,
                study_id=study_id,
                query=query,
                sigma=sigma,
                sensitivity=sensitivity,
                sample_rate=1.0,
                steps=1,
                limit=limit,
            )

    def charge_sgd(
        self,
        *,
        study_id: str,
        query: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        dataset: str | None = None,
    ) -> Charge:
        r"""Charge one local DP-SGD run (``steps`` subsampled Gaussian steps, Poisson rate
        ``sample_rate``, noise multiplier μ = σ/C) before its weights leave, atomically.

        Raises:
            BudgetExceededError: the composed ε would exceed the budget.
            PrivacyError: no budget, μ, q or steps out of range, or a foreign ``dataset``.
        """
        _population(dataset)
        if not (0 < float(sample_rate) <= 1) or int(steps) < 1:
            raise PrivacyError(
                f"release {query!r}: need 0 < q <= 1 and steps >= 1, got q={sample_rate!r}, steps={steps!r}"
            )
        with self.engine.begin() as conn:
            return self._charge(
                conn,
                study_id=study_id,
                query=query,
                sigma=float(noise_multiplier),
                sensitivity=1.0,
                sample_rate=float(sample_rate),
                steps=int(steps),
            )

    def release_once(
        self,
        *,
        key: str,
        study_id: str,
        query: str,
        sigma: float,
        sensitivity: float,
        make: Callable[[], str],
    ) -> tuple[str, Charge | None]:
        """The answer released under ``key``: the stored one if it was released before (no new
        charge), else charge one Gaussian release, call ``make()`` for the noisy answer and
        store both — in one transaction, so two processes cannot both draw and pay, and a
        restart serves the same noisy answer instead of a fresh draw that would average out.

        ``key`` must identify everything the answer depends on (the caller hashes the exact
        inputs and the noise policy); ``make`` must not let anything leave before it returns.

        Returns:
            ``(body, charge)``; ``charge`` is None when the stored answer was served.

        Raises:
            BudgetExceededError, PrivacyError: as :meth:`charge` (nothing is stored).
        """
        sigma, sensitivity = self._gaussian(query, sigma, sensitivity)
        with self.engine.begin() as conn:
            self._locked_budget(conn, query)  # serialise with other chargers first
            body = conn.execute(select(views.c.body).where(views.c.key == key)).scalar()
            if body is not None:
                return body, None
            charge = self._charge(
                conn,
                study_id=study_id,
                query=query,
                sigma=sigma,
                sensitivity=sensitivity,
                sample_rate=1.0,
                steps=1,
            )
            body = make()
            conn.execute(
                insert(views).values(
                    key=key, release_id=charge.id, body=body, created_at=datetime.now(timezone.utc)
                )
            )
        return body, charge

    @staticmethod
    def _gaussian(query: str, sigma, sensitivity) -> tuple[float, float]:
        sigma, sensitivity = float(sigma), float(sensitivity)
        if not (math.isfinite(sigma) and sigma > 0 and math.isfinite(sensitivity) and sensitivity > 0):
            raise PrivacyError(
                f"release {query!r}: σ and sensitivity must be positive, got σ={sigma!r}, Δ={sensitivity!r}"
            )
        return sigma, sensitivity

    @staticmethod
    def _locked_budget(conn, query: str):
        budget = conn.execute(
            select(budgets).where(budgets.c.dataset == POPULATION).with_for_update()
        ).first()
        if budget is None:
            raise PrivacyError(f"no privacy budget is set in this ledger: refusing to release {query!r}")
        return budget

    def _charge(
        self,
        conn,
        *,
        study_id: str,
        query: str,
        sigma: float,
        sensitivity: float,
        sample_rate: float,
        steps: int,
        limit: int | None = None,
    ) -> Charge:
        """Check and insert one release inside the caller's transaction (which holds the lock)."""
        if not (math.isfinite(sigma) and sigma > 0):
            raise PrivacyError(f"release {query!r}: noise must be positive")
        mu = sigma / sensitivity
        entry = (mu, sample_rate, steps)
        budget = self._locked_budget(conn, query)
        if limit is not None:
            done = conn.execute(
                select(func.count())
                .select_from(releases)
                .where(
                    releases.c.dataset == POPULATION,
                    releases.c.study_id == study_id,
                    releases.c.query == query,
                )
            ).scalar_one()
            if done >= limit:
                raise ReplayRefused(
                    f"study {study_id[:24]} already had {done} {query} release(s), all its signed plan allows"
                )
        history = self._history(conn)
        before = self._eps(history, budget.delta)
        after = self._eps(history + [entry], budget.delta)
        if after > budget.epsilon + _EPS_TOL:
            raise BudgetExceededError(
                f"privacy budget of this node's population: ε={budget.epsilon:.2f} total "
                f"(δ={budget.delta:g}), {max(budget.epsilon - before, 0.0):.2f} left, "
                f"this release ({query}, {study_id[:12]}) needs {after - before:.2f}"
            )
        rid = conn.execute(
            insert(releases).values(
                dataset=POPULATION,
                study_id=study_id,
                query=query,
                sigma=sigma,
                sensitivity=sensitivity,
                noise_multiplier=mu,
                sample_rate=sample_rate,
                steps=steps,
                epsilon=after - before,
                epsilon_after=after,
                created_at=datetime.now(timezone.utc),
                status="charged",
            )
        ).inserted_primary_key[0]
        return Charge(
            id=int(rid),
            dataset=POPULATION,
            study_id=study_id,
            query=query,
            sigma=sigma,
            sensitivity=sensitivity,
            noise_multiplier=mu,
            epsilon=after - before,
            epsilon_after=after,
            epsilon_left=max(budget.epsilon - after, 0.0),
        )

    def mark_sent(self, charge_id: int) -> None:
        """Record that the charged release left the node (informational: charges count anyway)."""
        with self.engine.begin() as conn:
            conn.execute(update(releases).where(releases.c.id == charge_id).values(status="sent"))

    def _eps(self, history: list[tuple[float, float, int]], delta: float) -> float:
        return epsilon_of_history(history=history, delta=delta, accountant=self.accountant)

    @staticmethod
    def _history(conn) -> list[tuple[float, float, int]]:
        """Every charged release as an accountant entry (μ, q, steps)."""
        rows = conn.execute(
            select(releases.c.noise_multiplier, releases.c.sample_rate, releases.c.steps).where(
                releases.c.dataset == POPULATION
            )
        )
        return [(float(m), float(q), int(k)) for m, q, k in rows]

    # -- reading -------------------------------------------------------------------------------
    def spent(self, dataset: str | None = None) -> float:
        """ε spent: the accountant over every charged release at the budget's δ.

        Raises:
            PrivacyError: no budget set (or a foreign ``dataset``).
        """
        return self.state(dataset).spent

    def state(self, dataset: str | None = None) -> BudgetState:
        """Budget, spent, left and number of releases.

        Raises:
            PrivacyError: no budget set (or a foreign ``dataset``).
        """
        _population(dataset)
        with self.engine.connect() as conn:
            budget = conn.execute(select(budgets).where(budgets.c.dataset == POPULATION)).first()
            if budget is None:
                raise PrivacyError("no privacy budget is set in this ledger: nothing was released")
            history = self._history(conn)
        spent = self._eps(history, budget.delta)
        return BudgetState(
            dataset=POPULATION,
            epsilon=budget.epsilon,
            delta=budget.delta,
            spent=spent,
            left=max(budget.epsilon - spent, 0.0),
            releases=len(history),
        )

    def history(self, dataset: str | None = None) -> list[ReleaseRecord]:
        """Every release charged, oldest first."""
        _population(dataset)
        with self.engine.connect() as conn:
            rows = (
                conn.execute(select(releases).where(releases.c.dataset == POPULATION).order_by(releases.c.id))
                .mappings()
                .all()
            )
        return [ReleaseRecord(**{**r, "created_at": _iso(r["created_at"])}) for r in rows]

    def state_dict(self) -> dict:
        """JSON-ready snapshot: accountant, and per dataset its budget state and history."""
        return {
            "accountant": self.accountant,
            "datasets": {
                d: {**asdict(self.state(d)), "history": [asdict(r) for r in self.history(d)]}
                for d in self.datasets()
            },
        }


def _iso(value) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # SQLite returns naive datetimes; they were stored as UTC
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat()
    return str(value)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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
