"""Idempotency keys: the claim a request makes on its key, and the answer it leaves."""

from __future__ import annotations

import math
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update

from service.errors import Conflict, ValidationFailed
from service.store.engine import StoreBase
from service.store.records import IK, OrphanedTurn, StoredAnswer
from service.tables import idempotency_table, utcnow


class IdempotencyStore(StoreBase):
    async def claim_idempotency_key(
        self, tenant: str, key: str, fingerprint: str, *, lock: float, ttl: float
    ) -> StoredAnswer | OrphanedTurn | None:
        """Claim ``key`` for a request (None), or say what answers it instead: the answer it
        already got (``StoredAnswer``), or the turn it started in a server that stopped before
        answering (``OrphanedTurn``).

        A claim is locked for ``lock`` seconds, renewed while its request runs
        (``renew_idempotency_keys``); a claim whose lock ran out belonged to a server that
        stopped, and is taken over unless it had started a turn. Raises 422 if the key was used
        for a different request, 409 (with ``Retry-After``) while the first request with it
        still runs.
        """
        now = utcnow()
        claim = {
            "fingerprint": fingerprint,
            "state": "running",
            "response_status": None,
            "response_body": None,
            "turn_id": None,
            "created_at": now,
            "locked_until": now + timedelta(seconds=lock),
            "expires_at": now + timedelta(seconds=ttl),
        }
        async with self._write() as conn:
            row = (
                await conn.execute(
                    select(
                        IK.fingerprint,
                        IK.state,
                        IK.response_status,
                        IK.response_body,
                        IK.locked_until,
                        IK.expires_at,
                        IK.turn_id,
                    )
                    .where(IK.tenant == tenant, IK.key == key)
                    .with_for_update()
                )
            ).first()
            if row is None:
                await conn.execute(
                    insert(idempotency_table).values(tenant=tenant, key=key, **claim)
                )
                return None
            stored_fingerprint, state, status, body, locked_until, expires_at, turn_id = row
            stale = state == "running" and locked_until <= now and turn_id is None
            if expires_at <= now or stale:
                await conn.execute(
                    update(idempotency_table)
                    .where(IK.tenant == tenant, IK.key == key)
                    .values(**claim)
                )
                return None
        if stored_fingerprint != fingerprint:
            raise ValidationFailed(
                "This Idempotency-Key was already used for a different request.",
                code="idempotency_key_reused",
            )
        if state == "done":
            return StoredAnswer(status, body)
        if locked_until <= now:
            return OrphanedTurn(turn_id)
        wait = max(1, math.ceil((locked_until - now).total_seconds()))
        raise Conflict(
            "The first request with this Idempotency-Key is still running; retry later.",
            code="idempotency_key_in_use",
            headers={"retry-after": str(wait)},
        )

    async def renew_idempotency_keys(self, claims: list[tuple[str, str]], lock: float) -> None:
        """Push back the lock of claims whose requests this process is still working on."""
        until = utcnow() + timedelta(seconds=lock)
        async with self._write() as conn:
            for tenant, key in claims:
                await conn.execute(
                    update(idempotency_table)
                    .where(IK.tenant == tenant, IK.key == key, IK.state == "running")
                    .values(locked_until=until)
                )

    async def finish_idempotency_key(
        self,
        tenant: str,
        key: str,
        status: int,
        body: Any,
        conversation_id: uuid.UUID | None = None,
    ) -> None:
        """Store the answer, with the conversation it holds (deleting that conversation
        deletes the answer)."""
        values: dict[str, Any] = {"state": "done", "response_status": status, "response_body": body}
        if conversation_id is not None:
            values["conversation_id"] = conversation_id
        async with self._write() as conn:
            await conn.execute(
                update(idempotency_table).where(IK.tenant == tenant, IK.key == key).values(**values)
            )

    async def release_idempotency_key(self, tenant: str, key: str) -> None:
        """Forget a claim whose request had no effect, so that it may be sent again."""
        async with self._write() as conn:
            await conn.execute(
                delete(idempotency_table).where(
                    IK.tenant == tenant, IK.key == key, IK.state == "running"
                )
            )

    async def purge_idempotency_keys(self) -> int:
        async with self._write() as conn:
            result = await conn.execute(delete(idempotency_table).where(IK.expires_at < utcnow()))
            return int(result.rowcount or 0)
