"""Postgres failover under steady traffic: a primary with a streaming standby (the machine's binaries), every
service on the multi-host URL ``postgresql://primary,standby/aigw?target_session_attrs=read-write``.

The primary stops (fast shutdown: every session is cut, transactions in flight with it); after a while the
standby is promoted. Meanwhile the gateways serve from memory, and the budget consumer defers (naks) the usage
events it cannot write. Once the standby is the primary the services find it by themselves (the pools'
next connections go to the host that accepts writes): the control plane writes again, the deferred events
are applied, and each usage event is recorded exactly once (``System.ledger``).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from aigw_testing.pgpair import PgPair
from aigw_testing.system import System, Traffic
from aigw_testing.wait import eventually

pytestmark = pytest.mark.reliability
RATE = 10.0
OUTAGES = [3.0, pytest.param(30.0, marks=[pytest.mark.soak, pytest.mark.timeout(600)])]


@pytest.mark.parametrize("seconds", OUTAGES)
@pytest.mark.timeout(300)
async def test_postgres_fails_over_to_its_standby_under_steady_traffic(pg_pair: PgPair, start_system,  # type: ignore[no-untyped-def]
                                                                       reliability, seconds: float) -> None:
    from aigw_budget.api import SERVICE

    s: System = await start_system(database_url=pg_pair.url("aigw"))
    m = await s.member("steady")
    # the gateway knows the token before the database goes (an unseen one cannot be verified meanwhile)
    await s.openai(m.token).chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])
    traffic = Traffic(s.openai(m.token), RATE).start()
    await asyncio.sleep(1.0)
    await pg_pair.primary.stop()
    t_down = time.monotonic()
    await asyncio.sleep(seconds)
    promoted = await pg_pair.promote()
    t_promoted = time.monotonic()

    async def control_plane_writes() -> bool:  # the registry commits on the new primary
        r = await s.owner.call("POST", s.url("registry", "/api/v2/users"),
                               {"username": f"after-{time.monotonic_ns()}", "roles": ["member"]})
        return r.status == 201

    writes = await eventually(control_plane_writes, 30, "the registry to write on the new primary", interval=0.2)
    fresh = await s.member("fresh")  # a token the gateway has never seen: verified against the new primary
    r = await s.openai(fresh.token).chat.completions.create(model="gpt-4.1",
                                                           messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content
    usage = await s.owner.call("GET", s.url("budget", "/api/v2/ai/usage"))
    assert usage.status == 200, usage
    await asyncio.sleep(1.0)
    outcomes = await traffic.stop()
    failed = traffic.failures()
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed during the failover: {failed[:3]}"
    n = len(outcomes) + 2  # and the warm-up and the fresh token's requests
    ledger = await s.ledger(expect=n, timeout=60 + seconds)
    applied = time.monotonic() - t_promoted
    assert ledger.by_status() == {"ok": n}, ledger.by_status()
    counts = s.app["budget"][SERVICE].consumer.outcomes
    naks = counts.labels("retry")._value.get() + counts.labels("deferred")._value.get()
    assert naks > 0, "the budget consumer never deferred an event: the failover went unnoticed"
    during = sum(1 for o in outcomes if 1.0 <= o.at <= 1.0 + (t_promoted - t_down))
    reliability.record(
        f"Postgres primary stopped, standby promoted after {seconds:g} s",
        client=f"{len(outcomes)} of {len(outcomes)} requests answered whole ({during} during the failover); "
               f"a token never seen before verified after it",
        usage=f"{ledger.events} events of {n} interceptions, each applied once; {naks:.0f} deliveries deferred",
        measured=f"promotion {promoted:.1f} s; the registry wrote on the new primary {writes:.1f} s after it; "
                 f"every event applied ≤ {applied:.1f} s after it")
