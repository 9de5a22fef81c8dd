"""The console's HTTP surface without a browser: sign-in, sessions, CSRF, and the allowlisted API route."""

from __future__ import annotations

import json
import re
from html import unescape

import aiohttp
import pytest

from aigw_common.llm import PROVIDER_TYPES
from aigw_console.routes import ROUTES, NoRoute, resolve
from aigw_console.session import COOKIE
from aigw_testing.system import System
from aigw_testing.wait import eventually

PAGES = ("providers", "people", "budgets", "usage", "traffic", "audit")


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _sign_in(http: aiohttp.ClientSession, console: str, token: str) -> str:
    """Sign in; returns the page's CSRF token."""
    async with http.post(console + "/signin", data={"token": token}) as r:
        assert r.status == 200 and r.url.path == "/providers", (r.status, r.url, await r.text())
        m = re.search(r'name="csrf-token" content="([^"]+)"', await r.text())
        assert m
        return m.group(1)


def test_route_table_is_an_allowlist() -> None:
    seg = lambda p: p.strip("/").split("/")  # noqa: E731
    assert resolve("GET", seg("/api/v2/ai/providers/openai/keys/health")).service == "keypool"
    assert resolve("POST", seg("/api/v2/ai/providers/openai/keys/k1/reset")).service == "keypool"
    assert resolve("DELETE", seg("/api/v2/ai/providers/openai/keys/k1")).service == "registry"
    assert resolve("GET", seg("/api/v2/users/me/ai/budget")).service == "budget"
    assert resolve("GET", seg("/api/v2/users/me/tokens")).service == "registry"
    assert resolve("GET", seg("/api/experimental/chats/model-configs")).service == "chatd"
    for bad in ("/api/v2/ai/providers/../users", "/api/v2/ai/providers/.", "/api/v2/ai/providers/a%2Fb",
                "/api/v2/ai/providers/x/keys/health/extra", "/api/v2/openapi.json", "/api/v2/ai/providers/%2e%2e",
                "/api/v2/users/me/ai/budget/../../x", "/healthz"):
        with pytest.raises(NoRoute):
            resolve("GET", seg(bad))
    with pytest.raises(NoRoute) as e:
        resolve("PUT", seg("/api/v2/ai/providers"))
    assert e.value.allowed == {"GET", "POST"}
    assert all(r.service in ("registry", "keypool", "budget", "chatd") for r in ROUTES)


async def test_sign_in_pages_and_sign_out(console_system: System) -> None:
    s = console_system
    console = s.urls["console"]
    async with _client() as http:
        async with http.get(console + "/") as r:
            html = await r.text()
            assert r.status == 200 and html.count("<input") == 1 and html.count('name="token"') == 1
            assert html.count('type="submit"') == 1
        for page in PAGES:  # no session: back to the sign-in form
            async with http.get(console + "/" + page) as r:
                assert r.status == 200 and str(r.url) == console + "/" and 'name="token"' in await r.text(), page
        async with http.post(console + "/signin", data={"token": "aigw_not-a-real-token-0000"}) as r:
            assert r.status == 401 and "unknown, expired or revoked" in await r.text()
        assert not any(c.key == COOKIE for c in http.cookie_jar)

        csrf = await _sign_in(http, console, s.owner_token)
        cookie = next(c for c in http.cookie_jar if c.key == COOKIE)
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
        for page in PAGES:
            async with http.get(console + "/" + page) as r:
                body = await r.text()
                assert r.status == 200 and r.url.path == "/" + page, page
                assert f'data-page="{page}"' in body and 'data-role="admin"' in body
                assert f'data-provider-types="{" ".join(PROVIDER_TYPES)}"' in body  # the console's type list
                m = re.search(r'data-provider-settings="([^"]*)"', body)
                assert m and json.loads(unescape(m.group(1)))["bedrock"][1] == ["access_key", True]
                assert "default-src 'none'" in r.headers["Content-Security-Policy"]
                assert len(body.encode()) < 200_000
        async with http.get(console + "/") as r:  # with a session, / leads to the providers page
            assert r.url.path == "/providers"
        async with http.post(console + "/signout", data={"csrf": csrf}) as r:
            assert r.url.path == "/"
        async with http.get(console + "/api/v2/ai/providers") as r:
            assert r.status == 401


async def test_first_page_is_small(console_system: System) -> None:
    s = console_system
    async with _client() as http:
        await _sign_in(http, s.urls["console"], s.owner_token)
        total = 0
        async with http.get(s.urls["console"] + "/providers") as r:
            html = await r.text()
            total += len(html.encode())
        wire = total
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            async with http.get(s.urls["console"] + asset, headers={"Accept-Encoding": "identity"}) as r:
                assert r.status == 200 and "immutable" in r.headers["Cache-Control"]
                total += len(await r.read())
            async with http.get(s.urls["console"] + asset, headers={"Accept-Encoding": "gzip"},
                                auto_decompress=False) as r:
                assert r.headers["Content-Encoding"] == "gzip"
                wire += len(await r.read())
        assert total < 200_000, total  # even uncompressed
        assert wire < total / 2, (wire, total)


async def test_api_route_injects_the_session_token_and_refuses_the_rest(console_system: System) -> None:
    s = console_system
    console = s.urls["console"]
    async with _client() as http:
        csrf = await _sign_in(http, console, s.owner_token)
        async with http.get(console + "/api/v2/ai/providers") as r:
            assert r.status == 200 and {p["name"] for p in (await r.json())["providers"]} >= {"openai"}
        async with http.get(console + "/api/v2/ai/providers/openai/keys/health") as r:  # keypool
            assert r.status == 200 and (await r.json())["provider"] == "openai"
        async with http.get(console + "/api/v2/ai/usage", params={"group_by": "provider"}) as r:  # budget
            assert r.status == 200 and "total" in await r.json()
        # not on the list: 404 in the control-plane error shape, whatever the encoding
        for path in ("/api/v2/openapi.json", "/api/v2/ai/providers/%2e%2e/keys", "/api/v2/ai/providers/a%2Fb",
                     "/api/v2//users", "/api/internal", "/api/v2/users/me/tokens/"):
            async with http.get(console + path) as r:
                assert r.status == 404, path
                assert set(await r.json()) == {"message", "detail", "validations"}
        async with http.put(console + "/api/v2/ai/providers", headers={"X-CSRF-Token": csrf}, json={}) as r:
            assert r.status == 405 and "GET" in r.headers["Allow"]

        body = {"name": "csrf-check", "type": "openai", "base_url": "https://example.com/v1"}
        # a change without the CSRF token, with a wrong one, or from another site is refused before any upstream
        for headers in ({}, {"X-CSRF-Token": "nope"}, {"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
                        {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}):
            async with http.post(console + "/api/v2/ai/providers", json=body, headers=headers) as r:
                assert r.status == 403, headers
        async with http.post(console + "/api/v2/ai/providers", json=body,
                             headers={"X-CSRF-Token": csrf, "Origin": console}) as r:
            assert r.status == 201, await r.text()
        async with http.get(console + "/api/v2/audit-logs", params={"resource_type": "provider"}) as r:
            entries = (await r.json())["audit_logs"]
            assert any(e["resource_id"] and e["after"] and e["after"].get("name") == "csrf-check" for e in entries) \
                or any(e["action"].startswith("provider.create") for e in entries)


async def test_a_revoked_token_ends_the_session(console_system: System) -> None:
    s = console_system
    user = await s.owner.ok("POST", s.url("registry", "/api/v2/users"), {"username": "dave", "roles": ["admin"]})
    tok = await s.owner.ok("POST", s.url("registry", f"/api/v2/users/{user['id']}/tokens"), {"scope": "admin"})
    async with _client() as http:
        await _sign_in(http, s.urls["console"], tok["token"])
        await s.owner.ok("DELETE", s.url("registry", f"/api/v2/users/{user['id']}/tokens/{tok['id']}"))

        async def refused() -> bool:
            async with http.get(s.urls["console"] + "/api/v2/ai/providers") as r:
                return r.status == 401
        await eventually(refused, 10, "the revoked token to be refused")
        async with http.get(s.urls["console"] + "/providers") as r:  # straight back to the form, no loop
            assert str(r.url) == s.urls["console"] + "/" and 'name="token"' in await r.text()
            assert len(r.history) <= 2


async def test_api_with_a_bearer_token_needs_no_session(console_system: System) -> None:
    """Scripts and `aigw admin` may use the console's origin with their own token (no cookie, so no CSRF)."""
    s = console_system
    api = s.api(s.owner_token)
    got = await api.ok("GET", s.urls["console"] + "/api/v2/ai/providers")
    assert {p["name"] for p in got["providers"]} >= {"openai"}
    made = await api.ok("POST", s.urls["console"] + "/api/v2/groups", {"name": "via-console"})
    assert made["name"] == "via-console"
    r = await s.api("aigw_not-a-token-00000000").call("GET", s.urls["console"] + "/api/v2/ai/providers")
    assert r.status == 401  # the registry's answer, relayed


async def test_gateway_scope_tokens_and_guessing_are_refused(console_system: System) -> None:
    s = console_system
    reg = s.url("registry", "")
    user = await s.owner.ok("POST", reg + "/api/v2/users", {"username": "carol", "roles": ["admin"]})
    scoped = await s.owner.call("POST", reg + f"/api/v2/users/{user['id']}/tokens", {"scope": "admin"})
    async with _client() as http:
        if scoped.status == 201:  # the registry knows scopes: a default (gateway) token may not sign in
            plain = await s.owner.ok("POST", reg + f"/api/v2/users/{user['id']}/tokens", {"name": "llm"})
            async with http.post(s.urls["console"] + "/signin", data={"token": plain["token"]}) as r:
                assert r.status == 403 and "gateway scope" in await r.text()
            await _sign_in(http, s.urls["console"], scoped.body["token"])
        # a script guessing tokens is slowed down: after the limit, 429 even for a good token
        for i in range(20):
            async with http.post(s.urls["console"] + "/signin", data={"token": f"aigw_guess_{i:04d}_xxxxxxxx"}) as r:
                assert r.status == 401
        async with http.post(s.urls["console"] + "/signin", data={"token": s.owner_token}) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) > 0


async def test_cookie_is_secure_when_the_page_is_https(console_system: System) -> None:
    """TLS ended at an ingress: the browser's Origin says https, so the cookie is Secure."""
    s = console_system
    host = s.urls["console"].removeprefix("http://")
    async with aiohttp.ClientSession() as http:
        async with http.post(s.urls["console"] + "/signin", data={"token": s.owner_token}, allow_redirects=False,
                             headers={"Origin": f"https://{host}"}) as r:
            assert r.status == 303 and r.headers["Location"] == "/providers"
            cookie = r.cookies[COOKIE]
            assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"


async def test_sign_in_from_another_site_is_refused(console_system: System) -> None:
    s = console_system
    async with _client() as http:
        async with http.post(s.urls["console"] + "/signin", data={"token": s.owner_token},
                             headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 403
        assert not any(c.key == COOKIE for c in http.cookie_jar)


async def test_member_session_sees_only_their_own(console_system: System) -> None:
    s = console_system
    alice = await s.member("alice")
    bob = await s.member("bob")
    async with _client() as http:
        await _sign_in(http, s.urls["console"], alice.token)
        async with http.get(s.urls["console"] + "/people") as r:
            assert 'data-role="member"' in await r.text()
        for path, want in (("/api/v2/users", 403), ("/api/v2/ai/providers", 403), ("/api/v2/audit-logs", 403),
                           (f"/api/v2/users/{bob.id}/tokens", 403), ("/api/v2/users/me/tokens", 200)):
            async with http.get(s.urls["console"] + path) as r:
                assert r.status == want, (path, r.status)
                assert bob.id not in await r.text()


async def test_console_health_and_metrics(console_system: System) -> None:
    s = console_system
    async with aiohttp.ClientSession() as http:
        for p in ("/healthz", "/readyz"):
            async with http.get(s.urls["console"] + p) as r:
                assert r.status == 200
        async with http.get(s.urls["console"] + "/metrics") as r:
            assert "aigw_console_signins_total" in await r.text()
