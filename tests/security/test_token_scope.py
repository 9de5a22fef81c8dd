"""Token scope and expiry across every service (contract, ARCHITECTURE section 8).

A ``gateway`` token reaches the LLM routes and nothing else: every control-plane route of every
service answers 403. An ``admin`` token reaches the LLM routes and the control-plane routes its
user's roles allow. An expired token is a 401 everywhere, within the identity cache TTL.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import openai

from aigw_testing.system import System

SERVICES = ("registry", "keypool", "budget", "gateway", "chatd")


def _control_plane(s: System, user_id: str) -> list[tuple[str, str, object]]:
    """One route or more per control-plane service, each one a member may call on their own account."""
    reg, bud, chat = s.urls["registry"], s.urls["budget"], s.urls["chatd"]
    return [
        ("GET", reg + "/api/v2/users/me", None),
        ("GET", reg + f"/api/v2/users/{user_id}/tokens", None),
        ("POST", reg + "/api/v2/users/me/tokens", {"name": "minted", "scope": "admin"}),
        ("GET", reg + "/api/v2/users/me/ai/provider-keys", None),
        ("GET", bud + "/api/v2/ai/usage", None),
        ("GET", bud + "/api/v2/ai/interceptions", None),
        ("GET", chat + "/api/experimental/chats", None),
        ("GET", chat + "/api/experimental/chats/model-configs", None),
        ("GET", chat + "/api/experimental/users/me/skills", None),
    ]


async def _llm(s: System, token: str) -> None:
    r = await s.openai(token).chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content


async def test_gateway_scope_reaches_llm_routes_only(start_system) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=SERVICES)
    adm = await s.member("ada", roles=("admin",))
    gw = await s.member("gus", roles=("admin",), scope="gateway")
    own = await s.member("mo")  # a member with an admin-scope token
    reg = s.urls["registry"]

    # a token asked for without a scope is a gateway token, with a 90-day expiry
    plain = await s.api(own.token).ok("POST", reg + "/api/v2/users/me/tokens", {"name": "laptop"})
    assert plain["scope"] == "gateway"
    left = datetime.fromisoformat(plain["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=89) < left <= timedelta(days=90)

    for token in (gw.token, plain["token"], adm.token, own.token):
        await _llm(s, token)  # every scope may call the LLM routes

    # gateway scope: 403 on every control-plane route of every service, even for an admin user
    keypool_route = ("GET", s.urls["keypool"] + "/api/v2/ai/providers/openai/keys/health", None)
    admin_only = [("GET", reg + "/api/v2/users", None), ("GET", reg + "/api/v2/ai/providers", None),
                  ("GET", reg + "/api/v2/audit-logs", None), keypool_route,
                  ("GET", s.urls["budget"] + "/api/v2/ai/prices", None)]
    for token in (gw.token, plain["token"]):
        for method, url, body in [*_control_plane(s, gw.id if token == gw.token else own.id), *admin_only]:
            r = await s.api(token).call(method, url, body)
            assert r.status == 403, (method, url, r)
            assert "gateway scope" in r.body["message"]
    # (and it cannot mint an admin token for itself: the POST above was among the refused)
    listed = (await s.owner.ok("GET", reg + f"/api/v2/users/{gw.id}/tokens"))["tokens"]
    assert [t["id"] for t in listed] == [gw.token_id]

    # admin scope: the same routes work for a member on their own account ...
    for method, url, body in _control_plane(s, own.id):
        r = await s.api(own.token).call(method, url, body)
        assert r.status in (200, 201), (method, url, r)
    # ... but the roles still decide: a member's admin token is no admin
    for method, url, body in admin_only:
        if "prices" in url:
            continue  # prices are readable by every signed-in user
        r = await s.api(own.token).call(method, url, body)
        assert r.status == 403 and "gateway scope" not in r.body["message"], (method, url, r)
    # an admin user's admin token reaches the admin routes of every service
    for method, url, body in admin_only:
        assert (await s.api(adm.token).call(method, url, body)).status == 200, (method, url)


async def test_never_expiring_tokens_are_an_owners_choice(start_system) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=("registry",))
    reg = s.urls["registry"]
    adm = await s.member("ada", roles=("admin",))
    m = await s.member("mo")
    for caller in (adm, m):
        r = await s.api(caller.token).call("POST", reg + "/api/v2/users/me/tokens", {"expires_at": None})
        assert r.status == 403 and "owner" in r.body["message"], r
    forever = await s.owner.ok("POST", reg + f"/api/v2/users/{m.id}/tokens", {"expires_at": None, "scope": "admin"})
    assert forever["expires_at"] is None and forever["scope"] == "admin"
    r = await s.api(m.token).call("POST", reg + "/api/v2/users/me/tokens", {"scope": "root"})
    assert r.status == 400 and r.body["validations"][0]["field"] == "scope", r
    audit = await s.owner.ok("GET", reg + "/api/v2/audit-logs", params={"resource_id": forever["id"]})
    assert audit["audit_logs"][0]["after"]["scope"] == "admin"


async def test_expired_token_is_refused_by_every_service(start_system) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=SERVICES)
    m = await s.member("eve")
    lifetime = 12.0  # room for a loaded machine to reach every service before it passes
    expires = datetime.now(UTC) + timedelta(seconds=lifetime)
    t = await s.owner.ok("POST", s.url("registry", f"/api/v2/users/{m.id}/tokens"),
                         {"scope": "admin", "expires_at": expires.isoformat()})
    token = t["token"]
    routes = _control_plane(s, m.id)[:1] + [r for r in _control_plane(s, m.id) if "registry" not in r[1]
                                            and r[0] == "GET"]
    # every service has verified (and cached) the token while it was valid
    for method, url, body in routes:
        assert (await s.api(token).call(method, url, body)).status == 200, url
    await _llm(s, token)
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    deadline = time.monotonic() + s.settings.identity_ttl + 5  # the contract bound is the cache TTL
    pending = set(range(len(routes))) | {-1}
    while pending:
        for i in sorted(pending):
            if i == -1:
                try:
                    await _llm(s, token)
                except openai.AuthenticationError:
                    pending.discard(i)
            else:
                method, url, body = routes[i]
                r = await s.api(token).call(method, url, body)
                if r.status == 401:
                    pending.discard(i)
                else:
                    assert r.status == 200, (url, r)
        assert time.monotonic() < deadline, f"still accepted after expiry: {pending}"
        await asyncio.sleep(0.2)
