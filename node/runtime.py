"""What a running node knows about itself: its site, its data, its ledger, its policy.

Built from the SuperNode's ``--node-config`` (set by the node's operator, never by the
coordinator), e.g.::

    site="insurer_a" data-path="/srv/rehealth/cohort.csv" state-dir="/var/lib/rehealth"
    budget-epsilon=10.0 budget-delta=1e-5 require-dp=true model-dir="/srv/rehealth/node/models"

Risk models the federation trains are kept in ``model-dir``, by default ``<state-dir>/models``;
``rehealth node serve`` and ``score`` read ``<node dir>/models`` (beside ``node.toml``), so an
operator points ``model-dir`` there (or uses the node folder as ``state-dir``) to serve them.

Privacy: the node derives every noise scale itself from the study's public parameters
(:meth:`shared.protocol.PrivacyQuery.plan`), charges its own ledger (one budget per dataset)
before any answer leaves, and answers exact aggregates only when its policy allows
(``require-dp=false``, the default for local demos).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from shared.errors import PrivacyError, QueryRefused, SpecError
from shared.protocol import DP_RELEASES, StudyQuery


class NotInStudy(QueryRefused):
    """The query names sites and this node is not one of them: it declines, computing nothing."""


def _bool(v) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class NodeRuntime:
    site: str
    data_path: Path | None = None
    store_url: str | None = None  # the node's store (ingested cohort) instead of a file
    state_dir: Path | None = None
    ledger_url: str | None = None
    dataset: str | None = None
    budget_epsilon: float = 10.0
    budget_delta: float = 1e-5
    require_dp: bool = False
    model_dir: Path | None = None  # where trained risk models are kept (default <state-dir>/models)
    #: the operator accepts studies whose releases after describe go through SecAgg+ with this
    #: node adding only its 1/√K share of the noise (the trust model of shared.study.Privacy)
    accept_secure_aggregation: bool = False

    @property
    def models(self) -> Path | None:
        """The folder trained risk models are stored in, None if the node keeps no state."""
        if self.model_dir is not None:
            return self.model_dir
        return self.state_dir / "models" if self.state_dir is not None else None

    @classmethod
    def from_node_config(cls, cfg: Mapping) -> "NodeRuntime":
        from node.ledger import POPULATION

        site = str(cfg.get("site", "")).strip()
        if not site:
            raise SpecError('node config lacks site (e.g. --node-config \'site="insurer_a"\')')
        if "dataset" in cfg:  # it used to name the budget: a new name was a fresh budget
            raise SpecError(f"node config of site {site}: key 'dataset' is not accepted: the node's "
                            "ledger holds one budget for its whole population, chosen by "
                            "ledger-url (or state-dir), not by a name; remove the key")
        data, state = cfg.get("data-path"), cfg.get("state-dir")
        try:
            return cls(site=site, data_path=Path(str(data)) if data else None,
                       store_url=str(cfg["store-url"]) if cfg.get("store-url") else None,
                       state_dir=Path(str(state)) if state else None,
                       ledger_url=str(cfg["ledger-url"]) if cfg.get("ledger-url") else None,
                       dataset=POPULATION,
                       budget_epsilon=float(cfg.get("budget-epsilon", 10.0)),
                       budget_delta=float(cfg.get("budget-delta", 1e-5)),
                       require_dp=_bool(cfg.get("require-dp", False)),
                       model_dir=Path(str(cfg["model-dir"])) if cfg.get("model-dir") else None,
                       accept_secure_aggregation=_bool(cfg.get("secure-aggregation", False)))
        except (TypeError, ValueError) as e:
            raise SpecError(f"node config of site {site}: {e}") from None

    def answer(self, query: StudyQuery, *, secure_sum: bool = False) -> tuple[dict, dict]:
        """Answer a validated study query from this node's own data.

        Args:
            secure_sum: the answer leaves only masked, as one input of a SecAgg+ sum (the
                ClientApp's secure-sum handler, behind Flower's ``secaggplus_mod``).

        Returns:
            ``(answers per operation, metadata)``; under DP the metadata says what the
            dataset's ledger has spent.

        Raises:
            NotInStudy, QueryRefused, DataError, PrivacyError / BudgetExceededError.
        """
        from node.study_service import answer, load_site_arrays, prepare_arrays

        if query.sites and self.site not in query.sites:
            raise NotInStudy(f"site {self.site} is not among the study's sites")
        if query.privacy is None and self.require_dp:
            raise PrivacyError(f"site {self.site} answers only differentially private studies "
                               "(set [privacy] enabled = true)")
        self._check_secure_sum(query, secure_sum)
        if self.store_url:
            from node.store import open_store

            frame = open_store(self.store_url).cohort_columns(
                covariates=[c.name for c in query.covariates],
                treatment_column=query.treatment_column, outcomes=[o.name for o in query.outcomes])
            data = prepare_arrays(frame, query)
        elif self.data_path is not None:
            cache = self.state_dir / "cache" if self.state_dir else None
            data = load_site_arrays(self.data_path, query, cache)
        else:
            raise QueryRefused(f"site {self.site} has no study data configured (store-url or data-path)")
        if query.privacy is None:
            return answer(query, data), {}
        ledger = self.ledger()
        return answer(query, data, self._dp_release(query, ledger)), {
            "dataset": self.dataset, "epsilon_spent": ledger.spent(self.dataset),
            "epsilon_budget": self.budget_epsilon}

    def _check_secure_sum(self, query: StudyQuery, secure_sum: bool) -> None:
        """A node adds only its share of the noise when, and only when, its answer is masked."""
        nodes = query.privacy.secure_nodes if query.privacy is not None else None
        shared_noise = nodes is not None and any(
            query.privacy.share(r) > 1 for op in query.ops for r in DP_RELEASES[op.op])
        if shared_noise and not secure_sum:
            raise PrivacyError(f"site {self.site} releases a share of the noise only as a masked "
                               "SecAgg+ input, never in a plain reply")
        if secure_sum and not shared_noise:
            raise QueryRefused(f"site {self.site}: a secure-sum round must carry a secure-"
                               "aggregation study's releases after describe")
        if shared_noise and not self.accept_secure_aggregation:
            raise PrivacyError(f"site {self.site} does not accept secure-aggregation studies "
                               "(node config secure-aggregation = true accepts them)")

    def ledger(self):
        """The node's ledger: one population, one budget, at ``ledger-url`` or
        ``<state-dir>/ledger.db`` (the operator's choice; no query or name selects another)."""
        from node.ledger import PrivacyLedger

        url = self.ledger_url
        if url is None:
            if self.state_dir is None:
                raise PrivacyError(f"site {self.site} has no privacy ledger (ledger-url or state-dir)")
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            url = f"sqlite:///{self.state_dir / 'ledger.db'}"
        ledger = PrivacyLedger(url)
        ledger.ensure_budget(dataset=self.dataset, epsilon=self.budget_epsilon, delta=self.budget_delta)
        return ledger

    def _plan(self, query: StudyQuery):
        """The study's noise plan, derived here from its public parameters and cached in the
        state folder (calibration costs seconds; each Flower message is a fresh process)."""
        import hashlib
        import json

        from shared.dp.plan import NoisePlan

        assert query.privacy is not None
        dims = {"n_covariates": len(query.covariates), "n_outcomes": len(query.outcomes)}
        public = json.dumps({**dims, "protocol": query.protocol})  # new code, new plans
        key = hashlib.sha256((query.privacy.model_dump_json() + public).encode()).hexdigest()
        cache = self.state_dir / "plans" / f"{key[:32]}.json" if self.state_dir else None
        if cache is not None and cache.exists():
            return NoisePlan.from_dict(json.loads(cache.read_text()))
        plan = query.privacy.plan(**dims)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(plan.to_dict()))
            tmp.replace(cache)
        return plan

    def _dp_release(self, query: StudyQuery, ledger):
        """Charge-then-noise for every release an operation's answer is made of."""
        from node.privacy import charged_release
        from shared.dp.mechanisms import secure_rng

        plan = self._plan(query)
        rng = secure_rng()

        def release(op: str, arrays: dict) -> dict:
            out: dict = {}
            for name in DP_RELEASES[op]:
                if not plan.has(name):
                    continue
                planned = plan.release(name)
                noisy, _charge = charged_release(
                    ledger=ledger, dataset=self.dataset, study_id=query.study_id, query=name,
                    arrays=arrays, sigma=planned.sigma, sensitivity=planned.sensitivity, rng=rng,
                    share=query.privacy.share(name))
                out.update(noisy)
            return out

        return release
