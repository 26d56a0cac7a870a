"""The intervention programme's uptake for HR: people per delivery stage, by department —
noised, suppressed, charged once and kept, like the group risk views (:mod:`node.api.groups`).

**Stages.** Each person with a plan is counted once, at their newest plan's stage::

    waiting        pending or being sent
    not_delivered  dead-lettered: the gateway refused it or stayed down
    opted_out      on the opt-out list: no plan was sent (skipped)
    delivered      delivered, not opened yet
    opened         opened, no item completed yet
    completed      at least one item completed

The stages partition the people with a plan, so one person adds 1 to exactly one cell of the
department × stage table: the release's L2 sensitivity is 1, and one Gaussian draw of σ on every
cell costs ε(σ, δ). Every department of the node's persons is released, empty ones included.
Cells whose noisy count is below k are suppressed, with complementary suppression
(:func:`node.api.suppression.suppress`); withheld cells are ``null``, never 0. Nothing about a
person, plan id, pseudonym or risk leaves: only this table.

**Charged once.** The release is stored in the ledger's database with its charge
(:meth:`node.ledger.PrivacyLedger.release_once`) under a key made of the definition (k, σ, δ)
and of a digest of every person's stage and department: the same data is served again at no
cost; new plan events make a new key, so a new release must be asked for (a POST in the HR view,
``GET /v1/programme`` in the API, which releases like ``GET /v1/groups``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from node.api.groups import UNKNOWN, GroupPolicy
from node.api.suppression import suppress
from shared.dp.accounting import epsilon_spent
from shared.dp.mechanisms import gaussian_noise
from shared.errors import DataError

__all__ = ["STAGES", "STAGE_LABELS", "ProgrammeViews", "exact_stages"]

STAGES = ("waiting", "not_delivered", "opted_out", "delivered", "opened", "completed")
STAGE_LABELS = {
    "waiting": "Waiting to be sent",
    "not_delivered": "Could not be delivered",
    "opted_out": "Opted out (nothing sent)",
    "delivered": "Delivered, not opened",
    "opened": "Opened, nothing completed yet",
    "completed": "Completed at least one item",
}
SENSITIVITY = 1.0  # one person, one cell
QUERY = "group_view:programme_uptake"  # grouped with the group views in `rehealth node budget`
_SCHEMA = 1


def exact_stages(store_url: str) -> tuple[list[str], np.ndarray, str]:
    """Departments, the exact ``(departments, stages)`` count table and a digest of what it was
    computed from. Never leaves this module unnoised."""
    from sqlalchemy import select

    from node.store import models
    from node.store.engine import open_store

    p, pe, pr = models.plans, models.plan_events, models.persons
    store = open_store(store_url, create=False)
    try:
        with store.engine.connect() as conn:
            plans = pd.DataFrame(
                conn.execute(select(p.c.id, p.c.pseudonym, p.c.status, p.c.created_at)).all(),
                columns=["id", "pseudonym", "status", "created_at"],
            )
            events = pd.DataFrame(
                conn.execute(
                    select(pe.c.plan_id, pe.c.event).where(pe.c.event.in_(("opened", "completed")))
                ).all(),
                columns=["plan_id", "event"],
            )
            people = pd.DataFrame(
                conn.execute(select(pr.c.pseudonym, pr.c.department)).all(),
                columns=["pseudonym", "department"],
            )
    finally:
        store.engine.dispose()
    dept = people["department"].astype("string").str.strip()
    people["department"] = dept.mask(dept.isna() | (dept == ""), UNKNOWN).astype(str)
    departments = sorted(set(people["department"]) | ({UNKNOWN} if people.empty else set()))
    counts = np.zeros((len(departments), len(STAGES)))
    if plans.empty:
        return departments, counts, hashlib.sha256(b"no plans").hexdigest()
    latest = plans.sort_values(["pseudonym", "created_at", "id"]).groupby("pseudonym").tail(1)
    done = set(events.loc[events["event"] == "completed", "plan_id"])
    opened = set(events.loc[events["event"] == "opened", "plan_id"])

    def stage(row) -> str:
        s = row.status
        if s in ("pending", "sending"):
            return "waiting"
        if s == "dead":
            return "not_delivered"
        if s == "skipped":
            return "opted_out"
        if s == "delivered":
            return "completed" if row.id in done else ("opened" if row.id in opened else "delivered")
        raise DataError(f"plan status {s!r} is not one the programme view knows", field="status")

    latest = latest.assign(stage=[stage(r) for r in latest.itertuples()])
    latest = latest.merge(people, on="pseudonym", how="left").fillna({"department": UNKNOWN})
    if UNKNOWN in set(latest["department"]) and UNKNOWN not in departments:
        departments = sorted([*departments, UNKNOWN])
        counts = np.zeros((len(departments), len(STAGES)))
    d_idx = pd.Categorical(latest["department"], categories=departments).codes
    s_idx = pd.Categorical(latest["stage"], categories=list(STAGES)).codes
    np.add.at(counts, (d_idx, s_idx), 1.0)
    digest = hashlib.sha256()
    for r in latest.sort_values("pseudonym").itertuples():
        digest.update(f"{r.pseudonym}\t{r.department}\t{r.stage}\n".encode())
    return departments, counts, digest.hexdigest()


def release_table(departments: list[str], counts: np.ndarray, *, policy: GroupPolicy, rng) -> dict:
    """Noise, round and suppress the table (call only after its charge committed)."""
    noisy = np.rint(counts + gaussian_noise(shape=counts.shape, sigma=policy.sigma, rng=rng))
    del counts
    hidden, complementary = suppress(noisy, policy.k)
    cells = []
    for d, dept in enumerate(departments):
        for s, stage in enumerate(STAGES):
            h = bool(hidden[d, s])
            cells.append(
                {
                    "department": dept,
                    "stage": stage,
                    "count": None if h else int(noisy[d, s]),
                    "suppressed": h,
                    "reason": ("complementary" if complementary[d, s] else "small") if h else None,
                }
            )
    stage_totals = noisy.sum(axis=0)
    dept_totals = noisy.sum(axis=1)
    total = int(noisy.sum())
    return {
        "departments": departments,
        "stages": list(STAGES),
        "cells": cells,
        "stage_totals": {s: (int(v) if v >= policy.k else None) for s, v in zip(STAGES, stage_totals)},
        "department_totals": {
            d: (int(v) if v >= policy.k else None) for d, v in zip(departments, dept_totals)
        },
        "total": total if total >= policy.k else None,
        "suppressed_cells": int(hidden.sum()),
        "complementary_cells": int(complementary.sum()),
    }


class ProgrammeViews:
    """The programme uptake release: :meth:`get` releases (charging first) or serves the stored
    one; :meth:`latest` only reads the newest stored release (no computation, no charge)."""

    def __init__(self, store_url: str, *, policy: GroupPolicy, ledger, rng: np.random.Generator):
        self.store_url, self.policy, self.ledger, self.rng = store_url, policy, ledger, rng
        self.epsilon = epsilon_spent(noise_multipliers=[policy.sigma / SENSITIVITY], delta=policy.delta)
        self._memory: dict | None = None  # without a ledger: the last release, not accounted
        self._lock = threading.Lock()

    def _prefix(self) -> str:
        p = self.policy
        what = {"k": p.k, "sigma": p.sigma, "delta": p.delta, "v": _SCHEMA}
        return "pv:" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32] + ":"

    def latest(self) -> dict | None:
        if self.ledger is None:
            return self._memory
        return self.ledger.latest_view(self._prefix())

    def get(self) -> dict:
        """The release for the current data, with ``charged_now`` and a ``note``.

        Raises:
            BudgetExceededError: the release would exceed the budget (nothing released).
        """
        with self._lock:
            departments, counts, digest = exact_stages(self.store_url)

            def make() -> str:
                body = {
                    "k": self.policy.k,
                    "sigma": self.policy.sigma,
                    "sensitivity": SENSITIVITY,
                    "epsilon": self.epsilon,
                    "delta": self.policy.delta,
                    "data_version": digest[:16],
                    "released_at": datetime.now(timezone.utc).isoformat(),
                    **release_table(departments, counts, policy=self.policy, rng=self.rng),
                }
                return json.dumps(body)

            if self.ledger is None:
                if self._memory is not None and self._memory["data_version"] == digest[:16]:
                    return {**self._memory, "charged_now": False}
                self._memory = json.loads(make())
                return {**self._memory, "charged_now": True}
            body, charge = self.ledger.release_once(
                key=self._prefix() + digest,
                study_id="group-view",
                query=QUERY,
                sigma=self.policy.sigma,
                sensitivity=SENSITIVITY,
                make=make,
            )
            if charge is not None:
                self.ledger.mark_sent(charge.id)
            return {**json.loads(body), "charged_now": charge is not None}
