"""Red-team attacks on what a node's *failure* tells a curious coordinator (session 17).

A node's DP answer is charged before the data are read, but the charge pays for the noisy
release only: whether the node answers at all must not depend on any row (deploy/TRUST.md,
step 5), or each query also carries an exact, un-noised bit. These tests look for queries
whose reply (answer or error) differs between two data sets, or for a threshold in one data
set, with every query signed by the operator's key (the attacker holds it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
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


def test_b_a_secure_sum_input_is_never_refused_for_what_the_rows_hold(tmp_path, synth):
    """Under secure aggregation a node adds only σ/√K of the noise: its own input must never be
    seen, only the masked sum. The attack: the coordinator chooses the round's public
    ``secure_scale`` (unsigned) so that SecAgg+'s range ends between two counts. Before, the
    node refused in the clear (code 4003) when its own noisy share left the range — a
    threshold on an answer carrying K times less noise variance than the charge assumes,
    uncharged beyond it. Shown with 40 added controls, so the bit is certain at ε = 1; one
    person moves it with probability set by σ/√K, not σ. Now the node clips its share to the
    range (what SecAgg+ itself would do) and answers either way; its log says so, without
    a value. What remains (deploy/TRUST.md, open item 3): the masked sum of clipped shares is
    still a function of each share, bounded by what releasing the shares would cost."""
    from node.runtime import NodeRuntime
    from protos.codec import encode_secure_input
    from shared.protocol import Reserve
    from shared.secure_sum import CLIP

    fed = make_federation(tmp_path / "sa", synth=synth, extra={"secure-aggregation": True})
    spec = fed.spec.model_copy(
        update={"privacy": fed.spec.privacy.model_copy(update={"secure_aggregation": True})}
    )
    node = fed.node(0)
    runtime = NodeRuntime.from_node_config(node.config)
    path = fed.data_path(node.site)
    rows = read_cohort(path)
    arm = int(rows["treated"].mean() > 0.5)  # the larger arm's count is the largest entry
    n_arm = int((rows["treated"] == arm).sum())
    scale = (n_arm + 20) / CLIP  # the range ends 20 people above this arm's count
    beta = (0.0,) * (len(spec.covariates) + 1)
    outcomes = []
    for added in (0, 40):
        if added:
            rows = pd.concat([rows, rows[rows["treated"] == arm].head(added)])
            rows.to_csv(path, index=False)
        q = fed.sign(fed.query((PsmStats(beta=beta, edges=(-np.inf, np.inf)),), spec=spec))
        node.ask(q.model_copy(update={"ops": (Reserve(),)}), reserve=False)
        secure = q.model_copy(
            update={
                "secure_scale": scale,
                "privacy": q.privacy.model_copy(update={"secure_nodes": len(fed.nodes)}),
            }
        )
        try:
            answers, meta, _ = runtime.respond(secure, secure_sum=True)
            vec, _ = encode_secure_input(answers, meta, scale=scale)
            outcomes.append(("input", bool(np.all(np.abs(vec) <= CLIP))))
        except Exception as e:  # noqa: BLE001 - what the coordinator would see as an error reply
            outcomes.append((type(e).__name__, False))
    assert outcomes == [("input", True), ("input", True)], outcomes


def test_c_the_psm_checks_name_row_and_field_never_the_value():
    """The node logs a DataError's text (and its log may be shipped off the host): the PSM
    checks quoted the offending treatment, outcome or logit score (a linear function of the
    row's covariates). Unreachable through a node since the score-span bound and the clipping,
    but one refactor away: each now names row and field only, as shared.features does."""
    from shared.errors import DataError
    from shared.psm._checks import check_t, check_unit_outcomes
    from shared.psm.strata import stratum_index

    canary = 0.7316429
    for check in (
        lambda: check_t(np.array([0.0, canary]), n=2),
        lambda: check_unit_outcomes(np.array([[0.5], [1 + canary]]), n=2),
        lambda: stratum_index(np.array([0.1, 5 + canary]), np.array([-1.0, 0.0, 1.0])),
    ):
        with pytest.raises(DataError) as e:
            check()
        assert "row 1" in str(e.value) and "7316" not in str(e.value), str(e.value)


@pytest.mark.parametrize("estimator", ["stratified", "dr"])
def test_d_a_plan_cached_by_other_code_is_not_used(tmp_path, synth, estimator, caplog):
    """A node caches each study's noise plan in its state folder, keyed by the study's privacy
    terms and dimensions, not by the code that derived it. The attack needs no attacker: a node
    upgraded to a release that corrects a Δ (this session's cap_hist fix counted the negative
    controls, with the protocol unchanged) kept its plans and released at the old Δ. Shown by
    writing into the cache what older code would have (every Δ halved, or one share moved):
    before, the node used it; now it re-derives the plan and logs it."""
    import json
    import logging

    from node.runtime import NodeRuntime

    fed = make_federation(tmp_path / "p", synth=synth)
    spec = fed.spec.model_copy(update={"estimator": estimator})
    if estimator == "dr":
        spec = spec.model_copy(update={"privacy": spec.privacy.model_copy(update={"large_loss_cap": True})})
    q = fed.query((Describe(),), spec=spec)
    runtime = NodeRuntime.from_node_config(fed.node(0).config)
    honest = runtime._plan(q)
    assert runtime._plan(q) == honest  # served from the cache
    (cached,) = (runtime.state_dir / "plans").glob("*.json")
    for tamper in ("halve every Δ", "move a share"):
        old = json.loads(cached.read_text())
        for r in old["releases"]:
            if tamper == "halve every Δ":
                r["sensitivity"] /= 2
            elif r["query"] == "psm_main":
                r["noise_multiplier"] /= 1.5
        cached.write_text(json.dumps(old))
        caplog.set_level(logging.WARNING, logger="rehealth.node")
        assert runtime._plan(q) == honest, tamper
        assert any("not this code's" in m.getMessage() for m in caplog.records)
        assert runtime._plan(q) == honest


def test_e_caps_either_side_of_the_largest_claim_are_answered_alike(dp):
    """Caps chosen by a curious coordinator to isolate the costliest member: the two public
    edges just below and just above the site's largest claim. The node must answer both the
    same way (no check on a value), charging the same; each answer is DP at its own span
    (its Δ: tests/security/test_release_sensitivity.py, "caps")."""
    from shared.dp.capquantile import cap_bins

    node = dp.node(0)
    spec = dp.spec.model_copy(update={"privacy": dp.spec.privacy.model_copy(update={"large_loss_cap": True})})
    truth = prepare_arrays(read_cohort(dp.data_path(node.site)), dp.query((Describe(),), spec=spec))
    names = [o.name for o in spec.analysed_outcomes]
    top = float(truth.y[:, names.index("claims_cost")].max())  # on the signed [0, 1] span
    edges = cap_bins()[1:]
    k = int(np.searchsorted(edges, top))
    assert 0 < k < edges.size and edges[k - 1] < top <= edges[k]
    beta = (0.0,) * (len(spec.covariates) + 1)
    seen = []
    for c01 in (edges[k - 1], edges[k]):  # the largest claim clipped / not clipped
        caps = tuple(
            o.lo + c01 * (o.cap - o.lo) if o.name == "claims_cost" else o.cap for o in spec.analysed_outcomes
        )
        q = dp.sign(dp.query((PsmStats(beta=beta, edges=(-np.inf, 0.0, np.inf)),), spec=spec))
        q = q.model_copy(update={"privacy": q.privacy.model_copy(update={"caps": caps})})
        r = node.ask(q)
        seen.append((r.code, sorted(r.answers), r.meta.get("epsilon_study")))
    assert seen[0] == seen[1] and seen[0][0] is None, seen


def test_f_a_dr_answers_work_does_not_grow_with_the_strata_its_controls_occupy():
    """The attack: a DR study's psm_stats with 50,000 fine edges. The node computed the
    controls' cross-products stratum by stratum, one product and one D × D block per stratum
    that holds a control, so its time (reported to the coordinator as the reply's ``seconds``,
    and seen in any round trip) and memory grew with how many strata its controls occupy — a
    statistic of the rows the DP noise never covered, and one stratum's worth per person in a
    bin. Measured on 3,000 controls (best of 3): 0.017 s when they share a stratum, 0.48 s
    spread out; now 0.003 s and 0.023 s. Under DP the release sums over strata anyway; it is
    now computed pooled."""
    import time

    from shared.answer import SiteArrays, answer
    from shared.protocol import PrivacyQuery, StudyQuery
    from shared.study import BudgetSplit, Covariate, Outcome

    rng = np.random.default_rng(5)
    covs = tuple(Covariate(name=f"x{i}", lo=0, hi=1) for i in range(8))
    q = StudyQuery(
        study_id="redteam-strata-timing",
        treatment_column="treated",
        covariates=covs,
        outcomes=(Outcome(name="y", cap=1.0),),
        ops=(
            PsmStats(
                beta=(0.0, 1.0) + (0.0,) * 7, edges=(-np.inf, *np.linspace(0, 1, 19_999), np.inf), slope=True
            ),
        ),
        privacy=PrivacyQuery(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_ps_rounds=2, estimator="dr"),
    )
    n = 3_000
    z = rng.uniform(size=(n, 8))
    together = SiteArrays(
        z=np.column_stack([np.full(n, 0.5), z[:, 1:]]), t=np.zeros(n), y=rng.uniform(size=(n, 1))
    )
    spread = SiteArrays(z=z, t=np.zeros(n), y=together.y)

    def seconds(data) -> float:
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            answer(q, data)
            best = min(best, time.perf_counter() - t0)
        return best

    t_together, t_spread = seconds(together), seconds(spread)
    assert t_spread < 3 * t_together + 0.15, (t_together, t_spread)


def test_g_a_weighted_sum_cannot_overflow_on_what_the_controls_hold(dp):
    """The attack: psm_wsum counts (control 1, treated x) give every control the weight −x,
    and with centres 0 the controls' sum is −x·Σy. At x = DBL_MAX / (0.8·Σy) it overflowed,
    the node refused to add noise to −inf after its charge (code 4003); at DBL_MAX / (1.2·Σy)
    it answered. The threshold is the coordinator's: bisection read the exact Σy of the
    controls (the events among them, for cv_event; in chosen strata, with β and edges), one
    un-noised bit per query. Now counts above 1e10 are refused on the query alone."""
    node = dp.node(0)
    truth = prepare_arrays(read_cohort(dp.data_path(node.site)), dp.query((Describe(),)))
    top = float(truth.y[truth.t == 0].sum(axis=0).max())
    o, d = len(dp.spec.analysed_outcomes), len(dp.spec.covariates)
    seen = []
    for f in (0.8, 1.2):  # the controls' sum past / short of the float maximum
        x = DBL_MAX / (top * f)
        w = PsmWsum(
            beta=(0.0,) * (d + 1),
            edges=(-np.inf, np.inf),
            count=(1.0, x),
            center=(0.0,) * (2 * o),
            max_weight=x,
        )
        r = node.ask(dp.sign(dp.query((w,))))
        seen.append((r.code, r.reason.split(": ")[-1][:40]))
    assert seen[0] == seen[1] and seen[0][0] == CODE_REFUSED, seen
    assert node.releases() == []
