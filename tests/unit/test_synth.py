"""The synthetic federation: determinism, plausible and bounded features, real confounding, and
a ground truth that equals the mean of the simulated potential-outcome differences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from coordinator.files import load_spec
from coordinator.synth import write_federation
from shared.errors import SpecError
from shared.features import FEATURE_NAMES, FEATURES, check_bounds
from shared.schemas import InterventionEvent, OutcomeRecord, Person
from shared.synth import generate_cohort, generate_federation
from shared.synth.hazard import HIGH_RISK
from shared.synth.negative_controls import NEGATIVE_CONTROL_NAMES
from shared.synth.outcomes import OUTCOMES
from shared.synth.records import INDEX_WINDOW_DAYS, TREATMENT_CODE
from shared.synth.sites import PROFILES, site_size
from shared.synth.uptake import PROPENSITY_RANGE

SEED = 11
SCALE = 0.1  # ~10k people: fast, yet large enough for stable marginals


@pytest.fixture(scope="module")
def fed():
    return generate_federation(seed=SEED, scale=SCALE)


@pytest.fixture(scope="module")
def pooled(fed) -> pd.DataFrame:
    return pd.concat([s.cohort for s in fed.sites], ignore_index=True)


@pytest.fixture(scope="module")
def potential(fed) -> pd.DataFrame:
    return pd.concat([s.potential for s in fed.sites], ignore_index=True)


# --- determinism -------------------------------------------------------------------------


def test_same_seed_gives_equal_tables_and_truth(fed):
    again = generate_federation(seed=SEED, scale=SCALE)
    assert again.truth == fed.truth
    for a, b in zip(fed.sites, again.sites):
        for table in ("persons", "interventions", "outcomes", "cohort", "potential"):
            pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table))


def test_other_seed_gives_other_data(fed):
    other = generate_federation(seed=SEED + 1, sites=1, scale=SCALE)
    assert not other.sites[0].cohort.equals(fed.sites[0].cohort)


def test_a_site_does_not_change_when_sites_are_added():
    two = generate_federation(seed=SEED, sites=2, scale=0.02)
    five = generate_federation(seed=SEED, sites=5, scale=0.02)
    for a, b in zip(two.sites, five.sites[:2]):
        pd.testing.assert_frame_equal(a.cohort, b.cohort)
        pd.testing.assert_frame_equal(a.interventions, b.interventions)
    assert two.truth["sites"]["insurer_large"] == five.truth["sites"]["insurer_large"]


def test_generate_cohort_equals_the_federation_site(fed):
    site = fed.sites[1]
    cohort, truth = generate_cohort(n=len(site.cohort), seed=SEED, profile=site.name)
    pd.testing.assert_frame_equal(cohort, site.cohort)
    assert truth["att"] == fed.truth["sites"][site.name]["att"]
    assert truth["seed"] == SEED


def test_generate_cohort_truth_follows_the_study_caps(fed):
    """A large-loss cap changes the estimand: the capped truth is the mean capped difference."""
    site = fed.sites[1]
    capped = tuple(o.model_copy(update={"cap": 25_000.0}) if o.name == "claims_cost" else o for o in OUTCOMES)
    _, truth = generate_cohort(n=len(site.cohort), seed=SEED, profile=site.name, outcomes=capped)
    p = site.potential[site.potential["treated"] == 1]
    want = float(np.mean(np.clip(p["y1_claims_cost"], 0, 25_000) - np.clip(p["y0_claims_cost"], 0, 25_000)))
    assert truth["att_capped"]["claims_cost"] == pytest.approx(want, rel=1e-12)
    assert truth["att_capped"]["claims_cost"] != fed.truth["sites"][site.name]["att_capped"]["claims_cost"]
    assert truth["att_capped"]["cv_event"] == fed.truth["sites"][site.name]["att_capped"]["cv_event"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_written_files_are_byte_identical_for_equal_seeds(tmp_path, fmt):
    paths = []
    for run in ("a", "b"):
        write_federation(generate_federation(seed=5, sites=4, scale=0.01), tmp_path / run, fmt)
        paths.append(
            sorted(p.relative_to(tmp_path / run) for p in (tmp_path / run).rglob("*") if p.is_file())
        )
    assert paths[0] == paths[1] and len(paths[0]) == 4 * 4 + 2
    for rel in paths[0]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


# --- features ----------------------------------------------------------------------------


def test_every_feature_lies_within_its_public_bounds(pooled):
    check_bounds(pooled[list(FEATURE_NAMES)].to_numpy(dtype=float), FEATURES)  # raises if not
    for f in FEATURES:
        if f.kind == "binary":
            assert set(pooled[f.name].unique()) <= {0, 1}, f.name


def test_marginals_are_clinically_plausible(pooled, potential):
    m = pooled[list(FEATURE_NAMES)].mean()
    assert 35 <= m["age"] <= 55
    assert 115 <= m["sbp"] <= 140 and 65 <= m["dbp"] <= 85
    assert 0.10 <= m["smoker"] <= 0.35
    assert 0.03 <= m["diabetes"] <= 0.15
    assert 0.05 <= m["bp_treated"] <= 0.30
    assert 0.40 <= m["sex"] <= 0.65
    assert 24 <= m["bmi"] <= 29 and 80 <= m["waist"] <= 100
    assert 4.5 <= m["total_chol"] <= 6.0 and 2.5 <= m["ldl"] <= 4.0 and 1.1 <= m["hdl"] <= 1.7
    assert 0.8 <= m["triglycerides"] <= 2.2 and 4.8 <= m["glucose"] <= 6.2
    assert 8 <= m["physical_activity"] <= 35
    risk = potential["baseline_risk"].to_numpy()
    high = risk >= HIGH_RISK
    assert 0.02 <= potential["y0_cv_event"].mean() <= 0.05
    assert 0.10 <= potential["y0_cv_event"][high].mean() <= 0.20  # seeds: ≈15 %/yr
    assert 0.02 <= high.mean() <= 0.20


def test_features_are_correlated_as_in_real_populations(pooled):
    c = pooled.corr(numeric_only=True)
    assert c.loc["bmi", "waist"] > 0.8
    assert c.loc["age", "sbp"] > 0.25
    assert c.loc["sbp", "dbp"] > 0.5
    assert c.loc["bmi", "hdl"] < -0.1 and c.loc["bmi", "triglycerides"] > 0.2
    assert (
        pooled.loc[pooled.diabetes == 1, "glucose"].mean()
        > 7.0
        > pooled.loc[pooled.diabetes == 0, "glucose"].mean()
    )
    assert (pooled["dbp"] < pooled["sbp"]).all()


def test_ldl_is_friedewald_consistent(pooled):
    gap = pooled.total_chol - (pooled.ldl + pooled.hdl + pooled.triglycerides / 2.2)
    clipped = (pooled.ldl == 0.5) | (pooled.total_chol == 12)
    assert (gap[~clipped].abs() <= 0.011).all()
    assert clipped.mean() < 0.01


# --- confounding and truth ---------------------------------------------------------------


def test_uptake_has_overlap_and_passes_the_size_gate(fed, potential):
    pi = potential["propensity"]
    assert pi.min() >= PROPENSITY_RANGE[0] and pi.max() <= PROPENSITY_RANGE[1]
    for t in (fed.truth["pooled"], fed.truth["sites"]["insurer_large"]):
        assert 0.10 <= t["uptake"] <= 0.30
        assert t["n_treated"] >= 100 and t["n"] - t["n_treated"] >= 3 * t["n_treated"]


def test_uptake_is_confounded_by_risk_so_the_naive_difference_is_biased(fed, pooled, potential):
    t = pooled["treated"] == 1
    risk = potential["baseline_risk"]
    assert risk[t].mean() > 1.5 * risk[~t].mean()
    att = fed.truth["pooled"]["att"]
    for name, margin in (("claims_cost", 500.0), ("cv_event", 0.01)):
        naive = pooled.loc[t, name].mean() - pooled.loc[~t, name].mean()
        assert naive == pytest.approx(fed.truth["pooled"]["naive_difference"][name])
        assert att[name] < 0 < naive  # the programme helps, yet the treated look worse
        assert naive - att[name] > margin, name


def test_uptake_differs_by_site_and_department(fed):
    uptake = [t["uptake"] for t in fed.truth["sites"].values() if t["n"] >= 1000]
    assert max(uptake) - min(uptake) > 0.05
    # company_logistics pushes the programme in the office, not among drivers (who are at
    # higher risk): a large draw of its profile shows the department effect beyond noise
    c, _ = generate_cohort(n=20_000, seed=SEED, profile="company_logistics")
    by_dept = c.groupby("department")["treated"].mean()
    assert by_dept["office"] > by_dept["transport"] + 0.05


def test_true_att_is_the_mean_of_potential_outcome_differences(fed):
    for site in fed.sites:
        p, truth = site.potential, fed.truth["sites"][site.name]
        t = p["treated"].to_numpy() == 1
        assert (site.cohort["treated"].to_numpy() == p["treated"].to_numpy()).all()
        for o in OUTCOMES:
            y0, y1 = p[f"y0_{o.name}"].to_numpy(), p[f"y1_{o.name}"].to_numpy()
            observed = site.cohort[o.name].to_numpy()
            assert (observed == np.where(t, y1, y0)).all()  # consistency
            if t.any():
                assert truth["att"][o.name] == pytest.approx((y1[t] - y0[t]).mean(), abs=1e-9)
                capped = np.clip(y1[t], o.lo, o.cap) - np.clip(y0[t], o.lo, o.cap)
                assert truth["att_capped"][o.name] == pytest.approx(capped.mean(), abs=1e-9)
            else:
                assert truth["att"][o.name] is None


def test_pooled_truth_is_over_all_treated_people(fed, potential):
    t = potential["treated"] == 1
    for o in OUTCOMES:
        diff = potential[f"y1_{o.name}"] - potential[f"y0_{o.name}"]
        assert fed.truth["pooled"]["att"][o.name] == pytest.approx(diff[t].mean(), abs=1e-9)
    assert fed.truth["pooled"]["n_treated"] == int(t.sum())


@pytest.fixture(scope="module")
def full():
    """The default federation at full size (~100k people; heavy-tailed claims need them)."""
    return generate_federation(seed=SEED)


def test_effects_match_the_seeds(full, potential):
    pooled = full.truth["pooled"]
    assert -0.25 <= pooled["att_relative_high_risk"]["claims_cost"] <= -0.18
    assert -2.1 <= pooled["att"]["absence_days"] <= -1.5  # seeds: ≈1.8 fewer days
    assert pooled["att"]["cv_event"] < 0
    for o in OUTCOMES:  # common random numbers: the programme never makes a person worse
        assert (potential[f"y1_{o.name}"] <= potential[f"y0_{o.name}"]).all()


def test_capped_and_raw_truth_differ_only_where_claims_exceed_the_cap(fed, potential):
    cap = {o.name: o.cap for o in OUTCOMES}
    above = (potential["y0_claims_cost"] > cap["claims_cost"]).mean()
    assert above < 0.005
    pooled = fed.truth["pooled"]
    assert pooled["att_capped"]["cv_event"] == pooled["att"]["cv_event"]
    assert pooled["att_capped"]["claims_cost"] == pytest.approx(pooled["att"]["claims_cost"], rel=0.05)


# --- sites and records -------------------------------------------------------------------


def test_site_profiles_span_a_large_insurer_mid_insurers_and_small_companies():
    sizes = {p.name: site_size(p, 1.0) for p in PROFILES}
    assert PROFILES[0].name == "insurer_large" and sizes["insurer_large"] >= 50_000
    assert sum(1 for p in PROFILES if p.kind == "insurer" and 5_000 <= sizes[p.name] < 50_000) >= 2
    companies = [p for p in PROFILES if p.kind == "company"]
    assert len(companies) >= 3
    for p in companies:
        cohort, _ = generate_cohort(n=sizes[p.name], seed=SEED, profile=p.name)
        assert len(cohort) < 500
        assert cohort["department"].nunique() >= 2 and cohort["job_type"].nunique() >= 3


def test_full_size_federation_has_a_large_insurer_and_about_100k_people(full):
    assert len(full.sites[0].cohort) >= 50_000
    assert 90_000 <= full.truth["pooled"]["n"] <= 110_000
    large = full.truth["sites"]["insurer_large"]
    assert large["n_treated"] >= 100 and large["n"] - large["n_treated"] >= 3 * large["n_treated"]


def test_sites_differ_in_case_mix(fed):
    means = pd.DataFrame({s.name: s.cohort[["age", "sex", "smoker"]].mean() for s in fed.sites})
    assert means.loc["age"].max() - means.loc["age"].min() > 5
    assert means.loc["sex"].max() - means.loc["sex"].min() > 0.2


def test_record_tables_validate_against_the_schemas(fed):
    site = fed.sites[0]
    for row in site.persons.head(300).to_dict("records"):
        row["index_date"] = row["index_date"].date()
        Person.model_validate(row)
    for row in site.interventions.head(300).to_dict("records"):
        row["start"] = row["start"].date()
        row["end"] = None if pd.isna(row["end"]) else row["end"].date()
        InterventionEvent.model_validate(row)
    for row in site.outcomes.head(300).to_dict("records"):
        row["period_start"], row["period_end"] = row["period_start"].date(), row["period_end"].date()
        OutcomeRecord.model_validate(row)


def test_trajectory_log_defines_the_cohort_treatment(fed):
    older = 0
    for site in fed.sites:
        ev = site.interventions.merge(site.persons[["person_id", "index_date"]], on="person_id")
        lag = (ev["start"] - ev["index_date"]).dt.days
        in_window = ev[(ev["code"] == TREATMENT_CODE) & (lag >= 0) & (lag <= INDEX_WINDOW_DAYS)]
        derived = site.cohort["person_id"].isin(in_window["person_id"]).astype(int)
        assert (derived.to_numpy() == site.cohort["treated"].to_numpy()).all()
        older += (ev["code"] == TREATMENT_CODE).sum() - len(in_window)
    assert older > 0  # coaching that ended before the index date: those people are controls


def test_outcome_records_and_person_ids(fed):
    site = fed.sites[0]
    assert site.outcomes["person_id"].tolist() == site.cohort["person_id"].tolist()
    assert site.cohort["person_id"].str.fullmatch(r"A-\d{6}").all()
    assert (site.outcomes["period_end"] > site.outcomes["period_start"]).all()
    assert not any(c.startswith(("y0_", "y1_")) for c in site.cohort.columns)
    expected = [
        "person_id",
        "site",
        "department",
        "job_type",
        *FEATURE_NAMES,
        "treated",
        *(o.name for o in OUTCOMES),
        *NEGATIVE_CONTROL_NAMES,
    ]
    assert site.cohort.columns.tolist() == expected
    # the outcome records keep the three outcomes: a study reads the cohort
    assert not set(NEGATIVE_CONTROL_NAMES) & set(site.outcomes.columns)


# --- files and CLI -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_study_toml_loads_and_points_at_the_cohort_files(tmp_path, fmt):
    fed = generate_federation(seed=3, sites=3, scale=0.01)
    study = write_federation(fed, tmp_path, fmt)
    spec = load_spec(study)
    assert spec.study.seed == 3 and spec.treatment.intervention == TREATMENT_CODE
    assert [c.name for c in spec.covariates] == list(FEATURE_NAMES)
    assert {o.name: o.cap for o in spec.outcomes} == {o.name: o.cap for o in OUTCOMES}
    assert spec.privacy.enabled and spec.privacy.epsilon == 1.0  # DP unless exact is asked for
    for site, s in zip(spec.sites, fed.sites):
        read = pd.read_csv if fmt == "csv" else pd.read_parquet
        df = read(site.data)
        assert len(df) == len(s.cohort)
        assert np.allclose(df["claims_cost"], s.cohort["claims_cost"])
        for table in ("persons", "interventions", "outcomes"):
            assert (tmp_path / site.name / f"{table}.{fmt}").is_file()
    assert json.loads((tmp_path / "truth.json").read_text()) == json.loads(json.dumps(fed.truth))


def test_tiny_sites_without_treated_people_give_null_not_nan(tmp_path):
    fed = generate_federation(seed=2, scale=0.0001)  # 20 people per site
    empty = [t for t in fed.truth["sites"].values() if t["n_treated"] == 0]
    assert empty, "expected a site without treated people at this size"
    assert all(v is None for t in empty for v in t["att"].values())
    json.dumps(fed.truth, allow_nan=False)  # raises on NaN or inf
    write_federation(fed, tmp_path)


def test_bad_arguments_raise_typed_errors(tmp_path):
    with pytest.raises(SpecError, match="sites"):
        generate_federation(seed=1, sites=0)
    with pytest.raises(SpecError, match="sites"):
        generate_federation(seed=1, sites=len(PROFILES) + 1)
    with pytest.raises(SpecError, match="scale"):
        generate_federation(seed=1, scale=0)
    with pytest.raises(SpecError, match="profile"):
        generate_cohort(n=10, seed=1, profile="nowhere")
    with pytest.raises(SpecError, match="format"):
        write_federation(generate_federation(seed=1, sites=1, scale=0.001), tmp_path, "xlsx")


@pytest.fixture(scope="module")
def root_app():
    from coordinator.cli import root as cli

    if not any(g.name == "synth" for g in cli.app.registered_groups):
        cli._mount_groups()
    return cli.app


def test_rehealth_synth_writes_the_federation_and_prints_the_truth(root_app, tmp_path):
    out = tmp_path / "d"
    res = CliRunner().invoke(
        root_app, ["synth", "--sites", "3", "--out", str(out), "--seed", "4", "--scale", "0.01"]
    )
    assert res.exit_code == 0, res.output
    assert "pooled" in res.output and "insurer_mid_2" in res.output
    truth = json.loads((out / "truth.json").read_text())
    assert truth["seed"] == 4 and list(truth["sites"]) == [p.name for p in PROFILES[:3]]
    assert f"{truth['pooled']['att']['claims_cost']:,.0f}" in res.output
    spec = load_spec(out / "study.toml")
    assert all(Path(s.data).is_file() for s in spec.sites)


def test_rehealth_synth_rejects_an_unknown_format(root_app, tmp_path):
    res = CliRunner().invoke(root_app, ["synth", "--out", str(tmp_path), "--format", "xlsx"])
    assert res.exit_code != 0
    assert not (tmp_path / "study.toml").exists()
