"""``/api/v2/openapi.json`` of keypool: the key health route (``api.add_routes``) described for clients and fuzzers."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from aiohttp import web

from aigw_common.openapi import Route, document_route, finish, serve_document


class KeyHealthOut(msgspec.Struct):
    id: str
    hint: str
    position: int
    state: Literal["valid", "cooling", "revoked"]
    until: str | None
    last_status: int | None
    failures_1m: int
    successes_1m: int
    reason: Literal["rate_limited", "budget_exhausted", "auth_rejected", "cooldown_over", "reset", "recovered"] | None
    why: str | None  # the reason in words
    since: str | None  # when the key entered this state
    next_check_at: str | None  # revoked: when keypool next re-checks the key with the provider's model list
    checks: int  # revoked: re-checks the provider has refused so far


class KeyHealthList(msgspec.Struct):
    provider: str
    provider_id: str
    keys: list[KeyHealthOut]


ROUTES: list[Route] = [
    Route("GET", "/api/v2/ai/providers/{idOrName}/keys/health", None, "admin",
          "Fleet-wide health of a provider's keys (state, cooldown, last minute's outcomes)", "keys",
          response=KeyHealthList),
    Route("POST", "/api/v2/ai/providers/{idOrName}/keys/{keyId}/reset", None, "admin",
          "Return a key to valid on every gateway at once, whatever its state (audited as provider_key.reset)",
          "keys", response=KeyHealthOut),
    document_route("/api/v2/openapi.json"),
]


_DOCUMENT: dict[str, Any] = dict(title="aigw keypool", unavailable=True,
                   description="Key health of aigw's provider key pools. Errors are {message, detail, validations}.")


def document() -> dict[str, Any]:
    """This service's OpenAPI document, as served (``aigw openapi`` writes it to ``docs/openapi/``)."""
    return finish(ROUTES, **_DOCUMENT)


def add_document(app: web.Application) -> None:
    serve_document(app, ROUTES, **_DOCUMENT)
