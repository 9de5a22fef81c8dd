"""The whole system on a three-node NATS JetStream cluster, under steady traffic through two gateways, while
nodes die: the node leading ``AIGW_USAGE`` killed with SIGKILL and brought back, a follower killed and brought
back, then every node restarted one after the other (a rolling upgrade).

Every service lists all three nodes in ``AIGW_NATS_URL`` and creates its streams and bucket with three
replicas (``AIGW_JS_REPLICAS=3``). After each step, once the cluster has re-formed, the test asserts:

- no client request failed (the documented bound is zero: the gateway's hot path needs no NATS round trip,
  and usage events that cannot be acked go to the spool and are replayed);
- every usage event in the stream was applied by the budget service exactly once (``System.ledger``), and
  nothing is left pending in its consumer;
- a key mark published by one gateway reaches the other, and a provider created in the registry is served
  by both, each within 1 s;

and at the end, that a budget still holds across the two gateways. ``make test`` runs a few seconds of
traffic per step; ``make soak`` runs 30 s per step and writes the figures into docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import openai
import pytest

from aigw_common.schemas import KeyMarked
from aigw_gateway.app import GUARD, LOADER, POOLS, RECORDER
from aigw_gateway.keys import COOLING
from aigw_keypool.api import SERVICE as KEYPOOL
from aigw_testing.natscluster import NatsCluster
from aigw_testing.system import System, Traffic
from aigw_testing.wait import eventually

pytestmark = pytest.mark.reliability
RATE = 10.0  # requests per second, split over the two gateways
FOLLOW = 1.0  # seconds: a key mark or a provider change reaches every gateway within this (the contract)
ERROR_BOUND = 0  # client errors allowed per step
GATEWAYS = ("gateway", "gateway2")
STEPS = [3.0, pytest.param(30.0, marks=[pytest.mark.soak, pytest.mark.timeout(900)])]  # seconds per step
PRICE = {"model": "gpt-4.1", "input_per_mtok_micros": 0, "output_per_mtok_micros": 50_000_000,
         "cache_read_per_mtok_micros": 0, "cache_write_per_mtok_micros": 0}
LIMIT = 50_000  # micro-USD: 5 cents


class Run:
    def __init__(self, s: System, cluster: NatsCluster, token: str) -> None:
        self.s, self.cluster, self.token = s, cluster, token
        self.step = 0
        self.requests = 0  # requests sent so far, each one interception
        self.spare_id = ""
        self.spare_key = ""
        self.resumed = 0.0  # seconds the last follow() waited for the fleet to follow marks again

    async def traffic(self) -> list[Traffic]:
        return [Traffic(self.s.openai(self.token, gw), RATE / len(GATEWAYS)).start() for gw in GATEWAYS]

    async def settle(self, traffics: list[Traffic], what: str) -> tuple[int, int, float]:
        """Stop the traffic; assert what the clients saw and the ledger; return (requests, events, p99)."""
        outcomes = [o for t in traffics for o in await t.stop()]
        failed = [o for o in outcomes if o.error]
        assert len(failed) <= ERROR_BOUND, \
            f"{what}: {len(failed)} of {len(outcomes)} requests failed: {failed[:3]}"
        self.requests += len(outcomes)
        # every request is one interception, ended ok, with its tokens: the stream holds each of its events
        # (an acked event lost with a node would show here as a missing or token-less interception)
        ledger = await self.s.ledger(expect=self.requests, timeout=120)
        assert ledger.by_status() == {"ok": self.requests}, ledger.by_status()
        empty = [r["id"] for r in ledger.interceptions if r["input_tokens"] + r["output_tokens"] == 0]
        assert not empty, f"{what}: interceptions recorded without their token usage: {empty[:5]}"
        await eventually(self._no_backlog, 30, "an empty usage consumer")
        for gw in GATEWAYS:
            rec = self.s.app[gw][RECORDER]
            await eventually(lambda rec=rec: not rec.spool.pending(), 30, f"{gw}'s spool replayed")
            assert rec.spool.dropped == 0
        lat = sorted(o.latency for o in outcomes if not o.error)
        return len(outcomes), ledger.events, lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")

    async def _no_backlog(self) -> bool:
        try:
            return await self.s.consumer_backlog() == (0, 0)
        except Exception:  # JetStream busy electing: ask again
            return False

    async def _mark(self, src: str, dst: str, until: float, within: float) -> tuple[float, str]:
        """A key mark published by ``src``: seconds until ``dst`` has it, and where it was in between."""
        t0 = time.monotonic()
        self.s.app[src][POOLS].sink(KeyMarked(  # type: ignore[misc]
            event_id=uuid.uuid4().hex, provider_id=self.spare_id, key_id=self.spare_key, state="cooling",
            until=until, status_code=429, gateway_id="test", at=time.time()))
        pools = self.s.app[dst][POOLS]
        keypool = self.s.app["keypool"][KEYPOOL].mirror
        stored: list[float] = []  # when keypool's own mirror of the bucket had it: tells a slow hop apart

        def cooled() -> bool:
            st = keypool.states.get(f"{self.spare_id}.{self.spare_key}")
            if not stored and st is not None and st[0].until is not None and st[0].until >= until - 1e-3:
                stored.append(time.monotonic() - t0)
            h = pools.health(self.spare_id, self.spare_key)
            return h.state == COOLING and h.until >= until - 1e-3

        took = await eventually(cooled, within, f"the key mark from {src} at {dst}", interval=0.01)
        return took, f"(in the bucket after {stored[0]:.2f}s)" if stored else "(not yet in keypool's mirror)"

    async def follow(self) -> tuple[float, float]:
        """A key mark from one gateway reaches the other, and a new provider reaches both: (mark s, provider s).

        An untimed mark goes first and must arrive within 30 s: after a fault the services' subscriptions and
        watches come back on their own retry schedules (``resumed`` says how long that took); the contract
        timed here is the fleet's on a cluster it is following again."""
        self.step += 1
        src, dst = GATEWAYS[self.step % 2], GATEWAYS[(self.step + 1) % 2]
        self.resumed, _ = await self._mark(src, dst, time.time() + 3600 + 2 * self.step, 30)
        mark, hops = await self._mark(src, dst, time.time() + 3600 + 2 * self.step + 1, 10)
        name = f"late{self.step}"
        t0 = time.monotonic()
        await self.s.owner.ok("POST", self.s.url("registry", "/api/v2/ai/providers"), {
            "name": name, "type": "openai", "base_url": self.s.up.rewrite(self.s.upstream.url) + "/v1",
            "keys": [f"zzlate-key-{self.step}-123456"]})
        create = time.monotonic() - t0
        took = await eventually(lambda: all(name in self.s.app[gw][LOADER].current.by_name for gw in GATEWAYS), 10,
                                f"provider {name} at every gateway", interval=0.01)
        provider = took  # from the registry's answer: the change is published after its commit
        assert mark <= FOLLOW, f"a key mark took {mark:.2f}s to reach {dst} {hops} (contract: {FOLLOW}s)"
        assert provider <= FOLLOW, f"provider {name} reached every gateway {provider:.2f}s after it was " \
                                   f"created ({create:.2f}s to create) (contract: {FOLLOW}s)"
        return mark, provider


async def _start(start_system, cluster: NatsCluster) -> Run:  # type: ignore[no-untyped-def]
    s: System = await start_system(nats_url=cluster.url, env={"AIGW_JS_REPLICAS": "3"})
    await s.start_service("gateway", key="gateway2")
    m = await s.member("steady")
    run = Run(s, cluster, m.token)
    for gw in GATEWAYS:  # each gateway has verified the token before nodes die (it then needs no round trip)
        await s.openai(m.token, gw).chat.completions.create(model="gpt-4.1",
                                                            messages=[{"role": "user", "content": "x"}])
    run.requests = len(GATEWAYS)
    await s.owner.ok("POST", s.url("registry", "/api/v2/ai/providers"), {
        "name": "spare", "type": "openai", "base_url": s.up.rewrite(s.upstream.url) + "/v1",
        "keys": ["zzspare-key-123456"]})
    for gw in GATEWAYS:
        await eventually(lambda gw=gw: "spare" in s.app[gw][LOADER].current.by_name, 10, f"spare at {gw}")
    provider = s.app["gateway"][LOADER].current.by_name["spare"]
    run.spare_id, run.spare_key = provider.id, provider.pool.keys[0].id
    info = await s.bus.js.stream_info(s.bus.subjects.usage_stream)
    assert info.config.num_replicas == 3, info.config
    return run


async def _wait_reformed(cluster: NatsCluster, s: System) -> float:
    """Every node up, every stream of this test (usage, marks, key-state bucket) and the durable consumers on them
    (budget's, keypool's) led and current."""
    subj = s.bus.subjects
    t0 = time.monotonic()
    for n in cluster.nodes:
        await cluster.wait_healthy(n)
    for stream in (subj.usage_stream, subj.keys_marked_stream, f"KV_{subj.keys_bucket}"):
        await cluster.stream_current(stream)
    await cluster.consumer_current(subj.usage_stream, subj.durable("budget_usage"))
    await cluster.consumer_current(subj.keys_marked_stream, subj.durable("keypool"))
    return time.monotonic() - t0


@pytest.mark.parametrize("seconds", STEPS)
@pytest.mark.timeout(600)
async def test_nats_cluster_loses_nodes_under_steady_traffic(nats_cluster: NatsCluster, start_system,  # type: ignore[no-untyped-def]
                                                             reliability, seconds: float) -> None:
    # nats_cluster first: set up before the services, torn down after them
    run = await _start(start_system, nats_cluster)
    s, cluster = run.s, nats_cluster
    usage = s.bus.subjects.usage_stream
    await run.follow()  # the baseline: the fleet follows on a healthy cluster

    # 1. the node leading AIGW_USAGE dies (SIGKILL), later comes back
    traffics = await run.traffic()
    await asyncio.sleep(1.0)
    leader = await cluster.stream_leader(usage)
    await cluster.kill(leader)
    t_kill = time.monotonic()
    new_leader = await cluster.stream_leader(usage, within=60)
    elected = time.monotonic() - t_kill
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - t_kill)))
    await cluster.restart(leader)
    reformed = await _wait_reformed(cluster, s)
    n, events, p99 = await run.settle(traffics, "leader killed")
    mark, provider = await run.follow()
    assert new_leader != leader
    reliability.record(
        f"NATS cluster: AIGW_USAGE leader killed (SIGKILL) for {seconds:g} s",
        client=f"{n} of {n} requests through 2 gateways answered whole; p99 {p99 * 1000:.0f} ms",
        usage=f"{events} events, each applied once (R3 stream)",
        measured=f"new leader in {elected:.1f} s; cluster current {reformed:.1f} s after the node's restart; "
                 f"marks followed again {run.resumed:.1f} s later; then a key mark reached the other gateway in {mark * 1000:.0f} ms, a new provider both in "
                 f"{provider * 1000:.0f} ms")

    # 2. a follower dies, later comes back
    traffics = await run.traffic()
    await asyncio.sleep(1.0)
    leader = await cluster.stream_leader(usage)
    follower = next(n.name for n in cluster.nodes if n.name != leader)
    await cluster.kill(follower)
    await asyncio.sleep(seconds)
    await cluster.restart(follower)
    reformed = await _wait_reformed(cluster, s)
    n, events2, p99 = await run.settle(traffics, "follower killed")
    mark, provider = await run.follow()
    reliability.record(
        f"NATS cluster: a follower killed (SIGKILL) for {seconds:g} s",
        client=f"{n} of {n} requests through 2 gateways answered whole; p99 {p99 * 1000:.0f} ms",
        usage=f"{events2 - events} events, each applied once",
        measured=f"cluster current {reformed:.1f} s after the node's restart; marks followed again "
                 f"{run.resumed:.1f} s later; then a key mark reached the other gateway in {mark * 1000:.0f} ms, a new provider both in {provider * 1000:.0f} ms")

    # 3. a rolling upgrade: each node stopped (SIGTERM) and started again, the next only once all are current
    traffics = await run.traffic()
    await asyncio.sleep(1.0)
    t_roll = time.monotonic()
    for node in cluster.nodes:
        await cluster.stop(node.name)
        await asyncio.sleep(seconds / len(cluster.nodes))
        await cluster.restart(node.name)
        await _wait_reformed(cluster, s)
    rolled = time.monotonic() - t_roll
    n, events3, p99 = await run.settle(traffics, "rolling restart")
    mark, provider = await run.follow()
    reliability.record(
        f"NATS cluster: rolling restart of all 3 nodes ({seconds / 3:g} s down each)",
        client=f"{n} of {n} requests through 2 gateways answered whole; p99 {p99 * 1000:.0f} ms",
        usage=f"{events3 - events2} events, each applied once",
        measured=f"all three restarted in {rolled:.1f} s; marks followed again {run.resumed:.1f} s later; "
                 f"then a key mark reached the other gateway in "
                 f"{mark * 1000:.0f} ms, a new provider both in {provider * 1000:.0f} ms")

    # 4. budgets still hold on the re-formed cluster: a budget of 5 cents, requests alternating between the two
    # gateways until they are refused; what was spent stays within the budget
    await s.owner.ok("PUT", s.url("budget", "/api/v2/ai/prices"), PRICE)
    payer = await s.member("payer")
    await s.owner.ok("PUT", s.url("budget", f"/api/v2/users/{payer.id}/ai/budget"),
                     {"spend_limit_micros": LIMIT, "period": "month"})

    def priced(gw: str) -> bool:
        p = s.app[gw][GUARD].prices.lookup("gpt-4.1")
        return p is not None and p.output_per_mtok_micros == PRICE["output_per_mtok_micros"]

    for gw in GATEWAYS:  # the prices and the budget reached both gateways over the re-formed cluster
        await eventually(lambda gw=gw: priced(gw), 10, f"the prices at {gw}")
        await eventually(lambda gw=gw: ("user", payer.id) in s.app[gw][GUARD].budgets, 10, f"the budget at {gw}")
    ok, refused = 0, 0
    for i in range(60):  # each costs a few thousand micros: the budget runs out well before
        try:
            await s.openai(payer.token, GATEWAYS[i % 2]).chat.completions.create(
                model="gpt-4.1", max_tokens=200, messages=[{"role": "user", "content": f"pay {i}"}])
            ok += 1
        except openai.RateLimitError:
            refused += 1
            if refused == 3:
                break
    assert ok > 0 and refused == 3, (ok, refused)
    await s.ledger(timeout=60)
    spent = await s.query("SELECT coalesce(sum(spent_micros), 0)::bigint AS s FROM spend"
                          " WHERE scope = 'user' AND subject_id = $1", payer.id)
    assert 0 < spent[0]["s"] <= LIMIT, (spent[0]["s"], ok)
