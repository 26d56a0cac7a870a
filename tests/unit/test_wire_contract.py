"""The wire contract (protos/rehealth_v1.proto): generated code current, every query and reply
type round-trips exactly, the two sides agree field by field with the code that fills them, and
a node and a coordinator of different protocol versions refuse each other naming both."""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from coordinator.files import load_spec
from coordinator.synth import write_federation
from protos import codec, generate
from protos import rehealth_v1_pb2 as pb
from shared.dp.sensitivity import RELEASE_KEYS
from shared.errors import FederationError
from shared.grant import SignedGrant
from shared.protocol import (
    CODE_PROTOCOL,
    CONTROL_OPS,
    DP_RELEASES,
    ERROR_TEXT,
    PROTOCOL_VERSION,
    STUDY_MESSAGE_TYPE,
    BudgetSplit,
    Cancel,
    Describe,
    PrivacyQuery,
    PsFit,
    PsmStats,
    PsmWsum,
    Reserve,
    ScoreHist,
    StudyQuery,
)
from shared.study import Covariate, Outcome
from shared.synth import generate_federation

OPS = (
    Describe(),
    PsFit(beta=(0.5, -1.0, 2.0)),
    ScoreHist(beta=(0.0, 0.25, -0.125)),
    PsmStats(beta=(0.1, 0.2, 0.3), edges=(-math.inf, -0.5, 0.5, math.inf)),
)


def _query(**update) -> StudyQuery:
    """A query with every field of the contract set to something other than its default."""
    grant = SignedGrant(body='{"kind":"study"}', signature="c2ln", key_id="0123456789abcdef")
    privacy = PrivacyQuery(
        epsilon=0.7,
        delta=1e-6,
        split=BudgetSplit(),
        n_ps_rounds=3,
        accountant="prv",
        resplit=BudgetSplit(describe=0.0, ps_fit=0.5, psm_stats=0.4, balance=0.1),
        secure_nodes=3,
        secure_aggregation=True,
    )
    q = StudyQuery(
        study_id="study-0001-abcdef",
        treatment_column="statin",
        covariates=(Covariate(name="age", lo=18, hi=95), Covariate(name="smoker", lo=0, hi=1, kind="binary")),
        outcomes=(Outcome(name="cost", cap=1e5, lo=-10.0), Outcome(name="cv_event", cap=1, kind="binary")),
        ops=OPS,
        sites=("a", "b", "c"),
        privacy=privacy,
        secure_scale=1234.5,
        grant=grant,
    )
    return q.model_copy(update=update) if update else q


def _wire(content: RecordDict) -> RecordDict:
    """What the other side receives: Flower's records, copied as if serialised."""
    return copy.deepcopy(content)


# -- generated code ---------------------------------------------------------------------------


def test_the_committed_generated_code_is_what_the_proto_generates(tmp_path):
    """`python -m protos.generate` into a temporary folder gives the committed bytes: a .proto
    edited without regenerating fails here (and so in CI)."""
    written = generate.generate(tmp_path)
    assert {p.name for p in written} == {"rehealth_v1_pb2.py", "rehealth_v1_pb2.pyi"}
    for p in written:
        committed = Path(generate.HERE) / p.name
        assert committed.read_bytes() == p.read_bytes(), f"{committed} is stale: python -m protos.generate"


def test_one_version_and_one_set_of_error_texts_from_the_proto():
    assert PROTOCOL_VERSION == pb.PROTOCOL_VERSION == 10
    assert StudyQuery.model_fields["protocol"].default == PROTOCOL_VERSION
    codes = {v.number for v in pb.ErrorCode.DESCRIPTOR.values} - {0}
    assert set(ERROR_TEXT) == codes and all(ERROR_TEXT.values())
    assert {4001, 4002, 4003, 4004, 4005, 4006, 5000} == codes


# -- queries ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "update",
    [
        {},
        {"privacy": None, "secure_scale": None, "grant": None},
        *({"ops": (op,)} for op in (*OPS, Reserve(), Cancel())),
    ],
    ids=lambda u: ",".join(u) or "full",
)
def test_every_query_round_trips_exactly(update):
    q = _query(**update)
    got = codec.decode_query(_wire(codec.encode_query(q)))
    assert got == q
    assert got.model_dump_json() == q.model_dump_json()  # ±inf edges, None fields, enums alike
    assert got.terms() == q.terms()  # what the grant signs


def test_query_models_and_messages_name_the_same_fields():
    """A field renamed or added on one side only (pydantic model or .proto) fails here."""
    pairs = [
        (StudyQuery, pb.StudyQuery),
        (PrivacyQuery, pb.PrivacyQuery),
        (BudgetSplit, pb.BudgetSplit),
        (Covariate, pb.Covariate),
        (Outcome, pb.Outcome),
        (SignedGrant, pb.SignedGrant),
        (PsFit, pb.PsFit),
        (PsmStats, pb.PsmStats),
        (ScoreHist, pb.ScoreHist),
        (Describe, pb.Describe),
        (Reserve, pb.Reserve),
        (Cancel, pb.Cancel),
    ]
    for model, message in pairs:
        assert set(model.model_fields) - {"op"} == set(message.DESCRIPTOR.fields_by_name), model.__name__
    ops = {f.name for f in pb.Operation.DESCRIPTOR.oneofs_by_name["op"].fields}
    assert ops == set(DP_RELEASES) | set(CONTROL_OPS)
    # a data operation has a reply; reserve and cancel are answered by the reply's meta alone
    assert set(DP_RELEASES) == set(pb.StudyAnswers.DESCRIPTOR.fields_by_name)


def test_a_value_the_contract_lacks_is_refused_not_dropped():
    with pytest.raises(codec.ContractError, match="no field 'extra'"):
        codec._fill(pb.Covariate(), {"name": "x", "lo": 0.0, "hi": 1.0, "kind": "continuous", "extra": 1})
    with pytest.raises(codec.ContractError, match="ColumnKind has no value 'ordinal'"):
        codec._fill(pb.Covariate(), {"name": "x", "kind": "ordinal"})
    with pytest.raises(codec.ContractError, match="no 'rehealth.v1.StudyQuery'"):
        codec.decode_query(RecordDict({"request": ConfigRecord({"json": "{}"})}))  # a version-4 query
    with pytest.raises(codec.ContractError, match="is not a rehealth.v1.StudyQuery"):
        codec.decode_query(RecordDict({codec.RECORD: ConfigRecord({codec.QUERY_ENTRY: b"\xff\xff"})}))


# -- replies ----------------------------------------------------------------------------------


def _answers(rng, d=2, strata=3, outcomes=2) -> dict:
    """Every array of every operation, shaped as the node's code shapes it."""

    def r(*shape):  # full float64 mantissas
        return rng.standard_normal(shape) * 1e6

    return {
        "describe": {"count": r(2), "sum_z": r(2, d), "sum_zz": r(2, d, d)},
        "ps_fit": {"n": r(1), "g": r(d + 1), "H": r(d + 1, d + 1), "loglik": r(1)},
        "score_hist": {"count": r(40, 2)},
        "psm_stats": {
            "edges": np.array([-np.inf, 0.0, 1.0, np.inf]),
            "count": r(strata, 2),
            "sum_y": r(strata, 2, outcomes),
            "sumsq_y": r(strata, 2, outcomes),
            "sum_z": r(strata, 2, d),
            "sumsq_z": r(strata, 2, d),
        },
    }


def _assert_same(got: dict, want: dict):
    assert got.keys() == want.keys()
    for op in want:
        assert got[op].keys() == want[op].keys(), op
        for k in want[op]:
            assert got[op][k].dtype == np.float64 and got[op][k].shape == np.shape(want[op][k]), (op, k)
            np.testing.assert_array_equal(got[op][k], want[op][k])  # bit-exact, ±inf too


@pytest.mark.parametrize("op", ["describe", "ps_fit", "score_hist", "psm_stats", "all"])
def test_every_reply_round_trips_exactly(op):
    answers = _answers(np.random.default_rng(3))
    answers = answers if op == "all" else {op: answers[op]}
    meta = {
        "site": "insurer_a",
        "seconds": 0.25,
        "ops": list(answers),
        "dataset": "population",
        "epsilon_spent": 0.125,
        "epsilon_budget": 10.0,
        "epsilon_reserved": 2.5,
    }
    got, got_meta = codec.decode_answer(_wire(codec.encode_answer(answers, meta)))
    _assert_same(got, answers)
    assert got_meta == meta


def test_withheld_arrays_travel_as_absent_and_exact_meta_carries_no_budget():
    """Under DP only the released arrays travel (the others are absent, not zero)."""
    answers = {op: {k: np.ones(2) for k in RELEASE_KEYS[op]} for op in ("describe", "ps_fit", "score_hist")}
    answers["psm_stats"] = {k: np.ones(2) for r in DP_RELEASES["psm_stats"] for k in RELEASE_KEYS[r]}
    answers["empty"] = {}
    with pytest.raises(codec.ContractError, match="operation 'empty'"):
        codec.encode_answer(answers, {"site": "a"})
    del answers["empty"]
    got, meta = codec.decode_answer(codec.encode_answer(answers, {"site": "a", "seconds": 1.0, "ops": []}))
    _assert_same(got, answers)
    assert "edges" not in got["psm_stats"] and "n" not in got["ps_fit"]
    assert meta == {"site": "a", "seconds": 1.0, "ops": []}


def test_counts_a_node_keeps_to_itself_cannot_be_sent():
    """The clipping and exclusion counts (shared.answer.WITHHELD) have no field: a node that
    forgot to withhold them would fail to reply rather than leak them."""
    from shared.answer import WITHHELD

    for key in WITHHELD:
        with pytest.raises(codec.ContractError, match=key):
            codec.encode_answer({"describe": {key: np.zeros(1)}}, {"site": "a"})
    with pytest.raises(codec.ContractError, match="'rows'"):
        codec.encode_answer({}, {"site": "a", "rows": 3})


def test_the_secure_sum_layout_is_the_contracts_field_order():
    """Each node packs its arrays in the .proto's field order; the coordinator unpacks the sum
    with the shapes from the nodes' public replies, which carry no values."""
    rng = np.random.default_rng(4)
    nodes = [
        {
            "ps_fit": {"g": rng.random(3), "H": rng.random((3, 3))},
            "psm_stats": {k: rng.random((2, 2, 1)) for k in ("sumsq_y", "sum_y")},
        }
        for _ in range(3)
    ]
    layout = codec.secure_layout(nodes[0])
    assert [(op, k) for op, k, _ in layout] == [
        ("ps_fit", "g"),
        ("ps_fit", "H"),
        ("psm_stats", "sum_y"),
        ("psm_stats", "sumsq_y"),
    ]
    inputs = [codec.encode_secure_input(a, {"site": f"s{i}"}, scale=2.0) for i, a in enumerate(nodes)]
    for _, reply in inputs:
        assert not any(
            t.values for r in (pb.StudyReply.FromString(reply).answers.ps_fit,) for t in (r.g, r.H)
        )
    total = sum(vec for vec, _ in inputs) * 2.0
    summed, metas = codec.decode_secure_sum(total, {i: reply for i, (_, reply) in enumerate(inputs)})
    for op, k, _ in layout:
        np.testing.assert_allclose(summed[op][k], sum(a[op][k] for a in nodes), rtol=1e-12)
    assert metas == {i: {"site": f"s{i}", "seconds": 0.0, "ops": []} for i in range(3)}
    with pytest.raises(codec.ContractError, match="'n_clipped'"):
        codec.secure_layout({"describe": {"n_clipped": np.zeros(1)}})


# -- protocol versions, both ways ---------------------------------------------------------------


def _old(message, version: int = PROTOCOL_VERSION - 1):
    message.protocol = version
    return message


def test_a_node_refuses_a_query_of_another_version_naming_both():
    msg = _old(codec.query_to_proto(_query()))
    content = RecordDict({codec.RECORD: ConfigRecord({codec.QUERY_ENTRY: msg.SerializeToString()})})
    with pytest.raises(
        codec.ProtocolMismatch,
        match=f"version {PROTOCOL_VERSION - 1}; this node speaks version {PROTOCOL_VERSION}",
    ):
        codec.decode_query(content)


def test_a_coordinator_refuses_a_reply_of_another_version_naming_both():
    msg = _old(
        codec.reply_to_proto({"describe": {"count": np.ones(2)}}, {"site": "insurer_a"}), PROTOCOL_VERSION + 1
    )
    content = RecordDict({codec.RECORD: ConfigRecord({codec.REPLY_ENTRY: msg.SerializeToString()})})
    with pytest.raises(
        codec.ProtocolMismatch,
        match=f"insurer_a replied in protocol version {PROTOCOL_VERSION + 1}; "
        f"this coordinator speaks version {PROTOCOL_VERSION}",
    ):
        codec.decode_answer(content)


def test_the_pydantic_query_refuses_another_version_too():
    """A query built in Python (the REST API, a test) cannot claim another version either."""
    from pydantic import ValidationError

    with pytest.raises(
        ValidationError, match=f"protocol version 4; this side speaks version {PROTOCOL_VERSION}"
    ):
        StudyQuery.model_validate(_query().model_dump() | {"protocol": 4})


def test_risk_envelope_round_trips_and_is_version_checked():
    from shared.protocol import RiskJob

    job = RiskJob(job_id="job-0001-abcdef", sites=("a",), rounds=2, target_epsilon=1.0)
    grant = SignedGrant(body="{}", signature="c2ln")
    content = RecordDict({"config": codec.encode_risk(job, grant)})
    job_json, got = codec.decode_risk(_wire(content))
    assert RiskJob.model_validate_json(job_json) == job and got == grant
    assert codec.decode_risk(RecordDict({"config": codec.encode_risk(job)}))[1] is None
    old = _old(pb.RiskRequest.FromString(content.config_records["config"][codec.RISK_ENTRY]))
    with pytest.raises(codec.ProtocolMismatch, match=f"speaks protocol version {PROTOCOL_VERSION - 1}"):
        codec.decode_risk(RecordDict({"config": ConfigRecord({codec.RISK_ENTRY: old.SerializeToString()})}))


# -- against the real node code ---------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("fed")
    return load_spec(write_federation(generate_federation(seed=11, sites=2, scale=0.08), out))


def _spec(spec, **privacy):
    return spec.model_copy(update={"privacy": spec.privacy.model_copy(update=privacy)})


def _all_ops(spec):
    beta = tuple(0.05 * i for i in range(len(spec.covariates) + 1))
    return (
        Describe(),
        PsFit(beta=beta),
        ScoreHist(beta=beta),
        PsmStats(beta=beta, edges=(-math.inf, 0.0, math.inf)),
    )


def test_the_real_nodes_exact_reply_decodes_to_what_the_node_code_computes(written, tmp_path):
    """The ClientApp's reply (real grant, policy and answer code behind the in-process Grid)
    decodes to exactly the arrays :mod:`shared.answer` computes on the site's rows, under the
    same names: renaming an array in the node code or in the .proto fails here."""
    from flower_inprocess import signed_federation

    from node.policy import NodePolicy
    from node.study_service import load_site_arrays
    from shared.answer import answer, suppress_small_cells

    spec = _spec(written, enabled=False)
    fed, grant = signed_federation(spec, tmp_path)
    query = StudyQuery.for_spec(spec, _all_ops(spec), grant=grant)
    got = fed.ask(query, "all-ops")
    assert set(got) == {s.name for s in spec.sites}
    k = NodePolicy.load(None).min_cell
    for site in spec.sites:
        want = {
            op: suppress_small_cells(op, a, k=k)
            for op, a in answer(query, load_site_arrays(site.data, query, None)).items()
        }
        _assert_same(got[site.name].answers, want)
        assert got[site.name].meta["site"] == site.name and got[site.name].meta["ops"] == list(want)


def test_the_real_nodes_dp_reply_carries_the_released_arrays_only(written, tmp_path):
    spec = _spec(written, enabled=True, epsilon=5.0)
    from flower_inprocess import signed_federation

    fed, grant = signed_federation(spec, tmp_path, extra={"budget-epsilon": 50.0})
    reserved = fed.ask(StudyQuery.for_spec(spec, (Reserve(),), grant=grant), "reserve")
    for reply in reserved.values():  # the meta alone: what the ledger now holds reserved
        assert reply.answers == {} and reply.meta["epsilon_reserved"] > 0 and reply.meta["epsilon_spent"] == 0
    query = StudyQuery.for_spec(spec, _all_ops(spec), grant=grant)
    asked = [op.op for op in query.ops]
    for reply in fed.ask(query, "all-ops").values():
        assert {op: set(a) for op, a in reply.answers.items()} == {  # dr_slope: a DR study's only,
            op: {  # nc_*: only a study's whose negative controls are released apart
                k
                for r in DP_RELEASES[op]
                if r != "dr_slope" and not r.startswith("nc_")
                for k in RELEASE_KEYS[r]
            }
            for op in asked
        }
        assert reply.meta["epsilon_spent"] > 0 and reply.meta["dataset"]
    # the ATT's weighted sums, the study's last release: one array of O values
    n_out = len(spec.outcomes)
    wsum = PsmWsum(
        beta=query.ops[1].beta,
        edges=(-math.inf, 0.0, math.inf),
        count=(40.0, 20.0, 10.0, 30.0),
        center=(0.5,) * 4 * n_out,
        max_weight=3.0,  # 30 treated over 10 controls
    )
    for reply in fed.ask(StudyQuery.for_spec(spec, (wsum,), grant=grant), "wsum").values():
        assert {op: set(a) for op, a in reply.answers.items()} == {"psm_wsum": {"wsum"}}
        assert reply.answers["psm_wsum"]["wsum"].shape == (n_out,)


def test_an_old_coordinator_and_a_new_node_refuse_each_other_through_flower(written, tmp_path):
    """Both directions through the real ClientApp and the coordinator's federation: the node
    answers a query of another version with ERROR_CODE_PROTOCOL naming both versions (nothing
    read or charged), and the coordinator fails the round on a reply of another version."""
    from flower_inprocess import signed_grid

    from coordinator.flower.federation import GridFederation

    spec = _spec(written, enabled=True, epsilon=5.0)
    grid, grant = signed_grid(spec, tmp_path, extra={"budget-epsilon": 50.0})
    query = StudyQuery.for_spec(spec, (Describe(),), grant=grant)
    old = _old(codec.query_to_proto(query)).SerializeToString()
    msgs = [
        Message(
            RecordDict({codec.RECORD: ConfigRecord({codec.QUERY_ENTRY: old})}),
            dst_node_id=nid,
            message_type=STUDY_MESSAGE_TYPE,
            group_id="old",
        )
        for nid in grid.get_node_ids()
    ]
    for reply in grid.send_and_receive(msgs):
        assert reply.has_error() and reply.error.code == CODE_PROTOCOL
        assert (
            f"{ERROR_TEXT[CODE_PROTOCOL]}: the query speaks protocol version {PROTOCOL_VERSION - 1}; "
            f"this node speaks version {PROTOCOL_VERSION}"
        ) in reply.error.reason
    assert not list((tmp_path / "nodes").glob("*/ledger.db"))  # refused before the ledger opened

    real_app = grid.client_app

    def old_node(msg, context):  # the real node, its replies re-labelled as another version
        reply = real_app(msg, context)
        rec = reply.content.config_records[codec.RECORD]
        rec[codec.REPLY_ENTRY] = _old(pb.StudyReply.FromString(rec[codec.REPLY_ENTRY])).SerializeToString()
        return reply

    grid.client_app = old_node
    fed = GridFederation(grid, poll_s=0.0)
    fed.wait_for_nodes(len(spec.sites))
    with pytest.raises(
        FederationError,
        match=f"replied in protocol version {PROTOCOL_VERSION - 1}; "
        f"this coordinator speaks version {PROTOCOL_VERSION}",
    ):  # a DP study's first round
        fed.ask(StudyQuery.for_spec(spec, (Reserve(),), grant=grant), "reserve")
