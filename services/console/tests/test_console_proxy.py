"""What the console sends upstream and what it lets back, seen by a spy standing in for the registry."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from aigw_common.settings import Settings
from aigw_console.app import create_app
from aigw_testing.harness import AppHarness

TOKEN = "aigw_spy-token-0123456789abcdef"


async def _spy(apps: AppHarness, seen: list[web.Request]) -> str:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append(request)
        if request.path == "/api/v2/users/me":
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.json_response({"message": "unauthorized"}, status=401)
            return web.json_response({"id": "u1", "username": "spy", "roles": ["owner"], "groups": []})
        return web.json_response({"path": request.path, "query": request.query_string},
                                 headers={"Set-Cookie": "upstream=1", "X-Internal": "secret", "Retry-After": "3",
                                          "Server": "spy/1.0"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return await apps.start(app)


async def test_only_the_token_and_safe_headers_cross_and_come_back(apps: AppHarness) -> None:
    seen: list[web.Request] = []
    spy = await _spy(apps, seen)
    settings = Settings.from_env({"AIGW_REGISTRY_URL": spy, "AIGW_BUDGET_URL": spy, "AIGW_KEYPOOL_URL": spy,
                                  "AIGW_CHATD_URL": spy, "AIGW_LOG_FORMAT": "text"})
    console = await apps.start(create_app(settings))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(console + "/signin", data={"token": TOKEN}) as r:
            assert r.url.path == "/providers"
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', await r.text()).group(1)  # type: ignore[union-attr]
        seen.clear()
        headers = {"X-CSRF-Token": csrf, "X-Forwarded-For": "6.6.6.6", "X-AIGW-Token": "other", "Origin": console,
                   "Proxy-Authorization": "Basic eA==", "X-Api-Key": "sk-not-forwarded"}
        async with http.post(console + "/api/v2/groups?x=a%26b&y=%2e%2e", json={"name": "g"}, headers=headers) as r:
            body: dict[str, Any] = await r.json()
            assert r.status == 200
            assert "Set-Cookie" not in r.headers and "X-Internal" not in r.headers
            assert r.headers["Retry-After"] == "3" and r.headers.get("Server", "") != "spy/1.0"
        (req,) = seen
        assert req.headers["Authorization"] == f"Bearer {TOKEN}"
        for h in ("Cookie", "X-CSRF-Token", "X-Forwarded-For", "X-AIGW-Token", "Proxy-Authorization", "X-Api-Key",
                  "Origin"):
            assert h not in req.headers, h
        assert body["path"] == "/api/v2/groups" and req.query["x"] == "a&b" and req.query["y"] == ".."
        # an encoded slash or dot segment never reaches an upstream
        seen.clear()
        for path in ("/api/v2/users/a%2F..%2Fgroups", "/api/v2/users/%2e%2e/tokens", "/api/v2/users/../groups",
                     "/api/v2/users/me/tokens/..", "/api/v2/ai/providers/x/keys/health/../../../../users"):
            async with http.get(URL(console + path, encoded=True)) as r:  # sent as written, not normalised
                assert r.status in (404, 400), (path, r.status)
        assert not seen, [s.path for s in seen]


async def test_chat_stream_is_relayed_event_by_event(apps: AppHarness) -> None:
    """The console does not buffer an SSE stream: the first event arrives while the upstream still holds the rest."""
    release = __import__("asyncio").Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"event: snapshot\ndata: {}\n\n")
        await release.wait()
        await resp.write(b"event: status\ndata: {}\n\n")
        return resp

    async def me(_r: web.Request) -> web.Response:
        return web.json_response({"id": "u1", "username": "spy", "roles": ["member"], "groups": []})

    up = web.Application()
    up.router.add_get("/api/v2/users/me", me)
    up.router.add_get("/api/experimental/chats/{chat}/stream", stream)
    url = await apps.start(up)
    settings = Settings.from_env({"AIGW_REGISTRY_URL": url, "AIGW_CHATD_URL": url, "AIGW_LOG_FORMAT": "text"})
    console = await apps.start(create_app(settings))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await (await http.post(console + "/signin", data={"token": TOKEN})).release()
        async with http.get(console + "/api/experimental/chats/c1/stream") as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            first = await r.content.readuntil(b"\n\n")
            assert first == b"event: snapshot\ndata: {}\n\n"
            release.set()
            assert await r.content.readuntil(b"\n\n") == b"event: status\ndata: {}\n\n"


async def test_shutdown_ends_relayed_streams(apps: AppHarness) -> None:
    """An SSE relay that would never end does not hold the console's drain for its whole grace period."""
    import asyncio
    import time

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"event: snapshot\ndata: {}\n\n")
        await asyncio.sleep(3600)
        return resp

    async def me(_r: web.Request) -> web.Response:
        return web.json_response({"id": "u1", "username": "spy", "roles": ["member"], "groups": []})

    up = web.Application()
    up.router.add_get("/api/v2/users/me", me)
    up.router.add_get("/api/experimental/chats/{chat}/stream", stream)
    url = await apps.start(up)
    settings = Settings.from_env({"AIGW_REGISTRY_URL": url, "AIGW_CHATD_URL": url, "AIGW_LOG_FORMAT": "text"})
    runner = web.AppRunner(create_app(settings), shutdown_timeout=60)  # what a slow drain would cost
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    console = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await (await http.post(console + "/signin", data={"token": TOKEN})).release()
        async with http.get(console + "/api/experimental/chats/c1/stream") as r:
            assert await r.content.readuntil(b"\n\n") == b"event: snapshot\ndata: {}\n\n"
            t0 = time.monotonic()
            await runner.cleanup()
            assert time.monotonic() - t0 < 30, "the open stream held the shutdown"
