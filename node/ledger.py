"""The node's privacy ledger: one budget for the node's population, every release charged
before it leaves, every DP study's whole plan reserved before its first release.

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
  release added to the ε *spent*, ``epsilon_after`` the ε spent after it; ``study_id``/``query``
  say what spent it (:func:`release_kind`: study queries, risk training, group views).
  ``status`` is ``charged`` when the charge committed and ``sent`` once the node handed the
  answer to Flower (:meth:`PrivacyLedger.mark_sent`); both count, always.
* ``privacy_reservations(id, dataset, study_id, releases, rho, epsilon, …, status)`` — a DP
  study's whole plan, reserved before its first release (:meth:`PrivacyLedger.reserve`):
  ``reserved`` while live, then ``completed`` (its last release was charged), ``cancelled``
  (its coordinator gave up) or ``lapsed`` (no release for ``ttl_s`` seconds). A closed
  reservation frees what was not converted into charges; charges stay.
* ``privacy_views(key, release_id, body, created_at)`` — a released answer kept so that it is
  served again instead of being re-drawn and re-charged (:meth:`PrivacyLedger.release_once`).
* ``privacy_ledger_meta(name, value)`` — the ledger's own facts: ``ledger_id``, a random id
  made when the ledger is created. With the number of charges it is the ledger's
  :class:`LedgerMark`, which the node's store keeps as an anchor (:mod:`node.ledger_anchor`) so
  that a deleted, replaced or rolled-back ledger is refused instead of being a fresh budget.

A ledger written before budgets were per population (one row per dataset name) is migrated when
opened: its releases all count against the population, at the smallest ε and δ it held.

**Accounting.** ε is always recomputed by the accountant (:mod:`shared.dp.accounting`) over the
*whole persisted history* plus what is asked, at the budget's δ — composition across studies,
training runs and group views included. Nothing is summed by hand. A live reservation counts as
what its study has not yet charged: the plan's zCDP ρ (a Gaussian release with μ = σ/Δ is
ρ = 1/(2μ²)-zCDP, and Gaussians compose by adding ρ, exactly, under all three accountants) minus the
ρ its charges already used, as one Gaussian entry. So a live study counts at its whole plan,
whatever split its rounds take (a re-split after describe moves ρ between rounds, never above
the plan's total), and every other release — another study's reservation, a risk-training run,
a group view — is checked against what is spent *and* reserved.

**Reserve, convert, close.** :meth:`~PrivacyLedger.reserve` checks that what is charged, every
live reservation and this study's whole plan compose within the budget, and records the plan, in
one locked transaction. :meth:`~PrivacyLedger.charge_reserved` converts one planned release into
a charge: never more releases of a kind than the plan names (a replayed grant gets nothing), never
more ρ than the plan's total, and none at all without a live reservation ("no reservation, no
release": a study whose reservation was cancelled or lapsed cannot draw on the budget others
reserved). Since the reservation fitted, a conversion needs no budget check and cannot fail for
want of budget: two concurrent studies never both fail mid-study; the second is refused before
it releases anything. A reservation lapses after ``ttl_s`` seconds without a release (each
conversion renews it), so a coordinator that dies after reserving does not hold a node's budget
for longer than that.

**Atomicity.** Every write reads the history, checks and inserts in one transaction that holds
the budget's write lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT … FOR UPDATE`` on the
budget row), so two concurrent studies cannot both reserve or spend the last of a budget. The
caller adds noise and sends only *after* the charge committed
(:func:`node.privacy.charged_release`): a crash between charge and send leaves a charge without
a release — over-counting, never under-counting. Release rows are never deleted.

>>> import tempfile, os
>>> led = PrivacyLedger(f"sqlite:///{tempfile.mkdtemp()}/ledger.db")
>>> led.ensure_budget(epsilon=1.0, delta=1e-6).epsilon
1.0
>>> c = led.charge(study_id="s1", query="describe", sigma=20.0, sensitivity=1.0)
>>> 0 < c.epsilon < 1.0
True
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

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
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from node.files import create_private_file
from shared.dp.accounting import ACCOUNTANTS, DEFAULT_ACCOUNTANT, epsilon_of_history
from shared.errors import BudgetExceededError, PrivacyError, ReplayRefused

__all__ = [
    "DEFAULT_RESERVATION_TTL_S",
    "POPULATION",
    "BudgetState",
    "Charge",
    "LedgerMark",
    "PrivacyLedger",
    "ReleaseRecord",
    "Reservation",
    "ledger_exists",
    "release_kind",
]

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

reservations = Table(
    "privacy_reservations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset", String(200), nullable=False, index=True),  # always POPULATION
    Column("study_id", String(128), nullable=False, index=True),
    Column("releases", Text, nullable=False),  # JSON {query: how many the plan names}
    Column("rho", Float, nullable=False),  # zCDP ρ of the whole plan: the study's cap
    Column("epsilon", Float, nullable=False),  # what reserving added to spent + reserved
    Column("epsilon_after", Float, nullable=False),  # spent + reserved after it
    Column("ttl_s", Float, nullable=False),  # lapses this long after its last release
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    Column("status", String(16), nullable=False),  # reserved | completed | cancelled | lapsed
)

views = Table(
    "privacy_views",
    metadata,
    Column("key", String(128), primary_key=True),  # what was released, from what (caller's hash)
    Column("release_id", Integer, nullable=False),  # the privacy_releases row that paid for it
    Column("body", Text, nullable=False),  # the released (noisy) answer, served again as is
    Column("created_at", DateTime(timezone=True), nullable=False),
)

ledger_meta = Table(
    "privacy_ledger_meta",
    metadata,
    Column("name", String(64), primary_key=True),  # ledger_id
    Column("value", String(255), nullable=False),
)

#: ``privacy_ledger_meta`` row holding the ledger's random id.
META_LEDGER_ID = "ledger_id"

_EPS_TOL = 1e-9  # float noise of the accountant; never lets a real overspend through
_RHO_TOL = 1e-9  # relative: a re-split plan's ρ is the plan's up to float rounding

#: How long a reservation outlives its last release (seconds) unless the node config says
#: otherwise (``reservation-ttl-s``): longer than any round of a study (a round's timeout is
#: two minutes by default), short enough that a dead coordinator frees the budget within the hour.
DEFAULT_RESERVATION_TTL_S = 1800.0

LIVE = "reserved"

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
class LedgerMark:
    """Which ledger, and how far it has got: its random id and how many charges it holds.

    Charges are never deleted, so the count only grows; a copy of the same ledger holding
    fewer charges is an older copy of it (a rollback), one with another id is another ledger."""

    ledger_id: str
    charges: int


def ledger_exists(url: str) -> bool:
    """A SQLite ledger exists when its file does (a server's ledger is always opened)."""
    u = make_url(url)
    return u.get_backend_name() != "sqlite" or bool(u.database and Path(u.database).exists())


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
class Reservation:
    """One study's reservation of its whole plan (``releases``: how many of each kind)."""

    id: int
    study_id: str
    releases: dict[str, int]
    rho: float
    epsilon: float  # what reserving added to the population's spent + reserved ε
    epsilon_after: float
    ttl_s: float
    created_at: str
    expires_at: str
    closed_at: str | None
    status: str  # reserved | completed | cancelled | lapsed


@dataclass(frozen=True)
class BudgetState:
    """``spent``: the accountant over every charge; ``reserved``: what live reservations add on
    top of it; ``left``: the budget minus both (what a new study or release may still use)."""

    dataset: str
    epsilon: float
    delta: float
    spent: float
    left: float
    releases: int
    reserved: float = 0.0
    reservations: int = 0  # live ones


class PrivacyLedger:
    """A persisted, append-only privacy ledger over SQLAlchemy: one population's budget.

    Args:
        url: database URL (``sqlite:///path/ledger.db`` or ``postgresql+psycopg2://…``).
        accountant: ``"gaussian"`` (default: exact for Gaussian releases, RDP for a history
            with DP-SGD in it), ``"rdp"`` or ``"prv"``; a study planned under a tighter one
            than the ledger's may not fit. Not stored: ε is recomputed over the stored
            history, so a ledger written under one accountant opens under another (its rows'
            recorded increments stay as written).
        clock: the current UTC time (default: the system clock).
    """

    def __init__(
        self, url: str, *, accountant: str = DEFAULT_ACCOUNTANT, clock: Callable[[], datetime] | None = None
    ):
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}; known: {', '.join(ACCOUNTANTS)}")
        self.url = url
        self.accountant = accountant
        #: the time reservations lapse by (tests pass a fake clock instead of sleeping)
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.engine = _make_engine(url)
        try:
            metadata.create_all(self.engine)
        except DBAPIError:  # another process created the tables between check and create
            metadata.create_all(self.engine)
        self._migrate_named_budgets()
        #: called with the ledger after each charge committed (:mod:`node.ledger_anchor`
        #: records the ledger's mark in the node's store there); None: nothing is told
        self.after_charge: Callable[["PrivacyLedger"], None] | None = None
        self.ledger_id = self._ensure_id()

    def _ensure_id(self) -> str:
        """The ledger's random id, made once when the ledger is new (or first opened by a
        version that keeps one): a new ledger file is a new id, whatever its path."""
        q = select(ledger_meta.c.value).where(ledger_meta.c.name == META_LEDGER_ID)
        with self.engine.connect() as conn:
            found = conn.execute(q).scalar()
        if found is not None:
            return str(found)
        try:
            with self.engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE, so one process makes it
                found = conn.execute(q).scalar()
                if found is None:
                    found = secrets.token_hex(16)
                    conn.execute(insert(ledger_meta).values(name=META_LEDGER_ID, value=found))
        except IntegrityError:  # PostgreSQL: another process made it first
            with self.engine.connect() as conn:
                found = conn.execute(q).scalar_one()
        return str(found)

    def mark(self) -> LedgerMark:
        """This ledger's id and how many charges it holds now."""
        with self.engine.connect() as conn:
            n = conn.execute(select(func.count()).select_from(releases)).scalar_one()
        return LedgerMark(ledger_id=self.ledger_id, charges=int(n))

    def _charged(self) -> None:
        if self.after_charge is not None:
            self.after_charge(self)

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
            charge = self._charge(
                conn,
                study_id=study_id,
                query=query,
                sigma=sigma,
                sensitivity=sensitivity,
                sample_rate=1.0,
                steps=1,
                limit=limit,
            )
        self._charged()
        return charge

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
            charge = self._charge(
                conn,
                study_id=study_id,
                query=query,
                sigma=float(noise_multiplier),
                sensitivity=1.0,
                sample_rate=float(sample_rate),
                steps=int(steps),
            )
        self._charged()
        return charge

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
        self._charged()
        return body, charge

    def latest_view(self, prefix: str) -> dict | None:
        """The body (parsed JSON) of the newest stored view whose key starts with ``prefix``, or
        None: lets a caller whose keys are ``<definition>:<inputs>`` say what changed since the
        last release of the same definition."""
        with self.engine.connect() as conn:
            body = conn.execute(
                select(views.c.body)
                .where(views.c.key.startswith(prefix, autoescape=True))
                .order_by(views.c.created_at.desc(), views.c.release_id.desc())
                .limit(1)
            ).scalar()
        return json.loads(body) if body is not None else None

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
        """Check and insert one release inside the caller's transaction (which holds the lock):
        it must fit beside what is spent *and* what live reservations hold for their studies."""
        if not (math.isfinite(sigma) and sigma > 0):
            raise PrivacyError(f"release {query!r}: noise must be positive")
        mu = sigma / sensitivity
        entry = (mu, sample_rate, steps)
        budget = self._locked_budget(conn, query)
        if limit is not None:
            done = self._count(conn, study_id, query)
            if done >= limit:
                raise ReplayRefused(
                    f"study {study_id[:24]} already had {done} {query} release(s), all its signed plan allows"
                )
        books = self._books(conn, lapse=True)
        held = books.charged + books.held()
        before = self._eps(held, budget.delta)
        after = self._eps(held + [entry], budget.delta)
        if after > budget.epsilon + _EPS_TOL:
            raise BudgetExceededError(
                f"privacy budget of this node's population: ε={budget.epsilon:.2f} total "
                f"(δ={budget.delta:g}), {max(budget.epsilon - before, 0.0):.2f} left"
                f"{books.reserved_note(self, budget.delta)}, "
                f"this release ({query}, {study_id[:12]}) needs {after - before:.2f}"
            )
        return self._insert(
            conn, books, budget, study_id, query, sigma, sensitivity, entry, left=budget.epsilon - after
        )

    def _insert(self, conn, books, budget, study_id, query, sigma, sensitivity, entry, *, left) -> Charge:
        """Insert a charge row; its ``epsilon`` is what it added to the ε *spent* (so the rows'
        increments add up to :meth:`spent`)."""
        mu, sample_rate, steps = entry
        spent_before = self._eps(books.charged, budget.delta)
        spent_after = self._eps(books.charged + [entry], budget.delta)
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
                epsilon=spent_after - spent_before,
                epsilon_after=spent_after,
                created_at=self.clock(),
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
            epsilon=spent_after - spent_before,
            epsilon_after=spent_after,
            epsilon_left=max(left, 0.0),
        )

    @staticmethod
    def _count(conn, study_id: str, query: str) -> int:
        return conn.execute(
            select(func.count())
            .select_from(releases)
            .where(
                releases.c.dataset == POPULATION,
                releases.c.study_id == study_id,
                releases.c.query == query,
            )
        ).scalar_one()

    # -- reservations ----------------------------------------------------------------------------
    def reserve(
        self,
        *,
        study_id: str,
        releases: Sequence[tuple[str, float, float]],
        ttl_s: float = DEFAULT_RESERVATION_TTL_S,
        dataset: str | None = None,
    ) -> Reservation:
        """Reserve a DP study's whole plan before its first release, atomically.

        Args:
            study_id: the signed study (its grant id).
            releases: every release the study's plan names, one ``(query, σ, Δ)`` per release
                (a plan's R ``ps_fit`` rounds are R entries): what the node derived from the
                signed terms, never the coordinator's word.
            ttl_s: the reservation lapses this long after its last release (or after reserving).

        Returns:
            The live :class:`Reservation`. Reserving again while it is live changes nothing but
            its expiry (a retried round). A study whose reservation was closed may reserve again:
            only the releases it has not charged yet, within the plan's ρ (a replayed grant buys
            nothing beyond its plan).

        Raises:
            BudgetExceededError: what is spent, every live reservation and this plan do not
                compose within the budget (names budget, left, reserved, asked); nothing is
                recorded.
            ReplayRefused: the study already had every release of its plan.
            PrivacyError: no budget, an empty plan or bad noise, a bad ``ttl_s``, a live
                reservation of this study for another plan, or a foreign ``dataset``.
        """
        _population(dataset)
        if not releases:
            raise PrivacyError(f"study {study_id[:24]}: a reservation needs the plan's releases")
        if not (math.isfinite(ttl_s) and ttl_s > 0):
            raise PrivacyError(f"a reservation's lifetime must be positive, got {ttl_s!r} s")
        counts: Counter[str] = Counter()
        rho = 0.0
        for query, sigma, sensitivity in releases:
            sigma, sensitivity = self._gaussian(query, sigma, sensitivity)
            counts[query] += 1
            rho += _rho(sigma / sensitivity)
        plan = json.dumps(dict(sorted(counts.items())), sort_keys=True)
        with self.engine.begin() as conn:
            budget = self._locked_budget(conn, f"the plan of study {study_id[:24]}")
            books = self._books(conn, lapse=True)
            now = self.clock()
            live = books.live.get(study_id)
            if live is not None:
                if live.releases != plan or not math.isclose(live.rho, rho, rel_tol=_RHO_TOL):
                    raise PrivacyError(
                        f"study {study_id[:24]} already holds a reservation for another plan at this node"
                    )
                conn.execute(
                    update(reservations)
                    .where(reservations.c.id == live.id)
                    .values(expires_at=now + timedelta(seconds=float(live.ttl_s)))
                )
                return self._reservation(conn, live.id)
            if all(self._count(conn, study_id, q) >= n for q, n in counts.items()):
                raise ReplayRefused(f"study {study_id[:24]} already had every release its signed plan allows")
            others = books.charged + books.held()
            mine = _gaussian_of_rho(rho - books.study_rho.get(study_id, 0.0))
            before = self._eps(others, budget.delta)
            after = self._eps(others + mine, budget.delta)
            if after > budget.epsilon + _EPS_TOL:
                raise BudgetExceededError(
                    f"privacy budget of this node's population: ε={budget.epsilon:.2f} total "
                    f"(δ={budget.delta:g}), {max(budget.epsilon - before, 0.0):.2f} left"
                    f"{books.reserved_note(self, budget.delta)}, "
                    f"study {study_id[:12]} needs {after - before:.2f} for its whole plan "
                    f"({sum(counts.values())} releases): nothing was reserved or spent"
                )
            rid = conn.execute(
                insert(reservations).values(
                    dataset=POPULATION,
                    study_id=study_id,
                    releases=plan,
                    rho=rho,
                    epsilon=after - before,
                    epsilon_after=after,
                    ttl_s=float(ttl_s),
                    created_at=now,
                    expires_at=now + timedelta(seconds=float(ttl_s)),
                    closed_at=None,
                    status=LIVE,
                )
            ).inserted_primary_key
            assert rid is not None
            return self._reservation(conn, int(rid[0]))

    def charge_reserved(
        self, *, study_id: str, query: str, sigma: float, sensitivity: float, dataset: str | None = None
    ) -> Charge:
        r"""Convert one release of ``study_id``'s live reservation into a charge, atomically.

        The reservation already fitted the budget, so no budget check is needed or made: a
        reserved study's release is never refused for want of budget. What is checked: a live
        reservation (no reservation, no release), the release is one the plan names and not
        more often than it names it, and the study's charges stay within the plan's ρ (a
        re-split moves ρ between rounds, never beyond the total). Each conversion renews the
        reservation's lifetime; when the plan's every release is charged it is ``completed``.

        Raises:
            PrivacyError: no live reservation of the study (none, cancelled, completed or
                lapsed), a release the plan does not name, or more ρ than reserved.
            ReplayRefused: the plan's releases of ``query`` were all charged already.
        """
        _population(dataset)
        sigma, sensitivity = self._gaussian(query, sigma, sensitivity)
        mu = sigma / sensitivity
        with self.engine.begin() as conn:
            budget = self._locked_budget(conn, query)
            books = self._books(conn, lapse=True)
            res = books.live.get(study_id)
            if res is None:
                raise PrivacyError(
                    f"study {study_id[:24]} holds no live budget reservation at this node "
                    "(none was made, or it was cancelled, completed or lapsed): no reservation, "
                    f"no release of {query}"
                )
            planned = json.loads(res.releases).get(query, 0)
            done = self._count(conn, study_id, query)
            if not planned:
                raise PrivacyError(f"study {study_id[:24]}: its reserved plan has no {query} release")
            if done >= planned:
                raise ReplayRefused(
                    f"study {study_id[:24]} already had {done} {query} release(s), all its signed plan allows"
                )
            used = books.study_rho.get(study_id, 0.0) + _rho(mu)
            if used > res.rho * (1.0 + _RHO_TOL):
                raise PrivacyError(
                    f"study {study_id[:24]}: this {query} release would take its charges beyond "
                    "the privacy loss its plan reserved"
                )
            held = books.charged + books.held()
            charge = self._insert(
                conn,
                books,
                budget,
                study_id,
                query,
                sigma,
                sensitivity,
                (mu, 1.0, 1),
                left=budget.epsilon - self._eps(held, budget.delta),  # unchanged: it was reserved
            )
            now = self.clock()
            values: dict = {"expires_at": now + timedelta(seconds=float(res.ttl_s))}
            counts = json.loads(res.releases)
            if all(self._count(conn, study_id, q) >= n for q, n in counts.items()):
                values.update(status="completed", closed_at=now)
            conn.execute(update(reservations).where(reservations.c.id == res.id).values(**values))
        self._charged()
        return charge

    def complete(self, study_id: str) -> Reservation | None:
        """Close ``study_id``'s live reservation as ``completed`` (its last release was charged):
        what it did not convert — a re-split's slack, a release it skipped — is freed."""
        return self._close(study_id, "completed")

    def cancel(self, study_id: str) -> Reservation | None:
        """Free what ``study_id``'s live reservation has not converted into charges (charges
        stay). Harmless whoever asks: it only lowers what the ledger holds, and only for this
        study, which then releases nothing more (no reservation, no release).

        Returns:
            The cancelled reservation, or None if the study held no live one.
        """
        return self._close(study_id, "cancelled")

    def _close(self, study_id: str, status: str) -> Reservation | None:
        with self.engine.begin() as conn:
            self._locked_budget(conn, f"closing a reservation of {study_id[:24]}")
            books = self._books(conn, lapse=True)
            res = books.live.get(study_id)
            if res is None:
                return None
            conn.execute(
                update(reservations)
                .where(reservations.c.id == res.id)
                .values(status=status, closed_at=self.clock())
            )
            return self._reservation(conn, res.id)

    def _reservation(self, conn, rid: int) -> Reservation:
        r = conn.execute(select(reservations).where(reservations.c.id == rid)).mappings().one()
        return _reservation_record(r)

    def mark_sent(self, charge_ids: int | Iterable[int]) -> None:
        """Record that the charged releases left the node: the node handed the answer that
        carries them to Flower, the last point it controls (informational: charges count
        anyway)."""
        ids = [charge_ids] if isinstance(charge_ids, int) else [int(i) for i in charge_ids]
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(update(releases).where(releases.c.id.in_(ids)).values(status="sent"))

    def _eps(self, history: list[tuple[float, float, int]], delta: float) -> float:
        return epsilon_of_history(history=history, delta=delta, accountant=self.accountant)

    def _books(self, conn, *, lapse: bool = False) -> "_Books":
        """Every charge as an accountant entry (μ, q, steps), each study's charged ρ, and the
        live reservations. ``lapse``: mark reservations past their expiry ``lapsed`` (inside a
        write transaction); either way they no longer count."""
        charged: list[tuple[float, float, int]] = []
        study_rho: dict[str, float] = {}
        rows = conn.execute(
            select(
                releases.c.study_id, releases.c.noise_multiplier, releases.c.sample_rate, releases.c.steps
            ).where(releases.c.dataset == POPULATION)
        )
        for sid, m, q, k in rows:
            charged.append((float(m), float(q), int(k)))
            if float(q) >= 1.0:
                study_rho[sid] = study_rho.get(sid, 0.0) + int(k) * _rho(float(m))
        now = self.clock()
        live: dict[str, _Live] = {}
        expired: list[tuple[int, datetime]] = []
        for r in conn.execute(
            select(reservations).where(reservations.c.dataset == POPULATION, reservations.c.status == LIVE)
        ).mappings():
            expires = _aware(r["expires_at"])
            if expires <= now:
                expired.append((int(r["id"]), expires))
            else:
                live[r["study_id"]] = _Live(
                    id=int(r["id"]), releases=r["releases"], rho=float(r["rho"]), ttl_s=float(r["ttl_s"])
                )
        if lapse:
            for rid, expires in expired:
                conn.execute(
                    update(reservations)
                    .where(reservations.c.id == rid)
                    .values(status="lapsed", closed_at=expires)
                )
                log.info("ledger: reservation %d lapsed (no release for its lifetime)", rid)
        return _Books(charged=charged, study_rho=study_rho, live=live)

    # -- reading -------------------------------------------------------------------------------
    def spent(self, dataset: str | None = None) -> float:
        """ε spent: the accountant over every charged release at the budget's δ.

        Raises:
            PrivacyError: no budget set (or a foreign ``dataset``).
        """
        return self.state(dataset).spent

    def study_spent(self, study_id: str) -> float:
        """ε this one study's charges cost on their own, at the budget's δ (0 before its first).

        What a report states as *this study's* price at a node: :meth:`spent` is the node's
        running total over every study, group view and training run, which a reader would
        otherwise take for this study's cost. Composition is not additive (the accountant over
        all charges is less than the sum of each study's ε), so the two are kept apart.

        Raises:
            PrivacyError: no budget set.
        """
        with self.engine.connect() as conn:
            budget = conn.execute(select(budgets).where(budgets.c.dataset == POPULATION)).first()
            if budget is None:
                raise PrivacyError("no privacy budget is set in this ledger: nothing was released")
            rows = conn.execute(
                select(releases.c.noise_multiplier, releases.c.sample_rate, releases.c.steps).where(
                    releases.c.dataset == POPULATION, releases.c.study_id == study_id
                )
            ).all()
        history = [(float(m), float(q), int(k)) for m, q, k in rows]
        return self._eps(history, budget.delta) if history else 0.0

    def state(self, dataset: str | None = None) -> BudgetState:
        """Budget, spent, reserved (on top of spent), left and number of releases.

        Raises:
            PrivacyError: no budget set (or a foreign ``dataset``).
        """
        _population(dataset)
        with self.engine.connect() as conn:
            budget = conn.execute(select(budgets).where(budgets.c.dataset == POPULATION)).first()
            if budget is None:
                raise PrivacyError("no privacy budget is set in this ledger: nothing was released")
            books = self._books(conn)
        spent = self._eps(books.charged, budget.delta)
        held = self._eps(books.charged + books.held(), budget.delta) if books.live else spent
        return BudgetState(
            dataset=POPULATION,
            epsilon=budget.epsilon,
            delta=budget.delta,
            spent=spent,
            left=max(budget.epsilon - held, 0.0),
            releases=len(books.charged),
            reserved=max(held - spent, 0.0),
            reservations=len(books.live),
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

    def reservations(self, study_id: str | None = None) -> list[Reservation]:
        """Every reservation (live, completed, cancelled, lapsed), oldest first; one whose
        lifetime is over shows as ``lapsed`` even before a write marks it."""
        now = self.clock()
        with self.engine.connect() as conn:
            q = select(reservations).where(reservations.c.dataset == POPULATION)
            if study_id is not None:
                q = q.where(reservations.c.study_id == study_id)
            rows = conn.execute(q.order_by(reservations.c.id)).mappings().all()
        out = []
        for r in rows:
            rec = _reservation_record(r)
            if rec.status == LIVE and _aware(r["expires_at"]) <= now:
                rec = Reservation(**{**asdict(rec), "status": "lapsed", "closed_at": rec.expires_at})
            out.append(rec)
        return out

    def state_dict(self) -> dict:
        """JSON-ready snapshot: accountant, and per dataset its budget state, history and
        reservations."""
        return {
            "accountant": self.accountant,
            "datasets": {
                d: {
                    **asdict(self.state(d)),
                    "history": [asdict(r) for r in self.history(d)],
                    "reservations": [asdict(r) for r in self.reservations()],
                }
                for d in self.datasets()
            },
        }


@dataclass(frozen=True)
class _Live:
    id: int
    releases: str  # JSON {query: count}
    rho: float
    ttl_s: float


@dataclass(frozen=True)
class _Books:
    """What a ledger holds at one moment (inside one transaction)."""

    charged: list[tuple[float, float, int]]
    study_rho: dict[str, float]  # ρ each study's Gaussian charges used
    live: dict[str, _Live]  # live reservations by study

    def held(self) -> list[tuple[float, float, int]]:
        """Each live reservation's unconverted part, as one Gaussian accountant entry."""
        return [
            e for sid, r in self.live.items() for e in _gaussian_of_rho(r.rho - self.study_rho.get(sid, 0.0))
        ]

    def reserved_note(self, ledger: "PrivacyLedger", delta: float) -> str:
        if not self.live:
            return ""
        spent = ledger._eps(self.charged, delta)
        held = ledger._eps(self.charged + self.held(), delta)
        n = len(self.live)
        return f" (after {held - spent:.2f} reserved by {n} running stud{'y' if n == 1 else 'ies'})"


def _rho(mu: float) -> float:
    """zCDP ρ of one Gaussian release with noise multiplier μ = σ/Δ."""
    return 1.0 / (2.0 * mu * mu)


def _gaussian_of_rho(rho: float) -> list[tuple[float, float, int]]:
    """One Gaussian accountant entry worth ``rho`` (none for nothing left)."""
    return [(1.0 / math.sqrt(2.0 * rho), 1.0, 1)] if rho > 1e-15 else []


def _aware(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _reservation_record(r) -> Reservation:
    return Reservation(
        id=int(r["id"]),
        study_id=r["study_id"],
        releases=json.loads(r["releases"]),
        rho=float(r["rho"]),
        epsilon=float(r["epsilon"]),
        epsilon_after=float(r["epsilon_after"]),
        ttl_s=float(r["ttl_s"]),
        created_at=_iso(r["created_at"]),
        expires_at=_iso(r["expires_at"]),
        closed_at=_iso(r["closed_at"]) if r["closed_at"] is not None else None,
        status=r["status"],
    )


def _iso(value) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # SQLite returns naive datetimes; they were stored as UTC
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat()
    return str(value)


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _make_engine(url: str) -> Engine:
    """An engine whose transactions take the write lock at BEGIN on SQLite (``BEGIN IMMEDIATE``)
    — pysqlite's own deferred BEGIN would let two processes read the same history and both
    insert. On PostgreSQL the budget row's ``FOR UPDATE`` lock serialises charges."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    # 0600 whatever the umask, like the store (tests/security/test_files_at_rest.py)
    create_private_file(make_url(url).database)
    engine = create_engine(url, connect_args={"timeout": 60.0})

    @event.listens_for(engine, "connect")
    def _no_pysqlite_transactions(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
