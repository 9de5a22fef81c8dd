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
    match: str  # SQL matching a row to n.rid (the AAD row id) on its key columns, so the index is used
    order: str  # the primary key's columns: batches walk the table in index order
    after: str  # SQL: the row comes after the AAD row id $3 in that order
    sealed: str
    key_id: str


_BY_ID = {"row_id": "id::text", "match": "id = n.rid::uuid", "order": "id", "after": "id > $3::uuid"}
TARGETS = (
    Target("provider-key", "registry.ai_provider_keys", sealed="api_key_sealed", key_id="key_id", **_BY_ID),
    Target("provider-settings", "registry.ai_providers", sealed="settings_sealed", key_id="settings_key_id",
           **_BY_ID),
    Target("user-provider-key", "registry.user_ai_provider_keys", sealed="api_key_sealed", key_id="key_id",
           row_id="user_id::text || ':' || provider_id::text",
           match="user_id = split_part(n.rid, ':', 1)::uuid AND provider_id = split_part(n.rid, ':', 2)::uuid",
           order="user_id, provider_id",
           after="(user_id, provider_id) > (split_part($3, ':', 1)::uuid, split_part($3, ':', 2)::uuid)"),
)


async def pending(conn: asyncpg.Connection, current: str) -> dict[str, int]:
    """How many stored secrets of each kind are not yet under key ``current``."""
    return {t.kind: int(await conn.fetchval(
        f"SELECT count(*) FROM {t.table} WHERE {t.sealed} IS NOT NULL AND {t.key_id} IS DISTINCT FROM $1", current))
        for t in TARGETS}


async def reseal_batch(reg: Registry, target: Target, limit: int, after: str | None = None) -> tuple[int, str | None]:
    """Re-seal up to ``limit`` rows of one kind that come after row ``after``, in one transaction; returns
    how many, and the last row id (the next batch's ``after``): the table is walked once, in key order."""
    current = reg.at_rest.current_key_id
    pending_rows = f"{target.sealed} IS NOT NULL AND {target.key_id} IS DISTINCT FROM $1"
    async with reg.pool.acquire() as conn, conn.transaction():
        select = (f"SELECT {target.row_id} AS rid, {target.sealed} AS sealed FROM {target.table}"
                  f" WHERE {pending_rows}{' AND ' + target.after if after is not None else ''}"
                  f" ORDER BY {target.order} LIMIT $2 FOR UPDATE SKIP LOCKED")
        rows = await conn.fetch(select, current, limit, *([after] if after is not None else []))
        if rows:
            new = [reg.seal(target.kind, r["rid"], reg.open(target.kind, r["rid"], r["sealed"])) for r in rows]
            # one statement for the batch (a round trip per row would make a large table take minutes)
            await conn.execute(
                f"UPDATE {target.table} SET {target.sealed} = n.sealed, {target.key_id} = n.kid"
                f" FROM unnest($1::text[], $2::text[], $3::text[]) AS n(rid, sealed, kid)"
                f" WHERE {target.match}",
                [r["rid"] for r in rows], [x[0] for x in new], [x[1] for x in new])
    return len(rows), (rows[-1]["rid"] if rows else after)


async def reseal(reg: Registry, *, batch: int = 100, max_rows: int | None = None) -> dict[str, int]:
    """Batches of every kind until none is left (or ``max_rows`` were done); returns the count per kind."""
    done = {t.kind: 0 for t in TARGETS}
    for t in TARGETS:
        after: str | None = None
        while max_rows is None or sum(done.values()) < max_rows:
            limit = batch if max_rows is None else min(batch, max_rows - sum(done.values()))
            n, after = await reseal_batch(reg, t, limit, after)
            done[t.kind] += n
            if n == 0:
                break
    return done
