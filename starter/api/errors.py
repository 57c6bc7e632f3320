"""The API's one error shape, ``{"type", "field", "message"}``, and the handlers that make it.

Statuses have the CLI's meanings: 400 a refused request (``field`` names the culprit, as the
CLI's exit status 2), 401 no valid credentials, 403 a permission missing (naming it and the
resource), 404 no such object, 409 a conflict (a task id already taken), 503 a service behind
the API (Temporal, PostgreSQL) unreachable (the CLI's exit status 3). Anything else is a 500
whose body says only that (the details go to the API's log, never a traceback in a body).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from starter.errors import RequestError
from taskomatic.codec import CodecError
from taskomatic.errors import ErrorType, error_info
from taskomatic.logs import get_logger

log = get_logger(component="api")

_TYPES = {400: "RequestRefused", 401: "Unauthenticated", 403: "Forbidden", 404: "NotFound",
          405: "MethodNotAllowed", 409: "Conflict", 413: "TooLarge", 422: "Unprocessable",
          503: "ServiceUnavailable"}
_UNREACHABLE = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED}


class ErrorBody(BaseModel):
    """Every error the API answers: what kind, which request field (if one), why."""

    type: str
    field: str | None = None
    message: str


class ApiError(Exception):
    """Raise to answer ``status`` with an ``ErrorBody``; ``type`` defaults by status."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 type: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(type=type or _TYPES.get(status, "Error"), field=field,
                              message=message)
        self.headers = headers


def not_found(err: RequestError) -> ApiError:
    """A refusal of an id that names nothing (``no task 'x'``) as a 404 naming the field."""
    return ApiError(404, err.reason, field=err.field)


# The responses every route may give, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": _TYPES[status]}
    for status in (400, 401, 403, 503)}

# For routes about one named object: 404 when there is none (or the caller may not see it).
NOT_FOUND_RESPONSE: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": _TYPES[404]}}


def _answer(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body.model_dump(), status_code=err.status, headers=err.headers)


def as_api_error(err: Exception) -> ApiError | None:
    """The API error an exception of the starter library stands for; ``None`` if unexpected."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, RequestError):
        return ApiError(400, err.reason, field=err.field)
    if isinstance(err, WorkflowAlreadyStartedError):
        return ApiError(409, f"a task with this id exists already ({err.workflow_id})",
                        field="task_id")
    if isinstance(err, RPCError):
        if err.status in _UNREACHABLE:
            return ApiError(503, f"Temporal does not answer: {err.message}")
        if err.status == RPCStatusCode.NOT_FOUND:
            return ApiError(404, err.message)
        return None
    if isinstance(err, ApplicationError):
        info = error_info(err)
        if info.type is ErrorType.DATABASE_UNAVAILABLE:
            return ApiError(503, info.message)
        if not info.retryable:
            return ApiError(400, info.message.removeprefix(f"{info.field}: "), field=info.field)
    if isinstance(err, CodecError):
        return ApiError(503, f"the codec cannot work: {err}")
    return None


def install(app: FastAPI) -> None:
    """Add the handlers that turn every error into an ``ErrorBody``."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path",
                                                                  "header")]
        refusal = request_error_of(loc, str(first.get("msg", "invalid")))
        return _answer(ApiError(400, refusal.reason, field=refusal.field))

    @app.exception_handler(HTTPException)
    async def http(request: Request, err: HTTPException) -> JSONResponse:
        return _answer(ApiError(err.status_code, str(err.detail), headers=err.headers))

    @app.exception_handler(Exception)
    async def anything(request: Request, err: Exception) -> JSONResponse:
        known = as_api_error(err)
        if known is not None:
            return _answer(known)
        log.exception("request failed", method=request.method, path=request.url.path)
        return _answer(ApiError(500, "internal error; the API's log has the details",
                                type="InternalError"))

    for cls in (ApiError, RequestError, WorkflowAlreadyStartedError, RPCError, ApplicationError,
                CodecError):
        app.add_exception_handler(cls, anything)


def request_error_of(loc: list[str], message: str) -> RequestError:
    """A pydantic problem at ``loc`` as a ``RequestError``; a check across fields names its
    field inside the message (``"name: must be …"``), as ``starter.errors.request_error``."""
    field = ".".join(loc) or None
    message = message.removeprefix("Value error, ")
    named = re.match(r"([a-z_][a-z_.0-9]*): (.*)", message, re.S)
    if named:
        field = ".".join(filter(None, [field, named.group(1)]))
        message = named.group(2)
    return RequestError(field, message)
