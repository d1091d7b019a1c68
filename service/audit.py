"""The reason an admin gives for reading (or deleting) a tenant's conversation.

Every admin read of a conversation's messages is recorded (``Store.record_admin_reads``) with
the admin key's id, the time, the way it was read and this reason; with
``CONVSTORE_ADMIN_REASON_REQUIRED`` a read without a reason is refused.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State

from service.errors import BadRequest
from service.routes.params import Admin

REASON_HEADER = "x-admin-reason"
MAX_REASON_CHARS = 500


def admin_reason(value: str | None, *, required: bool, where: str) -> str | None:
    """The reason given (``where`` names where it is given, for the error), or None if none
    was; 400 ``admin_reason_required`` if none was and one is required, 400
    ``bad_admin_reason`` if it is too long or holds control characters."""
    reason = (value or "").strip()
    if not reason:
        if required:
            raise BadRequest(
                f"Admin reads of conversations must give a reason here: {where}. It is recorded "
                "with the read, and the conversation's tenant sees it.",
                code="admin_reason_required",
            )
        return None
    if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise BadRequest(
            f"The reason ({where}) must be at most {MAX_REASON_CHARS} printable characters.",
            code="bad_admin_reason",
        )
    return reason


def header_text(value: str | None) -> str | None:
    """A header's value as the client wrote it: UTF-8 where it is (HTTP hands headers over as
    Latin-1), else as it came."""
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


async def provide_admin_reason(
    admin: Admin, request: Request[Any, Any, Any], state: State
) -> str | None:
    """The ``X-Admin-Reason`` of an admin API request (it takes the admin key first, so that a
    request without one is a 401 or 403 whatever its headers)."""
    return admin_reason(
        header_text(request.headers.get(REASON_HEADER)),
        required=state.settings.admin_reason_required,
        where="the X-Admin-Reason header",
    )
