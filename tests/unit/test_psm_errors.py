"""Bad input raises a clear typed error naming the row and field; nothing returns a silent NaN."""

import numpy as np
import pytest
from psm_dgp import COVARIATES, OUTCOMES, make_study

from shared.errors import CovariateBoundsError, DataError, EmptyArmError, EstimationError, NoOverlapError
from shared.psm.estimator import estimate_att
from shared.psm.propensity import cov_moments, initial_beta, ps_contribution
from shared.psm.reference import estimate_att_pooled, nn_match_att
from shared.psm.strata import caliper_edges, logit_sd, quantile_edges, score_grid
from shared.psm.table import PsmTable, psm_table, scale_outcomes


@pytest.fixture(scope="module")
def study():
    return make_study(n=800, seed=3)


def _pooled(z, t, y):
    return estimate_att_pooled(z=z, t=t, y=y, outcomes=OUTCOMES, covariates=COVARIATES)


def test_nan_covariate_names_row_and_field(study):
    z = study.z.copy()
    z[17, 2] = np.nan
    with pytest.raises(DataError, match="row 17: bmi") as e:
        _pooled(z, study.t, study.y)
    assert (e.value.row, e.value.field) == (17, "bmi")
    with pytest.raises(DataError, match="row 17"):
        ps_contribution(z=z, t=study.t, beta=np.zeros(7))


def test_out_of_bounds_covariate_is_a_bounds_error(study):
    z = study.z.copy()
    z[5, 0] = 1.2  # not scaled by its public bounds
    with pytest.raises(CovariateBoundsError, match="row 5: age") as e:
        _pooled(z, study.t, study.y)
    assert e.value.field == "age"
    for fn in (
        lambda: cov_moments(z=z, t=study.t),
        lambda: psm_table(
            z=z, t=study.t, y=np.zeros((800, 1)), beta=np.zeros(7), edges=np.array([-np.inf, np.inf])
        ),
    ):
        with pytest.raises(CovariateBoundsError):
            fn()


@pytest.mark.parametrize("bad", [2.0, -1.0, 0.5, np.nan])
def test_treatment_not_0_1(study, bad):
    t = study.t.copy()
    t[9] = bad
    with pytest.raises(DataError, match="row 9: treated") as e:
        _pooled(study.z, t, study.y)
    assert e.value.row == 9


def test_nan_outcome_and_unscaled_outcome(study):
    y = study.y.copy()
    y[4, 1] = np.nan
    with pytest.raises(DataError, match="row 4: outcome cv_event"):
        _pooled(study.z, study.t, y)
    with pytest.raises(DataError, match="clip and rescale"):
        psm_table(z=study.z, t=study.t, y=study.y, beta=np.zeros(7), edges=np.array([-np.inf, np.inf]))


@pytest.mark.parametrize("arm", [0.0, 1.0])
def test_empty_arm(study, arm):
    t = np.full_like(study.t, arm)
    with pytest.raises(EmptyArmError):
        _pooled(study.z, t, study.y)
    with pytest.raises(EmptyArmError):
        initial_beta(moments=cov_moments(z=study.z, t=t))
    y01, _ = scale_outcomes(y=study.y, lo=[0, 0, 0], cap=[o.cap for o in OUTCOMES])
    table = psm_table(z=study.z, t=t, y=y01, beta=np.zeros(7), edges=np.array([-np.inf, 0.0, np.inf]))
    with pytest.raises(EmptyArmError):
        estimate_att(table=table, outcomes=OUTCOMES, covariates=COVARIATES)
    with pytest.raises(EmptyArmError):
        nn_match_att(scores=np.zeros(800), t=t, y=study.y, caliper=0.1)


def test_separated_arms_are_no_overlap(study):
    t = (study.z[:, 0] > 0.5).astype(float)  # age alone decides treatment
    with pytest.raises(NoOverlapError, match="separate"):
        _pooled(study.z, t, study.y)
    with pytest.raises(NoOverlapError):
        nn_match_att(scores=study.z[:, 0], t=t, y=study.y, caliper=1e-9)


def test_table_without_a_shared_stratum_is_no_overlap(study):
    y01, _ = scale_outcomes(y=study.y, lo=[0, 0, 0], cap=[o.cap for o in OUTCOMES])
    t = (study.z[:, 0] > 0.5).astype(float)
    beta = np.array([-0.5, 1.0, 0, 0, 0, 0, 0])  # score = age - 0.5: the arms split at 0
    table = psm_table(z=study.z, t=t, y=y01, beta=beta, edges=np.array([-np.inf, 0.0, np.inf]))
    with pytest.raises(NoOverlapError, match="no stratum holds both arms"):
        estimate_att(table=table, outcomes=OUTCOMES, covariates=COVARIATES)


def test_mismatched_or_non_finite_tables(study):
    y01, _ = scale_outcomes(y=study.y, lo=[0, 0, 0], cap=[o.cap for o in OUTCOMES])
    table = psm_table(z=study.z, t=study.t, y=y01, beta=np.zeros(7), edges=np.array([-np.inf, np.inf]))
    with pytest.raises(DataError, match="2 covariates|covariates"):
        estimate_att(table=table, outcomes=OUTCOMES, covariates=COVARIATES[:2])
    arrays = table.to_arrays()
    arrays["sum_y"][0, 0, 0] = np.nan
    with pytest.raises(DataError, match="sum_y"):
        estimate_att(table=PsmTable.from_arrays(arrays), outcomes=OUTCOMES, covariates=COVARIATES)
    with pytest.raises(DataError, match="shape"):
        PsmTable.from_arrays(table.to_arrays() | {"count": np.zeros((3, 2))})


def test_bad_edges_and_degenerate_strata_inputs(study):
    with pytest.raises(DataError, match="strictly increasing"):
        psm_table(z=study.z, t=study.t, y=np.zeros((800, 1)), beta=np.zeros(7), edges=np.array([1.0, 0.0]))
    with pytest.raises(DataError, match="outside the stratum edges"):
        psm_table(z=study.z, t=study.t, y=np.zeros((800, 1)), beta=np.zeros(7), edges=np.array([1.0, 2.0]))
    with pytest.raises(EstimationError, match="variance"):
        logit_sd(moments=cov_moments(z=study.z, t=study.t), beta=np.zeros(7))
    with pytest.raises(EstimationError, match="width"):
        caliper_edges(beta=np.ones(7), sd=0.0)
    with pytest.raises(EstimationError, match="no treated"):
        quantile_edges(grid=score_grid(beta=np.ones(7), n_bins=4), treated_counts=np.zeros(4), n_strata=3)
