"""The service on real NATS and Postgres: the usage consumer (dedup, poison, outage) and the lease/state bus API."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from aigw_budget.api import SERVICE
from aigw_budget.app import create_app
from aigw_budget.periods import month_of
from aigw_common.bus import Bus, encode
from aigw_common.schemas import (
    BudgetLeaseReply,
    BudgetLeaseRequest,
    BudgetSnapshot,
    BudgetSnapshotRequest,
    BudgetState,
    LeaseItem,
)
from aigw_testing.faultproxy import FaultProxy
from aigw_testing.registry_stub import RegistryStub


async def publish(bus: Bus, events: list, *, fresh_ids: bool = False) -> None:  # type: ignore[type-arg]
    """As the gateway does: JetStream with the event id as Nats-Msg-Id (fresh_ids defeats the broker's dedup window)."""
    for e in events:
        mid = uuid.uuid4().hex if fresh_ids else e.event_id
        await bus.js_publish(bus.subjects.usage(e.__struct_config__.tag.split(".")[1]), e, msg_id=mid)


def batch(ev, n: int, user: str = "u1", groups: list[str] | None = None):  # type: ignore[no-untyped-def]
    out = []
    for i in range(n):
        iid = f"i{i}-{uuid.uuid4().hex[:6]}"
        # deliberately out of order: tokens and end before start
        out += [ev.tokens(iid, 0, input_tokens=1000, output_tokens=100), ev.ended(iid),
                ev.started(iid, user, groups if groups is not None else ["g1"])]
    return out


async def count(conn_url: str, sql: str) -> int:
    c = await asyncpg.connect(conn_url, server_settings={"search_path": "budget"})
    try:
        return await c.fetchval(sql)
    finally:
        await c.close()


async def test_events_replayed_twice_are_counted_once(budget, bus: Bus, ev, eventually, database_url: str) -> None:  # type: ignore[no-untyped-def]
    events = batch(ev, 20)
    await publish(bus, events)
    await publish(bus, events, fresh_ids=True)  # a replay the broker cannot deduplicate
    await publish(bus, events[::-1], fresh_ids=True)
    consumer = budget.svc.consumer
    await eventually(lambda: consumer.outcomes.labels("duplicate")._value.get() == 120, what="all replays consumed")
    assert consumer.outcomes.labels("recorded")._value.get() == 60
    assert await count(database_url, "SELECT count(*) FROM interceptions WHERE status = 'ok'") == 20
    # gpt-4o-mini: 1000 in at $0.15/M + 100 out at $0.60/M = 150 + 60 micro-USD each
    assert await count(database_url, "SELECT sum(spent_micros) FROM spend WHERE scope = 'user'") == 20 * 210
    assert await count(database_url, "SELECT sum(input_tokens) FROM interceptions") == 20_000


async def test_malformed_event_is_terminated_and_consumption_continues(budget, bus: Bus, ev, eventually,  # type: ignore[no-untyped-def]
                                                                        database_url: str) -> None:
    await bus.js.publish(bus.subjects.usage("tokens"), b'{"kind":"usage.tokens","v":1,"oops":true}')
    await bus.js.publish(bus.subjects.usage("tokens"), b"not json")
    await publish(bus, batch(ev, 1))
    consumer = budget.svc.consumer
    await eventually(lambda: consumer.outcomes.labels("recorded")._value.get() == 3, what="good events recorded")
    assert consumer.outcomes.labels("malformed")._value.get() == 2
    info = await bus.js.consumer_info(bus.subjects.usage_stream, consumer.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0  # nothing left to redeliver


async def run_outage(bus: Bus, ev, eventually, make_settings, database_url: str, apps, seconds: float) -> None:  # type: ignore[no-untyped-def]
    host, port = database_url.split("@")[1].split("/")[0].split(":")
    async with FaultProxy(host, int(port)) as proxy:
        app = create_app(make_settings(AIGW_DATABASE_URL=proxy.rewrite(database_url)))
        await apps.start(app)
        consumer = app[SERVICE].consumer
        await asyncio.wait_for(consumer.ready.wait(), 10)
        before = batch(ev, 10)
        await publish(bus, before)
        await eventually(lambda: consumer.outcomes.labels("recorded")._value.get() == 30, what="events before outage")
        await proxy.down()
        during = batch(ev, 30)
        t0 = time.monotonic()
        publisher = asyncio.create_task(publish_slowly(bus, during, seconds * 0.8))
        await eventually(lambda: consumer.outcomes.labels("retry")._value.get() > 0, timeout=seconds,
                         what="a nak while Postgres is down")
        await publisher
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        await proxy.up()
        await eventually(lambda: consumer.outcomes.labels("recorded")._value.get() == 120, timeout=60,
                         what="every event recorded after the outage")
    ids = {e.interception_id for e in before + during}
    c = await asyncpg.connect(database_url, server_settings={"search_path": "budget"})
    try:
        rows = await c.fetch("SELECT id, status, started_at, cost_micros FROM interceptions")
    finally:
        await c.close()
    assert {r["id"] for r in rows} == ids
    assert all(r["status"] == "ok" and r["started_at"] is not None and r["cost_micros"] == 210 for r in rows)


async def publish_slowly(bus: Bus, events: list, over: float) -> None:  # type: ignore[type-arg]
    for e in events:
        await publish(bus, [e])
        await asyncio.sleep(over / len(events))


async def test_postgres_outage_loses_nothing(bus: Bus, ev, eventually, make_settings, database_url: str, apps) -> None:  # type: ignore[no-untyped-def]
    await RegistryStub(bus, make_settings().bus_keys()).start()
    await run_outage(bus, ev, eventually, make_settings, database_url, apps, seconds=4)


@pytest.mark.soak
@pytest.mark.timeout(240)
async def test_postgres_outage_30s_loses_nothing(bus: Bus, ev, eventually, make_settings, database_url: str, apps) -> None:  # type: ignore[no-untyped-def]
    await RegistryStub(bus, make_settings().bus_keys()).start()
    await run_outage(bus, ev, eventually, make_settings, database_url, apps, seconds=30)


async def test_lease_snapshot_and_state_over_nats(budget, bus: Bus, eventually) -> None:  # type: ignore[no-untyped-def]
    states: list[BudgetState] = []

    async def on_state(st: BudgetState, _m: object) -> None:
        states.append(st)

    await bus.subscribe(bus.subjects.budget_state, BudgetState, on_state)
    await bus.flush()
    status, body = await budget.admin.call("PUT", "/api/v2/groups/grp-eng/ai/budget", {"spend_limit_micros": 5_000_000})
    assert status == 200, body
    await eventually(lambda: any(s.subject_id == "grp-eng" and s.limit_micros == 5_000_000 for s in states))
    snap = await bus.request(bus.subjects.budget_snapshot, BudgetSnapshotRequest(), BudgetSnapshot)
    assert [(s.scope, s.subject_id, s.limit_micros) for s in snap.states] == [("group", "grp-eng", 5_000_000)]
    assert snap.prices and any(p.model == "gpt-4o" for p in snap.prices)
    period = month_of(time.time())
    req = BudgetLeaseRequest(gateway_id="gwX", items=[LeaseItem(
        scope="group", subject_id="grp-eng", period_start=period.start.timestamp(), seq=1, consumed_micros=0,
        inflight_micros=0, target_micros=1_000_000, need_micros=1_000_000)])
    reply = await bus.request(bus.subjects.budget("lease"), req, BudgetLeaseReply)
    g = reply.grants[0]
    assert g.granted_micros == 1_000_000 and g.expires_in > 0 and g.period_end == period.end.timestamp()
    status, _ = await budget.admin.call("DELETE", "/api/v2/groups/grp-eng/ai/budget")
    assert status == 204
    await eventually(lambda: any(s.subject_id == "grp-eng" and s.deleted for s in states))
    # a request of the wrong type on the lease subject gets no reply rather than crashing the responder
    assert bus.nc is not None
    await bus.nc.publish(bus.subjects.budget("lease"), encode(BudgetSnapshotRequest()))


async def test_a_request_record_is_applied_whole_and_a_bad_event_in_it_alone_is_dropped(  # type: ignore[no-untyped-def]
        budget, bus: Bus, ev, eventually, database_url: str) -> None:
    from aigw_common.bus import encode
    from aigw_common.schemas import PromptRecorded
    from aigw_common.usage_wire import record_payload

    good = [ev.started("rec-1", "u-rec", ["g1"]), ev.tokens("rec-1", 0, input_tokens=1000, output_tokens=100),
            ev.ended("rec-1")]
    poison = PromptRecorded(event_id="rec-1-p", interception_id="rec-1", at=time.time(), prompt="nul\x00byte")
    payload = record_payload("rec.rec-1", [encode(e) for e in [good[0], poison, *good[1:]]])
    await bus.js.publish(bus.subjects.usage("record"), payload, headers={"Nats-Msg-Id": "rec.rec-1"})
    await bus.js.publish(bus.subjects.usage("record"), payload)  # the same record again: every event a duplicate
    only_poison = record_payload("rec.rec-2", [encode(poison)])
    await bus.js.publish(bus.subjects.usage("record"), only_poison)
    consumer = budget.svc.consumer
    await eventually(lambda: consumer.outcomes.labels("duplicate")._value.get() == 1, what="the replayed record")
    await eventually(lambda: consumer.outcomes.labels("rejected")._value.get() == 1, what="the all-poison record")
    assert consumer.outcomes.labels("recorded")._value.get() == 1
    assert await count(database_url, "SELECT count(*) FROM interceptions WHERE id = 'rec-1' AND status = 'ok'") == 1
    assert await count(database_url, "SELECT sum(spent_micros) FROM spend WHERE subject_id = 'u-rec'") == 210
    assert await count(database_url, "SELECT count(*) FROM prompts WHERE interception_id = 'rec-1'") == 0
    info = await bus.js.consumer_info(bus.subjects.usage_stream, consumer.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_spent_fetch_deadline_is_no_nats_trouble(budget) -> None:  # type: ignore[no-untyped-def]
    """nats-py's fetch raises asyncio's TimeoutError (an OSError, not its own) when a short deadline is spent;
    the batch in hand must still be processed, not dropped for a re-subscribe (it would wait out ack_wait)."""
    consumer = budget.svc.consumer

    class SpentDeadline:
        async def fetch(self, n: int, timeout: float) -> list[object]:
            raise TimeoutError

    class Gone:
        async def fetch(self, n: int, timeout: float) -> list[object]:
            raise OSError("connection reset")

    assert await consumer._more(SpentDeadline(), 10) == []
    assert await consumer._more(Gone(), 10) == []
