"""Audit of keypool's admin actions (key resets), in the registry's audit log.

The registry's ``audit_logs`` table is the one place an operator reads who did
what (``GET /api/v2/audit-logs``), so a reset is written there too, beside the
key's other changes. keypool holds no database of its own: it connects lazily,
on the first audited action, and an action whose row cannot be written is still
logged in full (``aigw.audit`` logger) so nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from aigw_common.db import close_pool, create_pool
from aigw_common.errors import DatabaseUnavailable
from aigw_common.schemas import Identity

log = logging.getLogger("aigw.audit")


class AuditLog:
    def __init__(self, database_url: str | None) -> None:
        self.database_url = database_url
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        return None  # connects on first use: keypool starts and serves without Postgres

    async def close(self) -> None:
        if self._pool is not None:
            await close_pool(self._pool)
            self._pool = None

    async def _get_pool(self) -> asyncpg.Pool | None:
        if self.database_url is None:
            return None
        async with self._lock:
            if self._pool is None:
                self._pool = await create_pool(self.database_url, min_size=0, max_size=2, retry_for=0.0)
            return self._pool

    async def record(self, actor: Identity, action: str, resource_type: str, resource_id: str,
                     before: dict[str, Any] | None, after: dict[str, Any] | None) -> bool:
        """Write one audit row; False (and the whole record in the log) when it could not be written."""
        entry = {"actor_id": actor.user_id, "actor_name": actor.username, "action": action,
                 "resource_type": resource_type, "resource_id": resource_id, "before": before, "after": after}
        log.info("audit", extra=entry)
        try:
            pool = await self._get_pool()
            if pool is None:
                return False
            await pool.execute(
                "INSERT INTO registry.audit_logs (actor_id, actor_name, action, resource_type, resource_id, before, after)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                actor.user_id, actor.username, action, resource_type, resource_id, before, after)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, DatabaseUnavailable) as e:
            log.error("audit row not written to the registry's audit log", extra={**entry, "error": str(e)})
            return False
        return True
