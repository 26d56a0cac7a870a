"""The coordinator's view of the nodes of a study, over Flower's Grid (Message API).

One call, :meth:`GridFederation.ask`, sends a study query to every node still in the study and
collects the answers, polling faster than ``Grid.send_and_receive`` (which sleeps 3 s). A node
that fails or times out either ends the study with an error naming site and round, or — when the
spec allows a minimum number of nodes — is dropped, reported at once (``on_drop``: a progress
event the console prints) and named in the result. Queries and replies travel as the wire
contract's messages (:mod:`protos.codec`); a reply of another protocol version is refused,
naming both versions.

A node that dies or hangs is noticed by the SuperLink when its heartbeats stop: the reply to a
message for it becomes Flower's ``NODE_UNAVAILABLE`` error, within ``HEARTBEAT_PATIENCE`` (2) ×
the node's declared heartbeat interval of its last heartbeat — 20 s for the SuperNodes our
launcher starts (:mod:`coordinator.federation.supernode`), 60 s for Flower's default. The
SuperLink's node list (``grid.get_node_ids()``) drops the node at that same moment, so watching
it would tell nothing sooner; ``round_timeout_s`` bounds a node that is alive but never answers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, cast

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from protos.codec import ContractError, ProtocolMismatch, decode_answer, encode_query
from shared.driver import NodeAnswer
from shared.errors import FederationError
from shared.protocol import (
    CODE_NOT_IN_STUDY,
    STUDY_MESSAGE_TYPE,
    StudyQuery,
    error_text,
)

log = logging.getLogger("rehealth.coordinator")


@dataclass
class GridFederation:
    """Nodes of one study. ``min_nodes=None`` means every node must answer every round."""

    grid: Grid
    timeout_s: float = 120.0
    min_nodes: int | None = None
    poll_s: float = 0.2
    active: dict[int, str | None] = field(default_factory=dict)  # node id -> site (once known)
    dropped: dict[str, str] = field(default_factory=dict)  # site or node -> reason
    on_drop: Callable[[str, str, str], None] | None = None  # (site, round, reason) when one drops

    def wait_for_nodes(self, expected: int, *, timeout_s: float = 60.0) -> list[int]:
        """Wait until ``expected`` nodes are connected (or time out with the count seen)."""
        deadline = time.monotonic() + timeout_s
        while True:
            ids = sorted(self.grid.get_node_ids())
            if len(ids) >= expected or time.monotonic() > deadline:
                break
            time.sleep(self.poll_s)
        if len(ids) < expected:
            raise FederationError(
                f"only {len(ids)} of {expected} nodes connected after {timeout_s:.0f} s", round_name="connect"
            )
        self.active = {i: None for i in ids}
        return ids

    def ask(self, query: StudyQuery, round_name: str) -> dict[str, NodeAnswer]:
        """Send ``query`` to every active node; answers keyed by site."""
        msgs = [
            Message(
                content=encode_query(query),
                dst_node_id=nid,
                message_type=STUDY_MESSAGE_TYPE,
                group_id=round_name,
            )
            for nid in self.active
        ]
        sent = dict(zip(self.grid.push_messages(msgs), self.active))
        replies = self.collect(sent)
        out: dict[str, NodeAnswer] = {}
        failures: dict[int, str] = {}
        for msg_id, nid in sent.items():
            reply = replies.get(msg_id)
            site = self.active.get(nid)
            who = f"site {site}" if site else f"node {nid}"
            if reply is None:
                failures[nid] = f"{who}: no answer within {self.timeout_s:.0f} s"
            elif reply.has_error():
                if reply.error.code == CODE_NOT_IN_STUDY:
                    log.info("node %s declined: %s", nid, reply.error.reason)
                    del self.active[nid]
                    continue
                failures[nid] = _failure_text(who, reply.error.code, reply.error.reason)
            else:
                try:
                    answers, meta = decode_answer(reply.content)
                except (ProtocolMismatch, ContractError) as e:
                    failures[nid] = f"{who}: {e}"
                    continue
                site = str(meta.get("site", nid))
                self.active[nid] = site
                out[site] = NodeAnswer(site=site, answers=answers, meta=meta)
        if failures:
            self._drop_or_fail(failures, round_name)
        return out

    def secure_ask(self, query: StudyQuery, round_name: str) -> dict[str, NodeAnswer]:
        """``query`` as one SecAgg+ sum over every active node: each site's public metadata,
        and the summed arrays under :data:`shared.secure_sum.SECURE_SUM`."""
        from coordinator.flower.secure_sum import secure_sum
        from shared.secure_sum import SECURE_SUM

        grid = cast(Grid, _PolledGrid(self))  # a Grid by delegation (__getattr__)
        totals, metas = secure_sum(grid, list(self.active), query, round_name, timeout_s=self.timeout_s)
        out: dict[str, NodeAnswer] = {}
        for nid, meta in metas.items():
            site = str(meta.get("site", nid))
            self.active[nid] = site
            out[site] = NodeAnswer(site=site, answers={}, meta=meta)
        out[SECURE_SUM] = NodeAnswer(site=SECURE_SUM, answers=totals, meta={})
        return out

    def collect(self, sent: Mapping[str, int]) -> dict[str, Message]:
        """Replies to ``sent`` (message id -> node id), polling until all arrive or time out."""
        pending = set(sent)
        got: dict[str, Message] = {}
        deadline = time.monotonic() + self.timeout_s
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                got[reply.metadata.reply_to_message_id] = reply
                pending.discard(reply.metadata.reply_to_message_id)
            if pending:
                time.sleep(self.poll_s)
        return got

    def _drop_or_fail(self, failures: dict[int, str], round_name: str) -> None:
        remaining = len(self.active) - len(failures)
        if self.min_nodes is None or remaining < self.min_nodes:
            nid, reason = next(iter(failures.items()))
            allowed = "" if self.min_nodes is None else f" ({remaining} left, spec needs {self.min_nodes})"
            raise FederationError(
                f"round {round_name}: {reason}{allowed}",
                node=self.active.get(nid) or str(nid),
                round_name=round_name,
            )
        for nid, reason in failures.items():
            who = self.active.pop(nid) or f"node {nid}"
            self.dropped[who] = f"dropped in round {round_name}: {reason}"
            log.warning("dropping %s in round %s: %s", who, round_name, reason)
            if self.on_drop:
                self.on_drop(who, round_name, reason)

    @property
    def sites(self) -> list[str]:
        return [s for s in self.active.values() if s]


def _failure_text(who: str, code: int, reason: str | None) -> str:
    """One line naming the site: a node's own error (its reason starts with the site's name, the
    contract's fixed text after it) or one Flower generated for it (a dead node, a crashed app)."""
    if code == ErrorCode.NODE_UNAVAILABLE:
        return (
            f"{who} stopped answering: the SuperLink had no heartbeat from its SuperNode within "
            "its liveness window (the node died, was stopped or lost its connection)"
        )
    text = reason or error_text(code)
    return text if text.startswith(who) else f"{who}: {text}"  # a node's reason names its site


class _PolledGrid:
    """The federation's Grid, with ``send_and_receive`` polling at the federation's pace
    (Flower's sleeps 3 s between pulls, and SecAgg+ takes four exchanges per round)."""

    def __init__(self, fed: GridFederation):
        self._fed = fed

    def __getattr__(self, name):
        return getattr(self._fed.grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        sent = dict(zip(self._fed.grid.push_messages(messages), (m.metadata.dst_node_id for m in messages)))
        return list(self._fed.collect(sent).values())
