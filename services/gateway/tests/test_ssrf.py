"""SSRF at connect time: every upstream connection is checked on the address DNS gave it (a test resolver
stands in for DNS), literal addresses too, unless AIGW_ALLOW_PRIVATE_UPSTREAMS allows the class; redirects
are relayed, never followed; upstream cookies are never kept."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from aigw_gateway.app import LOADER, UPSTREAM_RESOLVER, create_app


class MapResolver(AbstractResolver):
    """DNS for tests: each name answers the addresses it is mapped to."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host not in self.names:
            raise OSError(f"test resolver: no such name {host}")
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for a in self.names[host]]

    async def close(self) -> None:
        pass


DNS = {"loop.test": ["127.0.0.1"], "imds.test": ["169.254.169.254"], "alibaba.test": ["100.100.100.200"],
       "mixed.test": ["93.184.216.34", "127.0.0.1"], "mapped.test": ["::ffff:127.0.0.1"]}


async def start(apps, make_settings, registry, mock_upstream, allow: str):  # type: ignore[no-untyped-def]
    port = URL(mock_upstream.url).port
    for name in DNS:
        registry.put_provider(name.replace(".", "-"), "openai", f"http://{name}:{port}/v1", ["sk-ssrf-key-1"])
    registry.put_provider("literal", "openai", f"http://127.0.0.1:{port}/v1", ["sk-ssrf-key-1"])
    user = registry.add_user()
    app = create_app(make_settings(AIGW_ALLOW_PRIVATE_UPSTREAMS=allow))
    app[UPSTREAM_RESOLVER] = MapResolver(DNS)
    url = await apps.start(app)
    for _ in range(500):
        if app[LOADER].current.revision == registry.revision:
            break
        await asyncio.sleep(0.02)
    return url, user


async def call(url: str, provider: str, token: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as s, s.get(f"{url}/{provider}/v1/models",
                                                   headers={"Authorization": f"Bearer {token}"},
                                                   allow_redirects=False) as r:
        return r.status, await r.json(content_type=None)


async def test_private_addresses_are_refused_after_dns(apps, make_settings, registry, mock_upstream) -> None:  # type: ignore[no-untyped-def]
    url, user = await start(apps, make_settings, registry, mock_upstream, "false")
    mock_upstream.handler = _models
    for provider, klass in (("loop-test", "loopback"), ("imds-test", "metadata"), ("alibaba-test", "metadata"),
                            ("mixed-test", "loopback"), ("mapped-test", "loopback"), ("literal", "loopback")):
        status, body = await call(url, provider, user.token)
        assert status == 502 and f"a {klass} address" in body["error"]["message"], (provider, status, body)
    assert mock_upstream.requests == []


async def test_allowed_classes_reach_the_upstream_and_no_others(apps, make_settings, registry, mock_upstream) -> None:  # type: ignore[no-untyped-def]
    url, user = await start(apps, make_settings, registry, mock_upstream, "loopback")
    mock_upstream.handler = _models
    for provider in ("loop-test", "literal", "mapped-test"):
        status, body = await call(url, provider, user.token)
        assert status == 200 and body["object"] == "list", (provider, body)
    assert len(mock_upstream.requests) == 3
    for provider in ("imds-test", "alibaba-test"):  # loopback allowed says nothing about metadata
        status, body = await call(url, provider, user.token)
        assert status == 502 and "a metadata address" in body["error"]["message"]
    assert len(mock_upstream.requests) == 3


async def test_redirects_are_relayed_not_followed(apps, make_settings, registry, mock_upstream) -> None:  # type: ignore[no-untyped-def]
    url, user = await start(apps, make_settings, registry, mock_upstream, "loopback")

    async def redirect(request: web.Request, _body: bytes) -> web.Response:
        if request.path.endswith("/models"):
            raise web.HTTPTemporaryRedirect(location=f"{mock_upstream.url}/elsewhere")
        return web.json_response({"followed": True})

    mock_upstream.handler = redirect
    async with aiohttp.ClientSession() as s, s.get(f"{url}/loop-test/v1/models", allow_redirects=False,
                                                   headers={"Authorization": f"Bearer {user.token}"}) as r:
        assert r.status == 307 and r.headers["Location"].endswith("/elsewhere")
    assert [q.path for q in mock_upstream.requests] == ["/v1/models"]


async def test_upstream_cookies_are_not_kept(apps, make_settings, registry, mock_upstream) -> None:  # type: ignore[no-untyped-def]
    """An upstream's Set-Cookie is not stored and sent with later requests, whoever makes them (a host name:
    a cookie jar ignores cookies from IP addresses)."""
    url, user = await start(apps, make_settings, registry, mock_upstream, "loopback")

    async def cookie(request: web.Request, _body: bytes) -> web.Response:
        resp = await _models(request, _body)
        resp.set_cookie("__cf_bm", "upstream-session", path="/")
        return resp

    mock_upstream.handler = cookie
    for _ in range(2):
        status, _ = await call(url, "loop-test", user.token)
        assert status == 200
    assert len(mock_upstream.requests) == 2
    assert [q.headers.get("Cookie") for q in mock_upstream.requests] == [None, None]


async def _models(request: web.Request, _body: bytes) -> web.Response:
    return web.json_response({"object": "list", "data": []})
