"""Differencing attack on HR group views: recover a suppressed cell from overlapping views.

The attacker (HR) fetches ``department``, ``age_band`` and ``department,age_band`` for a
480-person company, with every group total, tier total and grand total those views carry, and
treats each released number as an exact linear equation on the true (department, age band, tier)
counts — a coarse view's cell is the sum of the fine cells it covers. A suppressed fine cell is
recovered when that system pins it (its unit vector lies in the equations' row space); the
attacker's value for it is then the least-squares solution.

With primary suppression only (cells whose noisy count is below k), the attack pins suppressed
cells and lands close to their true (small) counts. With complementary suppression, it pins none.
"""

from __future__ import annotations

import numpy as np
import pytest

from node.api.app import group_views
from node.api.groups import GroupPolicy, exact_tables, group_frame, release_view
from node.ledger import PrivacyLedger
from node.risk.scoring import Scorer, score_book
from shared.risk.tiers import TIERS
from shared.schemas import AGE_BANDS
from tests.security.hr_company import company, risk_model

VIEWS = ("department", "age_band", "department,age_band")
POLICY = GroupPolicy(k=11, sigma=1.0, delta=1e-6)


def _primary_only(noisy: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return noisy < k, np.zeros(noisy.shape, dtype=bool)


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    root = tmp_path_factory.mktemp("hr")
    book = company()
    scorer = Scorer.from_model(risk_model(root / "models"))
    scored = score_book(book, scorer)
    groups = group_frame(book.assign(tier=scored["tier"], probability=scored["probability"]))
    return root, book, scorer, groups


def _equations(views: dict[str, dict], depts: list[str]) -> tuple[np.ndarray, np.ndarray, list]:
    """Every released number as a row over the fine unknowns (dept, band, tier)."""
    fine = [(d, a, t) for d in depts for a in AGE_BANDS for t in TIERS]
    col = {c: i for i, c in enumerate(fine)}
    rows, rhs = [], []

    def add(cells, value):
        if value is None:
            return
        row = np.zeros(len(fine))
        row[[col[c] for c in cells]] = 1.0
        rows.append(row)
        rhs.append(float(value))

    def covered(values: dict, tier: str | None):
        return [
            (d, a, t)
            for d, a, t in fine
            if values.get("department", d) == d
            and values.get("age_band", a) == a
            and (tier is None or t == tier)
        ]

    for view in views.values():
        for c in view["cells"]:
            add(covered(c["values"], c["tier"]), c["count"])
        for g in view["groups"]:
            add(covered(g["values"], None), g["people"])
        for t, v in view["tier_totals"].items():
            add(covered({}, t), v)
        add(covered({}, None), view["total"])
    return np.array(rows), np.array(rhs), fine


def _attack(views: dict[str, dict], depts: list[str]) -> dict[tuple, float]:
    """The suppressed fine cells the system pins, with the attacker's value for each."""
    a, b, fine = _equations(views, depts)
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    basis = vt[s > 1e-9 * max(a.shape) * s[0]]
    pinned = np.sum(basis**2, axis=0) > 1 - 1e-8
    x, *_ = np.linalg.lstsq(a, b, rcond=None)
    hidden = {
        (c["values"]["department"], c["values"]["age_band"], c["tier"])
        for c in views[VIEWS[2]]["cells"]
        if c["suppressed"]
    }
    return {c: float(x[i]) for i, c in enumerate(fine) if pinned[i] and c in hidden}


def test_without_complementary_suppression_overlapping_views_give_small_cells_away(population):
    _, _, _, groups = population
    rng = np.random.default_rng(3)
    views = {
        by: release_view(groups, tuple(by.split(",")), policy=POLICY, rng=rng, suppressor=_primary_only)
        for by in VIEWS
    }
    depts = sorted(groups["department"].unique())
    recovered = _attack(views, depts)
    assert recovered, "the attack should pin a suppressed cell when only small cells are withheld"
    _, exact, _ = exact_tables(groups, ("department", "age_band"))
    errors = []
    for (d, a, t), guess in recovered.items():
        true = exact[depts.index(d), AGE_BANDS.index(a), TIERS.index(t)]
        assert true < 2 * POLICY.k  # it is a small cell the view meant to hide
        errors.append(abs(guess - true))
    # the guesses are close: within a few noise SDs of the truth (they combine a handful of draws)
    assert np.median(errors) <= 4 * POLICY.sigma


def test_complementary_suppression_leaves_no_suppressed_cell_recoverable(population, tmp_path):
    root, book, scorer, groups = population
    ledger = PrivacyLedger(f"sqlite:///{tmp_path}/ledger.db")
    ledger.ensure_budget(epsilon=50.0, delta=1e-6)
    served = group_views(book, scorer=scorer, policy=POLICY, ledger=ledger)
    views = {by: served.get(by) for by in VIEWS}
    fine = views["department,age_band"]
    assert fine["suppressed_cells"] > 0 and fine["complementary_cells"] > 0
    # every suppressed cell is null and flagged, never a 0 that could be taken for a count
    assert all((c["count"] is None) == c["suppressed"] for v in views.values() for c in v["cells"])
    depts = sorted(groups["department"].unique())
    assert _attack(views, depts) == {}
