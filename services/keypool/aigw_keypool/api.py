"""The key health API (admins): ``GET /api/v2/ai/providers/{idOrName}/keys/health`` and
``POST /api/v2/ai/providers/{idOrName}/keys/{keyId}/reset``. :data:`ROUTES` drives the router, the OpenAPI
document and the RBAC matrix test."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal, cast

import msgspec
from aiohttp import web

from aigw_common.api import NotFound, Route, Unavailable, mount
from aigw_common.auth import IdentityCache, authenticate
from aigw_common.keystate import TRANSIENT, effective
from aigw_common.openapi import document_route
from aigw_common.schemas import Identity, KeyState

from .audit import AuditLog
from .service import KeyPoolService

SERVICE = web.AppKey("keypool_service", KeyPoolService)
IDENTITIES = web.AppKey("keypool_identities", IdentityCache)
AUDIT = web.AppKey("keypool_audit", AuditLog)

# What each reason means, for a person reading the health API.
WHY = {
    "rate_limited": "the provider answered 429; cooling until its Retry-After",
    "budget_exhausted": "the provider's rate-limit headers showed no budget left; cooling until it resets",
    "auth_rejected": "the provider refused the key (401/403); keypool re-checks it with the model list",
    "cooldown_over": "the cooldown ended",
    "reset": "reset by an admin",
    "recovered": "a re-check was accepted by the provider",
}


Reason = Literal["rate_limited", "budget_exhausted", "auth_rejected", "cooldown_over", "reset", "recovered"]


class KeyHealthOut(msgspec.Struct):
    id: str
    hint: str
    position: int
    state: Literal["valid", "cooling", "revoked"]
    until: str | None
    last_status: int | None
    failures_1m: int
    successes_1m: int
    reason: Reason | None
    why: str | None  # the reason in words
    since: str | None  # when the key entered this state
    next_check_at: str | None  # revoked: when keypool next re-checks the key with the provider's model list
    checks: int  # revoked: re-checks the provider has refused so far


class KeyHealthList(msgspec.Struct):
    provider: str
    provider_id: str
    keys: list[KeyHealthOut]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        dt = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):  # a mark's "until" far beyond what a datetime holds
        dt = datetime.max.replace(tzinfo=UTC) if ts > 0 else datetime.min.replace(tzinfo=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _key_health(svc: KeyPoolService, provider_id: str, k: Any, now: float,
                written: KeyState | None = None) -> KeyHealthOut:
    raw = written or svc.state_of(provider_id, k.id)
    state, until = effective(raw, now)
    st = svc.stats.get(provider_id, k.id)
    successes, failures = st.last_minute(now) if st is not None else (0, 0)
    reason = raw.reason if raw is not None else ""
    if raw is not None and raw.state == "cooling" and state == "valid":
        reason = "cooldown_over"  # its time is up; keypool writes that a moment later
    return KeyHealthOut(
        id=k.id, hint=k.hint, position=k.position, state=state, until=iso(until),
        last_status=st.last_status if st is not None else None,
        failures_1m=failures, successes_1m=successes,
        reason=cast("Reason | None", reason or None), why=WHY.get(reason) if reason else None,
        since=iso(raw.updated_at) if raw is not None and raw.updated_at else None,
        next_check_at=iso(raw.next_check_at) if raw is not None and state == "revoked" and svc.rechecks_enabled else None,
        checks=raw.checks if raw is not None and state == "revoked" else 0,
    )


async def _provider(request: web.Request) -> tuple[KeyPoolService, Any]:
    svc = request.app[SERVICE]
    ref = request.match_info["idOrName"]
    if svc.registry.snapshot is None and not await svc.registry.refresh():
        raise Unavailable("provider registry unavailable, try again")
    p = svc.registry.find(ref)
    if p is None and await svc.registry.refresh():  # created a moment ago, before our next refresh
        p = svc.registry.find(ref)
    if p is None:
        raise NotFound(f"provider {ref!r} not found")
    return svc, p


async def key_health(request: web.Request, _ident: Identity) -> KeyHealthList:
    svc, p = await _provider(request)
    now = time.time()
    keys = [_key_health(svc, p.id, k, now) for k in sorted(p.keys, key=lambda k: k.position)]
    return KeyHealthList(provider=p.name, provider_id=p.id, keys=keys)


def _audit_state(st: KeyState | None) -> dict[str, Any]:
    if st is None:
        return {"state": "valid"}
    return {"state": st.state, "reason": st.reason or None, "status_code": st.status_code or None, "until": iso(st.until)}


async def reset_key(request: web.Request, ident: Identity) -> KeyHealthOut:
    """Return a key to valid on every gateway now, whatever its state (audited)."""
    svc, p = await _provider(request)
    key_id = request.match_info["keyId"]
    k = next((k for k in p.keys if k.id == key_id), None)
    if k is None and await svc.registry.refresh():
        p = svc.registry.find(p.id) or p
        k = next((k for k in p.keys if k.id == key_id), None)
    if k is None:
        raise NotFound(f"key {key_id!r} of provider {p.name!r} not found")
    try:
        before, after = await svc.reset_key(p.id, k.id)
    except TRANSIENT:
        raise Unavailable("key state store unavailable, try again") from None
    await request.app[AUDIT].record(ident, "provider_key.reset", "provider_key", k.id,
                                    {"provider_id": p.id, **_audit_state(before)},
                                    {"provider_id": p.id, **_audit_state(after)})
    return _key_health(svc, p.id, k, time.time(), after)


ROUTES: list[Route] = [
    Route("GET", "/api/v2/ai/providers/{idOrName}/keys/health", key_health, "admin",
          "Fleet-wide health of a provider's keys (state, cooldown, last minute's outcomes)", "keys",
          response=KeyHealthList),
    Route("POST", "/api/v2/ai/providers/{idOrName}/keys/{keyId}/reset", reset_key, "admin",
          "Return a key to valid on every gateway at once, whatever its state (audited as provider_key.reset)",
          "keys", response=KeyHealthOut),
    document_route("/api/v2/openapi.json"),
]


def add_routes(app: web.Application) -> None:
    async def caller(request: web.Request) -> Identity:
        return await authenticate(request, request.app[IDENTITIES])

    mount(app, ROUTES, caller)
