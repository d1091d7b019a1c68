"""API keys: only a hash of each is stored."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy import insert, select, update

from service.store.engine import StoreBase
from service.store.records import K, KeyRecord, Principal, hash_key
from service.tables import api_key_table, utcnow, uuid7

KEY_COLUMNS = (
    K.id,
    K.tenant,
    K.key_prefix,
    K.is_admin,
    K.created_at,
    K.revoked_at,
    K.turns_per_minute,
)


class KeyStore(StoreBase):
    async def create_key(
        self, tenant: str, *, is_admin: bool = False, turns_per_minute: int | None = None
    ) -> tuple[KeyRecord, str]:
        """Create a key; returns its record and the key itself, which is never stored.
        Raises ``ValueError`` for a tenant that is not 1 to 200 printable characters."""
        if not 1 <= len(tenant) <= 200 or not tenant.isprintable():
            raise ValueError("a tenant is 1 to 200 printable characters")
        key = "cs_" + secrets.token_urlsafe(32)
        record = KeyRecord(uuid7(), tenant, key[:10], is_admin, utcnow(), None, turns_per_minute)
        async with self._write() as conn:
            await conn.execute(
                insert(api_key_table).values(
                    id=record.id,
                    tenant=tenant,
                    key_hash=hash_key(key),
                    key_prefix=record.key_prefix,
                    is_admin=is_admin,
                    created_at=record.created_at,
                    turns_per_minute=turns_per_minute,
                )
            )
        return record, key

    async def list_keys(self) -> list[KeyRecord]:
        async with self._read() as conn:
            rows = await conn.execute(select(*KEY_COLUMNS).order_by(K.created_at))
            return [KeyRecord(*row) for row in rows]

    async def find_keys(self, id_or_prefix: str) -> list[KeyRecord]:
        """The keys whose id, or whose prefix (as ``keys list`` shows it), is this."""
        try:
            matches = K.id == uuid.UUID(id_or_prefix)
        except ValueError:
            matches = K.key_prefix == id_or_prefix
        async with self._read() as conn:
            rows = await conn.execute(select(*KEY_COLUMNS).where(matches).order_by(K.created_at))
            return [KeyRecord(*row) for row in rows]

    async def revoke_key(self, key_id: uuid.UUID) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                update(api_key_table)
                .where(K.id == key_id, K.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            return bool(result.rowcount)

    async def limit_key(self, key_id: uuid.UUID, turns_per_minute: int | None) -> bool:
        """Set (or, with None, lift) a key's limit of turns a minute."""
        async with self._write() as conn:
            result = await conn.execute(
                update(api_key_table)
                .where(K.id == key_id)
                .values(turns_per_minute=turns_per_minute)
            )
            return bool(result.rowcount)

    async def authenticate(self, key: str) -> Principal | None:
        """The principal for a presented key, or None if unknown or revoked."""
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(K.id, K.tenant, K.is_admin, K.turns_per_minute).where(
                        K.key_hash == hash_key(key), K.revoked_at.is_(None)
                    )
                )
            ).first()
        return Principal(*row) if row else None
