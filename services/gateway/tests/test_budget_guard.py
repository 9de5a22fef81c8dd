"""BudgetGuard against the real budget service over real NATS and Postgres (no HTTP in between).

A "gateway" here is a BudgetGuard on its own NATS connection that, like the
gateway's recorder, publishes each admitted request's usage to JetStream with
its lease holder id; the budget service records it and the guard's leases are
reconciled against what was recorded.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import pytest

from aigw_budget.api import SERVICE
from aigw_budget.app import create_app as create_budget_app
from aigw_common.bus import Bus, Subjects
from aigw_common.metrics import new_registry
from aigw_common.schemas import (
    Identity,
    InterceptionEnded,
    InterceptionStarted,
    TokenCounts,
    TokenUsage,
)
from aigw_gateway.budget import Admission, BudgetGuard
from aigw_gateway.usage.common import RequestInfo
from aigw_testing.registry_stub import RegistryStub

MODEL = "budget-test-model"
# input free, output $100 per million tokens: a request with max_tokens=100 reserves exactly $0.01,
# and costs exactly $0.01 when it produces 100 tokens
PRICE = {"model": MODEL, "input_per_mtok_micros": 0, "output_per_mtok_micros": 100_000_000,
         "cache_read_per_mtok_micros": 0, "cache_write_per_mtok_micros": 0}
CENT = 10_000
INFO = RequestInfo(model=MODEL, stream=False, prompt="hi", max_output_tokens=100, input_bytes=120)
FULL = TokenCounts(input_tokens=20, output_tokens=100)


@dataclass
class Env:
    budget_url: str
    admin_token: str
    bus: Bus
    pg: str
    stub: RegistryStub
    guards: list[BudgetGuard] = field(default_factory=list)
    buses: list[Bus] = field(default_factory=list)

    async def api(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        async with aiohttp.ClientSession() as s, s.request(
                method, self.budget_url + path, json=body, headers={"Authorization": f"Bearer {self.admin_token}"}) as r:
            return r.status, await r.json() if r.content_type == "application/json" else None

    async def guard(self, nats_url: str, prefix: str, **kw: object) -> BudgetGuard:
        b = Bus(servers=(nats_url,), name="aigw-gw-test", subjects=Subjects(prefix), auth=self.bus.auth)
        await b.start(wait=5)
        g = BudgetGuard(b, self.stub_settings, new_registry(), **kw)  # type: ignore[arg-type]
        await g.start()
        self.buses.append(b)
        self.guards.append(g)
        return g

    async def spent(self, scope: str = "group", sid: str = "eng") -> int:
        c = await asyncpg.connect(self.pg, server_settings={"search_path": "budget"})
        try:
            return await c.fetchval("SELECT coalesce(sum(spent_micros), 0)::bigint FROM spend"
                                    " WHERE scope = $1 AND subject_id = $2", scope, sid)
        finally:
            await c.close()


@pytest.fixture
async def env(bus: Bus, make_settings, database_url: str, apps) -> AsyncIterator[Env]:  # type: ignore[no-untyped-def]
    settings = make_settings(AIGW_DATABASE_URL=database_url)
    stub = await RegistryStub(bus, settings.bus_keys()).start()
    app = create_budget_app(settings)
    url = await apps.start(app)
    await asyncio.wait_for(app[SERVICE].consumer.ready.wait(), 10)
    admin = stub.add_user(roles=["admin"])
    stub.add_group("eng", "eng")  # the registry's directory: the budgets below name these
    stub.add_user(username="alice", user_id="u-alice")
    e = Env(url, admin.token, bus, database_url, stub)
    e.stub_settings = settings  # type: ignore[attr-defined]
    assert (await e.api("PUT", "/api/v2/ai/prices", PRICE))[0] == 200
    yield e
    for g in e.guards:
        await g.stop()
    for b in e.buses:
        await b.close()


def member(group: str = "eng", user: str | None = None) -> Identity:
    return Identity(user_id=user or f"u-{uuid.uuid4().hex[:6]}", username="m", roles=["member"], group_ids=[group],
                    token_id="t")


async def record(bus: Bus, g: BudgetGuard, ident: Identity, adm: Admission, tokens: TokenCounts | None) -> None:
    """What the gateway does when a request ends: settle the reservation, publish the usage."""
    g.settle(adm, MODEL, tokens)
    iid = uuid.uuid4().hex
    now = time.time()
    events: list = [InterceptionStarted(  # type: ignore[type-arg]
        event_id=uuid.uuid4().hex, interception_id=iid, at=now, user_id=ident.user_id, group_ids=ident.group_ids,
        provider_id="p", provider_name="openai", provider_type="openai", endpoint="chat_completions", model=MODEL,
        reservation_micros=adm.reservation_micros, gateway_id=adm.lease_holder)]
    if tokens is not None:
        events.append(TokenUsage(event_id=uuid.uuid4().hex, interception_id=iid, at=now, model=MODEL, tokens=tokens))
    events.append(InterceptionEnded(event_id=uuid.uuid4().hex, interception_id=iid, at=now, status="ok"))
    for e in events:
        await bus.js_publish(bus.subjects.usage("x"), e, msg_id=e.event_id)


async def wait_for(cond, within: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not (await cond() if asyncio.iscoroutinefunction(cond) else cond()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_three_guards_200_concurrent_cent_requests_on_a_dollar(env: Env, nats_url: str, bus_prefix: str) -> None:
    assert (await env.api("PUT", "/api/v2/groups/eng/ai/budget", {"spend_limit_micros": 1_000_000}))[0] == 200
    guards = [await env.guard(nats_url, bus_prefix) for _ in range(3)]
    for g in guards:
        await wait_for(lambda g=g: ("group", "eng") in g.budgets)
    admitted: list[Admission] = []
    refused: list[Admission] = []

    async def one(i: int) -> None:
        g = guards[i % 3]
        ident = member()
        adm = await g.acquire(ident, "openai", MODEL, INFO)
        if not adm.allowed:
            refused.append(adm)
            return
        admitted.append(adm)
        await asyncio.sleep(random.uniform(0.01, 0.1))  # the upstream call
        await record(env.bus, g, ident, adm, FULL)

    await asyncio.gather(*(one(i) for i in range(200)))
    if len(admitted) != 100:  # diagnostics
        for g in guards:
            print("GUARD", g.id, g.leases)
        c = await asyncpg.connect(env.pg, server_settings={"search_path": "budget"})
        for r in await c.fetch("SELECT gateway_id, granted_micros, consumed_micros, inflight_micros, recorded_micros, seq FROM leases"):
            print("ROW", dict(r))
        await c.close()
    # all 200 cost exactly a cent: a dollar holds exactly 100; fewer means one was refused while room remained
    assert len(admitted) == 100 and len(refused) == 100, sorted({r.message[:90] for r in refused})
    assert all(a.reservation_micros == CENT for a in admitted)

    async def all_recorded() -> bool:
        return await env.spent() == 100 * CENT

    await wait_for(all_recorded, 20)
    assert await env.spent() <= 1_000_000  # the documented bound: no overshoot when reservations bound costs
    r = refused[0]
    assert "group 'eng' budget of $1.00" in r.message and "resets" in r.message
    assert r.retry_after is not None and r.retry_after > 0
    # once the spend is recorded the service tells every gateway the budget is blocked
    await wait_for(lambda: all(g.budgets[("group", "eng")].spent >= 1_000_000 for g in guards), 10)
    late = guards[0].admit(member(), "openai", MODEL, INFO)
    assert not late.allowed and "is exhausted" in late.message


async def test_settle_returns_unused_reservation_and_sync_admit_uses_the_lease(env: Env, nats_url: str,
                                                                                 bus_prefix: str) -> None:
    assert (await env.api("PUT", "/api/v2/groups/eng/ai/budget", {"spend_limit_micros": 100_000}))[0] == 200
    g = await env.guard(nats_url, bus_prefix)
    await wait_for(lambda: ("group", "eng") in g.leases and g.leases[("group", "eng")].granted > 0)
    lease = g.leases[("group", "eng")]
    ident = member()
    adm = g.admit(ident, "openai", MODEL, INFO)  # from the prefetched lease, no round trip
    assert adm.allowed and adm.reservation_micros == CENT and lease.inflight == CENT
    await record(env.bus, g, ident, adm, TokenCounts(output_tokens=30))
    assert lease.inflight == 0 and lease.consumed == 3000
    g.settle(adm, MODEL, FULL)  # settling twice changes nothing
    assert lease.consumed == 3000
    failed = g.admit(ident, "openai", MODEL, INFO)
    g.settle(failed, MODEL, None)  # failed before any usage: the reservation is released in full
    assert lease.inflight == 0 and lease.consumed == 3000
    # no identity, or no budget for the user and groups: admitted without a reservation
    assert g.admit(None, "openai", MODEL, INFO).allowed
    free = g.admit(member(group="other"), "openai", MODEL, INFO)
    assert free.allowed and free.reservation_micros == 0


async def test_user_and_group_budgets_both_apply_and_deletion_lifts(env: Env, nats_url: str, bus_prefix: str) -> None:
    ident = member(user="u-alice")
    assert (await env.api("PUT", "/api/v2/groups/eng/ai/budget", {"spend_limit_micros": 1_000_000}))[0] == 200
    assert (await env.api("PUT", "/api/v2/users/u-alice/ai/budget", {"spend_limit_micros": 25_000}))[0] == 200
    g = await env.guard(nats_url, bus_prefix, wait=2.0)
    await wait_for(lambda: ("user", "u-alice") in g.budgets and ("group", "eng") in g.budgets)
    ok = [await g.acquire(ident, "openai", MODEL, INFO) for _ in range(3)]
    assert [a.allowed for a in ok] == [True, True, False]  # the user's $0.025 holds two cents
    assert "user 'alice' budget of $0.03" in ok[2].message  # named by the registry's directory
    assert (await env.api("DELETE", "/api/v2/users/u-alice/ai/budget"))[0] == 204
    await wait_for(lambda: ("user", "u-alice") not in g.budgets)
    assert (await g.acquire(ident, "openai", MODEL, INFO)).allowed  # only the group budget applies now
