"""Caliper strata reach CALIPER_REACH score SDs around the mean score, not the unit cube's corners.

Twenty small companies under weak confounding (the coverage grid's ``weak_confounding ×
k20_900``, seed 10025): total cholesterol is nearly LDL + HDL + TG/5 (Friedewald), so the
propensity fit puts slopes of ±200 on the four lipids while every row's score lies within a
few units. Over the unit cube the score then spans [−339, 236], which at 0.2 SD per stratum is
over 10,000 strata: the exact study stopped with "caliper strata exceed 10000" (12 of 100 such
federations, 41 of 500 in the grid). Narrowed to 10 SDs either side of the mean score (from the
describe moments, already released) the study runs and every row still lands in a stratum.
"""

from __future__ import annotations

import numpy as np
import pytest

from shared.features import FEATURES, scale
from shared.psm.propensity import cov_moments
from shared.psm.reference import estimate_att_federated
from shared.psm.strata import (
    CALIPER_REACH,
    MAX_STRATA,
    caliper_edges,
    logit_mean,
    logit_scores,
    logit_sd,
    score_range,
    stratum_index,
)
from shared.synth import generate_cohort
from shared.synth.outcomes import OUTCOMES

NAMES = [f.name for f in FEATURES]
_FIRMS = ("company_logistics", "company_software", "company_manufacturing", "company_clinic")
_SIZES = (239, 153, 223, 171)  # the grid's k20_900 node sizes under weak confounding


@pytest.fixture(scope="module")
def friedewald_federation():
    nodes = []
    for i in range(20):
        cohort, _ = generate_cohort(
            n=_SIZES[i % 4],
            seed=10025 * 1000 + i,
            profile=_FIRMS[i % 4],
            outcomes=OUTCOMES,
            dgp="weak_confounding",
        )
        z = scale(cohort[NAMES].to_numpy(dtype=float), FEATURES)
        t = cohort["treated"].to_numpy(dtype=float)
        nodes.append((z, t, cohort[[o.name for o in OUTCOMES]].to_numpy(dtype=float)))
    return nodes


def test_collinear_lipids_no_longer_stop_the_exact_study(friedewald_federation) -> None:
    run = estimate_att_federated(nodes=friedewald_federation, outcomes=OUTCOMES, covariates=NAMES)
    z = np.vstack([n[0] for n in friedewald_federation])
    beta = run.fitter.beta
    # the data exercise the failure: over the cube, this fit needs more than MAX_STRATA strata
    lo, hi = score_range(beta=beta)
    assert (hi - lo) / (0.2 * run.logit_sd) > MAX_STRATA
    # the grid stays within the reach: at most 2 · reach / caliper inner widths plus two outer
    assert len(run.edges) - 1 <= 2 * CALIPER_REACH / 0.2 + 2
    # every row lands in a stratum, and the table counts them all
    b = stratum_index(logit_scores(z=z, beta=beta), run.edges)
    assert b.size == z.shape[0] and run.table.count.sum() == pytest.approx(z.shape[0])
    assert all(np.isfinite(o.ci).all() for o in run.estimate.outcomes)


def test_the_reach_narrows_only_a_range_wider_than_it(friedewald_federation) -> None:
    z = np.vstack([n[0] for n in friedewald_federation])
    t = np.concatenate([n[1] for n in friedewald_federation])
    moments = cov_moments(z=z, t=t)
    narrow = np.r_[-1.0, 1.0, np.zeros(15)]  # age alone: cube range [-1, 0]
    sd, c = logit_sd(moments=moments, beta=narrow), logit_mean(moments=moments, beta=narrow)
    assert c - CALIPER_REACH * sd < -1.0 and c + CALIPER_REACH * sd > 0.0  # the cube is tighter
    np.testing.assert_array_equal(
        caliper_edges(beta=narrow, sd=sd, center=c), caliper_edges(beta=narrow, sd=sd)
    )
    wide = np.zeros(17)  # the lipids' slopes of a pooled fit of these data (Friedewald)
    wide[[0, 6, 7, 8, 9]] = [21.9, 211.4, -66.8, -179.5, -113.2]
    sd, c = logit_sd(moments=moments, beta=wide), logit_mean(moments=moments, beta=wide)
    edges = caliper_edges(beta=wide, sd=sd, center=c)
    reach = CALIPER_REACH * sd
    assert c - reach <= edges[1] < c - reach + 0.2 * sd + 1e-9 and edges[-2] < c + reach + 0.2 * sd
    # the kept edges are the cube grid's own: a whole number of widths from its lower end
    steps = (edges[1:-1] - score_range(beta=wide)[0]) / (0.2 * sd)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)
    # the mean score is the rows' mean: the moments are the data's
    assert c == pytest.approx(float(logit_scores(z=z, beta=wide).mean()))
