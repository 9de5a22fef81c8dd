"""The gateway's key-state watcher and key reporter, against real NATS."""

from __future__ import annotations

import asyncio
import time

import pytest
from multidict import CIMultiDict

from aigw_common.bus import Bus, Subjects
from aigw_common.embedded import EmbeddedNats
from aigw_common.keystate import entry_subject, keys_bucket
from aigw_common.schemas import KeyReport, KeyState
from aigw_gateway.keystate import KeyReporter, KeyStateWatcher
from aigw_testing.faultproxy import FaultProxy
from aigw_testing.wait import eventually


class Pools:
    """Records what the watcher applies, as KeyPools.apply_state receives it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, float | None]] = []
        self.state: dict[tuple[str, str], tuple[str, float | None]] = {}

    def apply_state(self, provider_id: str, key_id: str, state: str, until: float | None) -> None:
        self.calls.append((provider_id, key_id, state, until))
        self.state[(provider_id, key_id)] = (state, until)


def ks(bus: Bus, key_id: str, state: str, until: float | None = None) -> bytes:
    """A key-state value as keypool writes it: signed over bucket and key."""
    st = KeyState(provider_id="p", key_id=key_id, state=state, until=until, status_code=429,  # type: ignore[arg-type]
                  updated_at=time.time())
    return bus.auth.seal_entry(entry_subject(bus, f"p.{key_id}"), st)


# ------------------------------------------------------------------ reporter


@pytest.fixture
async def reports(bus: Bus) -> asyncio.Queue[KeyReport]:
    got: asyncio.Queue[KeyReport] = asyncio.Queue()

    async def on_report(msg, _m):  # type: ignore[no-untyped-def]
        await got.put(msg)
    await bus.subscribe(bus.subjects.keys_report, KeyReport, on_report)
    await bus.nc.flush()
    return got


async def test_reporter_aggregates_per_key_and_publishes(bus: Bus, reports: asyncio.Queue[KeyReport]):
    got = reports
    rep = KeyReporter(bus, "gw-1", interval=0.2)
    await rep.start()
    try:
        for status in (200, 200, 400, 429, 0, 503):
            rep.observe("p", "k1", status, CIMultiDict())
        rep.observe("p", "k2", 200, CIMultiDict({"x-ratelimit-remaining-requests": "7"}))
        report = await asyncio.wait_for(got.get(), 3)
        by_key = {s.key_id: s for s in report.keys}
        assert report.gateway_id == "gw-1"
        assert (by_key["k1"].successes, by_key["k1"].failures, by_key["k1"].last_status) == (3, 3, 503)
        assert by_key["k2"].ratelimit.remaining_requests == 7
        with pytest.raises(TimeoutError):  # nothing observed since: nothing published
            await asyncio.wait_for(got.get(), 0.6)
    finally:
        await rep.stop()


async def test_reporter_flushes_at_once_when_a_budget_hits_zero(bus: Bus, reports: asyncio.Queue[KeyReport]):
    got = reports
    rep = KeyReporter(bus, "gw-1", interval=60)
    await rep.start()
    try:
        await asyncio.sleep(0.2)
        rep.observe("p", "k1", 200, CIMultiDict({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "3s"}))
        report = await asyncio.wait_for(got.get(), 3)
        assert report.keys[0].ratelimit.remaining_tokens == 0
    finally:
        await rep.stop()


async def test_reporter_observe_is_cheap(bus: Bus):
    rep = KeyReporter(bus, "gw-1")
    h = CIMultiDict({"x-ratelimit-remaining-requests": "99", "x-ratelimit-reset-requests": "1s",
                     "x-ratelimit-remaining-tokens": "1000", "x-ratelimit-reset-tokens": "6m0s"})
    t = time.perf_counter()
    for i in range(20_000):
        rep.observe("p", f"k{i % 4}", 200, h)
    per_call = (time.perf_counter() - t) / 20_000
    assert per_call < 100e-6, f"observe takes {per_call * 1e6:.1f} µs"


# ------------------------------------------------------------------ watcher


async def test_watcher_loads_the_bucket_before_ready_and_follows_changes(bus: Bus):
    kv = await keys_bucket(bus)
    until = time.time() + 60
    await kv.put("p.k1", ks(bus, "k1", "cooling", until))
    await kv.put("p.k2", ks(bus, "k2", "revoked"))
    await kv.put("p.k3", ks(bus, "k3", "cooling", time.time() - 5))  # already over: valid
    pools = Pools()
    w = KeyStateWatcher(bus, pools)
    assert not w.ready and w.not_ready()
    await w.start()
    try:
        assert w.ready and w.not_ready() is None
        assert pools.state == {("p", "k1"): ("cooling", until), ("p", "k2"): ("revoked", None),
                               ("p", "k3"): ("valid", None)}
        await kv.put("p.k4", ks(bus, "k4", "revoked"))
        await kv.put("p.k2", ks(bus, "k2", "valid"))  # keypool cleared it (the registry replaced the key)
        await eventually(lambda: pools.state.get(("p", "k4")) == ("revoked", None) and
                       pools.state[("p", "k2")] == ("valid", None), 3, "changes applied")
        pools.calls.clear()
        w.replay()
        assert sorted(c[1] for c in pools.calls) == ["k1", "k2", "k3", "k4"]  # a reset is a signed "valid" entry
    finally:
        await w.stop()


async def test_watcher_keeps_last_state_while_cut_off_and_converges_after(bus: Bus, nats_url: str):
    port = int(nats_url.rsplit(":", 1)[1])
    proxy = await FaultProxy.start_for("127.0.0.1", port)
    gw_bus = Bus(servers=(proxy.rewrite(nats_url),), name="gw", subjects=bus.subjects, auth=bus.auth)
    await gw_bus.start(wait=5)
    kv = await keys_bucket(bus)
    await kv.put("p.k1", ks(bus, "k1", "revoked"))
    await kv.put("p.k2", ks(bus, "k2", "revoked"))
    pools = Pools()
    w = KeyStateWatcher(gw_bus, pools)
    await w.start()
    try:
        assert pools.state[("p", "k1")] == ("revoked", None)
        await proxy.down()
        await eventually(lambda: not gw_bus.connected, 5, "disconnect seen")
        # changes the cut-off gateway cannot see: a reset (no later event will repeat it) and a new mark
        await kv.put("p.k1", ks(bus, "k1", "valid"))
        await kv.put("p.k3", ks(bus, "k3", "revoked"))
        await asyncio.sleep(0.3)
        assert pools.state[("p", "k1")] == ("revoked", None)  # last known state stands
        await proxy.up()
        await eventually(lambda: pools.state.get(("p", "k1")) == ("valid", None)
                       and pools.state.get(("p", "k3")) == ("revoked", None), 10, "converged after reconnect")
        assert pools.state[("p", "k2")] == ("revoked", None)
    finally:
        await w.stop()
        await gw_bus.close()
        await proxy.close()


async def test_watcher_survives_a_nats_server_restart(tmp_path, bus_auth):
    server = EmbeddedNats(tmp_path / "nats")
    url = await server.start()
    b = bus = Bus(servers=(url,), name="gw", subjects=Subjects("trestart"), auth=bus_auth)
    await b.start(wait=5)
    pools = Pools()
    w = KeyStateWatcher(b, pools)
    try:
        await server.stop()
        await eventually(lambda: not b.connected, 5, "disconnect seen")
        await w.start(wait=0.2)
        assert not w.ready and w.not_ready() is None  # NATS down: nothing to wait for, serve what we know
        await server.start()
        await eventually(lambda: w.ready, 10, "loaded once NATS is back")
        kv = await keys_bucket(b)
        await kv.put("p.k1", ks(bus, "k1", "revoked"))
        await eventually(lambda: ("p", "k1") in pools.state, 3, "first state")
        await server.stop()
        await asyncio.sleep(0.5)
        assert pools.state[("p", "k1")] == ("revoked", None)
        await server.start()
        await eventually(lambda: b.connected, 10, "reconnect")

        async def write() -> bool:
            try:
                await (await keys_bucket(b)).put("p.k2", ks(bus, "k2", "revoked"))
            except Exception:
                return False
            return True
        deadline = time.monotonic() + 10
        while not await write():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        await eventually(lambda: ("p", "k2") in pools.state, 10, "state written after the restart")
        assert pools.state[("p", "k1")] == ("revoked", None)
    finally:
        await w.stop()
        await b.close()
        await server.stop()
