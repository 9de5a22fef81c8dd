"""Users and groups by id or name, read from the registry's tables (read-only).

The budget API takes ``{user}`` / ``{group}`` as an id or a name, and a
refused request names its budget ("group 'eng'"). Both need the registry's
``users(id, username, deleted_at)`` and ``groups(id, name)``, which live in the same
database (schema ``registry``). Reading them is the one place this service
touches another schema, and only to read. When the registry's schema is not
there (a deployment with a separate database, or tests of this service alone)
a reference is taken as an id as is and names fall back to ids.
"""

from __future__ import annotations

import logging
import time

import asyncpg

log = logging.getLogger(__name__)

_QUERIES = {
    "user": (
        "SELECT id::text AS id, username AS name FROM registry.users"
        " WHERE deleted_at IS NULL AND (id::text = $1 OR lower(username) = lower($1)) LIMIT 1",
        "SELECT id::text AS id, username AS name FROM registry.users WHERE id::text = ANY($1::text[])",
    ),
    "group": (
        "SELECT id::text AS id, name FROM registry.groups WHERE id::text = $1 OR lower(name) = lower($1) LIMIT 1",
        "SELECT id::text AS id, name FROM registry.groups WHERE id::text = ANY($1::text[])",
    ),
}
_ABSENT = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError, asyncpg.UndefinedColumnError)


class Directory:
    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 60.0) -> None:
        self.pool = pool
        self.ttl = ttl
        self._names: dict[tuple[str, str], tuple[str, float]] = {}

    async def resolve(self, scope: str, ref: str) -> tuple[str, str] | None:
        """(id, name) for an id or a name; None when the registry knows no such user/group."""
        try:
            row = await self.pool.fetchrow(_QUERIES[scope][0], ref)
        except _ABSENT:
            return ref, ref
        if row is None:
            return None
        self._names[(scope, row["id"])] = (row["name"], time.monotonic() + self.ttl)
        return row["id"], row["name"]

    async def name(self, scope: str, subject_id: str) -> str:
        return (await self.names([(scope, subject_id)])).get((scope, subject_id), subject_id)

    async def names(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        now = time.monotonic()
        out: dict[tuple[str, str], str] = {}
        missing: dict[str, list[str]] = {}
        for k in keys:
            hit = self._names.get(k)
            if hit is not None and hit[1] > now:
                out[k] = hit[0]
            else:
                missing.setdefault(k[0], []).append(k[1])
        for scope, ids in missing.items():
            try:
                rows = await self.pool.fetch(_QUERIES[scope][1], ids)
            except _ABSENT:
                rows = []
            found = {r["id"]: r["name"] for r in rows}
            for i in ids:
                n = found.get(i, i)
                out[(scope, i)] = n
                self._names[(scope, i)] = (n, now + self.ttl)
        if len(self._names) > 100_000:
            self._names.clear()
        return out
