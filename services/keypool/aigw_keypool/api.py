"""The key health API: ``GET /api/v2/ai/providers/{idOrName}/keys/health`` (admins)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

from aigw_common.api import ApiError, forbidden, json_response, not_found
from aigw_common.auth import IdentityCache, authenticate, is_admin
from aigw_common.keystate import effective

from .service import KeyPoolService

SERVICE = web.AppKey("keypool_service", KeyPoolService)
IDENTITIES = web.AppKey("keypool_identities", IdentityCache)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        dt = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):  # a mark's "until" far beyond what a datetime holds
        dt = datetime.max.replace(tzinfo=UTC) if ts > 0 else datetime.min.replace(tzinfo=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def key_health(request: web.Request) -> web.Response:
    ident = await authenticate(request, request.app[IDENTITIES])
    if not is_admin(ident):
        raise forbidden("key health is for admins")
    svc = request.app[SERVICE]
    ref = request.match_info["idOrName"]
    if svc.registry.snapshot is None and not await svc.registry.refresh():
        raise ApiError(503, "provider registry unavailable, try again", headers={"Retry-After": "1"})
    p = svc.registry.find(ref)
    if p is None and await svc.registry.refresh():  # created a moment ago, before our next refresh
        p = svc.registry.find(ref)
    if p is None:
        raise not_found(f"provider {ref!r}")
    now = time.time()
    keys = []
    for k in sorted(p.keys, key=lambda k: k.position):
        state, until = effective(svc.state_of(p.id, k.id), now)
        st = svc.stats.get(p.id, k.id)
        successes, failures = st.last_minute(now) if st is not None else (0, 0)
        keys.append({
            "id": k.id, "hint": k.hint, "position": k.position, "state": state, "until": iso(until),
            "last_status": st.last_status if st is not None else None,
            "failures_1m": failures, "successes_1m": successes,
        })
    return json_response({"provider": p.name, "provider_id": p.id, "keys": keys})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v2/ai/providers/{idOrName}/keys/health", key_health)
