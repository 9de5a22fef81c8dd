"""Per-provider upstream timeouts: each is a clear error in the provider's own format, and is recorded."""

from __future__ import annotations

import asyncio

import anthropic
import openai
import pytest
from aiohttp import web

from aigw_gateway.adapters import Timeouts

FAST = {"connect_timeout": "1s", "first_byte_timeout": "500ms", "idle_timeout": "0.5"}


def test_timeouts_from_settings() -> None:
    assert Timeouts.from_settings({}) == Timeouts()
    d = Timeouts()
    assert d.connect <= 10 and d.first_byte >= 300 and d.idle >= 300  # long reasoning streams fit
    assert Timeouts.from_settings(FAST) == Timeouts(1.0, 0.5, 0.5)
    assert Timeouts.from_settings({"first_byte_timeout": 90, "idle_timeout": "2m"}) == Timeouts(d.connect, 90.0, 120.0)
    assert Timeouts.from_settings({"idle_timeout": "soon"}).idle == d.idle  # the registry validates; never crash here


async def slow_first_byte(request: web.Request, _body: bytes) -> web.StreamResponse:
    await asyncio.sleep(5)
    return web.json_response({})


@pytest.mark.parametrize("ptype", ["openai-compat", "anthropic"])
async def test_first_byte_timeout(gw, ptype: str) -> None:  # type: ignore[no-untyped-def]
    base = gw.upstream.url + ("/v1" if ptype != "anthropic" else "")
    gw.registry.put_provider("slow", ptype, base, ["k1"], settings=FAST)
    await gw.registry.publish_changed()
    await gw.wait_revision()
    gw.upstream.handler = slow_first_byte
    if ptype == "anthropic":
        c = anthropic.AsyncAnthropic(base_url=f"{gw.url}/slow", api_key=gw.user.token, max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as e:
            await c.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert e.value.body["error"]["type"] == "timeout_error"  # type: ignore[index]
    else:
        o = openai.AsyncOpenAI(base_url=f"{gw.url}/slow/v1", api_key=gw.user.token, max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            await o.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert e.value.body["type"] == "server_error"  # type: ignore[index]
    assert e.value.status_code == 504
    assert "did not answer" in e.value.message
    [ended] = await gw.usage.wait_ended(1)
    assert ended.status == "error" and ended.status_code == 504 and "did not answer" in (ended.error or "")


async def test_idle_timeout_mid_stream(gw) -> None:  # type: ignore[no-untyped-def]
    gw.registry.put_provider("slow", "anthropic", gw.upstream.url, ["k1"], settings=FAST)
    await gw.registry.publish_changed()
    await gw.wait_revision()

    async def stalls(request: web.Request, _body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'event: message_start\ndata: {"type":"message_start","message":{"id":"m1","type":"message",'
                         b'"role":"assistant","model":"claude-x","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}\n\n')
        await asyncio.sleep(5)
        return resp

    gw.upstream.handler = stalls
    c = anthropic.AsyncAnthropic(base_url=f"{gw.url}/slow", api_key=gw.user.token, max_retries=0)
    with pytest.raises(anthropic.APIStatusError, match="timed out"):
        async with c.messages.stream(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}]) as s:
            async for _ in s:
                pass
    [ended] = await gw.usage.wait_ended(1)
    assert ended.status == "error" and "timed out" in (ended.error or "")
    [tok] = gw.usage.tokens()
    assert tok.tokens.input_tokens == 3  # what arrived before the stall is still metered
