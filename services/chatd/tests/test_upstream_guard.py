"""chatd's calls to providers: redirects are never followed (they would carry the user's key), and the
direct route's connections are address-checked like the gateway's."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from aigw_chatd.upstream import (
    ChatMessage,
    Secret,
    TurnError,
    build_body,
    direct_route,
    stream_turn,
)
from aigw_common import netguard


def _route(mock):  # type: ignore[no-untyped-def]
    return direct_route(mock.url + "/v1", "openai", "openai", provider_key=Secret("sk-user-own-key-1"))


def _body() -> dict:  # type: ignore[type-arg]
    return build_body("openai", "gpt-4o", [ChatMessage("user", "hi")], instructions=None, stream=True, max_tokens=64)


async def test_redirects_are_not_followed(mock_upstream) -> None:  # type: ignore[no-untyped-def]
    async def redirect(request: web.Request, _body: bytes) -> web.Response:
        if request.path == "/v1/chat/completions":
            raise web.HTTPTemporaryRedirect(location=f"{mock_upstream.url}/collect")
        return web.json_response({"collected": True})

    mock_upstream.handler = redirect
    async with aiohttp.ClientSession() as s:
        with pytest.raises(TurnError) as e:
            await stream_turn(s, _route(mock_upstream), _body(), lambda _t: None, read_timeout=5, connect_timeout=5)
    assert e.value.status_code == 307 and not e.value.retryable
    assert [r.path for r in mock_upstream.requests] == ["/v1/chat/completions"]


async def test_direct_route_is_address_checked(mock_upstream) -> None:  # type: ignore[no-untyped-def]
    mock_upstream.play("openai/chatcompletions/simple")
    async with aiohttp.ClientSession(connector=netguard.upstream_connector(frozenset())) as s:
        with pytest.raises(TurnError):
            await stream_turn(s, _route(mock_upstream), _body(), lambda _t: None, read_timeout=5, connect_timeout=5)
    assert mock_upstream.requests == []
    async with aiohttp.ClientSession(connector=netguard.upstream_connector({"loopback"})) as s:
        result = await stream_turn(s, _route(mock_upstream), _body(), lambda _t: None, read_timeout=5, connect_timeout=5)
    assert result.text and len(mock_upstream.requests) == 1
