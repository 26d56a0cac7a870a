"""Group risk profiles for HR: people per risk tier and mean predicted risk, by department, age
band and job type (any combination), noised, suppressed, charged once and kept.

**One release per view.** A view by dimensions D is a table with one axis per dimension and one
for the tier, plus each group's sum of predicted risk. One person adds 1 to one count and at most
1 (a probability) to one sum, so the release's L2 sensitivity is √2 and one Gaussian draw with
noise σ on every entry costs ε(σ/√2, δ) (:func:`shared.dp.accounting.epsilon_spent`). Every
combination of the dimensions' categories is released, empty ones included, so an empty cell is
not revealed by its absence; age bands are the public list :data:`shared.schemas.AGE_BANDS`.

**Suppression** (:mod:`node.api.suppression`): a cell whose *noisy* count is below the node
policy's ``min_cell`` is withheld, and further cells are withheld so that no margin (a group's
total, a tier's total, or a coarser view) gives a withheld cell away. Withheld cells are ``null``
with ``suppressed: true``, never 0. A group's total (and a tier's) is the sum of its noisy cells
before they are clamped at 0 — unbiased, so an empty group does not seem to hold people — and is
withheld below ``min_cell`` like a cell; the mean risk is the noisy risk sum over that total.

**Charged once, across restarts.** The released view is stored in the ledger's database with the
charge that paid for it, in the same transaction (:meth:`node.ledger.PrivacyLedger.release_once`),
under a key made of the view's definition (dimensions, policy, tier cut-offs) and of what it was
computed from (model version, data version: a digest of every person's groups and features). A
restart, the CLI and the API all serve that stored view at no cost. Only a change of data or model
makes a new key, so a new draw and a new charge — and the view then says what changed since the
release it replaces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from math import sqrt
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from node.api.suppression import suppress
from shared.dp.accounting import epsilon_spent
from shared.dp.mechanisms import gaussian_noise
from shared.errors import DataError, SpecError
from shared.features import FEATURE_NAMES
from shared.risk.tiers import TIERS
from shared.schemas import AGE_BANDS

__all__ = [
    "DIMENSIONS",
    "GroupPolicy",
    "GroupViews",
    "data_version",
    "group_frame",
    "parse_by",
    "persons_frame",
    "release_view",
    "view_csv",
]

#: What a profile may be broken down by, in the order a view's label lists them.
DIMENSIONS = ("department", "age_band", "job_type")
#: One person adds 1 to one count and ≤ 1 to one group's risk sum.
SENSITIVITY = sqrt(2.0)
#: the label of a person whose department or job type is not recorded
UNKNOWN = "unknown"
log = logging.getLogger("rehealth.node.api")
_SCHEMA = 2  # bump when the released body changes meaning: old stored views then no longer match


def parse_by(by: str | Sequence[str]) -> tuple[str, ...]:
    """The dimensions of ``by`` (``"department,job_type"`` or a sequence), in canonical order.

    Raises:
        SpecError: an unknown or repeated dimension (named), or none.
    """
    names = [p.strip() for p in (by.split(",") if isinstance(by, str) else by)]
    if not names or any(not n for n in names):
        raise SpecError(f"group by: name one or more of {', '.join(DIMENSIONS)}, comma-separated")
    for n in names:
        if n not in DIMENSIONS:
            raise SpecError(f"group by: unknown dimension {n!r}; choose from {', '.join(DIMENSIONS)}")
    if len(set(names)) != len(names):
        raise SpecError("group by: a dimension is named twice")
    return tuple(d for d in DIMENSIONS if d in names)


@dataclass(frozen=True)
class GroupPolicy:
    """The node's rule for group views: minimum cell size (the node policy's ``min_cell``) and
    noise."""

    k: int = 11
    sigma: float = 2.0
    delta: float = 1e-6

    def __post_init__(self) -> None:
        if self.k < 1 or not self.sigma > 0 or not 0 < self.delta < 1:
            raise SpecError("group policy needs k ≥ 1, sigma > 0 and 0 < delta < 1")

    @property
    def epsilon(self) -> float:
        """ε of one view at ``delta``."""
        return epsilon_spent(noise_multipliers=[self.sigma / SENSITIVITY], delta=self.delta)


def _age_bands(age: pd.Series) -> pd.Series:
    edges = [-np.inf, 30, 40, 50, 60, 70, np.inf]
    return pd.cut(age, bins=edges, right=False, labels=list(AGE_BANDS)).astype(str)


#: ``DataFrame.attrs`` key of a population's roster categories: the departments and job types
#: of *every* person (:func:`persons_frame`), scorable or not. A view lists those, so a category
#: does not vanish when its only members cannot be scored (a missing lab value is a health fact).
ROSTER = "roster_categories"


def _label(book: pd.DataFrame, name: str) -> pd.Series:
    if name not in book.columns:
        return pd.Series(UNKNOWN, index=book.index)
    col = book[name].astype("string").str.strip()
    return col.mask(col.isna() | (col == ""), UNKNOWN).astype(str)


def group_frame(scored: pd.DataFrame) -> pd.DataFrame:
    """``department``, ``age_band``, ``job_type``, ``tier`` and ``probability`` per person.

    A missing department or job type is ``"unknown"``; ``age_band`` is derived from ``age`` when
    absent.

    Raises:
        DataError: neither ``age_band`` nor ``age``, no ``tier`` column, or an age band that is
            not one of :data:`shared.schemas.AGE_BANDS` (row and field named).
    """
    if "tier" not in scored.columns:
        raise DataError("scored book lacks the 'tier' column", field="tier")
    if "age_band" in scored.columns:
        bands = scored["age_band"].astype(str)
        bad = ~bands.isin(AGE_BANDS)
        if bad.any():
            r = int(np.argmax(bad.to_numpy()))
            raise DataError(
                f"row {r}: age_band is not one of {', '.join(AGE_BANDS)}", row=r, field="age_band"
            )
    elif "age" in scored.columns:
        bands = _age_bands(scored["age"])
    else:
        raise DataError("book lacks both 'age_band' and 'age'", field="age_band")
    prob = scored["probability"] if "probability" in scored.columns else pd.Series(np.nan, index=scored.index)
    out = pd.DataFrame(
        {
            "department": _label(scored, "department").to_numpy(),
            "age_band": bands.to_numpy(),
            "job_type": _label(scored, "job_type").to_numpy(),
            "tier": scored["tier"].astype(str).to_numpy(),
            "probability": np.clip(prob.to_numpy(dtype=float), 0.0, 1.0),
        }
    )
    out.attrs[ROSTER] = scored.attrs.get(ROSTER, {})
    return out


def data_version(book: pd.DataFrame) -> str:
    """SHA-256 of every person's groups and 16 features, in order: what a view is computed from
    besides the model. Per-person rows make it a high-entropy digest (unlike one of a count
    table), and it changes with any ingested, corrected or removed person. It stays in the node
    (the view's ledger key): unkeyed, it would test any guess at the rows, so a released view
    carries a random tag instead."""
    cols = [c for c in ("department", "job_type", "age_band", "age", *FEATURE_NAMES) if c in book.columns]
    cols = list(dict.fromkeys(cols))
    digest = hashlib.sha256(",".join(cols).encode())
    digest.update(pd.util.hash_pandas_object(book[cols].astype(str), index=False).to_numpy().tobytes())
    digest.update(json.dumps(book.attrs.get(ROSTER, {}), sort_keys=True).encode())
    return digest.hexdigest()


def persons_frame(store_url: str) -> pd.DataFrame:
    """The node store's persons (groups and features, no pseudonym), in pseudonym order — the
    population HR profiles describe when no book file is given.

    A person kept with a missing lab value (``[ingest.missing]`` = "indicator") cannot be
    scored, so is not in the profile: the risk model needs every feature, and imputing one here
    would put a made-up risk into HR's table. The view's docs say so; the count left out is not
    released (it would be one more unnoised figure about the workforce)."""
    from sqlalchemy import select

    from node.store import models
    from node.store.engine import open_store

    p = models.persons
    cols = [p.c.department, p.c.job_type, p.c.age_band, *(p.c[n] for n in FEATURE_NAMES)]
    store = open_store(store_url, create=False)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(*cols).order_by(p.c.pseudonym)).all()
    finally:
        store.engine.dispose()
    frame = pd.DataFrame(rows, columns=[c.name for c in cols])
    roster = {d: sorted(set(_label(frame, d))) for d in ("department", "job_type")}  # everyone's
    frame = frame.dropna(subset=list(FEATURE_NAMES)).reset_index(drop=True)
    if frame.empty:
        raise DataError("the node store holds no persons: ingest a persons file first (rehealth node ingest)")
    frame.attrs[ROSTER] = roster
    return frame


def _categories(groups: pd.DataFrame, dim: str) -> list[str]:
    if dim == "age_band":
        return list(AGE_BANDS)
    return sorted(set(groups[dim].unique().tolist()) | set(groups.attrs.get(ROSTER, {}).get(dim, ())))


def exact_tables(
    groups: pd.DataFrame, dims: tuple[str, ...]
) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """Categories per dimension, the exact count table ``(*categories, tiers)`` and the exact
    risk-sum table ``(*categories)``. Never leaves this module unnoised."""
    cats = [_categories(groups, d) for d in dims]
    shape = tuple(len(c) for c in cats)
    idx = tuple(pd.Categorical(groups[d], categories=c).codes for d, c in zip(dims, cats))
    tier = pd.Categorical(groups["tier"], categories=list(TIERS)).codes
    if any((i < 0).any() for i in idx) or (tier < 0).any():
        raise DataError("a person's group or tier is outside the view's categories", field="tier")
    counts = np.zeros((*shape, len(TIERS)))
    np.add.at(counts, (*idx, tier), 1.0)
    sums = np.zeros(shape)
    np.add.at(sums, idx, np.nan_to_num(groups["probability"].to_numpy(dtype=float)))
    return cats, counts, sums


def release_view(
    groups: pd.DataFrame,
    dims: tuple[str, ...],
    *,
    policy: GroupPolicy,
    rng: np.random.Generator,
    suppressor: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] = suppress,
) -> dict:
    """Noise, round, clamp and suppress one view (call only after its charge committed).

    ``suppressor`` is :func:`node.api.suppression.suppress`; the attack tests pass a weaker one
    to show what complementary suppression prevents."""
    cats, counts, sums = exact_tables(groups, dims)
    # rounded, not clamped: totals are sums of these, so an empty group's total is not pushed up
    # by clamping each of its noisy cells at 0 (shown cells are ≥ k > 0 anyway)
    noisy = np.rint(counts + gaussian_noise(shape=counts.shape, sigma=policy.sigma, rng=rng))
    noisy_sums = sums + gaussian_noise(shape=sums.shape, sigma=policy.sigma, rng=rng)
    del counts, sums  # nothing below may read the exact tables
    hidden, complementary = suppressor(noisy, policy.k)
    cells, rows = [], []
    for g in np.ndindex(noisy.shape[:-1]):
        values = {d: cats[a][i] for a, (d, i) in enumerate(zip(dims, g))}
        label = " / ".join(values.values())
        for t, tier in enumerate(TIERS):
            cell = (*g, t)
            cells.append(
                {
                    "group": label,
                    "values": values,
                    "tier": tier,
                    "count": None if hidden[cell] else int(noisy[cell]),
                    "suppressed": bool(hidden[cell]),
                    "reason": ("complementary" if complementary[cell] else "small") if hidden[cell] else None,
                }
            )
        people = int(noisy[g].sum())
        shown = people >= policy.k
        rows.append(
            {
                "group": label,
                "values": values,
                "people": people if shown else None,
                "mean_risk": round(float(np.clip(noisy_sums[g] / people, 0.0, 1.0)), 4) if shown else None,
                "suppressed": not shown,
            }
        )
    tier_totals = noisy.reshape(-1, len(TIERS)).sum(axis=0)
    total = int(noisy.sum())
    return {
        "dimensions": list(dims),
        "cells": cells,
        "groups": rows,
        "tier_totals": {t: (int(v) if v >= policy.k else None) for t, v in zip(TIERS, tier_totals)},
        "total": total if total >= policy.k else None,
        "suppressed_cells": int(hidden.sum()),
        "complementary_cells": int(complementary.sum()),
    }


class GroupViews:
    """Serves each view once drawn: from the ledger's store of released views (charging the
    population budget for a new one first), else — without a ledger — from memory, noised but
    not accounted (tests and demos without a node).

    Args:
        population: ``(groups, data)``: :func:`group_frame` of the scored population (None: views
            unavailable) and its :func:`data_version`; or a callable returning them, called at
            the first request (a server starts without reading a large store).
        policy: k, σ, δ.
        model_version: the scoring model's version.
        cutoffs: the tier cut-offs in use (part of a view's definition).
        ledger: the node's :class:`node.ledger.PrivacyLedger`, or None.
        rng: the noise generator.
    """

    def __init__(
        self,
        population: tuple[pd.DataFrame | None, str] | Callable[[], tuple[pd.DataFrame | None, str]],
        *,
        policy: GroupPolicy,
        model_version: str,
        cutoffs: Sequence[float],
        ledger,
        rng: np.random.Generator,
    ):
        self.policy, self.model_version = policy, model_version
        self._population = population
        self.groups: pd.DataFrame | None = None
        self.data = ""
        if not callable(population):
            self.groups, self.data = population
        self.cutoffs = [float(c) for c in cutoffs]
        self.ledger, self.rng = ledger, rng
        self._cache: dict[tuple[str, ...], dict] = {}
        self._lock = threading.Lock()
        # ε needs the accountant (an opacus/torch import): pay that at start-up, not per request.
        self.epsilon = policy.epsilon

    def _load(self) -> None:
        """Read the population now if it was deferred (under the lock). A book that cannot be
        read or scored is named only in the node's log: its error names a row and what is wrong
        with one of its values ("row 3: sbp outside public bounds"), which HR must not read
        (tests/security/test_group_view_leaks.py)."""
        if callable(self._population):
            try:
                self.groups, self.data = self._population()
            except DataError as e:
                log.error("group views: the population could not be read or scored: %s", e)
                raise DataError(
                    "group views unavailable: this node's population could not be read or "
                    "scored (the node's log says why)"
                ) from None
            self._population = (self.groups, self.data)

    def _definition(self, dims: tuple[str, ...]) -> str:
        p = self.policy
        what = {
            "by": dims,
            "k": p.k,
            "sigma": p.sigma,
            "delta": p.delta,
            "cutoffs": self.cutoffs,
            "v": _SCHEMA,
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]

    def key(self, dims: tuple[str, ...]) -> str:
        """``gv:<definition>:<inputs>``: one stored release per definition, model and data."""
        inputs = hashlib.sha256(f"{self.model_version}\n{self.data}".encode()).hexdigest()
        return f"gv:{self._definition(dims)}:{inputs}"

    def _body(self, dims: tuple[str, ...], previous: dict | None) -> str:
        assert self.groups is not None
        body = {
            "by": ",".join(dims),
            "k": self.policy.k,
            "sigma": self.policy.sigma,
            "sensitivity": SENSITIVITY,
            "epsilon": self.epsilon,
            "delta": self.policy.delta,
            "model_version": self.model_version,
            # a random tag, not the data's digest: an unkeyed digest of every row, released
            # uncharged, let anyone who knows the population but one person test each guess
            # (tests/security/test_group_view_leaks.py); stored with the view, so it names this release
            "data_version": secrets.token_hex(8),
            "released_at": datetime.now(timezone.utc).isoformat(),
            "supersedes": _superseded(previous, self.model_version),
            **release_view(self.groups, dims, policy=self.policy, rng=self.rng),
        }
        return json.dumps(body)

    def peek(self, by: str | Sequence[str]) -> dict | None:
        """The view by ``by`` if it was released before — in this process, or stored for the
        same definition, model and data — else None. Never draws noise and never charges: what
        a GET of the HR web view shows (releasing is a POST there, :mod:`node.web.hr`).

        Raises:
            SpecError: a bad dimension; DataError: no population loaded.
        """
        dims = parse_by(by)
        with self._lock:
            self._load()
            if self.groups is None:
                raise DataError("no population is loaded at this node: group views unavailable")
            view = self._cache.get(dims)
            if view is None and self.ledger is not None:
                view = self.ledger.latest_view(self.key(dims))  # the full key: this exact release
                if view is not None:
                    self._cache[dims] = view
            return None if view is None else {**view, "charged_now": False, "note": _served_note(view)}

    def get(self, by: str | Sequence[str]) -> dict:
        """The view by ``by``, with ``charged_now`` (this call paid for it) and a ``note``.

        Raises:
            SpecError: a bad dimension (named); DataError: no population loaded;
            BudgetExceededError: the release would exceed the budget (nothing released).
        """
        dims = parse_by(by)
        with self._lock:
            self._load()
            if self.groups is None:
                raise DataError("no population is loaded at this node: group views unavailable")
            if dims in self._cache:
                return {**self._cache[dims], "charged_now": False, "note": _served_note(self._cache[dims])}
            if self.ledger is None:
                body, charged = self._body(dims, None), True
            else:  # pay before anything noisy exists; a view released before is re-served
                previous = self.ledger.latest_view(f"gv:{self._definition(dims)}:")
                body, charge = self.ledger.release_once(
                    key=self.key(dims),
                    study_id="group-view",
                    query=f"group_view:{','.join(dims)}",
                    sigma=self.policy.sigma,
                    sensitivity=SENSITIVITY,
                    make=lambda: self._body(dims, previous),
                )
                charged = charge is not None
                if charge is not None:  # the answer is all that is left to send
                    self.ledger.mark_sent(charge.id)
            view = json.loads(body)
            self._cache[dims] = view
            if self.ledger is None:
                note = "new release: noised but not accounted (this server has no privacy ledger)"
            else:
                note = _charged_note(view) if charged else _served_note(view)
            return {**view, "charged_now": charged, "note": note}


def _superseded(previous: dict | None, model: str) -> dict | None:
    """What changed since the last release of the same view definition (None: the first). A
    definition is released again only when its model or its data changed (its ledger key), so
    the same model means new data; a new model is said alone (whether the data changed too is
    not kept: the tag of a release is random, never a digest of the rows)."""
    if previous is None:
        return None
    changed = ["model"] if previous.get("model_version") != model else ["data"]
    return {
        "released_at": previous.get("released_at"),
        "model_version": previous.get("model_version"),
        "data_version": previous.get("data_version"),
        "changed": changed,
    }


def _charged_note(view: dict) -> str:
    eps = f"charged ε = {view['epsilon']:.3f} (δ = {view['delta']:g}) to the node's budget"
    old = view.get("supersedes")
    if not old:
        return f"new release: first release of this view; {eps}"
    return (
        f"new release: the {' and '.join(old['changed']) or 'input'} changed since the release of "
        f"{old['released_at']}; {eps} again"
    )


def _served_note(view: dict) -> str:
    return f"served again from the release of {view['released_at']}: no new charge"


def view_csv(view: dict) -> str:
    """A view as CSV, one row per (group, tier) cell plus one ``all`` row per group (people and
    mean risk). A withheld value is an empty field with ``suppressed`` true, never 0."""
    import csv
    import io

    dims = view["dimensions"]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([*dims, "tier", "count", "mean_risk", "suppressed", "reason"])
    cells: dict[str, list[dict]] = {}
    for c in view["cells"]:
        cells.setdefault(c["group"], []).append(c)
    for g in view["groups"]:
        vals = [_not_a_formula(g["values"][d]) for d in dims]
        for c in cells[g["group"]]:
            w.writerow(
                [*vals, c["tier"], _blank(c["count"]), "", str(c["suppressed"]).lower(), c["reason"] or ""]
            )
        w.writerow(
            [*vals, "all", _blank(g["people"]), _blank(g["mean_risk"]), str(g["suppressed"]).lower(), ""]
        )
    return out.getvalue()


#: what a spreadsheet reads as the start of a formula (OWASP, "CSV injection")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _not_a_formula(label: str) -> str:
    """A department or job type as a CSV cell: the employer's HR system chose it, and a label
    that starts like a formula (``=HYPERLINK(…)``) would run as one in the spreadsheet HR opens
    the export in, so it gets a leading apostrophe (tests/security/test_view_export_injection.py)."""
    return "'" + label if label.startswith(_FORMULA_START) else label


def _blank(v) -> str:
    return "" if v is None else str(v)
