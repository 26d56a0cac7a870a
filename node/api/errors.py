"""Uniform JSON errors: ``{"error": ..., "field": ..., "errors": [...]}``, never a traceback.

Validation problems are rewritten from pydantic's codes into words an integrator can act on,
naming the field (``persons[3].age``) and, for bounds, the public bounds of the feature.
"""

from __future__ import annotations

from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import DataError, ReHealthError
from shared.features import FEATURES_BY_NAME


class ApiError(Exception):
    """An error the API answers with ``status`` and a JSON body."""

    def __init__(self, status: int, error: str, *, field: str | None = None):
        super().__init__(error)
        self.status, self.error, self.field = status, error, field


def _field_path(loc: Sequence[Any]) -> str:
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _feature_bounds(name: str) -> str:
    f = FEATURES_BY_NAME.get(name)
    if f is None:
        return ""
    return " (0 or 1)" if f.kind == "binary" else f" [{f.lo:g}, {f.hi:g}] {f.unit}".rstrip()


def describe(err: dict) -> dict:
    """One pydantic error → ``{"field", "error"}`` in words."""
    loc = err.get("loc", ())
    path = _field_path(loc)
    name = str(loc[-1]) if loc else ""
    kind, value = err.get("type", ""), err.get("input")
    if kind == "missing":
        msg = f"missing feature '{name}'" if name in FEATURES_BY_NAME else f"missing field '{path}'"
    elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        msg = f"{path}={value!r} is outside the public bounds{_feature_bounds(name)}"
    elif kind == "literal_error" and name in FEATURES_BY_NAME:
        msg = f"{path}={value!r}: binary feature, must be 0 or 1"
    elif kind == "literal_error":
        msg = f"{path}={value!r}: {err.get('msg', 'not allowed')}"
    elif kind.startswith(("float", "int", "bool", "string", "list", "model", "dict")):
        msg = f"{path}: wrong type, {err.get('msg', '').lower()} (got {type(value).__name__})"
    elif kind == "extra_forbidden":
        msg = f"unknown field '{path}'"
    elif kind == "json_invalid":
        msg = "request body is not valid JSON"
    elif kind in ("too_short", "too_long"):
        msg = f"{path}: {err.get('msg', '')}"
    else:
        msg = f"{path}: {err.get('msg', 'invalid')}"
    return {"field": path, "error": msg}


def error_body(error: str, field: str | None, errors: list[dict] | None = None) -> dict:
    return {"error": error, "field": field, "errors": errors or []}


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that make every error a JSON body naming the field."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [describe(e) for e in exc.errors()]
        first = errs[0] if errs else {"error": "invalid request", "field": None}
        return JSONResponse(status_code=422, content=error_body(str(first["error"]), first["field"], errs))

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content=error_body(exc.error, exc.field))

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        return JSONResponse(status_code=422, content=error_body(str(exc), exc.field))

    @app.exception_handler(ReHealthError)
    async def _domain(_: Request, exc: ReHealthError) -> JSONResponse:
        return JSONResponse(status_code=409, content=error_body(str(exc), None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=error_body(str(exc.detail), None))
