"""Hostile model names cannot grow the gateway's memory: thousands of unique names (each up to the
256-byte limit), some answered with usage echoing the name, some with 503, against a gateway in its own
process; its RSS after the flood stays within a fixed bound of its RSS after a warm-up."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import msgspec
import pytest
from aiohttp import web

from aigw_testing.system import ServiceProcess, System

pytestmark = pytest.mark.reliability

WARMUP = 3000
FLOOD = 8000
CONCURRENCY = 16
RSS_BOUND = 8 * 1024 * 1024  # bytes of growth allowed from the end of the warm-up to the end of the flood


async def _echo_model(request: web.Request, body: bytes) -> web.Response:
    doc = msgspec.json.decode(body)
    n = int(doc["model"].rsplit("-", 1)[1])
    if n % 3 == 0:  # a failure the breaker counts
        return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=503)
    return web.json_response({
        "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1, "model": doc["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    })


async def _flood(url: str, token: str, models: list[str]) -> dict[int, int]:
    statuses: dict[int, int] = {}
    it = iter(models)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
        async def worker() -> None:
            for model in it:
                body = msgspec.json.encode({"model": model, "messages": [{"role": "user", "content": "hi"}]})
                async with s.post(url + "/openai/v1/chat/completions", data=body,
                                  headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses


@pytest.mark.timeout(600)
async def test_unique_models_leave_rss_flat(start_system, tmp_path, reliability) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=("registry", "keypool", "budget"))
    s.upstream.handler = _echo_model
    gw = await ServiceProcess("gateway", s.env, tmp_path / "gateway.log").start()
    try:
        m = await s.member("flood")
        counter = itertools.count()
        pad = "x" * 220

        def names(n: int) -> list[str]:
            return [f"{pad}-{next(counter)}" for _ in range(n)]  # ≤ 256 bytes: accepted, each one new

        await _flood(gw.url, m.token, names(WARMUP))
        base = gw.rss()
        statuses = await _flood(gw.url, m.token, names(FLOOD))
        # and the names the issue used: 1 MiB each (a 400 now), to show parsing them leaves nothing behind
        async with aiohttp.ClientSession() as http:
            for i in range(10):
                body = msgspec.json.encode({"model": "m" * (1 << 20) + str(i), "messages": []})
                async with http.post(gw.url + "/openai/v1/chat/completions", data=body,
                                     headers={"Authorization": f"Bearer {m.token}"}) as r:
                    assert r.status == 400
        end = gw.rss()
    finally:
        await gw.stop()
    assert statuses.get(200, 0) > FLOOD // 2 and set(statuses) <= {200, 503}, statuses
    growth = end - base
    reliability.record("Hostile model names",
                       client=f"{FLOOD} unique 226-byte model names (a third answered 503) + 10 names of 1 MiB (400)",
                       usage="recorded", measured=f"gateway RSS {base / 2**20:.0f} → {end / 2**20:.0f} MiB "
                                                  f"({growth / 2**20:+.1f} MiB; bound +{RSS_BOUND / 2**20:.0f} MiB)")
    assert growth <= RSS_BOUND, f"gateway RSS grew {growth / 2**20:.1f} MiB over {FLOOD} unique models"
