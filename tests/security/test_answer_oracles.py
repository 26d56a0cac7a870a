"""Red-team attacks on what a node's *failure* tells a curious coordinator (session 17).

A node's DP answer is charged before the data are read, but the charge pays for the noisy
release only: whether the node answers at all must not depend on any row (deploy/TRUST.md,
step 5), or each query also carries an exact, un-noised bit. These tests look for queries
whose reply (answer or error) differs between two data sets, or for a threshold in one data
set, with every query signed by the operator's key (the attacker holds it).
"""

from __future__ import annotations

import numpy as np
import pytest

from node.study_service import prepare_arrays, read_cohort
from shared.protocol import CODE_REFUSED, Describe, PsFit, PsmStats, PsmWsum
from shared.synth import generate_federation
from tests.security.node_kit import Federation, make_federation

DBL_MAX = float(np.finfo(float).max)


@pytest.fixture(scope="module")
def synth():
    return generate_federation(seed=7, sites=2, scale=0.02)


@pytest.fixture
def dp(tmp_path, synth) -> Federation:
    return make_federation(tmp_path / "dp", synth=synth)


def overflow_beta(fed: Federation, column: str, threshold01: float) -> tuple[float, ...]:
    """β whose logit score overflows to +inf exactly for the rows whose scaled ``column`` lies
    above ``threshold01``: β₀ + s·z crosses the float maximum at z = threshold01."""
    names = [c.name for c in fed.spec.covariates]
    beta = np.zeros(len(names) + 1)
    s = 1e307
    beta[1 + names.index(column)] = s
    beta[0] = DBL_MAX - s * threshold01
    return tuple(beta.tolist())


@pytest.mark.parametrize("op", ["psm_stats", "psm_wsum"])
def test_a_score_overflow_is_no_oracle_on_the_oldest_persons_age(dp, op):
    """The attack: a DP study whose β scores +inf (outside every stratum) exactly for the
    people older than x. Before the score-span bound the node answered when nobody was older
    and failed with code 4002 (after its charge) when somebody was: bisection found the
    oldest person's exact age, one un-noised bit per query, for the charge of a noisy release
    whose noise the bit never saw (studies at a tiny ε buy thousands of such bits). Now both
    probes are refused on the query alone, before any charge."""
    node = dp.node(0)
    truth = prepare_arrays(read_cohort(dp.data_path(node.site)), dp.query((Describe(),)))
    names = [c.name for c in dp.spec.covariates]
    oldest = float(truth.z[:, names.index("age")].max())
    o = len(dp.spec.analysed_outcomes)
    replies = []
    for thr in (oldest - 0.01, oldest + 0.01):  # someone above / nobody above
        beta = overflow_beta(dp, "age", thr)
        edges = (-np.inf, np.inf)
        asked = (
            PsmStats(beta=beta, edges=edges)
            if op == "psm_stats"
            else PsmWsum(beta=beta, edges=edges, count=(5.0, 5.0), center=(0.5,) * 2 * o, max_weight=1.0)
        )
        replies.append(node.ask(dp.sign(dp.query((asked,)))))
    assert [r.code for r in replies] == [CODE_REFUSED, CODE_REFUSED], [(r.code, r.reason) for r in replies]
    assert all("score span" in r.reason for r in replies)
    assert node.releases() == []  # refused before any charge (the reservation is not a charge)


def test_a_a_fitted_beta_far_past_any_real_fit_is_still_answered(dp):
    """The bound does not refuse the steep βs the other attacks use (test_node_promise 3a:
    |β| ≈ 1e5 on the scaled age), only spans near float overflow."""
    names = [c.name for c in dp.spec.covariates]
    beta = np.zeros(len(names) + 1)
    beta[0], beta[1 + names.index("age")] = -5e5, 1e6
    reply = dp.node(0).ask(dp.sign(dp.query((PsFit(beta=tuple(beta.tolist())),))))
    assert reply.ok, reply.reason
