"""``/api/v2/openapi.json`` of the budget service: its routes (``api.routes``) described for clients and fuzzers.

The response Structs below describe the dicts the handlers return; schemathesis checks every answer against
them, and a test checks this table against the router.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from aiohttp import web

from aigw_common.openapi import Query, Route, document_route, finish, serve_document
from aigw_common.schemas import ModelPrice

from .api import BudgetBody, LimitsBody, PriceBody


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


_STR = {"type": "string"}
_TIME = {"type": "string", "description": "RFC 3339 time or epoch seconds"}
_FILTERS = (
    Query("user", _STR, "user id or username (`me`); members always see only their own"),
    Query("provider", _STR, "provider name or id"),
    Query("model", _STR),
    Query("from", _TIME, "start (inclusive); usage defaults to the start of this month"),
    Query("to", _TIME, "end (exclusive)"),
)


def _budget_routes(scope: str) -> list[Route]:
    path = f"/api/v2/{scope}s/{{ref}}/ai/budget"
    who = "your own user budget" if scope == "user" else "the budgets of your groups"
    return [
        Route("GET", path, None, "user", f"Read a {scope}'s budget (members: {who})", "budgets", response=BudgetOut),
        Route("PUT", path, None, "admin", f"Set a {scope}'s monthly budget", "budgets", body=BudgetBody,
              response=BudgetOut),
        Route("DELETE", path, None, "admin", f"Remove a {scope}'s budget", "budgets"),
    ]


def _limits_routes(scope: str) -> list[Route]:
    path = f"/api/v2/{scope}s/{{ref}}/ai/limits"
    who = "your own user's limits" if scope == "user" else "the limits of your groups"
    return [
        Route("GET", path, None, "user", f"Read a {scope}'s rate and concurrency limits (members: {who})", "limits",
              response=LimitsOut),
        Route("PUT", path, None, "admin", f"Set a {scope}'s requests and tokens per minute and concurrent requests "
              "(null: not limited)", "limits", body=LimitsBody, response=LimitsOut),
        Route("DELETE", path, None, "admin", f"Remove a {scope}'s limits", "limits"),
    ]


ROUTES: list[Route] = [
    *_budget_routes("group"),
    *_budget_routes("user"),
    *_limits_routes("group"),
    *_limits_routes("user"),
    Route("GET", "/api/v2/ai/prices", None, "user", "The price table", "prices", response=PriceList),
    Route("PUT", "/api/v2/ai/prices", None, "admin", "Set one model's prices", "prices", body=PriceBody,
          response=ModelPrice),
    Route("GET", "/api/v2/ai/usage", None, "user", "Spend and tokens, optionally grouped", "usage", response=UsageOut,
          not_found=True, query=(*_FILTERS, Query("group", _STR, "group id or name"),
                 Query("group_by", {"type": "string", "enum": ["user", "group", "provider", "model", "day", "key"]}))),
    Route("GET", "/api/v2/ai/interceptions", None, "user", "Recorded traffic, newest first", "usage",
          response=InterceptionList, not_found=True,
          query=(*_FILTERS, Query("client", _STR), Query("session", _STR),
                 Query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page size (default 50)"),
                 Query("cursor", _STR, "next_cursor of the previous page"))),
    Route("GET", "/api/v2/ai/interceptions/{id}", None, "user", "One recorded interception", "usage",
          response=InterceptionOut),
    document_route("/api/v2/openapi.json"),
]


_DOCUMENT: dict[str, Any] = dict(title="aigw budget", unavailable=True,
                   description="Budgets, prices, usage and recorded interceptions of aigw. "
                               "Errors are {message, detail, validations}.")


def document() -> dict[str, Any]:
    """This service's OpenAPI document, as served (``aigw openapi`` writes it to ``docs/openapi/``)."""
    return finish(ROUTES, **_DOCUMENT)


def add_document(app: web.Application) -> None:
    serve_document(app, ROUTES, **_DOCUMENT)
