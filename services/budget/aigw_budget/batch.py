"""Usage events → schema ``budget`` a batch at a time: the consumer's fast path.

:meth:`~aigw_budget.recorder.Recorder.apply` spends one transaction and five or
six statements on every event; at four or five events per request that was
most of the system's CPU per request (Postgres and the budget process). Here a
whole fetched batch is one transaction of a fixed number of set-based
statements (rows passed as one JSON document each), whatever its size:

1. the interception rows every event needs, then the event ids claimed in
   ``processed_events`` (a replay claims nothing and changes nothing);
2. per kind, the claimed events in bulk: started, token usage (costed here,
   summed per interception), prompts (the latest per interception wins),
   tool calls, ended;
3. attribution: each touched interception's not-yet-attributed cost goes to
   spend and to the admitting gateway's leases, summed per budget, written in
   key order (the lock order every writer uses).

The end state equals applying the same events one by one with ``apply``
(``test_batch.py`` checks it against that oracle), with one deliberate
difference: token usage that names no model is priced by the interception's
model as it stands after the batch's started events, not before them.

A batch the database refuses for its data (not for being unreachable) is
retried event by event with ``apply``, so one bad event is terminated alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from aigw_common.errors import AigwError
from aigw_common.pricing import cost_micros
from aigw_common.schemas import (
    AnyUsageEvent,
    InterceptionEnded,
    InterceptionStarted,
    PromptRecorded,
    TokenUsage,
    ToolUsage,
)

from .errors import DB_ERRORS, classify
from .periods import month_of
from .recorder import Applied, BudgetKey, Recorder, _ts, budget_keys, check

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """Per event (in the order given): its ``Applied``, or the error that refused it alone."""

    outcomes: list[Applied | AigwError]
    budgets: set[BudgetKey] = field(default_factory=set)  # whose spend moved
    unpriced: int = 0  # token usage events recorded at cost 0


def _iso(at: float) -> str:
    return _ts(at).isoformat()


def _kind(ev: AnyUsageEvent) -> str:
    return str(type(ev).__struct_config__.tag).split(".", 1)[1]


_STARTED = """
UPDATE interceptions i SET
  started_at = e.at, occurred_at = e.at, user_id = e.user_id, group_ids = e.group_ids, token_id = e.token_id,
  gateway_id = e.gateway_id, provider_id = e.provider_id, provider_name = e.provider_name,
  provider_type = e.provider_type, endpoint = e.endpoint,
  model = CASE WHEN e.model <> '' THEN e.model ELSE i.model END,
  client = e.client, session_id = e.session_id, credential_kind = e.credential_kind,
  credential_hint = CASE WHEN e.credential_hint <> '' THEN e.credential_hint ELSE i.credential_hint END,
  key_id = COALESCE(e.key_id, i.key_id), streaming = e.streaming,
  reservation_micros = e.reservation_micros, metadata = e.metadata
FROM jsonb_to_recordset($1::jsonb) AS e(
  id text, at timestamptz, user_id text, group_ids text[], token_id text, gateway_id text, provider_id text,
  provider_name text, provider_type text, endpoint text, model text, client text, session_id text,
  credential_kind text, credential_hint text, key_id text, streaming boolean, reservation_micros bigint,
  metadata jsonb)
WHERE i.id = e.id"""

_TOKEN_ROWS = """
INSERT INTO token_usages (event_id, interception_id, at, model, input_tokens, output_tokens, cache_read_tokens,
                          cache_write_tokens, reasoning_tokens, cost_micros, priced)
SELECT * FROM jsonb_to_recordset($1::jsonb) AS e(
  event_id text, interception_id text, at timestamptz, model text, input_tokens bigint, output_tokens bigint,
  cache_read_tokens bigint, cache_write_tokens bigint, reasoning_tokens bigint, cost_micros bigint,
  priced boolean)"""

_TOKEN_SUMS = """
UPDATE interceptions i SET
  model = CASE WHEN i.model = '' THEN e.model ELSE i.model END,
  input_tokens = i.input_tokens + e.input_tokens, output_tokens = i.output_tokens + e.output_tokens,
  cache_read_tokens = i.cache_read_tokens + e.cache_read_tokens,
  cache_write_tokens = i.cache_write_tokens + e.cache_write_tokens,
  reasoning_tokens = i.reasoning_tokens + e.reasoning_tokens, cost_micros = i.cost_micros + e.cost_micros,
  unpriced = i.unpriced OR e.unpriced
FROM jsonb_to_recordset($1::jsonb) AS e(
  id text, model text, input_tokens bigint, output_tokens bigint, cache_read_tokens bigint,
  cache_write_tokens bigint, reasoning_tokens bigint, cost_micros bigint, unpriced boolean)
WHERE i.id = e.id"""

_PROMPT_ROWS = """
INSERT INTO prompts (event_id, interception_id, at, prompt, truncated)
SELECT * FROM jsonb_to_recordset($1::jsonb) AS e(event_id text, interception_id text, at timestamptz, prompt text,
  truncated boolean)"""

_PROMPT_LATEST = """
UPDATE interceptions i SET prompt = e.prompt, prompt_at = e.at, prompt_truncated = e.truncated
FROM jsonb_to_recordset($1::jsonb) AS e(id text, prompt text, at double precision, truncated boolean)
WHERE i.id = e.id AND (i.prompt_at IS NULL OR i.prompt_at <= e.at)"""

_TOOL_ROWS = """
INSERT INTO tool_usages (event_id, interception_id, at, name, call_id, arguments, injected, error, truncated)
SELECT * FROM jsonb_to_recordset($1::jsonb) AS e(
  event_id text, interception_id text, at timestamptz, name text, call_id text, arguments text, injected boolean,
  error text, truncated boolean)"""

_ENDED = """
UPDATE interceptions i SET status = e.status, status_code = e.status_code, duration_ms = e.duration_ms,
  error = e.error, ended_at = e.at, key_id = COALESCE(e.key_id, i.key_id),
  credential_hint = CASE WHEN e.key_hint <> '' THEN e.key_hint ELSE i.credential_hint END
FROM jsonb_to_recordset($1::jsonb) AS e(
  id text, status text, status_code integer, duration_ms integer, error text, at timestamptz, key_id text,
  key_hint text)
WHERE i.id = e.id"""


class BatchRecorder:
    """Applies a batch in one transaction; shares prices and the per-event fallback with ``recorder``."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def apply_batch(self, events: Sequence[AnyUsageEvent]) -> BatchResult:
        """Raises DatabaseUnavailable (retry the whole batch later); refused data is reported per event."""
        result = BatchResult(outcomes=[Applied(duplicate=True, budgets=[]) for _ in events])
        todo: list[int] = []
        first: dict[str, int] = {}  # event id -> index of its first copy in this batch
        copies: list[tuple[int, int]] = []  # (later copy, first copy)
        for i, ev in enumerate(events):
            try:
                check(ev)
            except AigwError as e:
                result.outcomes[i] = e
                continue
            if (j := first.get(ev.event_id)) is None:
                first[ev.event_id] = i
                todo.append(i)
            else:
                copies.append((i, j))
        if todo:
            batch = [events[i] for i in todo]
            try:
                async with self.recorder.pool.acquire(timeout=self.recorder.acquire_timeout) as conn, \
                        conn.transaction():
                    claimed = await self._apply(conn, batch, result)
            except DB_ERRORS as e:
                err = classify(e)
                if err.retryable:
                    raise err from e
                log.warning("usage batch refused; applying its events one by one", extra={"error": err.message})
                await self._one_by_one(events, todo, result)
            else:
                for i in todo:
                    if events[i].event_id in claimed:
                        result.outcomes[i] = Applied(duplicate=False, budgets=[])
        for i, j in copies:  # a later copy is a duplicate of an applied event, or refused like its first copy
            res = result.outcomes[j]
            result.outcomes[i] = res if isinstance(res, AigwError) else Applied(duplicate=True, budgets=[])
        return result

    async def _one_by_one(self, events: Sequence[AnyUsageEvent], todo: list[int], result: BatchResult) -> None:
        result.budgets.clear()
        result.unpriced = 0
        for i in todo:
            try:
                applied = await self.recorder.apply(events[i])
            except AigwError as e:
                if e.retryable:
                    raise
                result.outcomes[i] = e
                continue
            result.outcomes[i] = applied
            result.budgets.update(applied.budgets)
            result.unpriced += applied.unpriced

    async def _apply(self, conn: asyncpg.Connection, batch: list[AnyUsageEvent], result: BatchResult) -> set[str]:
        first_at: dict[str, float] = {}
        for ev in batch:
            first_at.setdefault(ev.interception_id, ev.at)
        await conn.execute(
            "INSERT INTO interceptions (id, occurred_at)"
            " SELECT id, at FROM jsonb_to_recordset($1::jsonb) AS e(id text, at timestamptz) ORDER BY id"
            " ON CONFLICT (id) DO NOTHING",
            [{"id": k, "at": _iso(v)} for k, v in first_at.items()],
        )
        rows = await conn.fetch(
            "INSERT INTO processed_events (event_id, interception_id, kind)"
            " SELECT * FROM jsonb_to_recordset($1::jsonb) AS e(event_id text, interception_id text, kind text)"
            " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            [{"event_id": ev.event_id, "interception_id": ev.interception_id, "kind": _kind(ev)} for ev in batch],
        )
        claimed = {r["event_id"] for r in rows}
        mine = [ev for ev in batch if ev.event_id in claimed]
        started = {ev.interception_id: ev for ev in mine if isinstance(ev, InterceptionStarted)}  # last wins
        if started:
            await conn.execute(_STARTED, [self._started_row(ev) for ev in started.values()])
        tokens = [ev for ev in mine if isinstance(ev, TokenUsage)]
        if tokens:
            await self._tokens(conn, tokens, result)
        prompts = [ev for ev in mine if isinstance(ev, PromptRecorded)]
        if prompts:
            await self._prompts(conn, prompts)
        tools = [ev for ev in mine if isinstance(ev, ToolUsage)]
        if tools:
            await conn.execute(_TOOL_ROWS, [
                {"event_id": ev.event_id, "interception_id": ev.interception_id, "at": _iso(ev.at), "name": ev.name,
                 "call_id": ev.call_id, "arguments": ev.arguments, "injected": ev.injected, "error": ev.error,
                 "truncated": ev.truncated}
                for ev in tools])
        ended = {ev.interception_id: ev for ev in mine if isinstance(ev, InterceptionEnded)}  # last wins
        if ended:
            await conn.execute(_ENDED, [
                {"id": ev.interception_id, "status": ev.status, "status_code": ev.status_code,
                 "duration_ms": ev.duration_ms, "error": ev.error, "at": _iso(ev.at), "key_id": ev.key_id,
                 "key_hint": ev.key_hint} for ev in ended.values()])
        touched = sorted({ev.interception_id for ev in mine if isinstance(ev, InterceptionStarted | TokenUsage)})
        if touched:
            result.budgets.update(await self._attribute(conn, touched))
        return claimed

    @staticmethod
    def _started_row(ev: InterceptionStarted) -> dict[str, object]:
        return {
            "id": ev.interception_id, "at": _iso(ev.at), "user_id": ev.user_id, "group_ids": list(ev.group_ids),
            "token_id": ev.token_id, "gateway_id": ev.gateway_id, "provider_id": ev.provider_id,
            "provider_name": ev.provider_name, "provider_type": ev.provider_type, "endpoint": ev.endpoint,
            "model": ev.model, "client": ev.client, "session_id": ev.session_id,
            "credential_kind": ev.credential_kind, "credential_hint": ev.credential_hint, "key_id": ev.key_id,
            "streaming": ev.streaming, "reservation_micros": ev.reservation_micros, "metadata": dict(ev.metadata),
        }

    async def _tokens(self, conn: asyncpg.Connection, tokens: list[TokenUsage], result: BatchResult) -> None:
        unnamed = sorted({ev.interception_id for ev in tokens if not ev.model})
        current: dict[str, str] = {}
        if unnamed:  # price by the requested model when the upstream reported none
            for r in await conn.fetch("SELECT id, model FROM interceptions WHERE id = ANY($1::text[])", unnamed):
                current[r["id"]] = r["model"]
        table = self.recorder.prices.table
        rows: list[dict[str, object]] = []
        sums: dict[str, dict[str, object]] = {}
        for ev in tokens:
            model = ev.model or current.get(ev.interception_id, "")
            if ev.model and not current.get(ev.interception_id):
                current[ev.interception_id] = ev.model
            price = table.lookup(model) if model else None
            t = ev.tokens
            cost = cost_micros(t, price)
            if price is None:
                result.unpriced += 1
                log.warning("no price for model; recorded at cost 0", extra={"model": model})
            rows.append({"event_id": ev.event_id, "interception_id": ev.interception_id, "at": _iso(ev.at),
                         "model": ev.model, "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
                         "cache_read_tokens": t.cache_read_tokens, "cache_write_tokens": t.cache_write_tokens,
                         "reasoning_tokens": t.reasoning_tokens, "cost_micros": cost, "priced": price is not None})
            s = sums.setdefault(ev.interception_id, {
                "id": ev.interception_id, "model": "", "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
                "cache_write_tokens": 0, "reasoning_tokens": 0, "cost_micros": 0, "unpriced": False})
            if not s["model"]:
                s["model"] = ev.model
            for f in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
                s[f] = int(s[f]) + getattr(t, f)  # type: ignore[call-overload]  # s is a dict[str, object] row
            s["cost_micros"] = int(s["cost_micros"]) + cost  # type: ignore[call-overload]  # s is a dict[str, object] row
            s["unpriced"] = bool(s["unpriced"]) or price is None
        await conn.execute(_TOKEN_ROWS, rows)
        await conn.execute(_TOKEN_SUMS, sorted(sums.values(), key=lambda r: str(r["id"])))

    @staticmethod
    async def _prompts(conn: asyncpg.Connection, prompts: list[PromptRecorded]) -> None:
        await conn.execute(_PROMPT_ROWS, [
            {"event_id": ev.event_id, "interception_id": ev.interception_id, "at": _iso(ev.at), "prompt": ev.prompt,
             "truncated": ev.truncated} for ev in prompts])
        latest: dict[str, PromptRecorded] = {}
        for ev in prompts:  # the latest by time; on a tie the later one, as one-by-one application does
            cur = latest.get(ev.interception_id)
            if cur is None or cur.at <= ev.at:
                latest[ev.interception_id] = ev
        await conn.execute(_PROMPT_LATEST, [{"id": ev.interception_id, "prompt": ev.prompt, "at": ev.at,
                                             "truncated": ev.truncated} for ev in latest.values()])

    @staticmethod
    async def _attribute(conn: asyncpg.Connection, ids: list[str]) -> set[BudgetKey]:
        """Add each interception's not-yet-attributed cost to spend and to its gateway's leases, per budget."""
        rows = await conn.fetch(
            "SELECT id, user_id, group_ids, started_at, gateway_id, cost_micros, attributed_micros"
            " FROM interceptions WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE",
            ids,
        )
        spend: dict[tuple[str, str, object], int] = {}
        leases: dict[tuple[str, str, object, str], int] = {}
        done: list[str] = []
        moved: set[BudgetKey] = set()
        for r in rows:
            delta = r["cost_micros"] - r["attributed_micros"]
            keys = budget_keys(r["user_id"], r["group_ids"])
            if r["started_at"] is None or delta == 0 or not keys:
                continue
            period = month_of(r["started_at"]).start
            for scope, subject in keys:
                spend[(scope, subject, period)] = spend.get((scope, subject, period), 0) + delta
                if r["gateway_id"]:
                    k = (scope, subject, period, r["gateway_id"])
                    leases[k] = leases.get(k, 0) + delta
            moved.update(keys)
            done.append(r["id"])
        if not done:
            return moved
        order = sorted(spend)
        await conn.execute(
            "INSERT INTO spend (scope, subject_id, period_start, spent_micros)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[])"
            " ON CONFLICT (scope, subject_id, period_start)"
            " DO UPDATE SET spent_micros = spend.spent_micros + EXCLUDED.spent_micros",
            [k[0] for k in order], [k[1] for k in order], [k[2] for k in order], [spend[k] for k in order],
        )
        for (scope, subject, lease_period, gateway), delta in sorted(leases.items()):  # key order: the lock order
            await conn.execute(
                "UPDATE leases SET recorded_micros = recorded_micros + $5"
                " WHERE scope = $1 AND subject_id = $2 AND period_start = $3 AND gateway_id = $4",
                scope, subject, lease_period, gateway, delta,
            )
        await conn.execute("UPDATE interceptions SET attributed_micros = cost_micros WHERE id = ANY($1::text[])", done)
        return moved
