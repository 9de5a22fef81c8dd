"""Rate and concurrency limits: the table of limits, and the grants that hold them across gateway replicas.

A gateway admits requests in memory against what it was granted (docs/limits.md):

- requests and tokens per minute: for each subject and wall-clock minute (the *window*), a cumulative grant
  per gateway. The service never grants more than ``limit - Σ other gateways' grants`` of a window, so the
  fleet admits at most the limit per window (tokens: see the bound in docs/limits.md — actual usage can pass a
  grant by the requests in flight when it ran out, and the service counts ``max(granted, used)``);
- concurrent requests: slots per gateway, held by a lease of ``slot_ttl`` seconds the gateway renews while it
  uses them; never more than ``limit - Σ other gateways' live slots``.

Every grant happens in one transaction holding the subject's limits row lock, so replicas of this service agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from aigw_common.schemas import BudgetScope, LimitGrant, LimitLeaseItem, LimitsState, SubjectKey

from .errors import DB_ERRORS, classify
from .names import Directory

TABLES = {"user": ("user_ai_limits", "user_id"), "group": ("group_ai_limits", "group_id")}
FIELDS = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_minute: int | None
    tokens_per_minute: int | None
    concurrent_requests: int | None


def grant_to(limit: int, others: int, held: int, used: int, want: int) -> tuple[int, bool]:
    """New cumulative grant of one dimension, and whether the subject is full (no room for one more).

    Never below what is used (that was admitted), never above what others leave; asking for less than is held
    hands the difference back.
    """
    room = max(0, limit - others)
    new = max(used, min(want, room)) if want <= held else max(held, used, min(want, room))
    return new, new <= used and want > used


class LimitStore:
    def __init__(self, pool: asyncpg.Pool, directory: Directory, *, slot_ttl: float = 30.0,
                 keep_windows: int = 10) -> None:
        self.pool = pool
        self.directory = directory
        self.slot_ttl = slot_ttl
        self.keep_windows = keep_windows

    # ------------------------------------------------------------ the table of limits

    async def get(self, scope: BudgetScope, subject_id: str) -> Limits | None:
        table, col = TABLES[scope]
        row = await self.pool.fetchrow(f"SELECT {', '.join(FIELDS)} FROM {table} WHERE {col} = $1", subject_id)
        return Limits(*row) if row else None

    async def states(self, keys: list[SubjectKey] | None = None, *, include_deleted: bool = False,
                     ) -> list[LimitsState]:
        """Limits of the given subjects (all when None); with ``include_deleted`` a subject without any says so."""
        try:
            rows = await self.pool.fetch(
                f"""SELECT 'user' AS scope, user_id AS subject_id, {', '.join(FIELDS)} FROM user_ai_limits
                    UNION ALL SELECT 'group', group_id, {', '.join(FIELDS)} FROM group_ai_limits""")
        except DB_ERRORS as e:
            raise classify(e) from e
        if keys is not None:
            wanted = set(keys)
            rows = [r for r in rows if (r["scope"], r["subject_id"]) in wanted]
        names = await self.directory.names([(r["scope"], r["subject_id"]) for r in rows])
        out = [LimitsState(scope=r["scope"], subject_id=r["subject_id"], name=names.get((r["scope"], r["subject_id"]), ""),
                           **{f: r[f] for f in FIELDS}) for r in rows]
        if keys is not None and include_deleted:
            seen = {(s.scope, s.subject_id) for s in out}
            out += [LimitsState(scope=s, subject_id=i, deleted=True) for s, i in keys if (s, i) not in seen]
        return out

    # ------------------------------------------------------------ grants

    async def grant(self, gateway_id: str, item: LimitLeaseItem, *, now: float | None = None,
                    ) -> tuple[LimitGrant, bool]:
        """Renew one gateway's grant; returns it and whether others should be asked to hand back unused ones."""
        now = time.time() if now is None else now
        try:
            async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                g = await self._grant(conn, gateway_id, item, now)
        except DB_ERRORS as e:
            raise classify(e) from e
        return g, g.retry_in is not None

    async def _grant(self, conn: asyncpg.Connection, gateway_id: str, item: LimitLeaseItem, now: float) -> LimitGrant:
        table, col = TABLES[item.scope]
        row = await conn.fetchrow(f"SELECT {', '.join(FIELDS)} FROM {table} WHERE {col} = $1 FOR UPDATE",
                                  item.subject_id)
        base: dict[str, Any] = dict(scope=item.scope, subject_id=item.subject_id, window=item.window, seq=item.seq)
        if row is None:
            return LimitGrant(found=False, **base)
        lim = Limits(*row)
        state = LimitsState(scope=item.scope, subject_id=item.subject_id, **{f: row[f] for f in FIELDS})
        current = int(now // 60)
        out: dict[str, Any] = dict(base, limits=state, slots_ttl=self.slot_ttl)
        reclaim = False
        if lim.requests_per_minute is not None or lim.tokens_per_minute is not None:
            if abs(item.window - current) > 1:  # a gateway with a clock far off: grant nothing, say why by window
                return LimitGrant(**out, requests_full=True, tokens_full=True)
            own = await conn.fetchrow(
                "SELECT requests, tokens, seq FROM limit_windows"
                " WHERE scope = $1 AND subject_id = $2 AND window_start = $3 AND gateway_id = $4",
                item.scope, item.subject_id, item.window, gateway_id)
            others = await conn.fetchrow(
                "SELECT coalesce(sum(requests), 0)::bigint AS requests, coalesce(sum(tokens), 0)::bigint AS tokens,"
                " coalesce(sum(greatest(requests - requests_used, 0)), 0)::bigint AS idle_requests,"
                " coalesce(sum(greatest(tokens - tokens_used, 0)), 0)::bigint AS idle_tokens"
                " FROM limit_windows WHERE scope = $1 AND subject_id = $2 AND window_start = $3 AND gateway_id <> $4",
                item.scope, item.subject_id, item.window, gateway_id)
            held_r, held_t = (own["requests"], own["tokens"]) if own else (0, 0)
            if own is not None and item.seq <= own["seq"]:  # a late duplicate: answer what is held
                return LimitGrant(**out, requests=held_r, tokens=held_t)
            req, req_full = (item.requests_want, False) if lim.requests_per_minute is None else grant_to(
                lim.requests_per_minute, others["requests"], held_r, item.requests_used, item.requests_want)
            tok, tok_full = (item.tokens_want, False) if lim.tokens_per_minute is None else grant_to(
                lim.tokens_per_minute, others["tokens"], held_t, item.tokens_used, item.tokens_want)
            tok = max(tok, item.tokens_used)  # usage past a grant still counts against the window
            # room held unused by other gateways: not full, they are asked to hand it back
            if req_full and others["idle_requests"] > 0:
                req_full, reclaim = False, True
            if tok_full and others["idle_tokens"] > 0:
                tok_full, reclaim = False, True
            await conn.execute(
                "INSERT INTO limit_windows (scope, subject_id, window_start, gateway_id, requests, tokens, seq,"
                " requests_used, tokens_used) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                " ON CONFLICT (scope, subject_id, window_start, gateway_id)"
                " DO UPDATE SET requests = $5, tokens = $6, seq = $7, requests_used = $8, tokens_used = $9",
                item.scope, item.subject_id, item.window, gateway_id, req, tok, item.seq, item.requests_used,
                item.tokens_used)
            out.update(requests=req, tokens=tok, requests_full=req_full, tokens_full=tok_full)
        if lim.concurrent_requests is not None:
            nowdt = datetime.fromtimestamp(now, UTC)
            own = await conn.fetchrow(
                "SELECT slots, seq, expires_at FROM limit_slots WHERE scope = $1 AND subject_id = $2 AND gateway_id = $3",
                item.scope, item.subject_id, gateway_id)
            others_slots = await conn.fetchrow(
                "SELECT coalesce(sum(slots), 0)::bigint AS slots,"
                " coalesce(sum(greatest(slots - inflight, 0)), 0)::bigint AS idle FROM limit_slots"
                " WHERE scope = $1 AND subject_id = $2 AND gateway_id <> $3 AND expires_at > $4",
                item.scope, item.subject_id, gateway_id, nowdt)
            held = own["slots"] if own is not None and own["expires_at"] > nowdt else 0
            slots, full = grant_to(lim.concurrent_requests, others_slots["slots"], held, item.inflight, item.slots_want)
            if full and others_slots["idle"] > 0:
                full, reclaim = False, True
            await conn.execute(
                "INSERT INTO limit_slots (scope, subject_id, gateway_id, slots, inflight, seq, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (scope, subject_id, gateway_id)"
                " DO UPDATE SET slots = $4, inflight = $5, seq = $6, expires_at = $7",
                item.scope, item.subject_id, gateway_id, slots, item.inflight, item.seq,
                nowdt + timedelta(seconds=self.slot_ttl))
            out.update(slots=slots, slots_full=full)
        return LimitGrant(**out, retry_in=0.05 if reclaim else None)

    async def expire_old(self, *, now: float | None = None) -> None:
        """Drop windows and slot leases that no longer count."""
        now = time.time() if now is None else now
        try:
            await self.pool.execute("DELETE FROM limit_windows WHERE window_start < $1", int(now // 60) - self.keep_windows)
            await self.pool.execute("DELETE FROM limit_slots WHERE expires_at < $1",
                                    datetime.fromtimestamp(now, UTC) - timedelta(minutes=10))
        except DB_ERRORS as e:
            raise classify(e) from e
