"""Negative-control outcomes: claims and diagnoses the programme cannot change (true ATT 0).

A lifestyle-coaching programme for cardiovascular risk does not change how often a person needs
dental work, glasses, a cataract operation or treatment for an ingrown nail within a year. These
outcomes are nonetheless *confounded like the real ones*: they rise with age, body weight,
diabetes, smoking and sex, the features that also drive uptake (:mod:`shared.synth.uptake`), so
a naive treated-minus-control difference on them is not zero, an adjusted one should be, and
whatever an analysis leaves of confounding shows up in them (OHDSI's negative controls,
Schuemie et al. 2014, *Stat Med* 33:209).

Each control ``k`` has a linear predictor of the features and of a latent *care-seeking*
propensity ``u ~ N(0, 1)`` (how readily a person sees a doctor, fills a claim):

.. math::
    \\eta_k = a_k + c^{age}_k \\frac{age - 50}{15} + c^{bmi}_k \\frac{BMI - 26}{5}
             + c^{dm}_k\\,diabetes + c^{sm}_k\\,smoker + c^{male}_k\\,sex + \\lambda_k u

* a **claims** control (currency units, capped): any claim with probability
  ``expit(η_k)``, amount lognormal with mean ``m_k exp(0.3 (η_k − a_k))`` and log-sd 0.8;
* a **diagnosis** control (0/1): ``expit(η_k)``.

``u`` is never a column of the data. In every process it moves the negative controls (outcome
noise shared across them); only ``unmeasured_confounding`` (:mod:`shared.synth.dgp`) also lets
it drive uptake and the routine claims and absence of the real outcomes, which makes it an
unmeasured confounder that no propensity model on the 16 features can remove.

Draws come from their own generator (``spawn_key + (1,)``), never from the site's: the
existing columns of every site stay bit-identical for every seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.study import Outcome

__all__ = ["NEGATIVE_CONTROLS", "NEGATIVE_CONTROL_NAMES", "NegativeControl", "draw_negative_controls"]


@dataclass(frozen=True)
class NegativeControl:
    """One negative control: its public cap and the coefficients of its predictor (above)."""

    name: str
    kind: str  # "claims" (currency units) or "diagnosis" (0/1)
    base: float  # a_k: logit of a claim / diagnosis at the reference person
    age: float
    bmi: float
    diabetes: float
    smoker: float
    male: float
    care: float  # λ_k: loading on the latent care-seeking u
    mean_cost: float = 0.0  # m_k (claims)
    cap: float = 1.0  # public cap (claims); diagnoses are 0/1

    @property
    def outcome(self) -> Outcome:
        if self.kind == "diagnosis":
            return Outcome(name=self.name, cap=1.0, kind="binary")
        return Outcome(name=self.name, cap=self.cap)


_C, _D = "claims", "diagnosis"
#: Scales every control's care-seeking loading λ_k (0.35–0.7 in the table): with 0.6 a unit of
#: ``u`` moves a control's log mean by ≈ 0.25–0.5, as it moves the real claims' under
#: ``unmeasured_confounding`` (routine claims × exp(0.5 u), about two thirds of the mean): the
#: constant-systematic-error assumption of the calibration holds roughly, not by construction.
CARE_SCALE = 0.6
#: 24 controls: 14 claim categories and 10 diagnoses, none on the programme's causal path
#: (no cardiovascular, metabolic, musculoskeletal, mental-health or sleep category: coaching on
#: diet and activity could move those).
_TABLE: tuple[NegativeControl, ...] = (
    NegativeControl("nc_dental_claims", _C, 0.3, 0.2, 0.0, 0.2, 0.4, -0.1, 0.45, 450.0, 10_000.0),
    NegativeControl("nc_eyecare_claims", _C, -0.4, 0.6, 0.0, 0.5, 0.0, -0.1, 0.40, 250.0, 5_000.0),
    NegativeControl("nc_hearing_claims", _C, -2.5, 0.9, 0.0, 0.1, 0.1, 0.3, 0.50, 900.0, 10_000.0),
    NegativeControl("nc_dermatology_claims", _C, -1.6, 0.3, 0.2, 0.2, 0.1, -0.2, 0.55, 300.0, 5_000.0),
    NegativeControl("nc_allergy_claims", _C, -1.8, -0.3, 0.1, 0.0, 0.1, -0.1, 0.60, 220.0, 5_000.0),
    NegativeControl("nc_ent_claims", _C, -1.5, 0.1, 0.1, 0.1, 0.3, 0.0, 0.50, 280.0, 5_000.0),
    NegativeControl("nc_urology_claims", _C, -2.2, 0.8, 0.1, 0.3, 0.1, 0.5, 0.45, 600.0, 20_000.0),
    NegativeControl("nc_cataract_claims", _C, -3.5, 1.4, 0.0, 0.6, 0.3, 0.0, 0.35, 2_500.0, 10_000.0),
    NegativeControl("nc_travel_vaccine_claims", _C, -2.0, -0.2, -0.1, 0.0, 0.0, 0.0, 0.70, 150.0, 2_000.0),
    NegativeControl("nc_podiatry_claims", _C, -2.4, 0.7, 0.3, 0.8, 0.1, 0.0, 0.40, 200.0, 3_000.0),
    NegativeControl("nc_thyroid_lab_claims", _C, -1.9, 0.4, 0.2, 0.3, 0.0, -0.6, 0.55, 120.0, 2_000.0),
    NegativeControl("nc_orthodontic_claims", _C, -2.8, -0.6, 0.0, 0.0, 0.0, -0.1, 0.45, 1_800.0, 10_000.0),
    NegativeControl("nc_denture_claims", _C, -3.0, 1.0, 0.0, 0.3, 0.5, 0.1, 0.40, 1_500.0, 15_000.0),
    NegativeControl("nc_cervical_screen_claims", _C, -0.8, 0.1, 0.1, 0.0, 0.0, -2.5, 0.65, 160.0, 2_000.0),
    NegativeControl("nc_ingrown_nail", _D, -3.2, 0.1, 0.3, 0.4, 0.0, 0.2, 0.50),
    NegativeControl("nc_otitis_externa", _D, -3.4, -0.2, 0.1, 0.2, 0.1, 0.0, 0.55),
    NegativeControl("nc_conjunctivitis", _D, -3.0, -0.1, 0.0, 0.1, 0.2, -0.1, 0.60),
    NegativeControl("nc_contact_dermatitis", _D, -3.3, 0.0, 0.1, 0.1, 0.1, -0.2, 0.50),
    NegativeControl("nc_warts", _D, -3.6, -0.5, 0.1, 0.2, 0.0, 0.0, 0.45),
    NegativeControl("nc_allergic_rhinitis", _D, -2.6, -0.3, 0.1, 0.0, 0.2, -0.1, 0.55),
    NegativeControl("nc_tinea_pedis", _D, -3.1, 0.3, 0.4, 0.6, 0.1, 0.4, 0.40),
    NegativeControl("nc_herpes_zoster", _D, -4.0, 0.9, 0.0, 0.3, 0.1, -0.2, 0.35),
    NegativeControl("nc_cerumen_impaction", _D, -3.5, 0.8, 0.1, 0.1, 0.0, 0.3, 0.45),
    NegativeControl("nc_dental_caries", _D, -2.2, -0.2, 0.1, 0.3, 0.5, 0.1, 0.50),
)

#: The negative controls as study outcomes with their public caps, in column order.
NEGATIVE_CONTROLS: tuple[Outcome, ...] = tuple(nc.outcome for nc in _TABLE)
NEGATIVE_CONTROL_NAMES: tuple[str, ...] = tuple(o.name for o in NEGATIVE_CONTROLS)


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def draw_negative_controls(
    rng: np.random.Generator, *, features: dict[str, np.ndarray], care: np.ndarray
) -> dict[str, np.ndarray]:
    """Every negative control for one site's people (the same value in both arms).

    Args:
        rng: the site's negative-control generator (not the site's own: see the module).
        features: the 16 feature arrays.
        care: the latent care-seeking ``u`` per person.

    Returns:
        One array per control: claims rounded to cents and clipped to the public cap,
        diagnoses 0/1.
    """
    n = len(care)
    age = (features["age"] - 50.0) / 15.0
    bmi = (features["bmi"] - 26.0) / 5.0
    out: dict[str, np.ndarray] = {}
    for nc in _TABLE:
        shift = (
            nc.age * age
            + nc.bmi * bmi
            + nc.diabetes * features["diabetes"]
            + nc.smoker * features["smoker"]
            + nc.male * features["sex"]
            + CARE_SCALE * nc.care * care
        )
        any_claim = rng.random(n) < _expit(nc.base + shift)
        if nc.kind == "diagnosis":
            out[nc.name] = any_claim.astype(np.int64)
            continue
        log_sd = 0.8
        noise = log_sd * rng.standard_normal(n)
        amount = np.exp(np.log(nc.mean_cost) - 0.5 * log_sd**2 + 0.3 * shift + noise)
        out[nc.name] = np.round(np.minimum(any_claim * amount, nc.cap), 2)
    return out
