"""The "unguarded message types" attack on the risk model's ``evaluate`` (issue #16, item 3).

A curious coordinator knows one person's quasi-identifiers (the 16 features, e.g. from an HR
file) and wants their CV event. It crafts a logistic "risk model" whose logit is
``K (d·u − t)`` with ``d`` the person's own centred features: the person is the only row whose
score clears the threshold ``t``, so they alone land in the top probability bin, everyone else
in the bottom one. It sends that model in a properly signed ``evaluate`` message (the operator
signed the job: the coordinator is curious, not forging) and reads the top bin's event count.

Self-contained on purpose (no ``coordinator`` import, job fields adapted to whichever
:class:`shared.protocol.RiskJob` is installed): the same code runs against main before this
change (commit 9ade371, where ``evaluate`` answered exact histograms) and after it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from risk_cohort import cohort  # noqa: E402

from shared.features import FEATURE_NAMES, FEATURES, scale  # noqa: E402
from shared.risk.arch import model_input  # noqa: E402

SITE = "victim_site"
K = 1e4  # logit slope: p ≈ 1 for the target, ≈ 0 for everyone else


@dataclass
class Node:
    """A node as the local launcher configures it, behind the real ClientApp (in-process)."""

    workdir: Path
    X: np.ndarray
    y: np.ndarray
    key: object
    config: dict


def make_node(workdir: Path, *, n: int = 400, seed: int = 7, budget: float = 10.0) -> Node:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    workdir.mkdir(parents=True, exist_ok=True)
    X, y = cohort(n, seed)
    frame = pd.DataFrame(X, columns=list(FEATURE_NAMES))
    frame["cv_event"] = y.astype(int)
    frame.to_csv(workdir / "cohort.csv", index=False)
    key = Ed25519PrivateKey.generate()
    (workdir / "coordinator.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    state = workdir / "state"
    state.mkdir(exist_ok=True)
    config = {
        "site": SITE,
        "data-path": str(workdir / "cohort.csv"),
        "state-dir": str(state),
        "coordinator-key": str(workdir / "coordinator.pub"),
        "budget-epsilon": budget,
    }
    return Node(workdir, X, y, key, config)


def isolating_model(X: np.ndarray, target: int) -> list[np.ndarray] | None:
    """Logistic weights that put row ``target`` alone in the top bin (None if no linear
    direction built from its own features isolates it)."""
    u = model_input(scale(X, FEATURES))
    d = u[target]
    s = u @ d
    others = np.delete(s, target)
    if s[target] <= others.max() + 1e-3:
        return None
    thr = 0.5 * (s[target] + others.max())
    return [(K * d).reshape(1, -1), np.array([-K * thr])]


def isolatable(X: np.ndarray, y: np.ndarray, limit: int) -> list[int]:
    """Rows the attack can isolate: ``limit`` of them, half with an event and half without
    (so that guessing the base rate is worth 50 %)."""
    per_class = {0: [], 1: []}
    for i in range(len(X)):
        c = int(y[i])
        if len(per_class[c]) < limit // 2 and isolating_model(X, i) is not None:
            per_class[c].append(i)
    return sorted(per_class[0] + per_class[1])


def job_json(job_id: str, *, eval_epsilon: float = 0.2, sites: tuple[str, ...] = (SITE,)) -> str:
    """A risk job for whichever RiskJob is installed (before: no sites nor eval_epsilon)."""
    from shared.protocol import RiskJob

    fields = {"job_id": job_id, "rounds": 1, "target_epsilon": 1.0}
    if "sites" in RiskJob.model_fields:
        fields["sites"] = sites
    if "eval_epsilon" in RiskJob.model_fields:
        fields["eval_epsilon"] = eval_epsilon
    return RiskJob(**fields).model_dump_json()


def evaluate_message(
    node: Node, arrays: list[np.ndarray], job: str, *, grant_sites: tuple[str, ...] = (SITE,)
):
    """Send ``arrays`` for evaluation with an operator-signed job; return the reply."""
    return send_message(node, arrays, job, message_type="evaluate", grant_sites=grant_sites)


def send_message(
    node: Node,
    arrays: list[np.ndarray],
    job: str,
    *,
    message_type: str,
    grant_sites: tuple[str, ...] = (SITE,),
    message_id: str | None = None,
):
    """Send ``arrays`` as a ``message_type`` ("train", "evaluate") message of an operator-signed
    job through the real ClientApp; return the reply."""
    from flwr.app import ArrayRecord, Context, Message, RecordDict

    from node.flower.client_app import app as client_app
    from protos.codec import encode_risk
    from shared.grant import Grant, sign_grant
    from shared.protocol import RISK_ARRAYS_KEY, RiskJob

    parsed = RiskJob.model_validate_json(job)
    grant = sign_grant(
        Grant(kind="risk", grant_id=parsed.job_id, sites=grant_sites, terms=parsed.terms()), node.key
    )
    content = RecordDict({RISK_ARRAYS_KEY: ArrayRecord(arrays), "config": encode_risk(parsed, grant)})
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    msg = Message(content=content, dst_node_id=1, message_type=message_type, group_id="attack")
    msg.metadata.__dict__["_message_id"] = message_id or f"attack-{parsed.job_id}"
    ctx = Context(run_id=1, node_id=1, node_config=node.config, state=RecordDict(), run_config={})
    return client_app(msg, ctx)


def top_bin_read(reply) -> tuple[float, float]:
    """(pos, neg) of the top probability bin of an evaluation reply."""
    from shared.protocol import RISK_EVAL_KEY

    pos, neg, _, _ = reply.content.array_records[RISK_EVAL_KEY].to_numpy_ndarrays()
    return float(pos[-1]), float(neg[-1])


def run(workdir: Path, *, targets: int = 10) -> dict:
    """Attack ``targets`` isolatable people through the real ClientApp, one signed job each;
    return how often the top bin's (pos > neg) read gave their event, and the replies."""
    node = make_node(workdir)
    people = isolatable(node.X, node.y, targets)
    reads = []
    for i, t in enumerate(people):
        reply = evaluate_message(node, isolating_model(node.X, t), job_json(f"attack-job-{i:04d}"))
        if reply.has_error():
            reads.append({"target": t, "error": reply.error.reason})
            continue
        pos, neg = top_bin_read(reply)
        reads.append(
            {
                "target": t,
                "event": int(node.y[t]),
                "pos": pos,
                "neg": neg,
                "guess": int(pos > neg),
                "exact": pos in (0.0, 1.0) and pos + neg == 1.0,
            }
        )
    answered = [r for r in reads if "error" not in r]
    return {
        "people": len(people),
        "events": int(sum(node.y[t] for t in people)),
        "answered": len(answered),
        "correct": sum(r["guess"] == r["event"] for r in answered),
        "exact": sum(r["exact"] for r in answered),
        "ledger_rows": _ledger_rows(node),
        "served_model": _served_model(node),
        "reads": reads,
    }


def _ledger_rows(node: Node) -> int:
    """Releases charged to the node's ledger (0 if it never opened one)."""
    from node.ledger import PrivacyLedger
    from shared.errors import PrivacyError

    db = Path(node.config["state-dir"]) / "ledger.db"
    if not db.exists():
        return 0
    try:
        return len(PrivacyLedger(f"sqlite:///{db}").history())
    except PrivacyError:
        return 0


def _served_model(node: Node) -> str | None:
    """The version ``rehealth node score`` / ``serve`` would use now (None: nothing served)."""
    from node.risk.model_store import ModelStore
    from shared.errors import SpecError

    try:
        return ModelStore(Path(node.config["state-dir"]) / "models").latest().version
    except SpecError:
        return None


if __name__ == "__main__":  # the "before" figures: run against another checkout's code
    import json
    import tempfile

    print(json.dumps({k: v for k, v in run(Path(tempfile.mkdtemp()), targets=20).items() if k != "reads"}))
