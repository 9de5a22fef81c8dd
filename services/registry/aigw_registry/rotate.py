"""Re-seal every stored secret with the current (first) key of ``AIGW_ENCRYPTION_KEYS``.

After an operator prepends a new key, old rows still open with the old one (rotation). This pass makes
every row use the new key, so the old key can then be dropped from the list. It works in batches, each
its own short transaction over rows locked ``FOR UPDATE SKIP LOCKED`` and not yet under the current key:
a pass is idempotent (a row already re-sealed is not selected again), resumable (a crash loses at most
one uncommitted batch, and the next call carries on), and never blocks API writes for long. Values are
opened and sealed again with the same row binding (AAD), so a value still cannot move between rows.
The revision is not bumped: what the bus carries does not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .core import Registry


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # the AAD kind the value was sealed under
    table: str
    row_id: str  # SQL for the AAD row id
    where_row: str  # SQL matching one row by $1 (the row id as text)
    sealed: str
    key_id: str


TARGETS = (
    Target("provider-key", "registry.ai_provider_keys", "id::text", "id::text = $1", "api_key_sealed", "key_id"),
    Target("provider-settings", "registry.ai_providers", "id::text", "id::text = $1", "settings_sealed",
           "settings_key_id"),
    Target("user-provider-key", "registry.user_ai_provider_keys", "user_id::text || ':' || provider_id::text",
           "user_id::text || ':' || provider_id::text = $1", "api_key_sealed", "key_id"),
)


async def pending(conn: asyncpg.Connection, current: str) -> dict[str, int]:
    """How many stored secrets of each kind are not yet under key ``current``."""
    return {t.kind: int(await conn.fetchval(
        f"SELECT count(*) FROM {t.table} WHERE {t.sealed} IS NOT NULL AND {t.key_id} IS DISTINCT FROM $1", current))
        for t in TARGETS}


async def reseal_batch(reg: Registry, target: Target, limit: int) -> int:
    """Re-seal up to ``limit`` rows of one kind in one transaction; returns how many."""
    current = reg.at_rest.current_key_id
    async with reg.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            f"SELECT {target.row_id} AS rid, {target.sealed} AS sealed FROM {target.table}"
            f" WHERE {target.sealed} IS NOT NULL AND {target.key_id} IS DISTINCT FROM $1"
            f" ORDER BY 1 LIMIT $2 FOR UPDATE SKIP LOCKED", current, limit)
        for r in rows:
            sealed, kid = reg.seal(target.kind, r["rid"], reg.open(target.kind, r["rid"], r["sealed"]))
            await conn.execute(
                f"UPDATE {target.table} SET {target.sealed} = $2, {target.key_id} = $3 WHERE {target.where_row}",
                r["rid"], sealed, kid)
    return len(rows)


async def reseal(reg: Registry, *, batch: int = 100, max_rows: int | None = None) -> dict[str, int]:
    """Batches of every kind until none is left (or ``max_rows`` were done); returns the count per kind."""
    done = {t.kind: 0 for t in TARGETS}
    for t in TARGETS:
        while max_rows is None or sum(done.values()) < max_rows:
            n = await reseal_batch(reg, t, batch if max_rows is None else min(batch, max_rows - sum(done.values())))
            done[t.kind] += n
            if n == 0:
                break
    return done
