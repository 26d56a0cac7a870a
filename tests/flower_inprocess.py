"""An in-process stand-in for Flower's Grid: the same ServerApp workflow and ClientApp code,
without SuperLink/SuperNode processes (≈100x faster; for unit tests and quick checks).

A test harness: it runs both sides, so it lives under tests/ (importable as
``flower_inprocess`` from every test folder), not in coordinator/, which never imports the node.

Each pushed message is deep-copied (as if serialised), handed to the ClientApp with the node's
own ``node_config``, and its reply kept for ``pull_messages``. The real-process path is covered
by the integration tests; this one must never be the only test of a feature.
"""

from __future__ import annotations

import copy
import itertools
from typing import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

_ids = itertools.count(1)


class InProcessGrid(Grid):
    def __init__(
        self,
        client_app: ClientApp,
        node_configs: dict[int, dict],
        *,
        run_id: int = 1,
        fail: Callable[[int, Message], bool] | None = None,
    ):
        """``fail(node_id, message)`` returning True drops that message unanswered (fault tests)."""
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 0
        self.client_app = client_app
        self.node_configs = node_configs
        self.fail = fail
        self._replies: dict[str, Message] = {}
        self._contexts: dict[int, Context] = {}
        self._run = None

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_configs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg = copy.deepcopy(msg)
            msg_id = f"m{next(_ids)}"
            msg.metadata.__dict__["_message_id"] = msg_id
            ids.append(msg_id)
            nid = msg.metadata.dst_node_id
            if self.fail and self.fail(nid, msg):
                continue
            if nid not in self._contexts:  # a SuperNode keeps each run's context (SecAgg+ state)
                self._contexts[nid] = Context(
                    run_id=msg.metadata.run_id,
                    node_id=nid,
                    node_config=self.node_configs[nid],
                    state=RecordDict(),
                    run_config={},
                )
            self._replies[msg_id] = copy.deepcopy(self.client_app(msg, self._contexts[nid]))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        return self.pull_messages(self.push_messages(messages))


def signed_grid(
    spec,
    workdir,
    *,
    extra: dict | None = None,
    key_path=None,
    fail: Callable[[int, Message], bool] | None = None,
):
    """An in-process Grid over one node per site of ``spec``, configured as the local launcher
    configures its SuperNodes (:func:`coordinator.study.runner.site_nodes`: each pins the
    operator's public key), and the operator's signed grant for ``spec``.

    ``extra``: node-config entries added to every node (e.g. a budget, a ledger URL).
    Returns ``(grid, grant)``; pass the grant to :func:`shared.driver.run_study`.
    """
    from pathlib import Path

    from coordinator.study.runner import coordinator_keys, sign_study, site_nodes
    from node.flower.client_app import app as client_app
    from shared.grant import SignedGrant

    workdir = Path(workdir)
    key, pub = coordinator_keys(workdir / "keys", key_path)
    configs = {}
    for i, n in enumerate(site_nodes(spec, workdir, pub)):
        # each test or benchmark run gets its own node state (and so its own ledger)
        cfg = {k: v for k, v in n.config.items() if k != "ledger-url"}
        cfg["state-dir"] = str(workdir / "nodes" / n.site)
        configs[i + 1] = {"site": n.site, **cfg, **(extra or {})}
    return InProcessGrid(client_app, configs, fail=fail), SignedGrant.model_validate_json(
        sign_study(spec, key)
    )


def signed_federation(
    spec,
    workdir,
    *,
    extra: dict | None = None,
    key_path=None,
    fail: Callable[[int, Message], bool] | None = None,
):
    """:func:`signed_grid` wrapped in a connected ``GridFederation``: ``(federation, grant)``."""
    from coordinator.flower.federation import GridFederation

    grid, grant = signed_grid(spec, workdir, extra=extra, key_path=key_path, fail=fail)
    fed = GridFederation(grid, poll_s=0.0)
    fed.wait_for_nodes(len(spec.sites))
    return fed, grant
