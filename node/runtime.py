"""What a running node knows about itself: its site, its data, its ledger, its policy.

Built from the SuperNode's ``--node-config`` (set by the node's operator, never by the
coordinator), e.g.::

    site="insurer_a" data-path="/srv/rehealth/cohort.csv" state-dir="/var/lib/rehealth"
    coordinator-key="/etc/rehealth/coordinator.pub" policy-path="/etc/rehealth/policy.toml"
    budget-epsilon=10.0 budget-delta=1e-5 model-dir="/srv/rehealth/node/models"

Risk models the federation trains arrive as candidates in ``<model-dir>/candidates``, by
default ``<state-dir>/models``; ``rehealth node serve`` and ``score`` read ``<node dir>/models``
(beside ``node.toml``) and use a model only after the operator approved it there
(``rehealth node model approve``, which checks its calibration on local data). The ledger holds
one budget for the node's whole population (``ledger-url``, default ``<state-dir>/ledger.db``).

Who may ask: every query carries the operator's signed grant (:mod:`shared.grant`), verified
against the coordinator public key pinned here (``coordinator-key``); a node without a pinned
key answers nothing. What may be asked: the node's own policy (:mod:`node.policy`; columns,
bounds, caps, exact answers only with ``allow-exact=true``). Privacy: the node derives every
noise scale itself from the study's public parameters
(:meth:`shared.protocol.PrivacyQuery.plan`), reserves a DP study's whole plan on its own ledger
at the study's first query (``reserve``; a study that does not fit is refused before anything is
spent), and converts each release of a query from that reservation into a charge *before it
reads any data*; the data are then read, clipped to the public bounds (never an error about a
value), and the noisy answer leaves. A reservation lapses after ``reservation-ttl-s`` seconds
without a release (default 1800).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from shared.errors import PrivacyError, QueryRefused, SpecError, UnauthorizedQuery
from shared.protocol import DP_RELEASES, StudyQuery

log = logging.getLogger("rehealth.node")

#: The ledger's anchor of a node without a store, in its state folder (:mod:`node.ledger_anchor`).
ANCHOR_FILE = "ledger-anchor.json"


class NotInStudy(QueryRefused):
    """The query names sites and this node is not one of them: it declines, computing nothing."""


def _whole_study(query: StudyQuery) -> StudyQuery:
    """``query`` asking every operation of a DP study at once: what the node's policy judges
    when the study reserves its plan (each operation's releases and their shares). The β and
    edges are placeholders: under DP the policy judges the releases, not where they are taken."""
    from shared.protocol import Describe, PsFit, PsmStats, PsmWsum, ScoreHist

    beta = (0.0,) * (len(query.design_covariates) + 1)
    whole = (-float("inf"), float("inf"))
    dr = query.privacy is not None and query.privacy.estimator == "dr"  # dr_slope and dr_dsum too
    wsum = PsmWsum(
        beta=beta,
        edges=whole,
        count=(1.0, 1.0),
        center=(0.5,) * 2 * len(query.outcomes),
        max_weight=1.0,
        z_center=(0.5,) * 2 * len(query.design_covariates) if dr else (),
    )
    ops = (
        Describe(),
        PsFit(beta=beta),
        ScoreHist(beta=beta),
        PsmStats(beta=beta, edges=whole, slope=dr),
        wsum,
    )
    return query.model_copy(update={"ops": ops})


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
    coordinator_key: Path | None = None  # the pinned coordinator public key (PEM)
    policy_path: Path | None = None  # the node's policy file (default policy if None)
    allow_exact: bool | None = None  # overrides the policy file's allow_exact
    model_dir: Path | None = None  # where trained risk models are kept (default <state-dir>/models)
    #: the operator accepts studies whose releases after describe go through SecAgg+ with this
    #: node adding only its 1/√K share of the noise (the trust model of shared.study.Privacy)
    accept_secure_aggregation: bool = False
    #: a DP study's reservation lapses this long after its last release (seconds; None: the
    #: ledger's default, :data:`node.ledger.DEFAULT_RESERVATION_TTL_S`)
    reservation_ttl_s: float | None = None

    @property
    def models(self) -> Path | None:
        """The folder trained risk models are stored in, None if the node keeps no state."""
        if self.model_dir is not None:
            return self.model_dir
        return self.state_dir / "models" if self.state_dir is not None else None

    @property
    def policy(self):
        from node.policy import NodePolicy

        return NodePolicy.load(self.policy_path, allow_exact=self.allow_exact)

    def pinned_key(self):
        """The coordinator public key this node trusts; UnauthorizedQuery if none is pinned."""
        from shared.grant import load_public_key

        if self.coordinator_key is None:
            raise UnauthorizedQuery(
                f"site {self.site} has no pinned coordinator key "
                "(node config coordinator-key): it answers nothing"
            )
        try:
            return load_public_key(self.coordinator_key.read_bytes())
        except (OSError, ValueError):
            log.error("site %s: cannot read the pinned coordinator key %s", self.site, self.coordinator_key)
            raise UnauthorizedQuery(f"site {self.site} cannot read its pinned coordinator key") from None

    def verify(self, signed, *, kind: str):
        """The verified grant of a message (signature by the pinned key, right kind)."""
        from shared.grant import verify_grant

        grant = verify_grant(signed, self.pinned_key())
        if grant.kind != kind:
            raise UnauthorizedQuery(f"a {grant.kind} grant does not authorise a {kind} message")
        if self.site not in grant.sites:
            raise NotInStudy(f"site {self.site} is not among the signed study's sites")
        return grant

    def verify_study(self, query: StudyQuery):
        """The query's grant, verified, and the query checked against it term by term."""
        from shared.grant import canonical_json

        grant = self.verify(query.grant, kind="study")
        if query.study_id != grant.grant_id:
            raise UnauthorizedQuery("the query's study id differs from its signed grant's")
        if tuple(query.sites) != tuple(grant.sites):
            raise UnauthorizedQuery("the query's sites differ from its signed grant's")
        if canonical_json(query.terms()) != canonical_json(grant.terms):
            raise UnauthorizedQuery(
                "the query's columns, bounds or privacy terms differ from its signed grant's"
            )
        return grant

    def verify_risk(self, content):
        """A risk-training message's job, checked against its signed grant (the whole job)."""
        from protos.codec import ContractError, decode_risk
        from shared.grant import canonical_json
        from shared.protocol import RiskJob

        try:
            job_json, signed = decode_risk(content)  # the wire contract's RiskRequest
        except ContractError as e:
            raise QueryRefused(f"training message carries no risk job: {e}") from None
        grant = self.verify(signed, kind="risk")
        job = RiskJob.model_validate_json(job_json)
        if job.job_id != grant.grant_id or canonical_json(job.terms()) != canonical_json(grant.terms):
            raise UnauthorizedQuery("the risk job differs from its signed grant")
        return job

    @classmethod
    def from_node_config(cls, cfg: Mapping) -> "NodeRuntime":
        from node.ledger import POPULATION

        site = str(cfg.get("site", "")).strip()
        if not site:
            raise SpecError("node config lacks site (e.g. --node-config 'site=\"insurer_a\"')")
        if "require-dp" in cfg:
            raise SpecError(
                f"node config of site {site}: require-dp is gone — nodes answer only "
                "DP queries unless allow-exact=true (or allow_exact in the policy file)"
            )
        if "dataset" in cfg:  # it used to name the budget: a new name was a fresh budget
            raise SpecError(
                f"node config of site {site}: key 'dataset' is not accepted: the node's "
                "ledger holds one budget for its whole population, chosen by "
                "ledger-url (or state-dir), not by a name; remove the key"
            )
        data, state = cfg.get("data-path"), cfg.get("state-dir")
        try:
            return cls(
                site=site,
                data_path=Path(str(data)) if data else None,
                store_url=str(cfg["store-url"]) if cfg.get("store-url") else None,
                state_dir=Path(str(state)) if state else None,
                ledger_url=str(cfg["ledger-url"]) if cfg.get("ledger-url") else None,
                dataset=POPULATION,
                budget_epsilon=float(cfg.get("budget-epsilon", 10.0)),
                budget_delta=float(cfg.get("budget-delta", 1e-5)),
                coordinator_key=(Path(str(cfg["coordinator-key"])) if cfg.get("coordinator-key") else None),
                policy_path=Path(str(cfg["policy-path"])) if cfg.get("policy-path") else None,
                allow_exact=_bool(cfg["allow-exact"]) if "allow-exact" in cfg else None,
                model_dir=Path(str(cfg["model-dir"])) if cfg.get("model-dir") else None,
                accept_secure_aggregation=_bool(cfg.get("secure-aggregation", False)),
                reservation_ttl_s=(
                    float(cfg["reservation-ttl-s"]) if cfg.get("reservation-ttl-s") is not None else None
                ),
            )
        except (TypeError, ValueError) as e:
            raise SpecError(f"node config of site {site}: {e}") from None

    def answer(self, query: StudyQuery, *, secure_sum: bool = False) -> tuple[dict, dict]:
        """:meth:`respond` without the ids of the charges made (for callers that send nothing)."""
        answers, meta, _charges = self.respond(query, secure_sum=secure_sum)
        return answers, meta

    def respond(self, query: StudyQuery, *, secure_sum: bool = False) -> tuple[dict, dict, list[int]]:
        """Answer a study query from this node's own data.

        The order is the promise: (1) the grant's signature and the query's match with it,
        (2) the node's policy, (3) every check that needs no data, (4) under DP, the ledger
        step: a DP study's first query reserves its whole plan (the policy judges the whole
        plan then, so a study it would refuse later is refused before anything is spent), and
        every release after that is converted from the reservation into a charge (no
        reservation, no release) — then, and only then, (5) the data are read and the answer
        computed. Steps 1–4 depend only on the query, its grant and the node's policy; whatever
        fails after them has already been paid for. A ``cancel`` needs only step 1: it frees
        what the study's reservation holds and nothing else.

        Args:
            secure_sum: the answer leaves only masked, as one input of a SecAgg+ sum (the
                ClientApp's secure-sum handler, behind Flower's ``secaggplus_mod``).

        Returns:
            ``(answers per operation, metadata, ids of the ledger charges made)``; under DP the
            metadata says what the node's ledger has spent and holds reserved. The caller marks
            the charges ``sent`` (:meth:`mark_sent`) once it handed the reply on.

        Raises:
            UnauthorizedQuery, NotInStudy, PolicyRefused, QueryRefused, PrivacyError /
            BudgetExceededError / ReplayRefused, DataError.
        """
        from shared.answer import answer, check_query, control_op, suppress_small_cells

        grant = self.verify_study(query)
        control = control_op(query)
        if control == "cancel":  # frees, never spends: the grant is all it needs
            check_query(query)
            return self._ledger_step(query, None)
        policy = self.policy
        policy.check(query if control is None else _whole_study(query), grant)
        self._check_secure_sum(query, secure_sum)
        check_query(query)
        if query.privacy is None:
            data = self._site_arrays(query)
            exact = answer(query, data, site=self.site)
            return {op: suppress_small_cells(op, a, k=policy.min_cell) for op, a in exact.items()}, {}, []
        if control == "reserve":
            if secure_sum:
                raise QueryRefused(f"site {self.site}: a reservation travels in a plain round")
            if query.privacy.secure_aggregation and not self.accept_secure_aggregation:
                raise PrivacyError(
                    f"site {self.site} does not accept secure-aggregation studies "
                    "(node config secure-aggregation = true accepts them)"
                )
            return self._ledger_step(query, self._plan(query))
        from shared.answer import dp_release
        from shared.dp.mechanisms import secure_rng

        plan = self._plan(query)
        answers, meta, charges = self._ledger_step(query, plan)  # before any data is read
        data = self._site_arrays(query)
        return answer(query, data, dp_release(query, plan, secure_rng()), site=self.site), meta, charges

    def _ledger_step(self, query: StudyQuery, plan) -> tuple[dict, dict, list[int]]:
        """Reserve, cancel or charge (:func:`shared.answer.ledger_step`); the reply's metadata
        says what the population's ledger has spent and holds reserved after it."""
        from node.ledger import DEFAULT_RESERVATION_TTL_S
        from shared.answer import ledger_step

        ledger = self.ledger()
        ttl = self.reservation_ttl_s if self.reservation_ttl_s is not None else DEFAULT_RESERVATION_TTL_S
        charges = ledger_step(query, plan, ledger, ttl_s=ttl)
        state = ledger.state(self.dataset)
        return (
            {},
            {
                "dataset": self.dataset,
                "epsilon_spent": state.spent,
                "epsilon_study": ledger.study_spent(query.study_id),
                "epsilon_reserved": state.reserved,
                "epsilon_budget": self.budget_epsilon,
            },
            charges,
        )

    def mark_sent(self, charge_ids: list[int]) -> None:
        """Record in the ledger that these charges' answer was handed on (to Flower): the last
        point the node controls. Informational — a charge counts either way — so a failure
        here is logged and does not hold the reply back."""
        if not charge_ids:
            return
        try:
            self.ledger().mark_sent(charge_ids)
        except Exception as e:  # noqa: BLE001 - the answer is paid for; sending it is what matters
            log.error(
                "site %s: could not mark %d charge(s) sent: %s", self.site, len(charge_ids), type(e).__name__
            )

    def _site_arrays(self, query: StudyQuery):
        """The site's study arrays; any failure to read them (a missing or corrupt file, an
        unreachable store) is a DataError, whose details stay in the node's log."""
        from shared.errors import DataError, ReHealthError

        try:
            return self._read_site_arrays(query)
        except ReHealthError:
            raise
        except Exception as e:  # noqa: BLE001 - OS, decode, parser and driver errors alike
            # an OS error names a path; a parser's or driver's message may quote a cell: withheld
            said = f": {e}" if isinstance(e, OSError) else " (its message is withheld: it may quote the data)"
            log.error("site %s: cannot read its study data: %s%s", self.site, type(e).__name__, said)
            raise DataError(f"site {self.site}: its study data could not be read") from None

    def _read_site_arrays(self, query: StudyQuery):
        from node.study_service import load_site_arrays, prepare_arrays

        if self.store_url:
            from node.store import open_store

            frame = open_store(self.store_url).cohort_columns(
                covariates=[c.name for c in query.covariates],
                treatment_column=query.treatment_column,
                outcomes=[o.name for o in query.outcomes],
            )
            return prepare_arrays(frame, query)
        if self.data_path is not None:
            cache = self.state_dir / "cache" if self.state_dir else None
            return load_site_arrays(self.data_path, query, cache)
        raise QueryRefused(f"site {self.site} has no study data configured (store-url or data-path)")

    def _check_secure_sum(self, query: StudyQuery, secure_sum: bool) -> None:
        """A node adds only its share of the noise when, and only when, its answer is masked."""
        privacy = query.privacy
        shared_noise = (
            privacy is not None
            and privacy.secure_nodes is not None
            and any(privacy.share(r) > 1 for op in query.ops for r in DP_RELEASES.get(op.op, ()))
        )
        if shared_noise and not secure_sum:
            raise PrivacyError(
                f"site {self.site} releases a share of the noise only as a masked "
                "SecAgg+ input, never in a plain reply"
            )
        if secure_sum and not shared_noise:
            raise QueryRefused(
                f"site {self.site}: a secure-sum round must carry a secure-"
                "aggregation study's releases after describe"
            )
        if shared_noise and not self.accept_secure_aggregation:
            raise PrivacyError(
                f"site {self.site} does not accept secure-aggregation studies "
                "(node config secure-aggregation = true accepts them)"
            )

    def ledger(self):
        """The node's ledger: one population, one budget, at ``ledger-url`` or
        ``<state-dir>/ledger.db`` (the operator's choice; no query or name selects another).

        Checked against the node's anchor first (:mod:`node.ledger_anchor`): a ledger that is
        missing, another one or behind the charges the node recorded is refused, not started
        afresh with the whole budget."""
        from node.ledger_anchor import open_anchored_ledger

        url = self.ledger_url
        if url is None:
            if self.state_dir is None:
                raise PrivacyError(f"site {self.site} has no privacy ledger (ledger-url or state-dir)")
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            url = f"sqlite:///{self.state_dir / 'ledger.db'}"
        ledger = open_anchored_ledger(url, self.ledger_anchor())
        ledger.ensure_budget(dataset=self.dataset, epsilon=self.budget_epsilon, delta=self.budget_delta)
        return ledger

    def ledger_anchor(self):
        """Where this node keeps its ledger's mark: its store, else its state folder (a node
        that reads a data file); None when it has neither (nothing to remember it in)."""
        from node.ledger_anchor import FileAnchor, StoreAnchor

        if self.store_url:
            return StoreAnchor(self.store_url)
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            return FileAnchor(self.state_dir / ANCHOR_FILE)
        return None

    def _plan(self, query: StudyQuery):
        """The study's noise plan, derived here from its public parameters and cached in the
        state folder (calibration costs seconds; each Flower message is a fresh process).

        A cached plan is used only if this code derives the same plan at its ρ (sensitivities,
        shares and the ρ fitting ε under this accountant: one composition, not the search): the
        key names the terms, not the code, so a plan cached before an upgrade that corrected a
        Δ would otherwise keep releasing at the old one (tests/security/test_answer_oracles.py d).
        """
        import hashlib
        import json

        from shared.dp.plan import NoisePlan

        assert query.privacy is not None
        dims = {"n_covariates": len(query.design_covariates), "n_outcomes": len(query.outcomes)}
        public = json.dumps({**dims, "protocol": query.protocol})  # new code, new plans
        key = hashlib.sha256((query.privacy.model_dump_json(exclude={"caps"}) + public).encode()).hexdigest()
        cache = self.state_dir / "plans" / f"{key[:32]}.json" if self.state_dir else None
        if cache is not None and cache.exists():
            cached = NoisePlan.from_dict(json.loads(cache.read_text()))
            try:
                if query.privacy.plan(**dims, rho=cached.rho) == cached:
                    return cached
            except PrivacyError:
                pass
            log.warning("site %s: a cached noise plan is not this code's: derived afresh", self.site)
        plan = query.privacy.plan(**dims)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(plan.to_dict()))
            tmp.replace(cache)
        return plan
