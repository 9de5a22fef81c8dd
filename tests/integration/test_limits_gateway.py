"""Rate and concurrency limits across a fleet: two real gateways, the real budget service, real NATS and Postgres.

The clients are the real openai SDK; the provider is the fixture mock (the only mock). Limits are set through
the budget API, as an operator would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from aigw_budget.api import SERVICE
from aigw_budget.app import create_app as budget_app
from aigw_common.bus import Bus
from aigw_gateway.app import LIMITS, LOADER
from aigw_gateway.app import create_app as gateway_app
from aigw_testing.registry_stub import RegistryStub, StubUser
from aigw_testing.upstream import MockUpstream
from aigw_testing.wait import eventually

FIXTURE = "openai/chatcompletions/simple"  # non-streaming, with usage


@dataclass
class Fleet:
    stub: RegistryStub
    budget_url: str
    admin: StubUser
    http: aiohttp.ClientSession
    upstream: MockUpstream
    gateways: list[str] = field(default_factory=list)
    gateway_apps: list[web.Application] = field(default_factory=list)

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.budget_url + path, json=body,
                                     headers={"Authorization": f"Bearer {self.admin.token}"}) as r:
            data = await r.json(content_type=None) if r.status != 204 else None
            assert r.status < 300, f"{method} {path}: {r.status} {data}"
            return data

    def client(self, i: int, user: StubUser) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.gateways[i]}/openai/v1", api_key=user.token, max_retries=0,
                                  timeout=30)

    async def limits_known(self, scope: str, subject_id: str) -> None:
        for gw in self.gateway_apps:
            await eventually(lambda gw=gw: (scope, subject_id) in gw[LIMITS].subjects, 10, "the limits at the gateway")


@pytest.fixture
async def fleet(bus: Bus, make_settings, database_url: str, apps, mock_upstream: MockUpstream  # type: ignore[no-untyped-def]
                ) -> AsyncIterator[Fleet]:
    settings = make_settings(AIGW_DATABASE_URL=database_url)
    stub = await RegistryStub(bus, settings.bus_keys()).start()
    stub.put_provider("openai", "openai", mock_upstream.url + "/v1", ["sk-fleet-key-0001"])
    mock_upstream.play(FIXTURE)
    app = budget_app(settings)
    url = await apps.start(app)
    await eventually(lambda: app[SERVICE].consumer.ready.is_set(), 10, "budget consumer")
    async with aiohttp.ClientSession() as http:
        f = Fleet(stub, url, stub.add_user(roles=["admin"]), http, mock_upstream)
        for _ in range(2):
            gw = gateway_app(make_settings())
            f.gateways.append(await apps.start(gw))
            f.gateway_apps.append(gw)
        for gw in f.gateway_apps:
            await eventually(lambda gw=gw: "openai" in gw[LOADER].current.by_name, 10, "gateway has the provider")
            # a loaded test machine may take seconds to answer a lease: give it the time (the bound, not the
            # speed, is under test; production keeps the 2 s defaults)
            gw[LIMITS].wait = gw[LIMITS].request_timeout = 10.0
        yield f


async def _fresh_window(margin: float = 20.0) -> None:
    """Start a test well inside one wall-clock minute: windows are minutes, and a boundary resets them."""
    left = 60.0 - time.time() % 60.0
    if left < margin:
        await asyncio.sleep(left + 0.2)


async def _chat(c: openai.AsyncOpenAI, text: str = "hi") -> Any:
    return await c.chat.completions.create(model="gpt-4.1", max_tokens=200,
                                           messages=[{"role": "user", "content": text}])


async def test_five_requests_per_minute_across_two_gateways(fleet: Fleet) -> None:
    """Limit 5 rpm on a group: five requests alternating between two gateways pass, the sixth gets 429 with
    Retry-After (on either gateway), and a member of no limited group is not affected."""
    fleet.stub.add_group("g-eng", "g-eng")  # the registry's directory knows the group
    await fleet.api("PUT", "/api/v2/groups/g-eng/ai/limits", {"requests_per_minute": 5})
    users = [fleet.stub.add_user(group_ids=["g-eng"]) for _ in range(2)]
    free = fleet.stub.add_user(group_ids=["g-other"])
    await fleet.limits_known("group", "g-eng")
    await _fresh_window()
    for i in range(5):
        r = await _chat(fleet.client(i % 2, users[i % 2]), f"request {i}")
        assert r.usage.completion_tokens > 0
    for i in range(2):  # the sixth, on each gateway
        with pytest.raises(openai.RateLimitError) as ei:
            await _chat(fleet.client(i, users[i]))
        retry_after = float(ei.value.response.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert "5 requests per minute" in ei.value.message
    await _chat(fleet.client(0, free))


async def test_a_burst_on_two_gateways_gets_exactly_the_limit(fleet: Fleet) -> None:
    fleet.stub.add_group("g-burst", "g-burst")
    await fleet.api("PUT", "/api/v2/groups/g-burst/ai/limits", {"requests_per_minute": 7})
    users = [fleet.stub.add_user(group_ids=["g-burst"]) for _ in range(4)]
    await fleet.limits_known("group", "g-burst")
    await _fresh_window()
    clients = [fleet.client(i % 2, users[i % 4]) for i in range(8)]
    ok, refused = 0, 0

    async def one(i: int) -> None:
        nonlocal ok, refused
        try:
            await _chat(clients[i % 8], f"burst {i}")
            ok += 1
        except openai.RateLimitError:
            refused += 1

    await asyncio.gather(*(one(i) for i in range(20)))
    assert (ok, refused) == (7, 13)


async def test_concurrent_requests_across_two_gateways(fleet: Fleet) -> None:
    """Two concurrent requests for a user, fleet-wide: with two slow requests running (one per gateway) a third
    on either gateway gets 429 with Retry-After; once they end, requests pass again."""
    user = fleet.stub.add_user()
    await fleet.api("PUT", f"/api/v2/users/{user.user_id}/ai/limits", {"concurrent_requests": 2})
    await fleet.limits_known("user", user.user_id)
    release = asyncio.Event()
    normal = fleet.upstream.handler

    async def slow(_request: web.Request, _body: bytes) -> web.StreamResponse:
        await release.wait()
        return web.json_response(_reply())

    fleet.upstream.handler = slow
    running = [asyncio.create_task(_chat(fleet.client(i, user))) for i in range(2)]
    await eventually(lambda: sum(gw[LIMITS].subjects[("user", user.user_id)].inflight
                                 for gw in fleet.gateway_apps) == 2, 10, "two requests in flight")
    for i in range(2):
        with pytest.raises(openai.RateLimitError) as ei:
            await _chat(fleet.client(i, user))
        assert ei.value.response.headers.get("retry-after")
        assert "concurrent" in ei.value.message
    release.set()
    await asyncio.gather(*running)
    fleet.upstream.handler = normal
    for i in range(2):
        await _chat(fleet.client(i, user))


async def test_tokens_per_minute_across_two_gateways(fleet: Fleet) -> None:
    """A limit of one and a half requests' tokens a minute. The first two requests pass (usage is counted when a
    request ends, and the second starts on the other gateway); then, within a lease round trip, both gateways
    refuse with 429 and Retry-After until the window ends."""
    probe = await _chat(fleet.client(0, fleet.stub.add_user()))  # what one request costs in tokens
    per_request = probe.usage.prompt_tokens + probe.usage.completion_tokens
    limit = per_request * 3 // 2
    user = fleet.stub.add_user()
    await fleet.api("PUT", f"/api/v2/users/{user.user_id}/ai/limits", {"tokens_per_minute": limit})
    await fleet.limits_known("user", user.user_id)
    await _fresh_window(30.0)
    await _chat(fleet.client(0, user))
    await _chat(fleet.client(1, user))
    refused = 0
    for i in range(6):
        try:
            await _chat(fleet.client(i % 2, user))
        except openai.RateLimitError as e:
            assert f"{limit} tokens per minute" in e.message and float(e.response.headers["retry-after"]) >= 1
            refused += 1
    assert refused >= 4  # at most one more request per gateway before every report has arrived
    used = sum(gw[LIMITS].subjects[("user", user.user_id)].tok_used for gw in fleet.gateway_apps)
    assert used <= limit + 2 * per_request  # the documented bound: the limit plus a request per gateway


def _reply() -> dict[str, Any]:
    return {"id": "chatcmpl-slow", "object": "chat.completion", "created": 0, "model": "gpt-4.1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 19, "completion_tokens": 200, "total_tokens": 219}}
