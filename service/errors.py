"""One error base class carrying its HTTP status and code, rendered as RFC 9457 problem+json."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from sqlalchemy import exc as sa_exc

from service.schemas import MAX_JSON_DEPTH

log = logging.getLogger("convstore")

PROBLEM_JSON = "application/problem+json"


# What every problem document holds besides an error's own extra members.
_PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "code", "instance"})


class ServiceError(Exception):
    """An error the caller should see: ``status``, a machine-readable ``code`` and a detail."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.extra = extra

    @classmethod
    def from_problem(cls, problem: dict[str, Any]) -> ServiceError:
        """The error a problem document (``problem()``) describes, to be raised again."""
        extra = {k: v for k, v in problem.items() if k not in _PROBLEM_MEMBERS}
        error = cls(str(problem.get("detail") or ""), code=str(problem.get("code")), **extra)
        error.status = int(problem.get("status") or cls.status)
        return error

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class TurnInProgress(Conflict):
    code = "turn_in_progress"


class ValidationFailed(ServiceError):
    status, code = 422, "validation_error"


class UpstreamFailed(ServiceError):
    status, code = 502, "upstream_error"


class UpstreamTimedOut(ServiceError):
    status, code = 504, "upstream_timeout"


class UpstreamRateLimited(ServiceError):
    status, code = 429, "upstream_rate_limited"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def problem_response(error: ServiceError, request: Request[Any, Any, Any]) -> Response[Any]:
    return Response(
        error.problem(instance=request.scope["path"]),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=error.headers,
    )


def handle_service_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return problem_response(service_error(request, exc), request)


def service_error(request: Request[Any, Any, Any], exc: Exception) -> ServiceError:
    """What the caller is told of any exception: a ``ServiceError`` as it is; the framework's
    own errors (404 route, 405, 413, bad JSON, validation) and the rest as the problems they
    are (an unexpected one logged)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, HTTPException):
        return _http_problem(exc)
    if isinstance(exc, RecursionError):
        return _too_deep(request)
    return _unexpected(request, exc)


def _http_problem(exc: HTTPException) -> ServiceError:
    status = exc.status_code
    error: ServiceError
    if isinstance(exc, ValidationException):
        error = _validation_problem(exc)
    else:
        error = ServiceError(exc.detail or HTTPStatus(status).phrase)
        error.status = status
        error.code = _HTTP_CODES.get(status, f"http_{status}")
    if exc.headers:
        error.headers.update(exc.headers)
    return error


def _validation_problem(exc: ValidationException) -> ServiceError:
    errors: list[dict[str, Any]] = []
    if isinstance(exc.extra, list):
        errors = [e for e in exc.extra if isinstance(e, dict)]
    messages = [str(e.get("message", "")) for e in errors]
    if any(
        "malformed" in m.lower() or ("json" in m.lower() and "decode" in m.lower())
        for m in messages
    ):
        return BadRequest("The request body is not valid JSON.", errors=errors)
    detail = "; ".join(
        f"{m} ({e.get('key')})" if e.get("key") and e.get("key") != "data" else m
        for m, e in zip(messages, errors, strict=True)
    ) or (exc.detail or "The request is not valid.")
    error = ValidationFailed(detail, errors=errors)
    # Query and path parameter mistakes are plain bad requests; bodies that parse but do not
    # fit the schema are 422.
    if errors and all(e.get("source") in ("query", "path", "header", "cookie") for e in errors):
        error.status = 400
    return error


class DatabaseUnavailable(ServiceError):
    status, code = 503, "database_unavailable"


# SQLite's primary result codes that mean the database cannot serve now: busy or locked past
# the busy timeout, a read-only or full disk, an I/O error, a file that cannot be opened.
_SQLITE_UNAVAILABLE = {5, 6, 8, 10, 13, 14}
# PostgreSQL's SQLSTATE classes for the same: connection exceptions, insufficient resources
# (a full disk, too many connections), a server shutting down or starting, a read-only one.
_PG_UNAVAILABLE = ("08", "53", "57P", "25006")


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached or cannot take the work now (down,
    restarting, full), rather than that the request or the service is wrong."""
    if isinstance(exc, sa_exc.TimeoutError | OSError):  # no pooled connection; no server
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
        return True
    original = exc.orig
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_PG_UNAVAILABLE)
    code = getattr(original, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _SQLITE_UNAVAILABLE


def _too_deep(request: Request[Any, Any, Any]) -> ServiceError:
    """msgspec refuses to decode JSON nested past Python's recursion limit; the schemas refuse
    what nests past ``MAX_JSON_DEPTH`` (both before anything is stored)."""
    log.warning(
        "refused a JSON body nested too deeply on %s %s", request.method, request.scope["path"]
    )
    return ValidationFailed(
        f"The JSON body nests arrays and objects too deeply; at most {MAX_JSON_DEPTH} levels are "
        "allowed inside params, metadata and content."
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> ServiceError:
    if database_unavailable(exc):
        log.error(
            "the database is unavailable on %s %s: %r", request.method, request.scope["path"], exc
        )
        return DatabaseUnavailable(
            "The database is unavailable or full; nothing was changed. Retry later.",
            headers={"retry-after": "5"},
        )
    log.exception("unhandled error on %s %s", request.method, request.scope["path"])
    return ServiceError("An unexpected error happened; it has been logged.")


# Every key names a class the framework could otherwise match first (handlers are looked up by
# the exception's classes, most specific first), so a router can replace them all.
HANDLED = (ServiceError, HTTPException, RecursionError, Exception)
EXCEPTION_HANDLERS = dict.fromkeys(HANDLED, handle_service_error)

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "MediaType", "ServiceError"]
