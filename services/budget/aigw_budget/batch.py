"""Usage events → schema ``budget`` a batch at a time: the consumer's fast path.

:meth:`~aigw_budget.recorder.Recorder.apply` spends one transaction and five or
six statements on every event; at four or five events per request that was
most of the system's CPU per request (Postgres and the budget process). Here a
whole fetched batch is one transaction of a fixed number of set-based
statements (rows passed as one JSON document each), whatever its size:

1. the event ids claimed in ``usage_claims``, one row per interception (a
   replay claims nothing and changes nothing; the foreign key to the
   interception is checked at commit);
2. each touched interception once: everything the claimed events say about it
   (started, token usage costed here and summed, the latest prompt, ended) is
   merged in Python, then a new interception is inserted complete, its cost
   already marked attributed (``_FRESH``: one row version, not an insert and
   two updates), and only one that exists is updated (``_MERGED``); the
   per-event rows (token usage, prompts, tool calls) go in the same
   statement as the inserts (``WITH``);
3. attribution: each touched interception's not-yet-attributed cost goes to
   spend and to the admitting gateway's leases, summed per budget, written in
   key order (the lock order every writer uses), in one statement.

The end state equals applying the same events one by one with ``apply``
(``test_batch.py`` checks it against that oracle), with one deliberate
difference: token usage that names no model is priced by the interception's
model as it stands after the batch's started events, not before them.

A batch the database refuses for its data (not for being unreachable) is
retried event by event with ``apply``, so one bad event is terminated alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from aigw_common.db import in_transaction
from aigw_common.errors import AigwError
from aigw_common.pricing import cost_micros
from aigw_common.schemas import (
    AnyUsageEvent,
    BudgetScope,
    InterceptionEnded,
    InterceptionStarted,
    PromptRecorded,
    SubjectKey,
    TokenUsage,
    ToolUsage,
)

from .errors import DB_ERRORS, classify
from .periods import month_of
from .recorder import CLAIM, Applied, Recorder, _ts, budget_keys, check

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """Per event (in the order given): its ``Applied``, or the error that refused it alone."""

    outcomes: list[Applied | AigwError]
    budgets: set[SubjectKey] = field(default_factory=set)  # whose spend moved
    unpriced: int = 0  # token usage events recorded at cost 0


def _iso(at: float) -> str:
    return _ts(at).isoformat()


_TOKEN_ROWS = """
INSERT INTO token_usages (event_id, interception_id, at, model, input_tokens, output_tokens, cache_read_tokens,
                          cache_write_tokens, reasoning_tokens, cost_micros, priced)
SELECT * FROM jsonb_to_recordset($1::jsonb) AS e(
  event_id text, interception_id text, at timestamptz, model text, input_tokens bigint, output_tokens bigint,
  cache_read_tokens bigint, cache_write_tokens bigint, reasoning_tokens bigint, cost_micros bigint,
  priced boolean)"""

_PROMPT_ROWS = """
INSERT INTO prompts (event_id, interception_id, at, prompt, truncated)
SELECT * FROM jsonb_to_recordset($1::jsonb) AS e(event_id text, interception_id text, at timestamptz, prompt text,
  truncated boolean)"""

_TOOL_ROWS = """
INSERT INTO tool_usages (event_id, interception_id, at, name, call_id, arguments, injected, error, truncated)
SELECT * FROM jsonb_to_recordset($1::jsonb) AS e(
  event_id text, interception_id text, at timestamptz, name text, call_id text, arguments text, injected boolean,
  error text, truncated boolean)"""

# Everything one batch says about each interception, in one UPDATE (one new row version, not four): the
# started event's fields (s_*), the token sums (t_*), the latest prompt (p_*), the ended event's fields (e_*),
# each applied only when the batch has it — in the order one-by-one application gives them precedence
# (started, then tokens, then prompt, then ended; the ended event's key — the one that finally answered — wins
# over a start's, whichever arrived first). RETURNING feeds attribution; attributed_micros is untouched
# here, so it comes back as it was.
_MERGED = """
UPDATE interceptions i SET
  started_at = CASE WHEN e.has_s THEN e.s_at ELSE i.started_at END,
  occurred_at = CASE WHEN e.has_s THEN e.s_at ELSE i.occurred_at END,
  user_id = CASE WHEN e.has_s THEN e.s_user_id ELSE i.user_id END,
  group_ids = CASE WHEN e.has_s THEN e.s_group_ids ELSE i.group_ids END,
  token_id = CASE WHEN e.has_s THEN e.s_token_id ELSE i.token_id END,
  gateway_id = CASE WHEN e.has_s THEN e.s_gateway_id ELSE i.gateway_id END,
  provider_id = CASE WHEN e.has_s THEN e.s_provider_id ELSE i.provider_id END,
  provider_name = CASE WHEN e.has_s THEN e.s_provider_name ELSE i.provider_name END,
  provider_type = CASE WHEN e.has_s THEN e.s_provider_type ELSE i.provider_type END,
  endpoint = CASE WHEN e.has_s THEN e.s_endpoint ELSE i.endpoint END,
  client = CASE WHEN e.has_s THEN e.s_client ELSE i.client END,
  session_id = CASE WHEN e.has_s THEN e.s_session_id ELSE i.session_id END,
  credential_kind = CASE WHEN e.has_s THEN e.s_credential_kind ELSE i.credential_kind END,
  streaming = CASE WHEN e.has_s THEN e.s_streaming ELSE i.streaming END,
  reservation_micros = CASE WHEN e.has_s THEN e.s_reservation_micros ELSE i.reservation_micros END,
  metadata = CASE WHEN e.has_s THEN e.s_metadata ELSE i.metadata END,
  model = CASE WHEN e.has_s AND e.s_model <> '' THEN e.s_model WHEN i.model = '' THEN e.t_model ELSE i.model END,
  key_id = COALESCE(e.e_key_id, CASE WHEN i.ended_at IS NOT NULL THEN i.key_id END, e.s_key_id, i.key_id),
  credential_hint = CASE WHEN e.e_key_hint <> '' THEN e.e_key_hint
                         WHEN i.ended_at IS NOT NULL AND i.credential_hint <> '' THEN i.credential_hint
                         WHEN e.has_s AND e.s_credential_hint <> '' THEN e.s_credential_hint
                         ELSE i.credential_hint END,
  input_tokens = i.input_tokens + e.t_input_tokens, output_tokens = i.output_tokens + e.t_output_tokens,
  cache_read_tokens = i.cache_read_tokens + e.t_cache_read_tokens,
  cache_write_tokens = i.cache_write_tokens + e.t_cache_write_tokens,
  reasoning_tokens = i.reasoning_tokens + e.t_reasoning_tokens, cost_micros = i.cost_micros + e.t_cost_micros,
  unpriced = i.unpriced OR e.t_unpriced,
  prompt = CASE WHEN e.has_p AND (i.prompt_at IS NULL OR i.prompt_at <= e.p_at) THEN e.p_prompt ELSE i.prompt END,
  prompt_truncated = CASE WHEN e.has_p AND (i.prompt_at IS NULL OR i.prompt_at <= e.p_at) THEN e.p_truncated
                          ELSE i.prompt_truncated END,
  prompt_at = CASE WHEN e.has_p AND (i.prompt_at IS NULL OR i.prompt_at <= e.p_at) THEN e.p_at ELSE i.prompt_at END,
  status = CASE WHEN e.has_e THEN e.e_status ELSE i.status END,
  status_code = CASE WHEN e.has_e THEN e.e_status_code ELSE i.status_code END,
  duration_ms = CASE WHEN e.has_e THEN e.e_duration_ms ELSE i.duration_ms END,
  error = CASE WHEN e.has_e THEN e.e_error ELSE i.error END,
  ended_at = CASE WHEN e.has_e THEN e.e_at ELSE i.ended_at END
FROM jsonb_to_recordset($1::jsonb) AS e(
  id text,
  has_s boolean, s_at timestamptz, s_user_id text, s_group_ids text[], s_token_id text, s_gateway_id text,
  s_provider_id text, s_provider_name text, s_provider_type text, s_endpoint text, s_model text, s_client text,
  s_session_id text, s_credential_kind text, s_credential_hint text, s_key_id text, s_streaming boolean,
  s_reservation_micros bigint, s_metadata jsonb,
  t_model text, t_input_tokens bigint, t_output_tokens bigint, t_cache_read_tokens bigint,
  t_cache_write_tokens bigint, t_reasoning_tokens bigint, t_cost_micros bigint, t_unpriced boolean,
  has_p boolean, p_prompt text, p_at double precision, p_truncated boolean,
  has_e boolean, e_status text, e_status_code integer, e_duration_ms integer, e_error text, e_at timestamptz,
  e_key_id text, e_key_hint text)
WHERE i.id = e.id
RETURNING i.id, i.user_id, i.group_ids, i.started_at, i.gateway_id, i.cost_micros, i.attributed_micros, false AS fresh"""

# The same merged rows written as new interceptions: what ``_MERGED`` makes of a row inserted bare (the batch's
# first event time, every other column its default), inserted complete in one go — one row version, its
# indexes written once — with its cost already marked attributed when attribution will take it (``s_keys``:
# the started event names a budget). A row that exists (an earlier batch had one of its events, or a
# concurrent one just inserted it) is left alone here and goes through ``_MERGED``. RETURNING gives what
# attribution needs, with the attributed part as it was before (0).
_FRESH = """
INSERT INTO interceptions (id, occurred_at, started_at, user_id, group_ids, token_id, gateway_id, provider_id,
  provider_name, provider_type, endpoint, client, session_id, credential_kind, streaming, reservation_micros,
  metadata, model, key_id, credential_hint, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
  reasoning_tokens, cost_micros, unpriced, prompt, prompt_truncated, prompt_at, status, status_code, duration_ms,
  error, ended_at, attributed_micros)
SELECT e.id, CASE WHEN e.has_s THEN e.s_at ELSE e.first_at END, e.s_at, e.s_user_id, COALESCE(e.s_group_ids, '{}'),
  e.s_token_id, COALESCE(e.s_gateway_id, ''), e.s_provider_id, COALESCE(e.s_provider_name, ''),
  COALESCE(e.s_provider_type, ''), COALESCE(e.s_endpoint, ''), COALESCE(e.s_client, 'unknown'), e.s_session_id,
  COALESCE(e.s_credential_kind, 'centralised'), COALESCE(e.s_streaming, false), COALESCE(e.s_reservation_micros, 0),
  COALESCE(e.s_metadata, '{}'),
  CASE WHEN e.has_s AND e.s_model <> '' THEN e.s_model ELSE e.t_model END,
  COALESCE(e.e_key_id, e.s_key_id),
  CASE WHEN e.e_key_hint <> '' THEN e.e_key_hint WHEN e.has_s AND e.s_credential_hint <> '' THEN e.s_credential_hint
       ELSE '' END,
  e.t_input_tokens, e.t_output_tokens, e.t_cache_read_tokens, e.t_cache_write_tokens, e.t_reasoning_tokens,
  e.t_cost_micros, e.t_unpriced, e.p_prompt, COALESCE(e.p_truncated, false), e.p_at, e.e_status, e.e_status_code,
  e.e_duration_ms, e.e_error, e.e_at,
  CASE WHEN e.has_s AND e.s_keys THEN e.t_cost_micros ELSE 0 END
FROM jsonb_to_recordset($1::jsonb) AS e(
  id text, first_at timestamptz,
  has_s boolean, s_at timestamptz, s_user_id text, s_group_ids text[], s_token_id text, s_gateway_id text,
  s_provider_id text, s_provider_name text, s_provider_type text, s_endpoint text, s_model text, s_client text,
  s_session_id text, s_credential_kind text, s_credential_hint text, s_key_id text, s_streaming boolean,
  s_reservation_micros bigint, s_metadata jsonb, s_keys boolean,
  t_model text, t_input_tokens bigint, t_output_tokens bigint, t_cache_read_tokens bigint,
  t_cache_write_tokens bigint, t_reasoning_tokens bigint, t_cost_micros bigint, t_unpriced boolean,
  has_p boolean, p_prompt text, p_at double precision, p_truncated boolean,
  has_e boolean, e_status text, e_status_code integer, e_duration_ms integer, e_error text, e_at timestamptz,
  e_key_id text, e_key_hint text)
ORDER BY e.id
ON CONFLICT (id) DO NOTHING
RETURNING id, user_id, group_ids, started_at, gateway_id, cost_micros, 0::bigint AS attributed_micros, true AS fresh"""

# The batch's cost per budget, in one statement: spend first (the leases are locked only once ``s`` has run:
# a data-modifying WITH runs when first read), then each lease's share, its rows locked in key order before
# they are credited — the order every writer locks spend and leases in.
_SPEND = """
WITH s AS (
  INSERT INTO spend (scope, subject_id, period_start, spent_micros)
  SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[])
  ON CONFLICT (scope, subject_id, period_start) DO UPDATE SET spent_micros = spend.spent_micros + EXCLUDED.spent_micros
  RETURNING 1),
d AS (
  SELECT * FROM unnest($5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::bigint[])
    AS d(scope, subject_id, period_start, gateway_id, delta)),
locked AS (
  SELECT l.scope, l.subject_id, l.period_start, l.gateway_id FROM leases l
  JOIN d USING (scope, subject_id, period_start, gateway_id)
  WHERE (SELECT count(*) FROM s) >= 0
  ORDER BY l.scope, l.subject_id, l.period_start, l.gateway_id FOR NO KEY UPDATE OF l)
UPDATE leases l SET recorded_micros = l.recorded_micros + d.delta
FROM locked k JOIN d USING (scope, subject_id, period_start, gateway_id)
WHERE (l.scope, l.subject_id, l.period_start, l.gateway_id) = (k.scope, k.subject_id, k.period_start, k.gateway_id)"""

_NO_CHANGE: dict[str, object] = {
    "has_s": False, "t_model": "", "t_input_tokens": 0, "t_output_tokens": 0, "t_cache_read_tokens": 0,
    "t_cache_write_tokens": 0, "t_reasoning_tokens": 0, "t_cost_micros": 0, "t_unpriced": False,
    "has_p": False, "has_e": False, "e_key_hint": "",
}


def _add(row: dict[str, object], col: str, n: int) -> None:
    """Add ``n`` to a counter column of a merged row (rows are SQL parameters of mixed types; counters
    start at 0 in ``_NO_CHANGE``)."""
    v = row[col]
    if not isinstance(v, int):
        raise TypeError(f"{col} is not a counter")
    row[col] = v + n


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

            async def attempt(conn: asyncpg.Connection) -> set[str]:
                result.budgets.clear()  # what a cut attempt collected is not what the next one commits
                result.unpriced = 0
                return await self._apply(conn, batch, result)

            try:
                # a transaction cut by a failover runs again on the new primary (event ids make it idempotent)
                claimed = await in_transaction(self.recorder.pool, attempt, attempts=2,
                                               acquire_timeout=self.recorder.acquire_timeout)
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
        ids: dict[str, list[str]] = {}
        for ev in batch:
            ids.setdefault(ev.interception_id, []).append(ev.event_id)
        # claimed before the interception rows exist: the foreign key is checked at commit
        rows = await conn.fetch(CLAIM, [{"interception_id": k, "event_ids": v} for k, v in ids.items()])
        claimed = {eid for r in rows for eid in r["added"]}
        mine = [ev for ev in batch if ev.event_id in claimed]
        if not mine:
            return claimed
        merged: dict[str, dict[str, object]] = {}

        def row(iid: str) -> dict[str, object]:
            return merged.setdefault(iid, {"id": iid, **_NO_CHANGE})

        for ev in mine:  # the last started/ended of an interception wins, as one by one
            if isinstance(ev, InterceptionStarted):
                row(ev.interception_id).update(self._started_row(ev))
            elif isinstance(ev, InterceptionEnded):
                row(ev.interception_id).update({
                    "has_e": True, "e_status": ev.status, "e_status_code": ev.status_code,
                    "e_duration_ms": ev.duration_ms, "e_error": ev.error, "e_at": _iso(ev.at),
                    "e_key_id": ev.key_id, "e_key_hint": ev.key_hint})
        tokens = [ev for ev in mine if isinstance(ev, TokenUsage)]
        token_rows = await self._tokens(conn, tokens, merged, row, result) if tokens else []
        prompts = [ev for ev in mine if isinstance(ev, PromptRecorded)]
        if prompts:
            self._prompts(prompts, row)
        # every claimed event's interception, written complete when new (a row of an interception with only
        # tool calls here changes nothing when it exists); the ones that exist get the merge
        fresh = dict(merged)
        for ev in mine:
            if ev.interception_id not in fresh:
                fresh[ev.interception_id] = {"id": ev.interception_id, **_NO_CHANGE}
            fresh[ev.interception_id].setdefault("first_at", _iso(ev.at))
        sql, details = self._details(token_rows, prompts, [ev for ev in mine if isinstance(ev, ToolUsage)])
        after = list(await conn.fetch(sql + _FRESH, list(fresh.values()), *details))
        inserted = {r["id"] for r in after}
        if existing := sorted((r for iid, r in merged.items() if iid not in inserted), key=lambda r: str(r["id"])):
            after += await conn.fetch(_MERGED, existing)
        result.budgets.update(await self._attribute(conn, after))
        return claimed

    @staticmethod
    def _details(tokens: list[dict[str, object]], prompts: list[PromptRecorded],
                 tools: list[ToolUsage]) -> tuple[str, list[object]]:
        """The per-event rows (token usage, prompts, tool calls) as a WITH clause of the interceptions'
        statement (parameters from $2; the foreign keys are checked at its end, when its rows are in)."""
        parts: list[tuple[str, object]] = []
        if tokens:
            parts.append((_TOKEN_ROWS, tokens))
        if prompts:
            parts.append((_PROMPT_ROWS, [
                {"event_id": ev.event_id, "interception_id": ev.interception_id, "at": _iso(ev.at),
                 "prompt": ev.prompt, "truncated": ev.truncated} for ev in prompts]))
        if tools:
            parts.append((_TOOL_ROWS, [
                {"event_id": ev.event_id, "interception_id": ev.interception_id, "at": _iso(ev.at), "name": ev.name,
                 "call_id": ev.call_id, "arguments": ev.arguments, "injected": ev.injected, "error": ev.error,
                 "truncated": ev.truncated} for ev in tools]))
        if not parts:
            return "", []
        ctes = ", ".join(f"w{n} AS ({q.replace('$1', f'${n}')})" for n, (q, _) in enumerate(parts, 2))
        return "WITH " + ctes, [v for _, v in parts]

    @staticmethod
    def _started_row(ev: InterceptionStarted) -> dict[str, object]:
        return {
            "has_s": True, "s_at": _iso(ev.at), "s_user_id": ev.user_id, "s_group_ids": list(ev.group_ids),
            "s_token_id": ev.token_id, "s_gateway_id": ev.gateway_id, "s_provider_id": ev.provider_id,
            "s_provider_name": ev.provider_name, "s_provider_type": ev.provider_type, "s_endpoint": ev.endpoint,
            "s_model": ev.model, "s_client": ev.client, "s_session_id": ev.session_id,
            "s_credential_kind": ev.credential_kind, "s_credential_hint": ev.credential_hint,
            "s_key_id": ev.key_id, "s_streaming": ev.streaming, "s_reservation_micros": ev.reservation_micros,
            "s_metadata": dict(ev.metadata), "s_keys": bool(budget_keys(ev.user_id, list(ev.group_ids))),
        }

    async def _tokens(self, conn: asyncpg.Connection, tokens: list[TokenUsage], merged: dict[str, dict[str, object]],
                      row: Callable[[str], dict[str, object]], result: BatchResult) -> list[dict[str, object]]:
        """Cost each token event; return its token_usages row (written with the other details) and add it to
        its interception's merged row."""
        unnamed = sorted({ev.interception_id for ev in tokens if not ev.model})
        current: dict[str, str] = {}
        if unnamed:  # price by the requested model when the upstream reported none (the batch's start first)
            for r in await conn.fetch("SELECT id, model FROM interceptions WHERE id = ANY($1::text[])", unnamed):
                current[r["id"]] = r["model"]
            for iid in unnamed:
                started = merged.get(iid)
                if started is not None and started["has_s"] and started["s_model"]:
                    current[iid] = str(started["s_model"])
        table = self.recorder.prices.table
        rows: list[dict[str, object]] = []
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
            s = row(ev.interception_id)
            if not s["t_model"]:
                s["t_model"] = ev.model
            for f in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
                _add(s, "t_" + f, getattr(t, f))
            _add(s, "t_cost_micros", cost)
            s["t_unpriced"] = bool(s["t_unpriced"]) or price is None
        return rows

    @staticmethod
    def _prompts(prompts: list[PromptRecorded], row: Callable[[str], dict[str, object]]) -> None:
        latest: dict[str, PromptRecorded] = {}
        for ev in prompts:  # the latest by time; on a tie the later one, as one-by-one application does
            cur = latest.get(ev.interception_id)
            if cur is None or cur.at <= ev.at:
                latest[ev.interception_id] = ev
        for ev in latest.values():
            row(ev.interception_id).update({"has_p": True, "p_prompt": ev.prompt, "p_at": ev.at,
                                            "p_truncated": ev.truncated})

    @staticmethod
    async def _attribute(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> set[SubjectKey]:
        """Add each interception's not-yet-attributed cost to spend and to its gateway's leases, per budget
        (``rows``: the interceptions as ``_FRESH`` or ``_MERGED`` left them, still locked by it; a fresh row's
        ``attributed_micros`` was written with it)."""
        spend: dict[tuple[BudgetScope, str, object], int] = {}
        leases: dict[tuple[BudgetScope, str, object, str], int] = {}
        done: list[str] = []
        moved: set[SubjectKey] = set()
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
            if not r["fresh"]:
                done.append(r["id"])
        if not moved:
            return moved
        order, keyed = sorted(spend), sorted(leases)
        await conn.execute(
            _SPEND, [k[0] for k in order], [k[1] for k in order], [k[2] for k in order], [spend[k] for k in order],
            [k[0] for k in keyed], [k[1] for k in keyed], [k[2] for k in keyed], [k[3] for k in keyed],
            [leases[k] for k in keyed])
        if done:
            await conn.execute("UPDATE interceptions SET attributed_micros = cost_micros WHERE id = ANY($1::text[])",
                               done)
        return moved
