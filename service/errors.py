"""One error base class carrying its HTTP status and code, rendered as RFC 9457 problem+json."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

log = logging.getLogger("convstore")

PROBLEM_JSON = "application/problem+json"


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
        error.problem(instance=request.url.path),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=error.headers,
    )


def handle_service_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, ServiceError)
    return problem_response(exc, request)


def handle_http_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Render the framework's own errors (404 route, 405, 413, bad JSON, validation) as problems."""
    assert isinstance(exc, HTTPException)
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
    return problem_response(error, request)


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


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    error = ServiceError("An unexpected error happened; it has been logged.")
    return problem_response(error, request)


EXCEPTION_HANDLERS = {
    ServiceError: handle_service_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "MediaType", "ServiceError"]
