"""One study round as a SecAgg+ secure sum over Flower's Grid (the coordinator's side).

Flower runs SecAgg+ only through its legacy bridge (``LegacyContext`` + ``SecAggPlusWorkflow``,
``secaggplus_mod`` on the node; ``docs/ARCHITECTURE.md``): the round's query travels as the
config of a ``FitIns`` (the wire contract's serialized query, :mod:`protos.codec`), each node's
packed answer (:mod:`shared.secure_sum`, in the contract's field order) as its masked ``FitRes``
beside its public reply (metadata and the arrays' shapes), and the workflow hands the strategy
only the unmasked aggregate. With every node's weight 1 that aggregate is the mean of the
inputs, so the sum is it times the nodes counted.

Every node must contribute: each added only σ/√K, so a sum over fewer would carry less noise
than the plan. The workflow is therefore stopped before its unmask stage if any node is missing,
and the round fails naming them.
"""

from __future__ import annotations

import logging
import math

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from protos.codec import (
    QUERY_ENTRY,
    REPLY_ENTRY,
    ContractError,
    ProtocolMismatch,
    decode_secure_sum,
    query_entry,
)
from shared.errors import FederationError
from shared.protocol import StudyQuery
from shared.secure_sum import CLIP

log = logging.getLogger("rehealth.coordinator")


class _OneRound(Strategy):
    """Hands every node the round's query; keeps what the workflow aggregated."""

    def __init__(self, grid: Grid, node_ids: list[int], query: bytes):
        self.proxies = [GridClientProxy(nid, grid, 0) for nid in node_ids]
        self.query = query
        self.results: list = []

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        ins = FitIns(parameters=Parameters(tensors=[], tensor_type=""), config={QUERY_ENTRY: self.query})
        return [(proxy, ins) for proxy in self.proxies]

    def aggregate_fit(self, server_round, results, failures):
        self.results = list(results)
        return None, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _EveryNode(SecAggPlusWorkflow):
    """SecAgg+ that refuses to unmask a sum missing any node, and keeps the nodes' errors."""

    def __init__(self, required: int, **kw):
        super().__init__(**kw)
        self.required = required
        self.failures: list[str] = []

    def _check_threshold(self, state) -> bool:
        self.failures = [str(f) for f in state.failures]
        return super()._check_threshold(state)

    def unmask_stage(self, grid, context, state) -> bool:
        if len(state.active_node_ids) < self.required:
            log.error(
                "secure sum: %d of %d nodes sent masked inputs; not unmasking",
                len(state.active_node_ids),
                self.required,
            )
            return False
        return super().unmask_stage(grid, context, state)


def secure_sum(
    grid: Grid, node_ids: list[int], query: StudyQuery, round_name: str, *, timeout_s: float
) -> tuple[dict[str, dict[str, np.ndarray]], dict[int, dict]]:
    """Run ``query`` as one SecAgg+ round over ``node_ids``.

    Returns:
        ``(summed arrays per operation, each node's public metadata)``.

    Raises:
        FederationError: a node failed or the sum could not be unmasked over every node.
    """
    if query.secure_scale is None:
        raise FederationError(
            f"round {round_name}: a secure sum needs the query's fixed-point scale", round_name=round_name
        )
    scale, k = query.secure_scale, len(node_ids)
    strategy = _OneRound(grid, node_ids, query_entry(query))
    state = RecordDict()
    state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: 1})
    state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        Parameters(tensors=[], tensor_type=""), True
    )
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}), strategy=strategy
    )
    workflow = _EveryNode(
        k,
        num_shares=k,
        reconstruction_threshold=max(2, math.ceil(2 * k / 3)),
        max_weight=1.0,
        clipping_range=CLIP,
        timeout=timeout_s,
    )
    workflow(grid, context)
    done = {proxy.node_id: res for proxy, res in strategy.results}
    if len(done) < k or not strategy.results:
        missing = sorted(set(node_ids) - set(done))
        said = "; ".join(workflow.failures) or "see the nodes' logs"
        raise FederationError(
            f"round {round_name}: secure aggregation needs every node; "
            f"node(s) {missing or node_ids} sent no masked input ({said})",
            round_name=round_name,
        )
    mean = parameters_to_ndarrays(strategy.results[0][1].parameters)[0]
    total = mean * k * scale
    try:
        return decode_secure_sum(total, {nid: res.metrics.get(REPLY_ENTRY, b"") for nid, res in done.items()})
    except (ProtocolMismatch, ContractError) as e:
        raise FederationError(f"round {round_name}: {e}", round_name=round_name) from None
