"""Propensity-score stratification as sufficient statistics: pure numpy, no I/O, no Flower.

The same functions give a node's contribution, the coordinator's aggregate and the pooled
reference (docs/STATISTICS.md)::

    node:         cov_moments -> ps_contribution (per Newton round) -> psm_table
    coordinator:  sum -> initial_beta, PropensityFitter.update -> logit_sd, caliper_edges
                  -> sum of tables -> estimate_att
The references (``shared.psm.reference``: estimate_att_federated, the study in one process
through the study driver; estimate_att_pooled, the same with one node holding every row;
nn_match_att) are imported from their module: they run the driver, which imports this package.
"""

from shared.psm.estimator import AttEstimate, Check, estimate_att
from shared.psm.propensity import (
    CovMoments,
    PropensityFitter,
    PsStats,
    cov_moments,
    fit_propensity,
    initial_beta,
    ps_contribution,
    run_fit,
)
from shared.psm.strata import (
    caliper_edges,
    logit_scores,
    logit_sd,
    quantile_edges,
    score_grid,
    score_histogram,
    score_range,
)
from shared.psm.table import PsmTable, psm_table, scale_outcomes, unscale_outcomes

__all__ = [
    "AttEstimate",
    "Check",
    "CovMoments",
    "PropensityFitter",
    "PsStats",
    "PsmTable",
    "caliper_edges",
    "cov_moments",
    "estimate_att",
    "fit_propensity",
    "initial_beta",
    "logit_scores",
    "logit_sd",
    "ps_contribution",
    "psm_table",
    "quantile_edges",
    "run_fit",
    "scale_outcomes",
    "score_grid",
    "score_histogram",
    "score_range",
    "unscale_outcomes",
]
