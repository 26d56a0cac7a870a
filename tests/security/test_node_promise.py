"""The data-plane attacks on a node (issue #16, item 7): each test runs one attack and asserts
that it FAILS against a node at its defaults (or at the documented single-owner setting
``allow-exact=true`` where the attack is about exact answers).

The attacker is a curious coordinator holding the operator's signing key (it signs whatever
grant it likes and crafts every message), or a party without that key. It drives the real
ClientApp through the in-process Grid over the node configs the local launcher writes
(:mod:`tests.security.node_kit`) and reads only what a coordinator reads: the reply. The
node's ledger is read only to show what was charged; ground truth (the site's rows) is read only
to count what the attacker recovered.

Before this issue (main at 2107399) attacks 1, 2, 4, 5 and 6 succeeded (same synthetic site:
the exact dump recovered 1300 of 1300 rows in 3 queries; a ``person_id`` covariate and a
non-numeric cell came back in the error text; an age-bound bisection found the oldest person's
age in 8 probes, the refused ones uncharged; a zero-share re-split was answered uncharged;
``secure_nodes`` was never checked against the study's sites).

Open findings at the time of writing (the tests fail on purpose): a missing or undecodable data
file is answered with CODE_INTERNAL, not CODE_DATA (4a; charged first, fixed text either way);
exact answers can still be differenced (1c, xfail: the documented limit of ``allow-exact``).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import pytest
from flower_inprocess import signed_federation

from coordinator.files import load_spec
from coordinator.report.signing import PRIVATE_KEY_NAME, generate_keypair
from coordinator.synth import write_federation
from node.ledger import PrivacyLedger
from node.study_service import prepare_arrays, read_cohort
from shared.driver import run_study
from shared.grant import SignedGrant
from shared.protocol import (
    CODE_BUDGET,
    CODE_DATA,
    CODE_NOT_IN_STUDY,
    CODE_REFUSED,
    CODE_UNAUTHORIZED,
    ERROR_TEXT,
    Describe,
    PsFit,
    PsmStats,
    PsmWsum,
    Reserve,
    StudyQuery,
)
from shared.study import BudgetSplit, Covariate, Outcome, StudyInfo, StudySpec
from shared.synth import generate_federation
from tests.security.node_kit import Federation, Node, make_federation

D = 16  # covariates of the default study
MIN_CELL = 11


@pytest.fixture(scope="module")
def synth():
    return generate_federation(seed=7, sites=2, scale=0.02)


@pytest.fixture
def dp(tmp_path, synth) -> Federation:
    """Two nodes at their defaults (DP only), the operator's DP study (ε = 1)."""
    return make_federation(tmp_path / "dp", synth=synth)


@pytest.fixture
def exact(tmp_path, synth) -> Federation:
    """Two nodes whose operator set ``allow-exact=true`` (one data owner's federation)."""
    return make_federation(tmp_path / "exact", synth=synth, extra={"allow-exact": True})


def exact_spec(fed: Federation) -> StudySpec:
    return fed.spec.model_copy(update={"privacy": fed.spec.privacy.model_copy(update={"enabled": False})})


def random_beta(seed: int, scale: float = 2.0) -> tuple[float, ...]:
    return tuple(float(b) for b in np.random.default_rng(seed).normal(0, scale, D + 1))


def fine_edges(beta, n: int) -> tuple[float, ...]:
    """``n - 1`` inner edges evenly over every score ``beta`` can give on [0, 1]-scaled data."""
    b = np.asarray(beta)
    lo, hi = b[0] + np.minimum(b[1:], 0).sum(), b[0] + np.maximum(b[1:], 0).sum()
    return (-np.inf, *np.linspace(lo, hi, n - 1).tolist(), np.inf)


def true_rows(fed: Federation, site: str, query: StudyQuery):
    """Ground truth only: the site's rows as the node scales them (z, t, y)."""
    return prepare_arrays(read_cohort(fed.data_path(site)), query)


def reconstructed(table: dict, truth) -> int:
    """How many of the site's rows appear exactly (z, t and y) as a one-person cell."""
    rows = set()
    count, sum_z, sum_y = table["count"], table["sum_z"], table["sum_y"]
    for s, arm in zip(*np.nonzero(np.isclose(count, 1.0))):
        hit = np.flatnonzero(
            (truth.t == arm)
            & np.all(np.abs(truth.z - sum_z[s, arm]) < 1e-9, axis=1)
            & np.all(np.abs(truth.y - sum_y[s, arm]) < 1e-9, axis=1)
        )
        rows.update(hit.tolist())
    return len(rows)


def assert_cells_of_at_least_11_or_empty(table: dict) -> None:
    count = table["count"]
    empty = count == 0
    assert np.all(empty | (count >= MIN_CELL)), np.unique(count[~empty])
    for key in ("sum_y", "sumsq_y", "sum_z", "sumsq_z"):
        assert np.all(table[key][empty] == 0), key


def nothing_charged(node, before: int = 0) -> None:
    assert len(node.releases()) == before


# -- 1. exact dump ---------------------------------------------------------------------------
def test_1a_exact_dump_is_refused_by_a_default_node(dp):
    node = dp.node(0)
    beta = random_beta(1)
    q = dp.sign(dp.query((PsmStats(beta=beta, edges=fine_edges(beta, 20_000)),), spec=exact_spec(dp)))
    reply = node.ask(q)
    assert reply.code == CODE_REFUSED and "only differentially private" in reply.reason
    nothing_charged(node)


def test_1b_exact_dump_recovers_no_row_on_an_exact_node(exact):
    """Fine edges, then the cells that held anyone refined again: every released cell holds
    ≥ 11 people or is 0, and not one row of the site is recovered."""
    node = exact.node(0)
    spec = exact_spec(exact)
    beta = random_beta(2)
    truth = true_rows(exact, node.site, exact.query((Describe(),), spec=spec))
    too_fine = node.ask(
        exact.sign(exact.query((PsmStats(beta=beta, edges=fine_edges(beta, 20_000)),), spec=spec))
    )
    assert too_fine.code == CODE_REFUSED and "strata" in too_fine.reason
    edges = np.array(fine_edges(beta, 9_999))
    recovered, queries = 0, 0
    for _ in range(3):  # refine: split every non-empty released cell into finer strata
        reply = node.ask(exact.sign(exact.query((PsmStats(beta=beta, edges=tuple(edges)),), spec=spec)))
        queries += 1
        assert reply.ok, reply.reason
        table = reply.answers["psm_stats"]
        assert_cells_of_at_least_11_or_empty(table)
        recovered += reconstructed(table, truth)
        busy = np.flatnonzero(table["count"].sum(axis=1) > 0)
        finite = np.clip(edges, edges[1], edges[-2])
        inner = (
            np.concatenate(
                [np.linspace(finite[s], finite[s + 1], 9_990 // max(len(busy), 1) + 2) for s in busy]
            )
            if busy.size
            else finite[1:-1]
        )
        edges = np.array([-np.inf, *np.unique(inner[np.isfinite(inner)])[:9_990], np.inf])
    assert truth.n > 100 and queries == 3
    assert recovered == 0


@pytest.mark.xfail(
    strict=True,
    reason="documented limit (node/policy.py max_abs_beta, "
    "deploy/TRUST.md): min_cell bounds differencing of exact answers but does not "
    "prevent it; exact answers are for a coordinator the data owner trusts",
)
def test_1c_exact_answers_do_not_give_a_row_by_differencing_two_strata(exact):
    """The same exact node, two one-edge tables whose lower cells differ by one person (both
    ≥ 11): their difference is that person's row. Found by bisection on the released count."""
    node = exact.node(0)
    spec = exact_spec(exact)
    beta = random_beta(3)
    truth = true_rows(exact, node.site, exact.query((Describe(),), spec=spec))

    def lower(x: float) -> dict:
        reply = node.ask(
            exact.sign(exact.query((PsmStats(beta=beta, edges=(-np.inf, x, np.inf)),), spec=spec))
        )
        assert reply.ok, reply.reason
        return {k: v[0, 0] for k, v in reply.answers["psm_stats"].items() if k != "edges"}

    edges = fine_edges(beta, 3)
    lo, hi = edges[1], edges[-2]
    n_control = int(np.sum(truth.t == 0))
    recovered = 0
    for k in (n_control // 2, n_control // 3):  # the k-th and (k+1)-th control by score
        a, b = lo, hi
        for _ in range(60):
            mid = (a + b) / 2
            c = lower(mid)["count"]
            if c <= k:
                a = mid
            else:
                b = mid
            if lower(a)["count"] == k and lower(b)["count"] == k + 1:
                break
        below, above = lower(a), lower(b)
        z, y = above["sum_z"] - below["sum_z"], above["sum_y"] - below["sum_y"]
        recovered += int(
            np.any(np.all(np.abs(truth.z - z) < 1e-9, axis=1) & np.all(np.abs(truth.y - y) < 1e-9, axis=1))
        )
    assert recovered == 0


# -- 2. caps and columns chosen by the query -------------------------------------------------
def _identifiers(fed: Federation, site: str) -> tuple[list[str], list[str]]:
    df = pd.read_csv(fed.data_path(site))
    return [str(v) for v in df["person_id"]], sorted({str(v) for v in df["department"]})


def _leaks(reason: str, ids: list[str], departments: list[str]) -> list[str]:
    return [i for i in ids if i in reason] + [
        d for d in departments if re.search(rf"\b{re.escape(d)}\b", reason)
    ]


@pytest.mark.parametrize("what", ["cap_1e7", "person_id", "department", "age_bounds"])
def test_2_caps_columns_and_bounds_are_the_nodes_not_the_querys(dp, what):
    node = dp.node(0)
    ids, departments = _identifiers(dp, node.site)
    base = dp.query((Describe(), PsFit(beta=(0.0,) * (D + 1))))
    if what == "cap_1e7":
        outcomes = (base.outcomes[0].model_copy(update={"cap": 1e7}), *base.outcomes[1:])
        q = base.model_copy(update={"outcomes": outcomes})
    elif what == "age_bounds":
        covs = tuple(
            c.model_copy(update={"lo": 40.0, "hi": 41.0}) if c.name == "age" else c for c in base.covariates
        )
        q = base.model_copy(update={"covariates": covs})
    else:
        hi = 1e6 if what == "person_id" else 10.0
        q = base.model_copy(
            update={
                "covariates": (*base.covariates, Covariate(name=what, lo=0, hi=hi)),
                "ops": (Describe(), PsFit(beta=(0.0,) * (D + 2))),
            }
        )
    reply = node.ask(dp.sign(q))
    assert reply.code == CODE_REFUSED and (
        "node's policy" in reply.reason or "node's public" in reply.reason
    ), reply.reason
    assert not _leaks(reply.text(), ids, departments)
    nothing_charged(node)


# -- 3. crafted β ----------------------------------------------------------------------------
def crafted_beta(spec: StudySpec, *, k: float, c: float) -> tuple[float, ...]:
    """β of the logit score K·(age − c) on the node's [0, 1]-scaled age."""
    i = [cov.name for cov in spec.covariates].index("age")
    age = spec.covariates[i]
    beta = np.zeros(D + 1)
    beta[0] = k * (age.lo - c)
    beta[1 + i] = k * (age.hi - age.lo)
    return tuple(beta.tolist())


def test_3a_crafted_beta_on_a_default_node_is_refused_exact_and_charged_under_dp(dp):
    node = dp.node(0)
    beta = crafted_beta(dp.spec, k=1000.0, c=50.0)
    reply = node.ask(dp.sign(dp.query((PsFit(beta=beta),), spec=exact_spec(dp))))
    assert reply.code == CODE_REFUSED and "only differentially private" in reply.reason
    nothing_charged(node)
    q = dp.sign(dp.query((PsFit(beta=beta),)))
    reply = node.ask(q)
    assert reply.ok
    charged = [(r.study_id, r.query) for r in node.releases()]
    assert charged == [(q.study_id, "ps_fit")] and reply.meta["epsilon_spent"] > 0


def test_3b_crafted_beta_is_refused_by_an_exact_node(exact):
    node = exact.node(0)
    spec = exact_spec(exact)
    for op in (
        PsFit(beta=crafted_beta(spec, k=1000.0, c=50.0)),
        PsmStats(beta=crafted_beta(spec, k=1000.0, c=50.0), edges=(-np.inf, 0.0, np.inf)),
    ):
        reply = node.ask(exact.sign(exact.query((op,), spec=spec)))
        assert reply.code == CODE_REFUSED and "|β| above" in reply.reason, reply.reason


# -- 4. free oracles under DP ----------------------------------------------------------------
@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_4a_a_dp_answer_is_charged_before_the_data_are_read(dp, damage):
    node = dp.node(0)
    path = dp.data_path(node.site)
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"\xff\xfe\x00\x81" * 4096)  # not text, not a table
    q = dp.sign(dp.query((Describe(),)))
    reply = node.ask(q)
    assert [(r.study_id, r.query) for r in node.releases()] == [(q.study_id, "describe")]
    assert reply.code == CODE_DATA and reply.reason == f"site {node.site}: {ERROR_TEXT[CODE_DATA]}"


def test_4b_a_value_outside_the_public_bounds_is_clipped_not_an_error(dp):
    node = dp.node(0)
    path = dp.data_path(node.site)
    df = pd.read_csv(path)
    df.loc[3, "age"], df.loc[4, "claims_cost"], df.loc[5, "bmi"] = 500, 9e9, -3
    df.to_csv(path, index=False)
    reply = node.ask(dp.sign(dp.query((Describe(),))))
    assert reply.ok and len(node.releases()) == 1


@pytest.mark.parametrize(
    "resplit",
    [
        BudgetSplit(describe=0.05, ps_fit=0.0, psm_stats=0.9, balance=0.05),  # ps_fit answered free
        BudgetSplit(describe=0.05, ps_fit=0.001, psm_stats=0.899, balance=0.05),  # below the floor
        BudgetSplit(describe=0.05, ps_fit=0.9, psm_stats=0.0, balance=0.05),  # psm_stats free
    ],
)
def test_4c_a_resplit_to_a_zero_or_tiny_share_is_refused_uncharged(dp, resplit):
    node = dp.node(0)
    beta = (0.0,) * (D + 1)
    for op in (PsFit(beta=beta), PsmStats(beta=beta, edges=(-np.inf, 0.0, np.inf))):
        q = dp.sign(dp.query((op,)))
        q = q.model_copy(update={"privacy": q.privacy.model_copy(update={"resplit": resplit})})
        reply = node.ask(q)
        assert reply.code == CODE_REFUSED, (op.op, reply.code, reply.reason)
    nothing_charged(node)


def test_4d_a_signed_split_with_a_tiny_share_is_refused_uncharged(dp):
    """The key holder signs a study whose psm_stats share is 0.1 % of ε: a near-free probe."""
    node = dp.node(0)
    split = BudgetSplit(describe=0.05, ps_fit=0.899, psm_stats=0.001, balance=0.05)
    spec = dp.spec.model_copy(update={"privacy": dp.spec.privacy.model_copy(update={"split": split})})
    beta = (0.0,) * (D + 1)
    reply = node.ask(dp.sign(dp.query((PsmStats(beta=beta, edges=(-np.inf, 0.0, np.inf)),), spec=spec)))
    assert reply.code == CODE_REFUSED and "floor" in reply.reason
    nothing_charged(node)


def _probes(fed: Federation) -> list[StudyQuery]:
    """The old 53-probe attack's shape: the same question with one bound or cap varied."""
    base = fed.query((Describe(), PsFit(beta=(0.0,) * (D + 1))))
    out = []
    for cap in (1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 1e7):
        outcomes = (base.outcomes[0].model_copy(update={"cap": cap}), *base.outcomes[1:])
        out.append(base.model_copy(update={"outcomes": outcomes}))
    for lo, hi in ((18.0, 90.0), (18.0, 60.0), (30.0, 90.0), (18.0, 120.0)):
        covs = tuple(
            c.model_copy(update={"lo": lo, "hi": hi}) if c.name == "age" else c for c in base.covariates
        )
        out.append(base.model_copy(update={"covariates": covs}))
    return out


def test_4e_whether_a_probe_is_answered_does_not_depend_on_one_persons_value(tmp_path, synth):
    """Two nodes whose data differ in one person (claims cost 5e6 above the cap, age 95 above
    its bound): every probe is answered or refused identically, at identical cost."""
    a = make_federation(tmp_path / "a", synth=synth)
    b = make_federation(tmp_path / "b", synth=synth)
    site = a.node(0).site
    path = b.data_path(site)
    df = pd.read_csv(path)
    df.loc[0, "claims_cost"], df.loc[0, "age"] = 5e6, 95
    df.to_csv(path, index=False)
    seen = {}
    for name, fed in (("a", a), ("b", b)):
        outcome = []
        for probe in _probes(fed):
            q = fed.sign(probe)
            r = fed.nodes[site].ask(q)
            outcome.append(
                (
                    r.code,
                    r.reason.replace(q.study_id[:24], "<study>"),
                    round(r.meta.get("epsilon_spent", -1), 12),
                )
            )
        seen[name] = outcome
    assert seen["a"] == seen["b"]
    assert sum(code is None for code, *_ in seen["a"]) == 2  # the policy's cap and bounds
    assert len(a.nodes[site].releases()) == len(b.nodes[site].releases()) == 4


# -- 5. identifiers in error text ------------------------------------------------------------
def test_5a_a_person_id_covariate_is_refused_without_naming_any_value(exact):
    node = exact.node(0)
    ids, departments = _identifiers(exact, node.site)
    base = exact.query((Describe(),), spec=exact_spec(exact))
    q = base.model_copy(update={"covariates": (Covariate(name="person_id", lo=0, hi=1), *base.covariates)})
    reply = node.ask(exact.sign(q))
    assert reply.code == CODE_REFUSED and "'person_id' is not in this node's policy" in reply.reason
    assert not _leaks(reply.reason, ids, departments)


def test_5b_a_non_numeric_cell_is_excluded_and_named_only_in_the_nodes_log(dp, exact, caplog):
    for fed in (dp, exact):
        node = fed.node(0)
        path = fed.data_path(node.site)
        df = pd.read_csv(path, dtype={"age": object})
        df.loc[4, "age"] = "C-000001"
        df.to_csv(path, index=False)
        n = len(df)
    caplog.set_level(logging.WARNING, logger="rehealth.node")
    reply = dp.node(0).ask(dp.sign(dp.query((Describe(),))))
    assert reply.ok and "C-000001" not in reply.text()
    reply = exact.node(0).ask(exact.sign(exact.query((Describe(),), spec=exact_spec(exact))))
    assert reply.ok and "C-000001" not in reply.text()
    assert reply.answers["describe"]["count"].sum() == n - 1  # the row is excluded, not an error
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("rehealth.node")]
    assert any("row 5: age" in m for m in logged), logged
    assert not any("C-000001" in m for m in logged)


# -- 6. secure_nodes inflation ---------------------------------------------------------------
@pytest.mark.parametrize("signed_secure", [False, True])
def test_6_secure_nodes_inflation_is_refused_uncharged(tmp_path, synth, signed_secure):
    fed = make_federation(
        tmp_path / "sa", synth=synth, extra={"secure-aggregation": True} if signed_secure else None
    )
    spec = fed.spec.model_copy(
        update={"privacy": fed.spec.privacy.model_copy(update={"secure_aggregation": signed_secure})}
    )
    node = fed.node(0)
    q = fed.sign(fed.query((PsFit(beta=(0.0,) * (D + 1)),), spec=spec))
    q = q.model_copy(update={"privacy": q.privacy.model_copy(update={"secure_nodes": 10**6})})
    reply = node.ask(q)
    assert reply.code == CODE_REFUSED and "secure_nodes" in reply.reason, reply.reason
    nothing_charged(node)


# -- 7. signed studies -----------------------------------------------------------------------
def _tamper(signed: SignedGrant, old: str, new: str) -> SignedGrant:
    assert old in signed.body
    return signed.model_copy(update={"body": signed.body.replace(old, new, 1)})


def test_7_unsigned_foreign_altered_or_mismatched_grants_get_nothing(tmp_path, synth):
    """The nodes' data file is a sentinel without the study's columns, so a query that got as far
    as reading data is answered with CODE_DATA (the control shows it); every attack stops
    before, uncharged."""
    sentinel = tmp_path / "sentinel.csv"
    sentinel.write_text("x\n1\n")
    fed = make_federation(tmp_path / "g", synth=synth, extra={"data-path": str(sentinel)})
    node = fed.node(0)
    other_sites = tuple(s for s in fed.nodes if s != node.site)
    control = node.ask(fed.sign(fed.query((Describe(),))))
    assert control.code == CODE_DATA and len(node.releases()) == 1
    mallory, _ = generate_keypair(tmp_path / "mallory", passphrase=None)
    assert mallory.name == PRIVATE_KEY_NAME
    base = fed.query((Describe(), PsFit(beta=(0.0,) * (D + 1))))
    genuine = fed.sign(base)
    eps100 = base.privacy.model_copy(update={"epsilon": 100.0})
    wide = tuple(c.model_copy(update={"hi": 1e6}) if c.name == "age" else c for c in base.covariates)
    attacks = {
        "unsigned": (base, CODE_UNAUTHORIZED),
        "other key": (fed.sign(base, key_path=mallory), CODE_UNAUTHORIZED),
        "ε altered after signing": (
            genuine.model_copy(
                update={
                    "grant": _tamper(genuine.grant, '"epsilon":1.0', '"epsilon":100.0'),
                    "privacy": eps100,
                }
            ),
            CODE_UNAUTHORIZED,
        ),
        "cap altered after signing": (
            genuine.model_copy(
                update={
                    "grant": _tamper(genuine.grant, '"cap":100000.0', '"cap":10000000.0'),
                    "outcomes": (base.outcomes[0].model_copy(update={"cap": 1e7}), *base.outcomes[1:]),
                }
            ),
            CODE_UNAUTHORIZED,
        ),
        "ε differs from grant": (genuine.model_copy(update={"privacy": eps100}), CODE_UNAUTHORIZED),
        "bounds differ from grant": (genuine.model_copy(update={"covariates": wide}), CODE_UNAUTHORIZED),
        "sites differ from grant": (genuine.model_copy(update={"sites": (node.site,)}), CODE_UNAUTHORIZED),
        "study id differs from grant": (
            genuine.model_copy(update={"study_id": "another-study-0001"}),
            CODE_UNAUTHORIZED,
        ),
        "grant for other sites": (
            fed.sign(base.model_copy(update={"sites": other_sites})),
            CODE_NOT_IN_STUDY,
        ),
        "grant for other sites, query names this one": (fed.sign(base, sites=other_sites), CODE_NOT_IN_STUDY),
    }
    got = {name: node.ask(q).code for name, (q, _) in attacks.items()}
    assert got == {name: code for name, (_, code) in attacks.items()}
    nothing_charged(node, before=1)


# -- 8. replay -------------------------------------------------------------------------------
def test_8a_a_signed_study_replayed_after_it_ran_gets_nothing(tmp_path, synth):
    spec_path = write_federation(synth, tmp_path / "data")
    spec = load_spec(spec_path)
    spec = spec.model_copy(update={"privacy": spec.privacy.model_copy(update={"unresolved_fit": "warn"})})
    fed, grant = signed_federation(spec, tmp_path / "fed")
    run_study(spec, fed, grant=grant)
    grid = fed.grid
    ledgers = {
        cfg["site"]: PrivacyLedger(f"sqlite:///{cfg['state-dir']}/ledger.db")
        for cfg in grid.node_configs.values()
    }
    before = {s: len(led.history()) for s, led in ledgers.items()}
    assert all(before.values())
    for nid, cfg in grid.node_configs.items():
        n = Node(grid, nid, cfg["site"], cfg)
        # its reservation was completed: reserving again is refused, and without one, nothing
        reply = n.ask(StudyQuery.for_spec(spec, (Reserve(),), grant=grant))
        assert reply.code == CODE_BUDGET and "already had every release" in reply.reason, reply.reason
        for ops in ((Describe(),), (PsFit(beta=(0.0,) * (D + 1)),)):
            reply = n.ask(StudyQuery.for_spec(spec, ops, grant=grant), reserve=False)
            assert reply.code == CODE_BUDGET and "no reservation, no release" in reply.reason, reply.reason
    assert {s: len(led.history()) for s, led in ledgers.items()} == before


def test_8b_no_more_ps_fit_rounds_than_signed(dp):
    node = dp.node(0)
    q = dp.sign(dp.query((PsFit(beta=(0.0,) * (D + 1)),)))
    rounds = q.privacy.n_ps_rounds
    codes = [
        node.ask(q.model_copy(update={"ops": (PsFit(beta=(0.01 * i,) * (D + 1)),)})).code
        for i in range(rounds + 2)
    ]
    assert codes == [None] * rounds + [CODE_BUDGET] * 2
    assert len(node.releases()) == rounds


def test_8c_one_weighted_sum_per_study_and_never_below_its_weights_sensitivity(dp):
    """The ATT's weighted sum (``psm_wsum``): a coordinator that declares a largest weight below
    what its own counts give would be charged for less sensitivity than the release has; the
    node refuses it before anything is charged. An honest one is charged once; asking again
    (other centres, to difference the two) gets nothing."""
    node = dp.node(0)
    o = len(dp.query((Describe(),)).outcomes)
    beta, edges = (0.0,) * (D + 1), (-np.inf, 0.0, np.inf)
    counts = (40.0, 10.0, 12.0, 30.0)  # control 40, treated 10 | control 12, treated 30: v_max 2.5
    honest = PsmWsum(beta=beta, edges=edges, count=counts, center=(0.5,) * (4 * o), max_weight=2.5)
    lie = dp.sign(dp.query((honest.model_copy(update={"max_weight": 1.0}),)))
    assert node.ask(lie).code == CODE_REFUSED
    nothing_charged(node)
    q = dp.sign(dp.query((honest,)))
    assert node.ask(q).code is None
    assert [r.query for r in node.releases()] == ["psm_wsum"]
    again = q.model_copy(update={"ops": (honest.model_copy(update={"center": (0.25,) * (4 * o)}),)})
    assert node.ask(again).code == CODE_BUDGET
    assert len(node.releases()) == 1


# -- 9. differencing two studies; an over-budget flood -----------------------------------------
def test_9a_two_studies_over_the_same_rows_draw_on_one_budget(dp):
    node = dp.node(0)
    ops = (Describe(), PsFit(beta=(0.0,) * (D + 1)))
    first, second = dp.sign(dp.query(ops)), dp.sign(dp.query(ops))
    assert node.ask(first).ok
    one = node.spent()
    assert node.ask(second).ok
    both = node.spent()
    assert {r.study_id for r in node.releases()} == {first.study_id, second.study_id}
    assert both > 1.3 * one  # composed over both studies, not a fresh budget each


def test_9b_a_flood_of_signed_studies_stops_at_the_budget(tmp_path, synth):
    budget, n = 2.0, 40
    fed = make_federation(tmp_path / "flood", synth=synth, extra={"budget-epsilon": budget})
    node = fed.node(0)
    ops = (Describe(), PsFit(beta=(0.0,) * (D + 1)))
    codes = [node.ask(fed.sign(fed.query(ops))).code for _ in range(n)]
    answered = codes.count(None)
    assert 0 < answered < n
    assert codes == [None] * answered + [CODE_BUDGET] * (n - answered)  # refused from then on
    assert node.spent() <= budget + 1e-9


# -- 10. DP by default -------------------------------------------------------------------------
def test_10_studies_are_dp_by_default(tmp_path, synth):
    spec = StudySpec(study=StudyInfo(name="x"), outcomes=(Outcome(name="claims_cost", cap=1e5),))
    assert spec.privacy.enabled is True
    assert load_spec(write_federation(synth, tmp_path / "d")).privacy.enabled is True
    from typer.testing import CliRunner

    from coordinator.cli import root as cli

    if not any(g.name == "synth" for g in cli.app.registered_groups):
        cli._mount_groups()
    res = CliRunner().invoke(
        cli.app, ["synth", "--sites", "2", "--out", str(tmp_path / "s"), "--scale", "0.01"]
    )
    assert res.exit_code == 0, res.output
    assert load_spec(tmp_path / "s" / "study.toml").privacy.enabled is True
