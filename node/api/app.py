"""FastAPI app factory for the node's scoring API.

Endpoints (JSON in and out; OpenAPI at ``/openapi.json``, docs at ``/docs``)::

    GET  /v1/health          no key        liveness and the model version in use
    GET  /livez              no key        the process answers (restart it if not)
    GET  /readyz             no key        store opens, model scores, budget left (503 if not)
    GET  /metrics            ops           Prometheus metrics (key as X-API-Key or Bearer)
    GET  /v1/model           any role      the model card: version, training record, metrics
    POST /v1/score           underwriter   one person's probability and tier
    POST /v1/score/batch     underwriter   up to 10 000 persons at once
    GET  /v1/groups?by=…     hr            counts per tier by department / age band (k, DP)

``admin`` may call everything. Keys come in the ``X-API-Key`` header: absent, unknown, expired
or revoked → 401, known but the wrong role → 403. Invalid bodies → 422 naming the field
(:mod:`node.api.errors`); a body over ``max_body_bytes`` → 413 and one that is not JSON → 415,
both before the key is checked (:mod:`node.api.middleware`, which also writes the audit log).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader

from node.api.auth import HEADER, ApiKey, KeyRing
from node.api.errors import ApiError, install_error_handlers
from node.api.groups import GROUPINGS, GroupPolicy, exact_counts, group_frame, noisy_cells
from node.api.metrics import ApiMetrics
from node.api.middleware import STATE_KEY, BodyGate, RequestContext
from node.api.ready import ReadinessProbe
from node.api.schemas import (
    BatchIn,
    BatchOut,
    ErrorOut,
    GroupView,
    HealthOut,
    LiveOut,
    ModelOut,
    PersonIn,
    ReadyOut,
    ScoreOut,
)
from node.risk.model_store import ModelStore, StoredModel
from node.risk.scoring import Scorer, read_book, score_book
from shared.dp.mechanisms import secure_rng
from shared.features import FEATURE_NAMES, FEATURES
from shared.risk.arch import REFERENCE
from shared.risk.tiers import TIERS

GroupBy = Literal["department", "age_band", "department,age_band"]
assert set(GroupBy.__args__) == set(GROUPINGS)  # type: ignore[attr-defined]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
    422: {"model": ErrorOut},
}
_key_header = APIKeyHeader(
    name=HEADER, auto_error=False, description="Node API key (roles: underwriter, hr, ops, admin)"
)
#: 8 MiB: a full 10 000-person batch with 128-character refs and full-precision floats fits
MAX_BODY_BYTES = 8 * 1024 * 1024


def _persons_matrix(persons: Sequence[PersonIn]) -> np.ndarray:
    return np.array([[getattr(p, n) for n in FEATURE_NAMES] for p in persons], dtype=np.float64)


class _ServerTiming:
    """ASGI middleware adding ``Server-Timing: app;dur=<ms>`` (request in → response start), so
    latency inside the node can be told apart from network and client time."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()

        async def timed_send(message):
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - t0) * 1e3
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        (b"server-timing", f"app;dur={ms:.3f}".encode()),
                    ],
                }
            await send(message)

        await self.app(scope, receive, timed_send)


class _GroupViews:
    """Computes each grouping's noisy view once (charging the ledger first), then serves it again.

    With a ledger, the released view is stored in the ledger's database with the charge that
    paid for it (:meth:`node.ledger.PrivacyLedger.release_once`), keyed by the book's groups,
    the model version, the grouping and the noise policy: a restart serves the same noisy view
    instead of drawing (and paying for) a fresh one that could be averaged with the first.
    """

    def __init__(
        self,
        groups: pd.DataFrame | None,
        *,
        policy: GroupPolicy,
        version: str,
        ledger,
        rng: np.random.Generator,
    ):
        self.groups, self.policy, self.version = groups, policy, version
        self.ledger, self.rng = ledger, rng
        self._cache: dict[str, GroupView] = {}
        self._lock = threading.Lock()
        # ε needs the accountant (an opacus/torch import): pay that at start-up, not per request.
        self.epsilon = policy.epsilon if groups is not None else float("nan")
        self._fingerprint = _groups_fingerprint(groups) if groups is not None else ""

    def _view(self, by: str, labels: list[str], counts: np.ndarray) -> GroupView:
        cells = noisy_cells(labels, counts, policy=self.policy, rng=self.rng)
        return GroupView(
            by=by,
            k=self.policy.k,
            sigma=self.policy.sigma,
            epsilon=self.epsilon,
            delta=self.policy.delta,
            model_version=self.version,
            cells=cells,
        )

    def _key(self, by: str) -> str:
        import hashlib
        import json

        p = self.policy
        what = json.dumps(
            {
                "by": by,
                "k": p.k,
                "sigma": p.sigma,
                "delta": p.delta,
                "model": self.version,
                "groups": self._fingerprint,
            },
            sort_keys=True,
        )
        return "group_view:" + hashlib.sha256(what.encode()).hexdigest()

    def get(self, by: str) -> GroupView:
        if self.groups is None:
            raise ApiError(404, "no scored book is loaded at this node: group views unavailable")
        with self._lock:
            if by not in self._cache:
                labels, counts = exact_counts(self.groups, by=by)
                if self.ledger is None:  # noised, not accounted (tests, demos without a node)
                    self._cache[by] = self._view(by, labels, counts)
                else:  # pay before anything noisy exists; a view released before is re-served
                    body, charge = self.ledger.release_once(
                        key=self._key(by),
                        study_id="group-view",
                        query=f"group_view:{by}",
                        sigma=self.policy.sigma,
                        sensitivity=1.0,
                        make=lambda: self._view(by, labels, counts).model_dump_json(),
                    )
                    self._cache[by] = GroupView.model_validate_json(body)
                    if charge is not None:  # the response is all that is left to send
                        self.ledger.mark_sent(charge.id)
            return self._cache[by]


def _groups_fingerprint(groups: pd.DataFrame) -> str:
    """SHA-256 of every person's (department, age band, tier), in order: the view's exact input.
    Per-person rows make it a high-entropy digest, unlike a digest of the count table."""
    import hashlib

    digest = hashlib.sha256(",".join(map(str, groups.columns)).encode())
    digest.update(pd.util.hash_pandas_object(groups, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _scores(scorer: Scorer) -> bool:
    """The model gives a probability in [0, 1] for a reference person (continuous features at
    their reference mean, within bounds; binary ones 0): what readiness asks of the model."""
    x = np.array(
        [[0.0 if f.kind == "binary" else min(max(REFERENCE[f.name][0], f.lo), f.hi) for f in FEATURES]],
        dtype=np.float64,
    )
    p = scorer.score(x).prob
    return bool(np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1)))


def _load_model(model: StoredModel | None, model_dir: str | Path | None, version: str | None) -> StoredModel:
    if model is not None:
        return model
    if model_dir is None:
        raise ValueError("create_app needs a model or a model_dir")
    store = ModelStore(model_dir)
    return store.load(version) if version else store.latest()


def create_app(
    *,
    keys: KeyRing | Mapping[str, str] | str | Path,
    model: StoredModel | None = None,
    model_dir: str | Path | None = None,
    version: str | None = None,
    cutoffs: Sequence[float] | None = None,
    book: pd.DataFrame | str | Path | None = None,
    group_policy: GroupPolicy = GroupPolicy(),
    ledger=None,
    rng: np.random.Generator | None = None,
    store_url: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """Build the node's scoring API.

    Args:
        keys: a :class:`KeyRing`, a keys file path, or ``{plaintext key: role}``.
        model: the model to serve; or ``model_dir`` (+ ``version``, default the latest).
        cutoffs: tier cut-offs overriding the model's recorded ones.
        book: the scored population for group views (DataFrame or CSV/Parquet path with the
            16 features, ``department`` and ``age`` or ``age_band``); ``None`` disables them.
        group_policy: k-suppression and Gaussian noise of group views.
        ledger: the node's :class:`node.ledger.PrivacyLedger` (``ledger_url`` in node.toml);
            each group view is charged to its population budget — the one studies and risk
            training draw from — before release, and kept there to be served again. Without
            one, views are still noised but not accounted.
        rng: noise generator (default :func:`shared.dp.mechanisms.secure_rng`).
        store_url: the node's store, checked by ``/readyz`` (``None``: not checked).
        max_body_bytes: larger request bodies get 413 unread (``[api] max_body_bytes``).
        cors_origins: browser origins allowed to call the API (default none: no CORS).

    Raises:
        SpecError: no model, unreadable keys; DataError: a book row out of bounds (named).
    """
    ring = (
        keys
        if isinstance(keys, KeyRing)
        else (KeyRing.from_plain(keys) if isinstance(keys, Mapping) else KeyRing.from_file(keys))
    )
    stored = _load_model(model, model_dir, version)
    scorer = Scorer.from_model(stored, cutoffs=cutoffs)
    frame = read_book(book) if isinstance(book, (str, Path)) else book
    groups = None
    if frame is not None:
        scored = score_book(frame, scorer)
        groups = group_frame(frame.reset_index(drop=True).assign(tier=scored["tier"]))
    views = _GroupViews(
        groups, policy=group_policy, version=stored.version, ledger=ledger, rng=rng or secure_rng()
    )

    app = FastAPI(
        title="ReHealth node scoring API",
        version="1",
        description="Cardiovascular risk scores at the node. Per-person scores are "
        "returned only to the authenticated caller and never leave the node.",
    )
    install_error_handlers(app)
    budget_left = (lambda: ledger.state().left) if ledger is not None else None
    probe = ReadinessProbe(model_ok=lambda: _scores(scorer), store_url=store_url, budget_left=budget_left)
    metrics = ApiMetrics(budget_left=budget_left, ready=lambda: probe.check().ready)
    # added innermost first: the request context wraps CORS, which wraps the body gate
    app.add_middleware(_ServerTiming)
    app.add_middleware(BodyGate, max_bytes=max_body_bytes)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[HEADER, "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(RequestContext, router=app.router, metrics=metrics)

    def require(*roles: str, bearer: bool = False):
        allowed = set(roles) | {"admin"}

        async def check(request: Request, presented: str | None = Depends(_key_header)) -> ApiKey:
            if presented is None and bearer:  # Prometheus sends its credentials this way
                scheme, _, token = request.headers.get("authorization", "").partition(" ")
                presented = token.strip() if scheme.lower() == "bearer" else None
            key = ring.lookup(presented)
            if key is None:
                raise ApiError(
                    401,
                    f"missing API key (header {HEADER})" if not presented else "unknown API key",
                    field=HEADER,
                )
            setattr(request.state, STATE_KEY, key)  # for the audit line: who, never the key
            refused = key.refusal()
            if refused is not None:
                raise ApiError(401, f"API key {key.key_id} is {refused}", field=HEADER)
            if key.role not in allowed:
                raise ApiError(
                    403,
                    f"role '{key.role}' may not do this (needs {' or '.join(sorted(allowed))})",
                    field=HEADER,
                )
            return key

        return check

    @app.get("/v1/health", response_model=HealthOut)
    async def health() -> dict:
        return {"status": "ok", "model_version": stored.version}

    @app.get("/livez", response_model=LiveOut)
    async def livez() -> dict:
        return {"status": "alive"}

    @app.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}})
    def readyz() -> JSONResponse:
        r = probe.check()
        return JSONResponse(
            {"status": "ready" if r.ready else "not ready", "checks": r.checks},
            status_code=200 if r.ready else 503,
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses=_ERRORS,
        dependencies=[Depends(require("ops", bearer=True))],
    )
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get(
        "/v1/model",
        response_model=ModelOut,
        responses=_ERRORS,
        dependencies=[Depends(require("underwriter", "hr"))],
    )
    async def model_card() -> dict:
        r = stored.record
        return {
            "version": stored.version,
            "kind": r.kind,
            "cutoffs": scorer.cutoffs,
            "rounds": r.rounds,
            "nodes": r.nodes,
            "epsilon": r.epsilon,
            "delta": r.delta,
            "metrics": r.metrics,
            "source": r.source,
            "created_at": r.created_at,
        }

    @app.post(
        "/v1/score",
        response_model=ScoreOut,
        responses=_ERRORS,
        dependencies=[Depends(require("underwriter"))],
    )
    async def score_one(person: PersonIn) -> JSONResponse:
        s = scorer.score(_persons_matrix([person]))
        # A Response skips FastAPI's re-validation of the output: the real-time path stays short.
        return JSONResponse(
            {
                "ref": person.ref,
                "probability": float(s.prob[0]),
                "tier": TIERS[int(s.tier_idx[0])],
                "model_version": stored.version,
            }
        )

    @app.post(
        "/v1/score/batch",
        response_model=BatchOut,
        responses=_ERRORS,
        dependencies=[Depends(require("underwriter"))],
    )
    async def score_batch(batch: BatchIn) -> JSONResponse:
        s = scorer.score(_persons_matrix(batch.persons))
        tiers = [TIERS[i] for i in s.tier_idx.tolist()]
        results = [
            {"ref": p.ref, "probability": prob, "tier": t, "model_version": stored.version}
            for p, prob, t in zip(batch.persons, s.prob.tolist(), tiers)
        ]
        counts = np.bincount(s.tier_idx, minlength=len(TIERS)).tolist()
        # Built directly (not re-validated): up to 10 000 rows of already-checked values.
        return JSONResponse(
            {
                "model_version": stored.version,
                "count": len(results),
                "tier_counts": dict(zip(TIERS, counts)),
                "results": results,
            }
        )

    @app.get(
        "/v1/groups",
        response_model=GroupView,
        responses={**_ERRORS, 404: {"model": ErrorOut}},
        dependencies=[Depends(require("hr"))],
    )
    def group_view(by: GroupBy = Query("department")) -> GroupView:
        return views.get(by)

    return app
