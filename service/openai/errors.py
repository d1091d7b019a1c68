"""Errors on the OpenAI-compatible surface, in OpenAI's shape: ``{"error": {"message", "type",
"param", "code"}}`` with the status the SDKs map to their exception classes (400
``BadRequestError``, 401 ``AuthenticationError``, 404 ``NotFoundError``, 409
``ConflictError``, 429 ``RateLimitError``, 5xx ``InternalServerError``). A request the service
cannot take (``/v1`` answers 422 for some) is a 400 here, as OpenAI answers."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, Response

from service.errors import HANDLED, ServiceError, service_error

TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}
# Where the framework's validation messages name the field: "… - at `$.input[0].role`",
# "Object contains unknown field `bogus`".
_FIELD = re.compile(r"at `\$\.([^`]+)`|unknown field `([^`]+)`")


def status_of(error: ServiceError) -> int:
    return 400 if error.status == 422 else error.status


def error_body(error: ServiceError) -> dict[str, Any]:
    """The OpenAI error object for a service error."""
    param = error.extra.get("param")
    errors = error.extra.get("errors") or [{}]
    if param is None and errors[0].get("key") not in (None, "data"):
        param = str(errors[0]["key"])
    if param is None:
        found = _FIELD.search(error.detail)
        param = (found[1] or found[2]) if found else None
    status = status_of(error)
    kind = TYPES.get(status)
    if kind is None:
        kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"message": error.detail, "type": kind, "param": param, "code": error.code}


def handle_openai_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    error = service_error(request, exc)
    return Response(
        {"error": error_body(error)}, status_code=status_of(error), headers=error.headers
    )


OPENAI_EXCEPTION_HANDLERS = dict.fromkeys(HANDLED, handle_openai_error)
