"""Usage events → schema ``budget``: the handler logic, free of any transport.

One event is one transaction. It claims the event id in ``usage_claims`` (the
ids applied, one row per interception: :data:`CLAIM`); a replay finds it taken
and changes nothing, so a redelivered or re-published event is counted once. Events of one interception
may arrive in any order: every event creates the interception row if it is
missing, token usage is costed on arrival, and cost is added to the user's and
groups' spend only once the started event has said whose it is
(``attributed_micros`` tracks how much already was). The same transaction
credits the admitting gateway's budget leases (``leases.recorded_micros``), so
the lease arithmetic in :mod:`aigw_budget.ledger` never counts a cost twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from aigw_common.db import in_transaction
from aigw_common.pricing import PriceTable, cost_micros
from aigw_common.schemas import (
    AnyUsageEvent,
    InterceptionEnded,
    InterceptionStarted,
    ModelPrice,
    PromptRecorded,
    SubjectKey,
    TokenUsage,
    ToolUsage,
)

from .errors import DB_ERRORS, RecordError, classify
from .periods import month_of

log = logging.getLogger(__name__)


class PriceBook:
    """The current price table, reloaded from the database when it changes."""

    def __init__(self, prices: list[ModelPrice] | None = None) -> None:
        self.table = PriceTable(prices or [])

    async def load(self, conn: asyncpg.Pool | asyncpg.Connection) -> PriceTable:
        rows = await conn.fetch(
            "SELECT model, input_per_mtok_micros, output_per_mtok_micros, cache_read_per_mtok_micros,"
            " cache_write_per_mtok_micros FROM prices ORDER BY model"
        )
        self.table = PriceTable(ModelPrice(**dict(r)) for r in rows)
        return self.table


@dataclass(slots=True)
class Applied:
    """What one event changed: ``duplicate`` when it had been applied before; ``budgets`` whose spend moved."""

    duplicate: bool
    budgets: list[SubjectKey]
    unpriced: bool = False


# Claim event ids, given per interception (one row each, ``event_ids`` not yet in the table): the RETURNING
# rows list the ids this statement added, which are the events to apply (a replay adds none; of two
# transactions claiming one id the second waits for the first's row lock and finds it taken). The foreign key
# to interceptions is checked at commit, so the row may be written after its claim.
CLAIM = """
INSERT INTO usage_claims (interception_id, event_ids)
SELECT * FROM jsonb_to_recordset($1::jsonb) AS e(interception_id text, event_ids text[]) ORDER BY interception_id
ON CONFLICT (interception_id) DO UPDATE
  SET n_prev = cardinality(usage_claims.event_ids),
      event_ids = usage_claims.event_ids
                  || ARRAY(SELECT x FROM unnest(EXCLUDED.event_ids) AS x WHERE x <> ALL (usage_claims.event_ids))
  WHERE NOT usage_claims.event_ids @> EXCLUDED.event_ids
RETURNING event_ids[n_prev + 1:] AS added"""


def _ts(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


class Recorder:
    def __init__(self, pool: asyncpg.Pool, prices: PriceBook, *, acquire_timeout: float = 5.0) -> None:
        self.pool = pool
        self.prices = prices
        self.acquire_timeout = acquire_timeout

    async def apply(self, ev: AnyUsageEvent) -> Applied:
        """Apply one event; raises DatabaseUnavailable (retry later) or RecordError (never retry)."""
        check(ev)
        try:
            # a transaction cut by a failover runs again on the new primary (the event id makes it idempotent)
            return await in_transaction(self.pool, lambda conn: self._apply(conn, ev), attempts=2,
                                        acquire_timeout=self.acquire_timeout)
        except DB_ERRORS as e:
            raise classify(e) from e

    async def _apply(self, conn: asyncpg.Connection, ev: AnyUsageEvent) -> Applied:
        at = _ts(ev.at)
        await conn.execute(
            "INSERT INTO interceptions (id, occurred_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            ev.interception_id, at,
        )
        claimed = await conn.fetchval(CLAIM, [{"interception_id": ev.interception_id, "event_ids": [ev.event_id]}])
        if not claimed:
            return Applied(duplicate=True, budgets=[])
        unpriced = False
        match ev:
            case InterceptionStarted():
                await self._started(conn, ev, at)
            case TokenUsage():
                unpriced = await self._tokens(conn, ev, at)
            case PromptRecorded():
                await conn.execute(
                    "INSERT INTO prompts (event_id, interception_id, at, prompt, truncated) VALUES ($1, $2, $3, $4, $5)",
                    ev.event_id, ev.interception_id, at, ev.prompt, ev.truncated,
                )
                await conn.execute(
                    "UPDATE interceptions SET prompt = $2, prompt_at = $3, prompt_truncated = $4"
                    " WHERE id = $1 AND (prompt_at IS NULL OR prompt_at <= $3)",
                    ev.interception_id, ev.prompt, ev.at, ev.truncated,
                )
                return Applied(duplicate=False, budgets=[])
            case ToolUsage():
                await conn.execute(
                    "INSERT INTO tool_usages (event_id, interception_id, at, name, call_id, arguments, injected, error,"
                    " truncated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    ev.event_id, ev.interception_id, at, ev.name, ev.call_id, ev.arguments, ev.injected, ev.error,
                    ev.truncated,
                )
                return Applied(duplicate=False, budgets=[])
            case InterceptionEnded():
                await conn.execute(
                    "UPDATE interceptions SET status = $2, status_code = $3, duration_ms = $4, error = $5, ended_at = $6,"
                    " key_id = COALESCE($7, key_id),"
                    " credential_hint = CASE WHEN $8 <> '' THEN $8 ELSE credential_hint END"
                    " WHERE id = $1",
                    ev.interception_id, ev.status, ev.status_code, ev.duration_ms, ev.error, at, ev.key_id, ev.key_hint,
                )
                return Applied(duplicate=False, budgets=[])
        return Applied(duplicate=False, budgets=await self._attribute(conn, ev.interception_id), unpriced=unpriced)

    async def _started(self, conn: asyncpg.Connection, ev: InterceptionStarted, at: datetime) -> None:
        await conn.execute(
            """UPDATE interceptions SET
                 started_at = $2, occurred_at = $2, user_id = $3, group_ids = $4, token_id = $5, gateway_id = $6,
                 provider_id = $7, provider_name = $8, provider_type = $9, endpoint = $10,
                 model = CASE WHEN $11 <> '' THEN $11 ELSE model END,
                 client = $12, session_id = $13, credential_kind = $14,
                 -- the ended event names the key that finally answered: a start arriving after it keeps it
                 credential_hint = CASE WHEN ended_at IS NOT NULL AND credential_hint <> '' THEN credential_hint
                                        WHEN $15 <> '' THEN $15 ELSE credential_hint END,
                 key_id = CASE WHEN ended_at IS NOT NULL AND key_id IS NOT NULL THEN key_id
                               ELSE COALESCE($16, key_id) END,
                 streaming = $17, reservation_micros = $18, metadata = $19
               WHERE id = $1""",
            ev.interception_id, at, ev.user_id, list(ev.group_ids), ev.token_id, ev.gateway_id,
            ev.provider_id, ev.provider_name, ev.provider_type, ev.endpoint, ev.model,
            ev.client, ev.session_id, ev.credential_kind, ev.credential_hint, ev.key_id,
            ev.streaming, ev.reservation_micros, dict(ev.metadata),
        )

    async def _tokens(self, conn: asyncpg.Connection, ev: TokenUsage, at: datetime) -> bool:
        model = ev.model
        if not model:  # price by the requested model when the upstream reported none
            model = await conn.fetchval("SELECT model FROM interceptions WHERE id = $1", ev.interception_id) or ""
        price = self.prices.table.lookup(model) if model else None
        t = ev.tokens
        cost = cost_micros(t, price)
        await conn.execute(
            "INSERT INTO token_usages (event_id, interception_id, at, model, input_tokens, output_tokens,"
            " cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_micros, priced)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            ev.event_id, ev.interception_id, at, ev.model, t.input_tokens, t.output_tokens,
            t.cache_read_tokens, t.cache_write_tokens, t.reasoning_tokens, cost, price is not None,
        )
        await conn.execute(
            """UPDATE interceptions SET
                 model = CASE WHEN model = '' THEN $2 ELSE model END,
                 input_tokens = input_tokens + $3, output_tokens = output_tokens + $4,
                 cache_read_tokens = cache_read_tokens + $5, cache_write_tokens = cache_write_tokens + $6,
                 reasoning_tokens = reasoning_tokens + $7, cost_micros = cost_micros + $8,
                 unpriced = unpriced OR $9
               WHERE id = $1""",
            ev.interception_id, ev.model, t.input_tokens, t.output_tokens, t.cache_read_tokens,
            t.cache_write_tokens, t.reasoning_tokens, cost, price is None,
        )
        if price is None:
            log.warning("no price for model; recorded at cost 0", extra={"model": model})
        return price is None

    async def _attribute(self, conn: asyncpg.Connection, interception_id: str) -> list[SubjectKey]:
        """Add the not-yet-attributed cost to spend and to the admitting gateway's leases."""
        row = await conn.fetchrow(
            "SELECT user_id, group_ids, started_at, gateway_id, cost_micros, attributed_micros"
            " FROM interceptions WHERE id = $1 FOR NO KEY UPDATE",
            interception_id,
        )
        if row is None or row["started_at"] is None:
            return []
        delta = row["cost_micros"] - row["attributed_micros"]
        keys = sorted(budget_keys(row["user_id"], row["group_ids"]))
        if delta == 0 or not keys:
            return []
        period = month_of(row["started_at"]).start
        await conn.execute(
            "INSERT INTO spend (scope, subject_id, period_start, spent_micros)"
            " SELECT s, i, $3, $4 FROM unnest($1::text[], $2::text[]) AS k(s, i)"
            " ON CONFLICT (scope, subject_id, period_start) DO UPDATE SET spent_micros = spend.spent_micros + $4",
            [k[0] for k in keys], [k[1] for k in keys], period, delta,
        )
        if row["gateway_id"]:
            for scope, subject in keys:  # one by one, in key order: the lock order every writer uses
                await conn.execute(
                    "UPDATE leases SET recorded_micros = recorded_micros + $5"
                    " WHERE scope = $1 AND subject_id = $2 AND period_start = $3 AND gateway_id = $4",
                    scope, subject, period, row["gateway_id"], delta,
                )
        await conn.execute("UPDATE interceptions SET attributed_micros = cost_micros WHERE id = $1", interception_id)
        return keys


_MAX_AT = 253402300799.0  # 9999-12-31: what a datetime can hold
_INT32 = 2**31 - 1
_COUNT = 2**53


def check(ev: AnyUsageEvent) -> None:
    """Refuse values the schema admits but the tables cannot hold: a poison event, never retried."""
    if not (0.0 <= ev.at <= _MAX_AT) or not ev.event_id or not ev.interception_id:
        raise RecordError(f"event {ev.event_id!r}: time {ev.at!r} out of range or an empty id")
    bounds: list[tuple[str, int, int]] = []
    match ev:
        case TokenUsage():
            bounds = [(f, getattr(ev.tokens, f), _COUNT) for f in ev.tokens.__struct_fields__]
        case InterceptionEnded():
            bounds = [("status_code", ev.status_code, _INT32), ("duration_ms", ev.duration_ms, _INT32)]
        case InterceptionStarted():
            bounds = [("reservation_micros", ev.reservation_micros, _COUNT)]
    for name, value, top in bounds:
        if not 0 <= value <= top:
            raise RecordError(f"event {ev.event_id!r}: {name} {value} out of range")


def budget_keys(user_id: str | None, group_ids: list[str] | None) -> set[SubjectKey]:
    keys: set[SubjectKey] = {("group", g) for g in (group_ids or []) if g}
    if user_id:
        keys.add(("user", user_id))
    return keys
