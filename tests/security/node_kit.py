"""The attacker's kit for the data-plane attacks on a node (issue #16, item 7).

The attacker is a curious coordinator that holds the operator's signing key (it can sign any
grant it likes and craft every message), or a party without that key. It talks to the real
ClientApp (:data:`node.flower.client_app.app`) through the in-process Grid, over the node
configs the local launcher writes (:func:`flower_inprocess.signed_grid`, i.e.
:func:`coordinator.study.runner.site_nodes`: the defaults), and sees exactly what a coordinator
sees: an answer's arrays and metadata, or an error's code and reason. Nothing here calls node
internals that would skip a check; the node's ledger is read only to show what was charged.
Like any coordinator, the attacker reserves a DP study's plan (``reserve``) before its first
data query: a node releases nothing without a reservation (:meth:`Node.ask` does it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flower_inprocess import InProcessGrid, signed_grid
from flwr.app import Message

from coordinator.files import load_spec
from coordinator.report.signing import PRIVATE_KEY_NAME, load_private_key
from coordinator.synth import write_federation
from node.ledger import PrivacyLedger
from protos.codec import decode_answer, encode_query
from shared.grant import Grant, new_grant_id, sign_grant
from shared.protocol import CONTROL_OPS, STUDY_MESSAGE_TYPE, Reserve, StudyQuery
from shared.study import StudySpec
from shared.synth import generate_federation


@dataclass
class Reply:
    """What the coordinator gets back from one node for one message."""

    code: int | None = None  # None: answered
    reason: str = ""
    answers: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.code is None

    def text(self) -> str:
        """Everything of the reply a coordinator can read, as one string (for grepping)."""
        arrays = {op: {k: np.asarray(v).tolist() for k, v in a.items()} for op, a in self.answers.items()}
        return json.dumps(
            {"code": self.code, "reason": self.reason, "meta": self.meta, "answers": arrays}, default=str
        )


@dataclass
class Node:
    """One site's node on the in-process Grid, and the attacker's handle on it."""

    grid: InProcessGrid
    node_id: int
    site: str
    config: dict
    reserved: set[str] = field(default_factory=set)  # studies this handle sent ``reserve`` for

    def ask(self, query: StudyQuery, *, reserve: bool = True) -> Reply:
        """Send ``query``; a DP data query of a study not reserved yet through this handle is
        preceded by the study's ``reserve`` (from the query's signed terms), as a coordinator's
        first round. ``reserve=False`` sends the query alone."""
        first = query.privacy is not None and not any(op.op in CONTROL_OPS for op in query.ops)
        if reserve and first and query.study_id not in self.reserved:
            self.reserved.add(query.study_id)
            assert query.privacy is not None
            plain = query.privacy.model_copy(update={"resplit": None, "secure_nodes": None})
            self._send(query.model_copy(update={"ops": (Reserve(),), "privacy": plain, "secure_scale": None}))
        return self._send(query)

    def _send(self, query: StudyQuery) -> Reply:
        msg = Message(
            content=encode_query(query),
            dst_node_id=self.node_id,
            message_type=STUDY_MESSAGE_TYPE,
            group_id="attack",
        )
        (reply,) = self.grid.send_and_receive([msg])
        if reply.has_error():
            return Reply(code=reply.error.code, reason=reply.error.reason)
        answers, meta = decode_answer(reply.content)
        return Reply(answers=answers, meta=meta)

    @property
    def ledger_path(self) -> Path:
        return Path(self.config["state-dir"]) / "ledger.db"

    def releases(self) -> list:
        """Every release the node's ledger has charged ([] if it never opened one)."""
        if not self.ledger_path.exists():
            return []
        return PrivacyLedger(f"sqlite:///{self.ledger_path}").history()

    def spent(self) -> float:
        if not self.ledger_path.exists():
            return 0.0
        return PrivacyLedger(f"sqlite:///{self.ledger_path}").spent()


@dataclass
class Federation:
    """A small synthetic federation (written to disk), its DP study spec and the operator's key."""

    root: Path
    spec: StudySpec
    key_path: Path
    nodes: dict[str, Node]
    synth: object

    def node(self, i: int = 0) -> Node:
        return list(self.nodes.values())[i]

    def data_path(self, site: str) -> Path:
        return Path(self.nodes[site].config["data-path"])

    # -- the curious coordinator's powers ------------------------------------------------------
    def sign(
        self,
        query: StudyQuery,
        *,
        sites: tuple[str, ...] | None = None,
        terms: dict | None = None,
        key_path: Path | None = None,
    ) -> StudyQuery:
        """``query`` carrying a fresh grant, signed with the operator's key (or ``key_path``),
        over the query's own terms and sites unless told otherwise."""
        sites = tuple(query.sites) if sites is None else sites
        grant = Grant(
            kind="study",
            grant_id=new_grant_id("attack"),
            sites=sites,
            terms=query.terms() if terms is None else terms,
        )
        signed = sign_grant(grant, load_private_key(key_path or self.key_path))
        return query.model_copy(update={"grant": signed, "study_id": grant.grant_id})

    def query(self, ops: tuple, *, spec: StudySpec | None = None, **update) -> StudyQuery:
        """An unsigned query of ``spec`` (default: the federation's DP study) with ``update``."""
        q = StudyQuery.for_spec(spec or self.spec, ops)
        return q.model_copy(update=update) if update else q


def make_federation(
    root: Path, *, seed: int = 7, extra: dict | None = None, epsilon: float | None = 1.0, synth=None
) -> Federation:
    """Two small synthetic sites written under ``root/data``; their default node configs
    (``site_nodes``, each pinning the operator's key) on an in-process Grid; ``extra`` node-config
    entries for every node (e.g. ``{"allow-exact": True}`` — the single-owner setting)."""
    synth = synth if synth is not None else generate_federation(seed=seed, sites=2, scale=0.02)
    spec_path = write_federation(synth, root / "data", epsilon=epsilon)
    spec = load_spec(spec_path)
    grid, _ = signed_grid(spec, root / "fed", extra=extra)
    key = root / "fed" / "keys" / PRIVATE_KEY_NAME
    nodes = {cfg["site"]: Node(grid, nid, cfg["site"], cfg) for nid, cfg in grid.node_configs.items()}
    return Federation(root=root, spec=spec, key_path=key, nodes=nodes, synth=synth)
