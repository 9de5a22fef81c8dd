"""Budget leases: how much of a budget each gateway replica may spend without asking again.

The arithmetic (docs/architecture.md, "Budgets and usage"): for one budget
and month, the service counts as committed

    spent (recorded cost) + Σ over live leases max(0, granted - recorded)

where ``recorded`` is the cost of that gateway's interceptions already in
``spent`` (the recorder credits it in the same transaction). A lease is never
granted beyond ``limit - committed``; so money is counted as held by a gateway
until it is recorded, and never twice. A lease lives ``ttl`` seconds and is
renewed by its gateway; the gateway stops using it at its own (earlier)
expiry, and the service keeps counting it for ``grace`` seconds more (requests
admitted just before expiry still run). Every grant happens in one transaction
holding the budget row's lock, so replicas of this service agree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from aigw_common.schemas import BudgetState, LeaseGrant, LeaseItem, SubjectKey

from .errors import DB_ERRORS, classify
from .names import Directory
from .periods import Period, month_of

TABLES = {"user": ("user_ai_budgets", "user_id"), "group": ("group_ai_budgets", "group_id")}


@dataclass(frozen=True, slots=True)
class Decision:
    granted: int
    exhausted: bool = False
    reclaim: bool = False


def decide(
    *, limit: int, spent: int, others_held: int, others_idle: int, others_active: int,
    own_granted: int, own_active: bool, own_recorded: int, item: LeaseItem,
) -> Decision:
    """The new cumulative grant for one gateway's lease (pure; the caller holds the budget lock)."""
    floor = item.consumed_micros + item.inflight_micros  # already used: never taken back
    old = own_granted if own_active else floor  # an expired lease was not used past its expiry
    bound = limit - spent - others_held + own_recorded  # max grant with max(0, g - recorded) ≤ free room
    need_to = floor + max(item.need_micros, 0)
    if item.target_micros <= old:
        new = item.target_micros  # a release: the gateway stopped using the rest before asking
    else:
        base = max(need_to, old)
        new = min(base, bound)
        if new == base and item.target_micros > base:
            # headroom beyond the immediate need, shared so that no replica hoards the tail of a budget
            share = (bound - base) // (others_active + 2)
            new = base + max(0, min(item.target_micros - base, share))
        new = max(new, old)
    new = max(new, floor)
    if need_to > new:
        # idle headroom elsewhere (as last reported): ask for it back and have the caller retry,
        # even when it would not cover the whole need, so no request is refused while room remains
        if others_idle > 0:
            return Decision(new, reclaim=True)
        return Decision(new, exhausted=True)
    return Decision(new)


class Ledger:
    def __init__(self, pool: asyncpg.Pool, directory: Directory, *, ttl: float = 60.0, grace: float = 600.0) -> None:
        self.pool = pool
        self.directory = directory
        self.ttl = ttl
        self.grace = grace

    async def grant(self, gateway_id: str, item: LeaseItem, *, now: float | None = None) -> tuple[LeaseGrant, bool]:
        """Renew one lease; returns the grant and whether other gateways should be asked to release headroom."""
        now = time.time() if now is None else now
        period = month_of(now)
        try:
            name = await self.directory.name(item.scope, item.subject_id)
            async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                return await self._grant(conn, gateway_id, item, period, now, name)
        except DB_ERRORS as e:
            raise classify(e) from e

    async def _grant(
        self, conn: asyncpg.Connection, gateway_id: str, item: LeaseItem, period: Period, now: float, name: str,
    ) -> tuple[LeaseGrant, bool]:
        table, col = TABLES[item.scope]
        limit = await conn.fetchval(f"SELECT spend_limit_micros FROM {table} WHERE {col} = $1 FOR UPDATE", item.subject_id)
        common: dict[str, Any] = dict(scope=item.scope, subject_id=item.subject_id, seq=item.seq, name=name,
                                      period_start=period.start.timestamp(), period_end=period.end.timestamp())
        if limit is None:
            return LeaseGrant(found=False, **common), False
        nowdt = datetime.fromtimestamp(now, UTC)
        key = (item.scope, item.subject_id, period.start, gateway_id)
        await conn.execute(
            "INSERT INTO leases (scope, subject_id, period_start, gateway_id, expires_at) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT DO NOTHING", *key, nowdt,
        )
        own = await conn.fetchrow(
            "SELECT granted_micros, recorded_micros, seq, expires_at FROM leases"
            " WHERE scope = $1 AND subject_id = $2 AND period_start = $3 AND gateway_id = $4 FOR UPDATE", *key,
        )
        # one statement, one snapshot: spend and other leases' recorded cost move together
        agg = await conn.fetchrow(
            """SELECT
                 coalesce((SELECT spent_micros FROM spend WHERE scope = $1 AND subject_id = $2 AND period_start = $3), 0) AS spent,
                 coalesce(sum(greatest(granted_micros - recorded_micros, 0)), 0)::bigint AS held,
                 coalesce(sum(greatest(granted_micros - consumed_micros - inflight_micros, 0))
                          FILTER (WHERE expires_at > $5), 0)::bigint AS idle,
                 count(*) FILTER (WHERE expires_at > $5) AS active
               FROM leases
               WHERE scope = $1 AND subject_id = $2 AND period_start = $3 AND gateway_id <> $4 AND expires_at > $6""",
            item.scope, item.subject_id, period.start, gateway_id, nowdt, nowdt - timedelta(seconds=self.grace),
        )
        reply = dict(common, limit_micros=limit, spent_micros=agg["spent"])
        stale = abs(item.period_start - period.start.timestamp()) > 1 or item.seq <= own["seq"]
        if stale:
            # another month (the gateway starts a new lease), or a late duplicate of an older request
            return LeaseGrant(granted_micros=own["granted_micros"], expires_in=0.0 if own["expires_at"] <= nowdt
                              else (own["expires_at"] - nowdt).total_seconds(), retry_in=0.0, **reply), False
        d = decide(
            limit=limit, spent=agg["spent"], others_held=agg["held"], others_idle=agg["idle"],
            others_active=agg["active"], own_granted=own["granted_micros"], own_active=own["expires_at"] > nowdt,
            own_recorded=own["recorded_micros"], item=item,
        )
        await conn.execute(
            "UPDATE leases SET granted_micros = $5, consumed_micros = $6, inflight_micros = $7, seq = $8,"
            " expires_at = $9, updated_at = $10"
            " WHERE scope = $1 AND subject_id = $2 AND period_start = $3 AND gateway_id = $4",
            *key, d.granted, item.consumed_micros, item.inflight_micros, item.seq,
            nowdt + timedelta(seconds=self.ttl), nowdt,
        )
        return LeaseGrant(granted_micros=d.granted, expires_in=self.ttl, exhausted=d.exhausted,
                          retry_in=0.05 if d.reclaim else None, **reply), d.reclaim

    async def states(self, keys: Sequence[SubjectKey] | None = None, *, now: float | None = None,
                     include_deleted: bool = False) -> list[BudgetState]:
        """Current state of the given budgets (all when None); with ``include_deleted`` a key without a budget yields ``deleted``."""
        now = time.time() if now is None else now
        period = month_of(now)
        nowdt = datetime.fromtimestamp(now, UTC)
        scopes = [k[0] for k in keys] if keys is not None else None
        ids = [k[1] for k in keys] if keys is not None else None
        try:
            rows = await self.pool.fetch(
                """WITH b AS (
                     SELECT 'group' AS scope, group_id AS subject_id, spend_limit_micros FROM group_ai_budgets
                     UNION ALL SELECT 'user', user_id, spend_limit_micros FROM user_ai_budgets)
                   SELECT b.scope, b.subject_id, b.spend_limit_micros, coalesce(s.spent_micros, 0) AS spent,
                     coalesce((SELECT sum(greatest(l.granted_micros - l.recorded_micros, 0)) FROM leases l
                               WHERE l.scope = b.scope AND l.subject_id = b.subject_id AND l.period_start = $1
                                 AND l.expires_at > $2), 0)::bigint AS held
                   FROM b LEFT JOIN spend s
                     ON s.scope = b.scope AND s.subject_id = b.subject_id AND s.period_start = $1
                   WHERE $3::text[] IS NULL OR (b.scope, b.subject_id) IN (SELECT * FROM unnest($3::text[], $4::text[]))""",
                period.start, nowdt - timedelta(seconds=self.grace), scopes, ids,
            )
        except DB_ERRORS as e:
            raise classify(e) from e
        names = await self.directory.names([(r["scope"], r["subject_id"]) for r in rows])
        out = [
            BudgetState(
                scope=r["scope"], subject_id=r["subject_id"], name=names.get((r["scope"], r["subject_id"]), ""),
                blocked=r["spent"] >= r["spend_limit_micros"], spent_micros=r["spent"], reserved_micros=r["held"],
                limit_micros=r["spend_limit_micros"], period_start=period.start.timestamp(),
                period_end=period.end.timestamp(),
            )
            for r in rows
        ]
        if keys is not None and include_deleted:
            seen = {(s.scope, s.subject_id) for s in out}
            out += [
                BudgetState(scope=s, subject_id=i, blocked=False, spent_micros=0, limit_micros=0,
                            period_start=period.start.timestamp(), period_end=period.end.timestamp(), deleted=True)
                for s, i in keys if (s, i) not in seen
            ]
        return out

    async def expire_old(self, *, now: float | None = None, batch: int = 1000) -> int:
        """Drop lease rows that no longer count (expired beyond grace, plus a day of history)."""
        now = time.time() if now is None else now
        cutoff = datetime.fromtimestamp(now, UTC) - timedelta(seconds=self.grace) - timedelta(days=1)
        res = await self.pool.execute(
            "DELETE FROM leases WHERE ctid IN (SELECT ctid FROM leases WHERE expires_at < $1 LIMIT $2)", cutoff, batch,
        )
        return int(res.split()[-1])
