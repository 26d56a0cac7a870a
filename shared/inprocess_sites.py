"""In-process sites: the study driver's federation adapter over arrays held in this process.

Each site answers with the node's own answer code (:mod:`shared.answer`): exact answers pass
through the same small-cell suppression a node applies (``min_cell``; 1 suppresses nothing,
which is how the pooled reference runs), and DP answers through the same release step, with the
noise plan each node derives from the query's public privacy terms and noise from a seeded
generator per site (a real node draws from :func:`shared.dp.mechanisms.secure_rng`). What it
leaves out is what is not statistics: grants, policy, the wire — and the ledger, unless each site
is given one (``ledgers``): then a DP study reserves, converts and cancels through the node's
own ledger step (:func:`shared.answer.ledger_step`), so budget competition between studies runs
through the real driver and node code without Flower.

>>> import numpy as np
>>> from shared.answer import SiteArrays
>>> rng = np.random.default_rng(0)
>>> z = rng.uniform(size=(50, 1)); t = (z[:, 0] > 0.5) * 1.0
>>> sites = InProcessSites({"a": SiteArrays(z=z, t=t, y=np.zeros((50, 1)))})
>>> sites.dropped
{}
"""

from __future__ import annotations

import functools
import operator
from typing import Callable, Mapping

import numpy as np

from shared.answer import (
    NodeLedger,
    SiteArrays,
    answer,
    check_query,
    control_op,
    dp_release,
    ledger_step,
    suppress_small_cells,
)
from shared.dp.plan import NoisePlan
from shared.driver import NodeAnswer
from shared.errors import FederationError, PrivacyError
from shared.protocol import DP_RELEASES, PrivacyQuery, StudyQuery
from shared.secure_sum import SECURE_SUM

__all__ = ["InProcessSites", "node_plan"]


@functools.lru_cache(maxsize=64)
def _plan(privacy_json: str, n_covariates: int, n_outcomes: int) -> NoisePlan:
    return PrivacyQuery.model_validate_json(privacy_json).plan(
        n_covariates=n_covariates, n_outcomes=n_outcomes
    )


def node_plan(query: StudyQuery) -> NoisePlan:
    """The noise plan a node derives from ``query`` (as :meth:`node.runtime.NodeRuntime._plan`
    does; cached, since calibration takes a moment and a benchmark runs the same study often)."""
    assert query.privacy is not None
    privacy = query.privacy.model_dump_json(exclude={"caps"})
    return _plan(privacy, len(query.design_covariates), len(query.outcomes))


class InProcessSites:
    """Sites answering in this process.

    Args:
        sites: each site's scaled arrays, by site name.
        rngs: each site's noise generator (DP queries need them), by site, used round after
            round; or a function of the site returning the generator for one answer (as a
            real node, which starts a fresh one per message).
        min_cell: the exact answers' small-cell threshold (a node's policy says 11; 1 keeps
            every cell, as the pooled reference needs).
        ledgers: each site's privacy ledger (:class:`node.ledger.PrivacyLedger` or anything
            with the methods of :class:`shared.answer.NodeLedger`); None: DP answers are not
            accounted (a simulation), and ``reserve``/``cancel`` are answered with nothing.
        ttl_s: the reservations' lifetime when ``ledgers`` are given.
    """

    def __init__(
        self,
        sites: Mapping[str, SiteArrays],
        *,
        rngs: Mapping[str, np.random.Generator] | Callable[[str], np.random.Generator] | None = None,
        min_cell: int = 1,
        ledgers: Mapping[str, NodeLedger] | None = None,
        ttl_s: float = 1800.0,
    ):
        self.sites = dict(sites)
        self.ledgers = dict(ledgers or {})
        self.ttl_s = ttl_s
        self.rngs = rngs if callable(rngs) else dict(rngs or {})
        self.min_cell = min_cell
        self.dropped: dict[str, str] = {}

    def _answer(self, site: str, query: StudyQuery) -> dict[str, dict[str, np.ndarray]]:
        check_query(query)
        control = control_op(query)
        if query.privacy is not None and site in self.ledgers:  # the node's ledger step first
            ledger_step(
                query, None if control == "cancel" else node_plan(query), self.ledgers[site], ttl_s=self.ttl_s
            )
        if control is not None:
            return {}
        data = self.sites[site]
        if query.privacy is None:
            exact = answer(query, data, site=site)
            return {op: suppress_small_cells(op, a, k=self.min_cell) for op, a in exact.items()}
        if callable(self.rngs):
            rng = self.rngs(site)
        elif site in self.rngs:
            rng = self.rngs[site]
        else:
            raise ValueError(f"in-process site {site} has no noise generator for a DP query")
        return answer(query, data, dp_release(query, node_plan(query), rng), site=site)

    def ask(self, query: StudyQuery, round_name: str) -> dict[str, NodeAnswer]:
        """Every site's answer; a site whose ledger refuses ends the round as a Flower node's
        refusal does (:class:`~shared.errors.FederationError` naming site and round), after
        every site was asked."""
        out: dict[str, NodeAnswer] = {}
        refused: list[tuple[str, PrivacyError]] = []
        for s in self._in_study(query):
            try:
                out[s] = NodeAnswer(site=s, answers=self._answer(s, query), meta=self._meta(s, query))
            except PrivacyError as e:
                refused.append((s, e))
        if refused:
            site, why = refused[0]
            raise FederationError(f"round {round_name}: site {site}: {why}", node=site, round_name=round_name)
        return out

    def _meta(self, site: str, query: StudyQuery) -> dict:
        """The reply's metadata: under DP with a ledger, what it has spent and holds reserved."""
        ledger = self.ledgers.get(site)
        state = getattr(ledger, "state", None)
        if query.privacy is None or state is None:
            return {"site": site}
        now = state()
        meta = {"site": site, "epsilon_spent": now.spent, "epsilon_reserved": now.reserved}
        study_spent = getattr(ledger, "study_spent", None)
        return meta if study_spent is None else {**meta, "epsilon_study": study_spent(query.study_id)}

    def secure_ask(self, query: StudyQuery, round_name: str) -> dict[str, NodeAnswer]:
        """What a SecAgg+ round reveals: the sum of the sites' answers (each carrying its share
        of the noise) and each site's metadata. The sum is exact here; SecAgg+'s quantisation
        is the Flower adapter's (:mod:`coordinator.flower.secure_sum`)."""
        assert query.privacy is not None and query.privacy.secure_nodes is not None
        if any(query.privacy.share(r) == 1 for op in query.ops for r in DP_RELEASES[op.op]):
            raise ValueError("a secure-sum round carries only releases summed under SecAgg+")
        sites = self._in_study(query)
        answers = [self._answer(s, query) for s in sites]
        total = {
            op: {k: functools.reduce(operator.add, (a[op][k] for a in answers)) for k in answers[0][op]}
            for op in answers[0]
        }
        out = {s: NodeAnswer(site=s, answers={}, meta={"site": s}) for s in sites}
        out[SECURE_SUM] = NodeAnswer(site=SECURE_SUM, answers=total, meta={})
        return out

    def _in_study(self, query: StudyQuery) -> list[str]:
        """The sites the query names (a node not named declines), all if it names none."""
        return [s for s in self.sites if not query.sites or s in query.sites]
