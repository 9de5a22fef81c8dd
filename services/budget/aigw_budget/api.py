"""The budget service's HTTP API (``docs/api.md``): budgets, usage, interceptions, prices.

Admins (and owners) write budgets and prices and read everything. Members
read their own user budget, the budgets of groups they belong to, and only
their own usage and interceptions. :data:`ROUTES` drives the router
(``aigw_common.api.mount``), the OpenAPI document (``openapi.py``) and the RBAC
matrix test; every handler returns the response Struct its route declares.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import asyncpg
import msgspec
from aiohttp import web

from aigw_common.api import (
    BadRequest,
    Forbidden,
    NotFound,
    Query,
    Route,
    Unavailable,
    mount,
    read_json,
)
from aigw_common.auth import IdentityCache, authenticate, is_admin
from aigw_common.errors import BusError
from aigw_common.ids import is_uuid
from aigw_common.openapi import document_route
from aigw_common.schemas import BudgetScope, Identity, ModelPrice

from .errors import DB_ERRORS, classify
from .ledger import TABLES
from .limits import FIELDS as LIMIT_FIELDS
from .limits import TABLES as LIMIT_TABLES
from .periods import iso, month_of
from .service import BudgetService

log = logging.getLogger(__name__)

SERVICE = web.AppKey("budget_service", BudgetService)
IDENTITIES = web.AppKey("identities", IdentityCache)

R = TypeVar("R")
Handler = Callable[[web.Request, Identity], Awaitable[R]]


class BudgetBody(msgspec.Struct, forbid_unknown_fields=True):
    spend_limit_micros: int
    period: Literal["month"] = "month"


MAX_LIMIT = 2**31 - 1


class LimitsBody(msgspec.Struct, forbid_unknown_fields=True):
    """Rate and concurrency limits of a user or group; null (or absent): that dimension is not limited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None


class PriceBody(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    input_per_mtok_micros: int
    output_per_mtok_micros: int
    cache_read_per_mtok_micros: int | None = None  # default: the input price
    cache_write_per_mtok_micros: int | None = None  # default: the input price


# ---------------------------------------------------------------- response bodies


class BudgetOut(msgspec.Struct):
    spend_limit_micros: int
    period: Literal["month"]
    spent_micros: int
    reserved_micros: int
    period_start: str
    period_end: str


class LimitsOut(msgspec.Struct):
    requests_per_minute: int | None
    tokens_per_minute: int | None
    concurrent_requests: int | None


class Totals(msgspec.Struct):
    interceptions: int
    spend_micros: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int


class UsageRow(Totals):
    key: str


class UsageOut(msgspec.Struct):
    from_: str = msgspec.field(name="from")
    to: str
    total: Totals
    rows: list[UsageRow]


class TokenUsageOut(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int


class ToolCallOut(msgspec.Struct):
    name: str
    call_id: str
    arguments: str
    injected: bool
    error: str | None
    truncated: bool


class InterceptionOut(msgspec.Struct):
    id: str
    user_id: str | None
    provider: str
    model: str
    client: str
    session_id: str | None
    credential_kind: str
    key_id: str | None
    key_hint: str | None
    status: Literal["running", "ok", "error", "cancelled", "interrupted"]
    started_at: str
    ended_at: str | None
    cost_micros: int
    token_usage: TokenUsageOut
    prompt: str | None
    prompt_truncated: bool
    tool_calls: list[ToolCallOut]


class InterceptionList(msgspec.Struct):
    interceptions: list[InterceptionOut]
    next_cursor: str | None


class PriceList(msgspec.Struct):
    prices: list[ModelPrice]


def _db(fn: Handler[R]) -> Handler[R]:
    """Database outages become 503 with Retry-After instead of a bare 500."""

    async def wrapped(request: web.Request, ident: Identity) -> R:
        try:
            return await fn(request, ident)
        except DB_ERRORS as e:
            err = classify(e)
            if err.retryable:
                raise Unavailable("database unavailable, try again", retry_after=2) from e
            raise

    return wrapped


# ---------------------------------------------------------------- budgets


async def _subject(request: web.Request, scope: BudgetScope, ident: Identity) -> tuple[str, str]:
    """(id, name) of the path's user or group; 404 when the registry knows none."""
    svc = request.app[SERVICE]
    ref = request.match_info["ref"]
    if scope == "user" and ref == "me":
        ref = ident.user_id
    found = await _resolve(svc, scope, ref)
    if found is None:
        raise NotFound(f"{scope} {ref!r} not found")
    return found


async def _resolve(svc: BudgetService, scope: BudgetScope, ref: str) -> tuple[str, str] | None:
    """(id, name) from the registry's directory over the bus; 503 when it cannot be asked (never a guess)."""
    try:
        return await svc.directory.resolve(scope, ref)
    except BusError as e:
        log.warning("directory unavailable", extra={"error": str(e)})
        raise Unavailable("the user directory is unavailable, try again") from None


async def _filter_ref(svc: BudgetService, scope: BudgetScope, ref: str) -> str:
    """The id a usage filter means: a live user/group by id or name, else an id as given (a deleted user's
    history stays reachable by id); an unknown name is a 404."""
    found = await _resolve(svc, scope, ref)
    if found is not None:
        return found[0]
    if is_uuid(ref):
        return ref
    raise NotFound(f"{scope} {ref!r} not found")


def _may_read(scope: BudgetScope, subject_id: str, ident: Identity) -> bool:
    if is_admin(ident):
        return True
    return subject_id == ident.user_id if scope == "user" else subject_id in ident.group_ids


async def _budget_body(svc: BudgetService, scope: BudgetScope, subject_id: str) -> BudgetOut:
    states = await svc.ledger.states([(scope, subject_id)])
    if not states:
        raise NotFound("budget not found")
    st = states[0]
    p = month_of(st.period_start)
    return BudgetOut(spend_limit_micros=st.limit_micros, period="month", spent_micros=st.spent_micros,
                     reserved_micros=st.reserved_micros, period_start=iso(p.start) or "", period_end=iso(p.end) or "")


def budget_routes(scope: BudgetScope) -> list[Route]:
    path = f"/api/v2/{scope}s/{{ref}}/ai/budget"
    table, col = TABLES[scope]

    @_db
    async def get(request: web.Request, ident: Identity) -> BudgetOut:
        subject_id, _ = await _subject(request, scope, ident)
        if not _may_read(scope, subject_id, ident):
            raise Forbidden(f"you may read only budgets of your own {'user' if scope == 'user' else 'groups'}")
        return await _budget_body(request.app[SERVICE], scope, subject_id)

    @_db
    async def put(request: web.Request, ident: Identity) -> BudgetOut:
        subject_id, _ = await _subject(request, scope, ident)
        body = await read_json(request, BudgetBody)
        if body.spend_limit_micros < 0:
            raise BadRequest("spend_limit_micros must be ≥ 0", "spend_limit_micros")
        svc = request.app[SERVICE]
        async with svc.pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(f"SELECT spend_limit_micros, period FROM {table} WHERE {col} = $1 FOR UPDATE", subject_id)
            await conn.execute(
                f"INSERT INTO {table} ({col}, spend_limit_micros, period) VALUES ($1, $2, $3)"
                f" ON CONFLICT ({col}) DO UPDATE SET spend_limit_micros = $2, period = $3, updated_at = now()",
                subject_id, body.spend_limit_micros, body.period,
            )
            await _audit(conn, ident, "budget.created" if before is None else "budget.updated", scope, subject_id,
                         dict(before) if before else None, msgspec.to_builtins(body))
        await svc.publish_states([(scope, subject_id)])
        return await _budget_body(svc, scope, subject_id)

    @_db
    async def delete(request: web.Request, ident: Identity) -> None:
        subject_id, _ = await _subject(request, scope, ident)
        svc = request.app[SERVICE]
        async with svc.pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(
                f"DELETE FROM {table} WHERE {col} = $1 RETURNING spend_limit_micros, period", subject_id
            )
            if before is None:
                raise NotFound("budget not found")
            await _audit(conn, ident, "budget.deleted", scope, subject_id, dict(before), None)
        await svc.publish_states([(scope, subject_id)], include_deleted=True)

    who = "your own user budget" if scope == "user" else "the budgets of your groups"
    return [
        Route("GET", path, get, "user", f"Read a {scope}'s budget (members: {who})", "budgets", response=BudgetOut),
        Route("PUT", path, put, "admin", f"Set a {scope}'s monthly budget", "budgets", body=BudgetBody,
              response=BudgetOut),
        Route("DELETE", path, delete, "admin", f"Remove a {scope}'s budget", "budgets"),
    ]


def limits_routes(scope: BudgetScope) -> list[Route]:
    """``/api/v2/{users|groups}/{ref}/ai/limits``: same roles as budgets; changes audited like budget changes."""
    path = f"/api/v2/{scope}s/{{ref}}/ai/limits"
    table, col = LIMIT_TABLES[scope]
    cols = ", ".join(LIMIT_FIELDS)

    @_db
    async def get(request: web.Request, ident: Identity) -> LimitsOut:
        subject_id, _ = await _subject(request, scope, ident)
        if not _may_read(scope, subject_id, ident):
            raise Forbidden(f"you may read only limits of your own {'user' if scope == 'user' else 'groups'}")
        found = await request.app[SERVICE].limits.get(scope, subject_id)
        if found is None:
            raise NotFound("limits not found")
        return LimitsOut(**asdict(found))

    @_db
    async def put(request: web.Request, ident: Identity) -> LimitsOut:
        subject_id, _ = await _subject(request, scope, ident)
        body = await read_json(request, LimitsBody)
        for f in LIMIT_FIELDS:
            v = getattr(body, f)
            if v is not None and not 0 <= v <= MAX_LIMIT:
                raise BadRequest(f"{f} must be null or between 0 and {MAX_LIMIT}", f)
        svc = request.app[SERVICE]
        values = [getattr(body, f) for f in LIMIT_FIELDS]
        async with svc.pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(f"SELECT {cols} FROM {table} WHERE {col} = $1 FOR UPDATE", subject_id)
            await conn.execute(
                f"INSERT INTO {table} ({col}, {cols}) VALUES ($1, $2, $3, $4) ON CONFLICT ({col}) DO UPDATE SET"
                " requests_per_minute = $2, tokens_per_minute = $3, concurrent_requests = $4, updated_at = now()",
                subject_id, *values,
            )
            await _audit(conn, ident, "limits.created" if before is None else "limits.updated", scope, subject_id,
                         dict(before) if before else None, msgspec.to_builtins(body))
        await svc.publish_limits([(scope, subject_id)])
        return LimitsOut(**dict(zip(LIMIT_FIELDS, values, strict=True)))

    @_db
    async def delete(request: web.Request, ident: Identity) -> None:
        subject_id, _ = await _subject(request, scope, ident)
        svc = request.app[SERVICE]
        async with svc.pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(f"DELETE FROM {table} WHERE {col} = $1 RETURNING {cols}", subject_id)
            if before is None:
                raise NotFound("limits not found")
            await _audit(conn, ident, "limits.deleted", scope, subject_id, dict(before), None)
        await svc.publish_limits([(scope, subject_id)])

    who = "your own user's limits" if scope == "user" else "the limits of your groups"
    return [
        Route("GET", path, get, "user", f"Read a {scope}'s rate and concurrency limits (members: {who})", "limits",
              response=LimitsOut),
        Route("PUT", path, put, "admin", f"Set a {scope}'s requests and tokens per minute and concurrent requests "
              "(null: not limited)", "limits", body=LimitsBody, response=LimitsOut),
        Route("DELETE", path, delete, "admin", f"Remove a {scope}'s limits", "limits"),
    ]


async def _audit(conn: asyncpg.Connection, ident: Identity, action: str, target_type: str, target_id: str,
                 before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    await conn.execute(
        "INSERT INTO audit_logs (actor_id, action, target_type, target_id, before, after) VALUES ($1, $2, $3, $4, $5, $6)",
        ident.user_id, action, target_type, target_id, before, after,
    )


# ---------------------------------------------------------------- prices


@_db
async def get_prices(request: web.Request, _ident: Identity) -> PriceList:
    table = await request.app[SERVICE].prices.load(request.app[SERVICE].pool)
    return PriceList(prices=list(table.prices))


@_db
async def put_price(request: web.Request, ident: Identity) -> ModelPrice:
    body = await read_json(request, PriceBody)
    model = body.model.strip()
    if not model or len(model) > 200:
        raise BadRequest("model must be 1-200 characters", "model")
    price = ModelPrice(
        model=model, input_per_mtok_micros=body.input_per_mtok_micros, output_per_mtok_micros=body.output_per_mtok_micros,
        cache_read_per_mtok_micros=body.input_per_mtok_micros if body.cache_read_per_mtok_micros is None
        else body.cache_read_per_mtok_micros,
        cache_write_per_mtok_micros=body.input_per_mtok_micros if body.cache_write_per_mtok_micros is None
        else body.cache_write_per_mtok_micros,
    )
    for f in ("input_per_mtok_micros", "output_per_mtok_micros", "cache_read_per_mtok_micros", "cache_write_per_mtok_micros"):
        if getattr(price, f) < 0:
            raise BadRequest(f"{f} must be ≥ 0", f)
    svc = request.app[SERVICE]
    async with svc.pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(
            "SELECT input_per_mtok_micros, output_per_mtok_micros, cache_read_per_mtok_micros, cache_write_per_mtok_micros"
            " FROM prices WHERE model = $1 FOR UPDATE", model,
        )
        await conn.execute(
            "INSERT INTO prices (model, input_per_mtok_micros, output_per_mtok_micros, cache_read_per_mtok_micros,"
            " cache_write_per_mtok_micros) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (model) DO UPDATE SET"
            " input_per_mtok_micros = $2, output_per_mtok_micros = $3, cache_read_per_mtok_micros = $4,"
            " cache_write_per_mtok_micros = $5, updated_at = now()",
            model, price.input_per_mtok_micros, price.output_per_mtok_micros, price.cache_read_per_mtok_micros,
            price.cache_write_per_mtok_micros,
        )
        await _audit(conn, ident, "price.updated" if before else "price.created", "price", model,
                     dict(before) if before else None, msgspec.to_builtins(price))
    await svc.prices.load(svc.pool)
    await svc.publish_prices()
    return price


# ---------------------------------------------------------------- usage and interceptions


def _time_param(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an RFC 3339 time or epoch seconds", name) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class _Filters:
    """WHERE clauses over ``interceptions i`` built from query parameters, with members confined to themselves."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, clause: str, *values: Any) -> None:
        for v in values:
            self.args.append(v)
            clause = clause.replace("?", f"${len(self.args)}", 1)
        self.clauses.append(clause)

    def sql(self) -> str:
        return " AND ".join(self.clauses) if self.clauses else "true"


async def _common_filters(request: web.Request, ident: Identity, f: _Filters) -> None:
    svc = request.app[SERVICE]
    q = request.query
    if user := q.get("user"):
        f.add("i.user_id = ?", await _filter_ref(svc, "user", ident.user_id if user == "me" else user))
    if not is_admin(ident):
        f.add("i.user_id = ?", ident.user_id)
    if provider := q.get("provider"):
        f.add("(i.provider_name = ? OR i.provider_id = ?)", provider, provider)
    if model := q.get("model"):
        f.add("i.model = ?", model)
    if (t := _time_param(request, "from")) is not None:
        f.add("i.occurred_at >= ?", t)
    if (t := _time_param(request, "to")) is not None:
        f.add("i.occurred_at < ?", t)


_GROUP_KEYS = {
    "user": "coalesce(i.user_id, '')",
    "provider": "i.provider_name",
    "model": "i.model",
    "day": "to_char(i.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "group": "g.group_id",
    "key": "coalesce(i.key_id, '')",  # the pool key that answered; '' for BYOK and keyless calls
}
_TOTALS = (
    "count(*) AS interceptions, coalesce(sum(i.cost_micros), 0)::bigint AS spend_micros,"
    " coalesce(sum(i.input_tokens), 0)::bigint AS input_tokens, coalesce(sum(i.output_tokens), 0)::bigint AS output_tokens,"
    " coalesce(sum(i.cache_read_tokens), 0)::bigint AS cache_read_tokens,"
    " coalesce(sum(i.cache_write_tokens), 0)::bigint AS cache_write_tokens,"
    " coalesce(sum(i.reasoning_tokens), 0)::bigint AS reasoning_tokens"
)


@_db
async def get_usage(request: web.Request, ident: Identity) -> UsageOut:
    svc = request.app[SERVICE]
    group_by = request.query.get("group_by")
    if group_by is not None and group_by not in _GROUP_KEYS:
        raise BadRequest("group_by must be one of user, group, provider, model, day, key", "group_by")
    now = datetime.now(UTC)
    start = _time_param(request, "from") or month_of(now).start
    end = _time_param(request, "to") or now
    f = _Filters()
    await _common_filters(request, ident, f)
    if "from" not in request.query:
        f.add("i.occurred_at >= ?", start)
    if group := request.query.get("group"):
        f.add("? = ANY(i.group_ids)", await _filter_ref(svc, "group", group))
    where = f.sql()
    total = await svc.pool.fetchrow(f"SELECT {_TOTALS} FROM interceptions i WHERE {where}", *f.args)
    rows: list[UsageRow] = []
    if group_by:
        frm = "interceptions i"
        if group_by == "group":
            frm += " CROSS JOIN LATERAL unnest(i.group_ids) AS g(group_id)"
        key = _GROUP_KEYS[group_by]
        res = await svc.pool.fetch(
            f"SELECT {key} AS key, {_TOTALS} FROM {frm} WHERE {where} GROUP BY 1 ORDER BY 1", *f.args
        )
        rows = [UsageRow(**dict(r)) for r in res]
    return UsageOut(from_=iso(start) or "", to=iso(end) or "", total=Totals(**dict(total)), rows=rows)


def _cursor_encode(at: datetime, iid: str) -> str:
    raw = f"{at.astimezone(UTC).isoformat()}|{iid}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_decode(c: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(c + "=" * (-len(c) % 4)).decode()
        at, _, iid = raw.partition("|")
        return datetime.fromisoformat(at), iid
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("invalid cursor", "cursor") from None


_ICOLS = (
    "i.id, i.user_id, i.provider_name, i.model, i.client, i.session_id, i.credential_kind, i.status, i.started_at,"
    " i.ended_at, i.occurred_at, i.cost_micros, i.input_tokens, i.output_tokens, i.cache_read_tokens,"
    " i.cache_write_tokens, i.reasoning_tokens, i.prompt, i.prompt_truncated, i.key_id, i.credential_hint"
)


def _interception(r: asyncpg.Record, tools: list[asyncpg.Record]) -> InterceptionOut:
    return InterceptionOut(
        id=r["id"], user_id=r["user_id"], provider=r["provider_name"], model=r["model"],
        client=r["client"], session_id=r["session_id"], credential_kind=r["credential_kind"],
        # which pool key answered (after failover), masked: centralised calls only
        key_id=r["key_id"] if r["credential_kind"] == "centralised" else None,
        key_hint=(r["credential_hint"] or None) if r["credential_kind"] == "centralised" and r["key_id"] else None,
        status=r["status"] or "running", started_at=iso(r["started_at"] or r["occurred_at"]) or "",
        ended_at=iso(r["ended_at"]), cost_micros=r["cost_micros"],
        token_usage=TokenUsageOut(input_tokens=r["input_tokens"], output_tokens=r["output_tokens"],
                                  cache_read_tokens=r["cache_read_tokens"], cache_write_tokens=r["cache_write_tokens"],
                                  reasoning_tokens=r["reasoning_tokens"]),
        prompt=r["prompt"], prompt_truncated=r["prompt_truncated"],
        tool_calls=[ToolCallOut(name=t["name"], call_id=t["call_id"], arguments=t["arguments"], injected=t["injected"],
                                error=t["error"], truncated=t["truncated"]) for t in tools],
    )


async def _tools(pool: asyncpg.Pool, ids: list[str]) -> dict[str, list[asyncpg.Record]]:
    out: dict[str, list[asyncpg.Record]] = {i: [] for i in ids}
    if ids:
        for t in await pool.fetch(
            "SELECT interception_id, name, call_id, arguments, injected, error, truncated FROM tool_usages"
            " WHERE interception_id = ANY($1::text[]) ORDER BY at, event_id", ids,
        ):
            out[t["interception_id"]].append(t)
    return out


@_db
async def list_interceptions(request: web.Request, ident: Identity) -> InterceptionList:
    svc = request.app[SERVICE]
    q = request.query
    try:
        limit = int(q.get("limit", "50"))
    except ValueError:
        raise BadRequest("limit must be an integer", "limit") from None
    if not 1 <= limit <= 500:
        raise BadRequest("limit must be between 1 and 500", "limit")
    f = _Filters()
    await _common_filters(request, ident, f)
    if client := q.get("client"):
        f.add("i.client = ?", client)
    if session := q.get("session"):
        f.add("i.session_id = ?", session)
    if cursor := q.get("cursor"):
        at, iid = _cursor_decode(cursor)
        f.add("(i.occurred_at, i.id) < (?, ?)", at, iid)
    rows = await svc.pool.fetch(
        f"SELECT {_ICOLS} FROM interceptions i WHERE {f.sql()} ORDER BY i.occurred_at DESC, i.id DESC LIMIT {limit + 1}",
        *f.args,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    tools = await _tools(svc.pool, [r["id"] for r in rows])
    return InterceptionList(
        interceptions=[_interception(r, tools[r["id"]]) for r in rows],
        next_cursor=_cursor_encode(rows[-1]["occurred_at"], rows[-1]["id"]) if more else None,
    )


@_db
async def get_interception(request: web.Request, ident: Identity) -> InterceptionOut:
    svc = request.app[SERVICE]
    r = await svc.pool.fetchrow(f"SELECT {_ICOLS} FROM interceptions i WHERE i.id = $1", request.match_info["id"])
    if r is None or (not is_admin(ident) and r["user_id"] != ident.user_id):
        raise NotFound("interception not found")
    tools = await _tools(svc.pool, [r["id"]])
    return _interception(r, tools[r["id"]])


_STR = {"type": "string"}
_TIME = {"type": "string", "description": "RFC 3339 time or epoch seconds"}
_FILTERS = (
    Query("user", _STR, "user id or username (`me`); members always see only their own"),
    Query("provider", _STR, "provider name or id"),
    Query("model", _STR),
    Query("from", _TIME, "start (inclusive); usage defaults to the start of this month"),
    Query("to", _TIME, "end (exclusive)"),
)

ROUTES: list[Route] = [
    *budget_routes("group"),
    *budget_routes("user"),
    *limits_routes("group"),
    *limits_routes("user"),
    Route("GET", "/api/v2/ai/prices", get_prices, "user", "The price table", "prices", response=PriceList),
    Route("PUT", "/api/v2/ai/prices", put_price, "admin", "Set one model's prices", "prices", body=PriceBody,
          response=ModelPrice),
    Route("GET", "/api/v2/ai/usage", get_usage, "user", "Spend and tokens, optionally grouped", "usage",
          response=UsageOut, not_found=True,
          query=(*_FILTERS, Query("group", _STR, "group id or name"),
                 Query("group_by", {"type": "string", "enum": ["user", "group", "provider", "model", "day", "key"]}))),
    Route("GET", "/api/v2/ai/interceptions", list_interceptions, "user", "Recorded traffic, newest first", "usage",
          response=InterceptionList, not_found=True,
          query=(*_FILTERS, Query("client", _STR), Query("session", _STR),
                 Query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page size (default 50)"),
                 Query("cursor", _STR, "next_cursor of the previous page"))),
    Route("GET", "/api/v2/ai/interceptions/{id}", get_interception, "user", "One recorded interception", "usage",
          response=InterceptionOut),
    document_route("/api/v2/openapi.json"),
]


def add_routes(app: web.Application) -> None:
    async def caller(request: web.Request) -> Identity:
        return await authenticate(request, request.app[IDENTITIES])

    mount(app, ROUTES, caller)


__all__ = ["IDENTITIES", "ROUTES", "SERVICE", "add_routes"]
