"""The gateway under change and failure: provider hot swap under load, NATS going away, the usage spool."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import aiohttp
import pytest

from aigw_common.bus import Bus, Subjects
from aigw_common.schemas import AnyUsageEvent, InterceptionEnded
from aigw_common.usage_wire import usage_events
from aigw_gateway.app import RECORDER, create_app
from aigw_testing.faultproxy import FaultProxy
from aigw_testing.upstream import MockUpstream
from aigw_testing.wait import eventually

CHAT_BODY = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


async def post_chat(s: aiohttp.ClientSession, url: str, token: str, stream: bool = False) -> int:
    async with s.post(url + "/openai/v1/chat/completions", json={**CHAT_BODY, "stream": stream},
                      headers={"Authorization": f"Bearer {token}"}) as r:
        await r.read()
        return r.status


async def raw_stream(bus: Bus) -> list[tuple[str, bytes]]:
    """(subject, payload) of every message in this test's usage stream."""
    sub = await bus.js.pull_subscribe(bus.subjects.usage_all, stream=bus.subjects.usage_stream)
    out: list[tuple[str, bytes]] = []
    with contextlib.suppress(TimeoutError):
        while True:
            msgs = await sub.fetch(200, timeout=0.5)
            out.extend((m.subject, m.data) for m in msgs)
            for m in msgs:
                await m.ack()
    await sub.unsubscribe()
    return out


async def stream_events(bus: Bus) -> list[AnyUsageEvent]:
    """Everything in the usage stream (what the budget service will consume)."""
    return [ev for _, data in await raw_stream(bus) for ev in usage_events(data)]


async def test_hot_swap_under_load_loses_no_request(gw):
    other = MockUpstream()
    await other.start()
    try:
        gw.upstream.play("openai/chatcompletions/simple")
        other.play("openai/chatcompletions/simple")
        statuses: list[int] = []
        stop = asyncio.Event()

        async def load() -> None:
            async with aiohttp.ClientSession() as s:
                while not stop.is_set():
                    statuses.append(await post_chat(s, gw.url, gw.user.token, stream=len(statuses) % 2 == 0))

        workers = [asyncio.create_task(load()) for _ in range(8)]
        await asyncio.sleep(0.3)
        for i in range(6):  # flip the base URL back and forth, and re-key it, while traffic flows
            target = other if i % 2 == 0 else gw.upstream
            gw.registry.put_provider("openai", "openai", target.url + "/v1", [f"sk-rotated-{i}"])
            await gw.registry.publish_changed()
            await gw.wait_revision(timeout=1.0)  # live within one second
            before = len(target.requests)
            await asyncio.sleep(0.25)
            assert len(target.requests) > before, "the new upstream took no traffic"
        stop.set()
        await asyncio.gather(*workers)
        assert len(statuses) > 50
        assert set(statuses) == {200}, f"failed requests during swaps: {[s for s in statuses if s != 200]}"
    finally:
        await other.stop()


async def test_nats_outage_keeps_serving_and_loses_no_usage_event(apps, make_settings, registry, mock_upstream, bus,
                                                                  nats_url):
    p = urlsplit(nats_url)
    proxy = await FaultProxy.start_for(p.hostname, p.port)
    try:
        registry.put_provider("openai", "openai", mock_upstream.url + "/v1", ["sk-test-key-1"])
        user = registry.add_user()
        mock_upstream.play("openai/chatcompletions/simple")
        app = create_app(make_settings(AIGW_NATS_URL=proxy.rewrite(nats_url)))
        url = await apps.start(app)
        for _ in range(100):
            if app[RECORDER].bus.connected and registry.snapshot_requests:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        n = 0
        async with aiohttp.ClientSession() as s:
            for _ in range(5):
                assert await post_chat(s, url, user.token) == 200
                n += 1
            await proxy.down()  # NATS gone: providers and identity are in memory, usage goes to the spool
            for i in range(10):
                assert await post_chat(s, url, user.token, stream=i % 2 == 0) == 200
                n += 1
            # the publisher tries once its batch has lingered (Recorder.linger), finds NATS gone and spools
            await eventually(lambda: app[RECORDER].spool.pending(), 5, "usage spooled during the outage")
            await proxy.up()
            for _ in range(5):
                assert await post_chat(s, url, user.token) == 200
                n += 1
        events: list[AnyUsageEvent] = []
        for _ in range(100):
            events = await stream_events(bus)
            if sum(isinstance(e, InterceptionEnded) for e in events) >= n:
                break
            await asyncio.sleep(0.2)
        ended = [e for e in events if isinstance(e, InterceptionEnded)]
        assert len(ended) == n and len({e.interception_id for e in ended}) == n
        assert len({e.event_id for e in events}) == len(events) == 4 * n  # started, prompt, tokens, ended
        assert not app[RECORDER].spool.pending()
    finally:
        await proxy.close()


async def test_spool_survives_a_restart(apps, make_settings, registry, mock_upstream, bus, tmp_path):
    """Events spooled while NATS was unreachable are replayed by the next gateway process on the same data dir."""
    from aigw_common.schemas import InterceptionEnded as Ended
    from aigw_gateway.recorder import Recorder
    from aigw_gateway.spool import Spool

    spool_dir = tmp_path / "spool"
    dead = Bus(servers=("nats://127.0.0.1:1",), name="dead", subjects=Subjects(bus.subjects.prefix))
    rec = Recorder(dead, Spool(spool_dir, 1 << 20))
    await rec.start()
    for i in range(7):
        rec.emit(Ended(event_id=f"e{i}", interception_id=f"i{i}", at=1.0, status="ok"))
    await rec.stop()
    await dead.close()
    assert Spool(spool_dir, 1 << 20).pending()

    rec2 = Recorder(bus, Spool(spool_dir, 1 << 20))
    await rec2.start()
    for _ in range(100):
        if not rec2.spool.pending():
            break
        await asyncio.sleep(0.05)
    await rec2.stop()
    events = await stream_events(bus)
    assert sorted(e.event_id for e in events) == [f"e{i}" for i in range(7)]


def test_spool_is_bounded(tmp_path):
    from aigw_gateway.spool import Spool

    s = Spool(tmp_path, 1000)
    accepted = sum(s.append("x.usage.ended", f"id{i}", b'{"k":"' + b"v" * 50 + b'"}') for i in range(100))
    assert 0 < accepted < 100 and s.dropped == 100 - accepted
    assert s.size <= 1000
    recs = [r for seg in s.segments() for r in s.read(seg)]
    assert [r.msg_id for r in recs] == [f"id{i}" for i in range(accepted)]


@pytest.mark.parametrize("status", [500, 503])
async def test_upstream_errors_are_relayed(gw, status):
    gw.upstream.on_key("sk-test-key-1", status, body={"error": {"message": "boom", "type": "server_error"}})
    async with aiohttp.ClientSession() as s:
        assert await post_chat(s, gw.url, gw.user.token) == status
    [ended] = await gw.usage.wait_ended(1)
    assert ended.status == "error" and ended.status_code == status and "boom" in (ended.error or "")


async def test_dead_upstream_is_502(gw):
    gw.registry.put_provider("openai", "openai", "http://127.0.0.1:1/v1", ["sk-test-key-1"])
    await gw.registry.publish_changed()
    await gw.wait_revision()
    async with aiohttp.ClientSession() as s, s.post(gw.url + "/openai/v1/chat/completions", json=CHAT_BODY,
                                                    headers={"Authorization": f"Bearer {gw.user.token}"}) as r:
        assert r.status == 502
        assert "unreachable" in (await r.json())["error"]["message"]


async def test_midstream_upstream_break_is_an_in_band_error(gw):
    from aiohttp import web

    async def broken(request: web.Request, _body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message",'
                         b'"role":"assistant","model":"claude","content":[],"usage":{"input_tokens":5,"output_tokens":1}}}\n\n')
        request.transport.close()  # the upstream dies mid-stream
        return resp

    gw.upstream.handler = broken
    async with aiohttp.ClientSession() as s, s.post(
        gw.url + "/anthropic/v1/messages", headers={"X-Api-Key": gw.user.token},
        json={"model": "claude-sonnet-4-0", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as r:
        assert r.status == 200
        body = await r.read()
    assert b"event: error" in body
    [ended] = await gw.usage.wait_ended(1)
    assert ended.status == "error" and ended.error


async def test_lost_ack_resends_the_group_and_dedup_keeps_it_exactly_once(bus, tmp_path):
    from aigw_common.schemas import InterceptionEnded as Ended
    from aigw_gateway.recorder import Recorder
    from aigw_gateway.spool import Spool

    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 20), ack_timeout=0.3)
    real_on_ack = rec._on_ack
    dropped = []

    async def lossy(data, m):  # the first acknowledgement is lost on the way back
        if not dropped:
            dropped.append(m)
            return
        await real_on_ack(data, m)

    rec._on_ack = lossy  # type: ignore[method-assign]
    await rec.start()
    for i in range(5):
        rec.emit(Ended(event_id=f"ev{i}", interception_id=f"i{i}", at=1.0, status="ok"))
    for _ in range(100):
        if rec.published == 5 and rec.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    await rec.stop()
    assert dropped and rec.published == 5 and rec.spooled == 0
    events = await stream_events(bus)
    assert sorted(e.event_id for e in events) == [f"ev{i}" for i in range(5)]
