"""Infrastructure outages under steady traffic: NATS down, Postgres down, the registry stopped and restarted.

Every service of the stack runs in this process and reaches NATS and Postgres through a FaultProxy.
Traffic is the openai SDK at a fixed rate (every other request streamed). For each outage the test
asserts what the clients saw, then that every usage event the gateway published reached the budget
tables exactly once (``System.ledger``) and that nothing is left pending in the usage consumer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from aigw_gateway.app import RECORDER
from aigw_testing.faultproxy import FaultProxy
from aigw_testing.system import Ledger, Outcome, System, Traffic
from aigw_testing.wait import eventually

pytestmark = pytest.mark.reliability
RATE = 10.0  # requests per second
OUTAGES = [3.0, pytest.param(30.0, marks=[pytest.mark.soak, pytest.mark.timeout(300)])]  # seconds; 30 s in make soak


async def _settled(s: System, n: int, timeout: float, since: float) -> tuple[float, Ledger]:
    """The ledger once every event is applied, and how long after ``since`` (monotonic) that was."""
    ledger = await s.ledger(expect=n, timeout=timeout)
    took = time.monotonic() - since
    await eventually(lambda: _no_backlog(s), 10, "an empty usage consumer")
    return took, ledger


async def _no_backlog(s: System) -> bool:
    return await s.consumer_backlog() == (0, 0)


async def _outage(s: System, proxy: FaultProxy, seconds: float, *, during: Callable[[], Awaitable[None]] | None = None,
                  sample: Callable[[], None] | None = None) -> tuple[Traffic, list[Outcome], float, Ledger]:
    """Steady traffic; ``proxy`` down for ``seconds`` (``during`` runs once it is down, ``sample`` every 0.2 s),
    then up again. Every request must succeed and every usage event be applied once; returns how long after the
    proxy came back the last event was applied (measured after the traffic stopped: an upper bound)."""
    m = await s.member("steady")
    traffic = Traffic(s.openai(m.token), RATE).start()
    await asyncio.sleep(1.0)
    await proxy.down()
    t_down = time.monotonic()
    if during is not None:
        await during()
    while time.monotonic() - t_down < seconds:
        await asyncio.sleep(0.2)
        if sample is not None:
            sample()
    await proxy.up()
    t_up = time.monotonic()
    await asyncio.sleep(1.5)
    outcomes = await traffic.stop()
    failed = traffic.failures()
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed during the outage: {failed[:3]}"
    took, ledger = await _settled(s, len(outcomes), 60 + seconds, t_up)
    assert ledger.by_status() == {"ok": len(outcomes)}, ledger.by_status()
    return traffic, outcomes, took, ledger


async def nats_outage(start_system, reliability, seconds: float) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system()
    recorder = s.app["gateway"][RECORDER]
    peak = [0]
    traffic, outcomes, took, ledger = await _outage(
        s, s.nats, seconds, sample=lambda: peak.__setitem__(0, max(peak[0], recorder.spool.size)))
    assert peak[0] > 0, "usage events never went to the spool while NATS was down"
    assert not recorder.spool.pending() and recorder.spool.dropped == 0
    during = sum(1 for o in outcomes if 1.0 <= o.at <= 1.0 + seconds)
    reliability.record(
        f"NATS down {seconds:g} s under steady traffic",
        client=f"{len(outcomes)} of {len(outcomes)} requests answered whole ({during} during the outage); "
               f"p99 {traffic.p(0.99) * 1000:.0f} ms",
        usage=f"{ledger.events} events of {len(outcomes)} interceptions, each applied once; spool replayed, 0 dropped",
        measured=f"spool peaked at {peak[0]} B; every event applied ≤ {took:.1f} s after NATS returned")


@pytest.mark.parametrize("seconds", OUTAGES)
async def test_nats_down_under_steady_traffic(start_system, reliability, seconds: float) -> None:  # type: ignore[no-untyped-def]
    await nats_outage(start_system, reliability, seconds)


async def postgres_outage(start_system, reliability, seconds: float) -> None:  # type: ignore[no-untyped-def]
    from aigw_budget.api import SERVICE

    s: System = await start_system()

    async def control_plane_says_retry() -> None:  # 503 + Retry-After, never 500, while its database is gone
        r = await s.owner.call("GET", s.url("budget", "/api/v2/ai/usage"))
        assert r.status == 503 and r.headers.get("Retry-After"), r

    _traffic, outcomes, took, ledger = await _outage(s, s.pg, seconds, during=control_plane_says_retry)
    counts = s.app["budget"][SERVICE].consumer.outcomes
    naks = counts.labels("retry")._value.get() + counts.labels("deferred")._value.get()
    assert naks > 0, "the budget consumer never deferred an event: Postgres was not really down for it"
    reliability.record(
        f"Postgres down {seconds:g} s under steady traffic",
        client=f"{len(outcomes)} of {len(outcomes)} requests answered whole (the gateway needs no Postgres); "
               f"budget API 503 + Retry-After meanwhile",
        usage=f"{ledger.events} events of {len(outcomes)} interceptions, each applied once after redelivery",
        measured=f"{naks:.0f} deliveries deferred; every event applied ≤ {took:.1f} s after Postgres returned")


@pytest.mark.parametrize("seconds", OUTAGES)
async def test_postgres_down_under_steady_traffic(start_system, reliability, seconds: float) -> None:  # type: ignore[no-untyped-def]
    await postgres_outage(start_system, reliability, seconds)


async def test_registry_stopped_and_restarted(start_system, reliability) -> None:  # type: ignore[no-untyped-def]
    """Known tokens and providers are in the gateway's memory: traffic goes on. A token the gateway has not
    seen cannot be verified meanwhile (503, retryable, never a 401 that would make a client drop a good
    token); after the restart it works, and a provider created after the restart is served."""
    s: System = await start_system()
    m = await s.member("steady")
    fresh = await s.member("fresh")  # never used before the outage
    traffic = Traffic(s.openai(m.token), RATE).start()
    await asyncio.sleep(1.0)
    await s.stop_service("registry")
    await asyncio.sleep(1.0)
    import openai

    with pytest.raises(openai.APIStatusError) as e:
        await s.openai(fresh.token).chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 503, e.value
    await asyncio.sleep(1.0)
    t_restart = time.monotonic()
    await s.start_service("registry")
    restart_took = time.monotonic() - t_restart
    r = await s.openai(fresh.token).chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content
    await s.owner.ok("POST", s.url("registry", "/api/v2/ai/providers"), {
        "name": "late", "type": "openai", "base_url": s.up.rewrite(s.upstream.url) + "/v1", "keys": ["zzlate-key-123456"]})
    late = s.openai(m.token, provider="late")

    async def served() -> bool:
        try:
            return bool((await late.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}]))
                        .choices[0].message.content)
        except openai.NotFoundError:
            return False

    follow = await eventually(served, 5, "the gateway to serve a provider created after the restart", interval=0.1)
    outcomes = await traffic.stop()
    failed = traffic.failures()
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed while the registry was away: {failed[:3]}"
    n = len(outcomes) + 2  # the fresh token's request after the restart, and the one on the late provider
    _took, ledger = await _settled(s, n, 30, time.monotonic())
    assert ledger.by_status() == {"ok": n}, ledger.by_status()
    reliability.record(
        "Registry stopped 2 s and restarted",
        client=f"{len(outcomes)} of {len(outcomes)} requests with a known token answered; an unseen token got 503 "
               f"(not 401) until the restart, then 200",
        usage=f"{ledger.events} events of {n} interceptions, each applied once",
        measured=f"registry ready {restart_took:.1f} s after start; a new provider served {follow:.2f} s after creation")
