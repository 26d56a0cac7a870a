"""The diagnostic thresholds, defined once.

The estimator's diagnostics (:func:`shared.psm.estimator.estimate_att`), the evidence report's
checks and their stated rules (:mod:`coordinator.report.checks`), the balance column of the
report and its love plot all read these names, so a threshold changed here changes every
verdict and every sentence that states it (``tests/unit/test_report_build.py``).

Sources: DESIGN §5–6; Austin (2009) for the SMD; Rubin (2001) for variance ratios; Walker et al.
(2013) and OHDSI CohortMethod's ``createCmDiagnosticThresholds`` (``equipoiseThreshold = 0.2``)
for equipoise.
"""

#: Covariate balance: largest |standardised mean difference| after weighting must stay below.
SMD_MAX = 0.1
#: Variance ratio (treated / controls) after weighting must lie within these bounds.
VAR_RATIO_LO, VAR_RATIO_HI = 0.5, 2.0
#: Size gate: at least this many treated ...
MIN_TREATED = 100
#: ... and a control pool at least this many times the treated.
MIN_CONTROL_RATIO = 3.0
#: Share of the treated that must lie in common support for the ATT to speak for the treated
#: (dropping a handful is routine; dropping more changes the estimand and fails the check).
MIN_SUPPORT = 0.95
#: Equipoise: at least this share of the people (both arms) must have a preference score ...
EQUIPOISE_MIN = 0.2
#: ... within these bounds (the preference score: the propensity score with the treated share removed).
EQUIPOISE_LO, EQUIPOISE_HI = 0.3, 0.7
#: Negative controls: expected absolute systematic error on the log ratio of means must not
#: exceed this (CohortMethod ``easeThreshold``; our differences are read as log ratios of means,
#: the scale the threshold was set on: shared.psm.calibration).
EASE_MAX = 0.25
#: CohortMethod's ``mdrrThreshold``: stated beside each outcome's MDRR (information here, not a
#: gate: coordinator.report.negative_controls says why).
MDRR_COHORTMETHOD = 10.0
