"""FastAPI app factory for the node's scoring API.

Endpoints (JSON in and out; OpenAPI at ``/openapi.json``; no ``/docs`` page)::

    GET  /v1/health          no key        liveness and the model version in use
    GET  /livez              no key        the process answers (restart it if not)
    GET  /readyz             no key        store opens, model scores, budget left (503 if not)
    GET  /metrics            ops           Prometheus metrics (key as X-API-Key or Bearer)
    GET  /v1/model           any role      the model card: version, training record, metrics
    POST /v1/score           underwriter   one person's probability and tier
    POST /v1/score/batch     underwriter   up to 10 000 persons at once
    GET  /v1/groups?by=…     hr            risk profiles by department, age band, job type (DP,
                                           suppressed, charged once; format=csv for export)
    GET  /v1/programme       hr            plan uptake per stage and department (DP, suppressed,
                                           charged once per state of the plans; needs the store)
    GET  /hr/…, POST /hr/…   hr (session)  the HR web view (node.web.hr): sign in with an hr key
    GET  /report             no key        the report page: verify a report.json in the browser

``admin`` may call everything. Keys come in the ``X-API-Key`` header: absent, unknown, expired
or revoked → 401, known but the wrong role → 403. Invalid bodies → 422 naming the field
(:mod:`node.api.errors`); a body over ``max_body_bytes`` → 413 and one that is not JSON → 415,
both before the key is checked (:mod:`node.api.middleware`, which also writes the audit log).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader

from node.api.auth import HEADER, ApiKey, KeyRing
from node.api.errors import ApiError, install_error_handlers
from node.api.groups import GroupPolicy, GroupViews, data_version, group_frame, view_csv
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
    ProgrammeView,
    ReadyOut,
    ScoreOut,
)
from node.risk.model_store import ModelStore, StoredModel
from node.risk.scoring import Scorer, read_book, score_book
from shared.dp.mechanisms import secure_rng
from shared.errors import DataError, SpecError
from shared.features import FEATURE_NAMES, FEATURES
from shared.risk.arch import REFERENCE
from shared.risk.tiers import TIERS

if TYPE_CHECKING:
    from node.plans.events import CallbackSettings
    from node.web.session import Sessions

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


def group_views(
    book: pd.DataFrame | str | Path | Callable[[], pd.DataFrame | str | Path | None] | None,
    *,
    scorer: Scorer,
    policy: GroupPolicy,
    ledger,
    rng: np.random.Generator | None = None,
) -> GroupViews:
    """The group views of ``book`` scored by ``scorer`` (no book: views unavailable; a callable:
    read at the first request). Shared by the API and ``rehealth node groups`` so both store and
    find a view under the same key."""

    def prepare(source=book) -> tuple[pd.DataFrame | None, str]:
        frame = read_book(source) if isinstance(source, (str, Path)) else source
        if frame is None:
            return None, ""
        frame = frame.reset_index(drop=True)
        scored = score_book(frame, scorer)
        return group_frame(
            frame.assign(tier=scored["tier"], probability=scored["probability"])
        ), data_version(frame)

    return GroupViews(
        (lambda: prepare(book())) if callable(book) else prepare(),
        policy=policy,
        model_version=scorer.version,
        cutoffs=scorer.cutoffs,
        ledger=ledger,
        rng=rng if rng is not None else secure_rng(),
    )


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
    book: pd.DataFrame | str | Path | Callable[[], pd.DataFrame | str | Path | None] | None = None,
    group_policy: GroupPolicy = GroupPolicy(),
    ledger=None,
    rng: np.random.Generator | None = None,
    store_url: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    cors_origins: Sequence[str] = (),
    plan_callbacks: CallbackSettings | None = None,
    hr_view: bool = True,
    reports_dir: str | Path | None = None,
    sessions: Sessions | None = None,
) -> FastAPI:
    """Build the node's scoring API.

    Args:
        keys: a :class:`KeyRing`, a keys file path, or ``{plaintext key: role}``.
        model: the model to serve; or ``model_dir`` (+ ``version``, default the latest).
        cutoffs: tier cut-offs overriding the model's recorded ones.
        book: the population for group views (DataFrame or CSV/Parquet path with the 16
            features, ``department``, ``job_type`` and ``age`` or ``age_band``; or a callable
            returning one, called at the first group request); ``None`` disables them.
        group_policy: k-suppression and Gaussian noise of group views.
        ledger: the node's :class:`node.ledger.PrivacyLedger` (``ledger_url`` in node.toml);
            each group view is charged to its population budget — the one studies and risk
            training draw from — before release, and kept there to be served again. Without
            one, views are still noised but not accounted.
        rng: noise generator (default :func:`shared.dp.mechanisms.secure_rng`).
        store_url: the node's store, checked by ``/readyz`` (``None``: not checked).
        max_body_bytes: larger request bodies get 413 unread (``[api] max_body_bytes``).
        cors_origins: browser origins allowed to call the API (default none: no CORS).
        plan_callbacks: a :class:`node.plans.events.CallbackSettings`: serve the signed
            ``POST /v1/plans/events`` callback of the employer's app (``None``: not served).
        hr_view: serve the HR web view at ``/hr/`` (:mod:`node.web.hr`) and the report page at
            ``/report``.
        reports_dir: where ``rehealth node report import`` keeps evidence reports (the HR
            view shows the latest); ``None``: no report shown.
        sessions: the HR view's session table (tests pass one with a clock).

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
    views = group_views(book, scorer=scorer, policy=group_policy, ledger=ledger, rng=rng)

    app = FastAPI(
        title="ReHealth node scoring API",
        version="1",
        # no /docs or /redoc: FastAPI's pages load their script from a CDN (floating version, no
        # integrity hash) into this origin, where HR's session and admins' keys live
        # (tests/security/test_api_transport.py f); /openapi.json stays for the integrator's viewer
        docs_url=None,
        redoc_url=None,
        description="Cardiovascular risk scores at the node. Per-person scores are "
        "returned only to the authenticated caller and never leave the node.",
    )
    install_error_handlers(app)
    budget_left = (lambda: ledger.state().left) if ledger is not None else None
    probe = ReadinessProbe(model_ok=lambda: _scores(scorer), store_url=store_url, budget_left=budget_left)
    metrics = ApiMetrics(budget_left=budget_left, ready=lambda: probe.check().ready)
    # added innermost first: the request context wraps CORS, which wraps the body gate
    app.add_middleware(_ServerTiming)
    app.add_middleware(BodyGate, max_bytes=max_body_bytes, form_prefixes=("/hr/",) if hr_view else ())
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

    if plan_callbacks is not None:
        from node.api.plans import install_plan_callbacks

        install_plan_callbacks(app, plan_callbacks)

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
    def group_view(
        by: str = Query(
            "department",
            description="Dimensions, comma-separated: any of department, age_band, job_type",
            examples=["department,job_type"],
        ),
        format: Literal["json", "csv"] = Query("json", description="json, or csv for export"),
    ) -> Any:
        try:
            view = views.get(by)
        except SpecError as e:
            raise ApiError(422, str(e), field="by") from None
        except DataError as e:
            raise ApiError(404, str(e)) from None
        if format == "csv":
            return PlainTextResponse(view_csv(view), media_type="text/csv")
        return view

    programme = None
    if store_url is not None:
        from node.plans.uptake import ProgrammeViews

        programme = ProgrammeViews(
            store_url, policy=group_policy, ledger=ledger, rng=rng if rng is not None else secure_rng()
        )

        @app.get(
            "/v1/programme",
            response_model=ProgrammeView,
            responses=_ERRORS,
            dependencies=[Depends(require("hr"))],
        )
        def programme_view() -> Any:
            """People with a plan per delivery stage and department (noised, suppressed, charged
            once per state of the plans; :mod:`node.plans.uptake`)."""
            return programme.get()

    if hr_view:
        from node.web.hr import install_hr_view
        from shared.web.report_page import csp, page

        install_hr_view(
            app,
            ring=ring,
            views=views,
            programme=programme,
            reports_dir=Path(reports_dir) if reports_dir is not None else None,
            sessions=sessions,
        )

        @app.get("/report", include_in_schema=False)
        def report_page() -> Response:
            """The report page: checks a report in the browser; no data of this node on it."""
            return Response(
                page(),
                media_type="text/html; charset=utf-8",
                headers={"Content-Security-Policy": csp(), "X-Content-Type-Options": "nosniff"},
            )

    return app
