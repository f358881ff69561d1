"""Errors are types; one handler renders each as an RFC 9457 problem document."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.kit.crypto import CorruptionError

log = logging.getLogger("tearline.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://tearline.invalid/problems/"


class AppError(Exception):
    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        problem: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            problem["detail"] = self.detail
        return problem


class Unauthorized(AppError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self) -> None:
        # One answer for every token failure: no hint which check failed.
        super().__init__(
            "The access token is missing, invalid or expired.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


class Forbidden(AppError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(AppError):
    status, title, slug = 404, "Not Found", "not-found"

    def __init__(self) -> None:
        # Deny looks like absence: the same text for "no such thing" and "not for you".
        super().__init__("No such resource.")


class Conflict(AppError):
    status, title, slug = 409, "Conflict", "conflict"


class PreconditionFailed(AppError):
    status, title, slug = 412, "Precondition Failed", "precondition-failed"


class PreconditionRequired(AppError):
    status, title, slug = 428, "Precondition Required", "precondition-required"


class PayloadTooLarge(AppError):
    status, title, slug = 413, "Content Too Large", "payload-too-large"


class Unprocessable(AppError):
    status, title, slug = 422, "Unprocessable Content", "validation"

    def __init__(self, detail: str, errors: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(detail)
        self.errors = list(errors)

    def body(self) -> dict[str, Any]:
        problem = super().body()
        problem["errors"] = self.errors
        return problem


class TooManyRequests(AppError):
    status, title, slug = 429, "Too Many Requests", "rate-limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"This client exceeded its rate; retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


class ServiceUnavailable(AppError):
    status, title, slug = 503, "Service Unavailable", "unavailable"


class ContentCorrupted(AppError):
    status, title, slug = 500, "Stored Content Corrupted", "corrupted-content"

    def __init__(self) -> None:
        super().__init__("Stored content failed its integrity check and is not served.")


class Problem(BaseModel):
    """RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None


class ValidationProblem(Problem):
    errors: list[dict[str, Any]] = []


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    """A problem+json response."""
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


# Every route that reaches the database answers 503 while the database does not answer.
DATABASE_DOWN = 503


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of a route's error responses (and 503), all problem documents."""
    declared: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, DATABASE_DOWN}):
        model = ValidationProblem if status == 422 else Problem
        declared[status] = {
            "model": model,
            "description": HTTPStatus(status).phrase,
            "content": {
                PROBLEM_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    return declared


def _safe_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # Never echo the rejected input back: it may be a secret or report content.
    return [
        {
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in errors
    ]


# PostgreSQL SQLSTATE classes of an unavailable server: connection exceptions (08), operator
# intervention such as a shutdown or "cannot connect now" (57P), insufficient resources (53).
_UNAVAILABLE_STATES = ("08", "57P", "53")
_SQLITE_BUSY = ("database is locked", "database is busy")


def database_unavailable(exc: BaseException) -> bool:
    """Whether a database error means "not available now" rather than a fault to fix."""
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str):
        return state.startswith(_UNAVAILABLE_STATES)
    if orig is not None and type(orig).__module__.startswith("psycopg"):
        # No SQLSTATE: the server never answered (refused, reset, unreachable).
        return True
    return isinstance(exc, OperationalError) and any(text in str(orig) for text in _SQLITE_BUSY)


def install_handlers(app: FastAPI) -> None:
    """Render every error, ours or the framework's, as problem+json."""

    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return problem_response(exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = Unprocessable("The request is not valid.", _safe_errors(exc.errors()))
        return problem_response(422, err.body())

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404:
            return problem_response(404, NotFound().body())
        if status == 400:
            # The framework's 400 is a body it could not parse (JSON that is not UTF-8, a broken
            # multipart form): invalid input like any other, so the 422 every route declares.
            err = Unprocessable(
                "The request body cannot be parsed.",
                [{"loc": ["body"], "msg": "Unparsable body", "type": "body_unparsable"}],
            )
            return problem_response(422, err.body())
        body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
        return problem_response(status, body, dict(exc.headers or {}))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        if not database_unavailable(exc):
            # A fault of ours that the driver happens to class as operational ("no such
            # table", a statement cancelled): a 500, not an invitation to retry.
            log.error("unhandled error", extra={"error_type": type(exc).__name__})
            return problem_response(500, AppError().body())
        # The database is unreachable, restarting, busy or out of connections: the client may
        # retry, with the same Idempotency-Key for a submission. The pool replaces dead
        # connections by itself.
        log.warning("database unavailable", extra={"error_type": type(exc).__name__})
        err = ServiceUnavailable("The database is not available; retry shortly.")
        return problem_response(err.status, err.body(), {"Retry-After": "1"})

    @app.exception_handler(CorruptionError)
    async def _corrupt(_: Request, exc: CorruptionError) -> JSONResponse:
        # Stored ciphertext or a wrapped key failed authentication: never serve it, say so.
        log.error(
            "stored content failed its integrity check", extra={"error_type": type(exc).__name__}
        )
        return problem_response(500, ContentCorrupted().body())

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The exception text may carry data; log only its type here, the traceback goes to
        # the server log through uvicorn's own handler at debug level.
        log.error("unhandled error", extra={"error_type": type(exc).__name__})
        return problem_response(500, AppError().body())
