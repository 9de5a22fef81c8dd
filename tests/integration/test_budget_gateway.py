"""Budgets across a fleet: three real gateways, the real budget service, real NATS and Postgres.

The clients are the real openai SDK; the provider is the fixture mock (the only mock). Prices are set so that
every request reserves and costs exactly $0.01: ``gpt-4.1`` at $0 input and $50 per million output tokens, and
the fixture answers 200 completion tokens to requests capped at ``max_tokens=200``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import openai
import pytest
from aiohttp import web

from aigw_budget.api import SERVICE
from aigw_budget.app import create_app as budget_app
from aigw_common.bus import Bus
from aigw_gateway.app import GUARD, LOADER
from aigw_gateway.app import create_app as gateway_app
from aigw_testing.registry_stub import RegistryStub, StubUser
from aigw_testing.upstream import MockUpstream
from aigw_testing.wait import eventually

FIXTURE = "openai/chatcompletions/length_limit"  # non-streaming: 14 prompt tokens, 200 completion tokens (max_tokens)
PRICE = {"model": "gpt-4.1", "input_per_mtok_micros": 0, "output_per_mtok_micros": 50_000_000,
         "cache_read_per_mtok_micros": 0, "cache_write_per_mtok_micros": 0}
CENT = 10_000
DOLLAR = 1_000_000
# Admission that may wait for a lease refill (BudgetGuard.acquire) is what keeps a burst from being refused while
# another replica still holds room; until the proxy uses it, that one assertion is an expected failure.


@dataclass
class Fleet:
    stub: RegistryStub
    budget_url: str
    budget: web.Application
    database_url: str
    admin: StubUser
    http: aiohttp.ClientSession
    gateways: list[str] = field(default_factory=list)
    gateway_apps: list[web.Application] = field(default_factory=list)

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.budget_url + path, json=body,
                                     headers={"Authorization": f"Bearer {self.admin.token}"}) as r:
            data = await r.json(content_type=None) if r.status != 204 else None
            assert r.status < 300, f"{method} {path}: {r.status} {data}"
            return data

    async def query(self, sql: str, *args: Any) -> Any:
        c = await asyncpg.connect(self.database_url, server_settings={"search_path": "budget"})
        try:
            return await c.fetchval(sql, *args)
        finally:
            await c.close()


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
        f = Fleet(stub, url, app, database_url, stub.add_user(roles=["admin"]), http)
        await f.api("PUT", "/api/v2/ai/prices", PRICE)
        for _ in range(3):
            gw = gateway_app(make_settings())
            f.gateways.append(await apps.start(gw))
            f.gateway_apps.append(gw)
        for gw in f.gateway_apps:
            await eventually(lambda gw=gw: "openai" in gw[LOADER].current.by_name, 10, "gateway has the provider")
        yield f


async def test_dollar_budget_three_gateways_200_concurrent_cent_requests(fleet: Fleet) -> None:
    fleet.stub.add_group("g-eng", "g-eng")  # the registry's directory knows the group
    await fleet.api("PUT", "/api/v2/groups/g-eng/ai/budget", {"spend_limit_micros": DOLLAR, "period": "month"})
    users = [fleet.stub.add_user(group_ids=["g-eng"]) for _ in range(10)]
    for gw in fleet.gateway_apps:  # every gateway knows the budget (and, prefetched, holds a lease of it)
        await eventually(lambda gw=gw: ("group", "g-eng") in gw[GUARD].budgets, 10, "the budget at the gateway")
        await eventually(lambda gw=gw: gw[GUARD].leases.get(("group", "g-eng")) is not None
                         and gw[GUARD].leases[("group", "g-eng")].granted > 0, 10, "a lease at the gateway")
    clients = [openai.AsyncOpenAI(base_url=f"{fleet.gateways[i % 3]}/openai/v1", api_key=users[i % 10].token,
                                  max_retries=0, timeout=30) for i in range(30)]
    ok: list[Any] = []
    refused: list[openai.RateLimitError] = []

    async def one(i: int) -> None:
        try:
            r = await clients[i % 30].chat.completions.create(
                model="gpt-4.1", max_tokens=200, messages=[{"role": "user", "content": f"request {i}"}])
            ok.append(r)
        except openai.RateLimitError as e:
            refused.append(e)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(200)))
    elapsed = time.monotonic() - t0
    assert len(ok) + len(refused) == 200
    assert all(r.usage.completion_tokens == 200 for r in ok)

    async def recorded() -> bool:
        n = await fleet.query("SELECT count(*) FROM interceptions WHERE status IS NOT NULL")
        return n == len(ok) + 0  # refused requests never reach the upstream and are not interceptions

    await eventually(recorded, 30, "every admitted request recorded")
    spent = await fleet.query("SELECT spent_micros FROM spend WHERE scope = 'group' AND subject_id = 'g-eng'")
    # the documented bound: reservations bound every cost here (max_tokens set), so no overshoot at all
    assert spent == len(ok) * CENT and spent <= DOLLAR, (spent, elapsed)
    e = refused[0]
    assert e.status_code == 429 and "group 'g-eng' budget of $1.00" in str(e) and "resets" in str(e)
    assert int(e.response.headers["Retry-After"]) > 0
    for c in clients:
        await c.close()
    # and no request refused while room remained: a dollar holds exactly one hundred cents
    assert len(ok) == 100, f"{len(ok)} admitted, {len(refused)} refused in {elapsed:.1f}s"
    budget = await fleet.api("GET", "/api/v2/groups/g-eng/ai/budget")
    assert budget["spent_micros"] == DOLLAR
