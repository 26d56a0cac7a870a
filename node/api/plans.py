"""``POST /v1/plans/events``: the employer's app reports that a plan was opened or an item
completed. Authenticated by the HMAC signature of :mod:`node.plans.signing` (the gateway holds
no API key); stale, forged and replayed callbacks are refused (:mod:`node.plans.events`).
The refusal says why in one line and never echoes the body."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from node.plans.events import CallbackRefused, CallbackSettings, accept_callback

log = logging.getLogger("rehealth.api")

ROUTE = "/v1/plans/events"


def install_plan_callbacks(app: FastAPI, settings: CallbackSettings) -> None:
    @app.post(ROUTE, include_in_schema=True, summary="Signed opened/completed callback of a plan")
    async def plan_event(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            event = await run_in_threadpool(accept_callback, settings, dict(request.headers), body)
        except CallbackRefused as e:
            log.warning("plan callback refused (%d): %s", e.status, e)
            return JSONResponse({"detail": str(e)}, status_code=e.status)
        return JSONResponse({"recorded": event})
