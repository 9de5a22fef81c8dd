"""At most one message per request: a finished request's usage events travel in one ``usage.record`` (one
publish, one stream entry, one delivery to the budget), shared with the requests queued at the same time as far
as ``max_payload`` allows; a long request's start goes out early on its own, and a group that would not fit the
server's ``max_payload`` falls back to one message per event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.util._once import Once

from aigw_common.bus import Bus
from aigw_common.schemas import (
    InterceptionEnded,
    PromptRecorded,
    ToolUsage,
    UsageEvent,
    UsageRecord,
)
from aigw_common.usage_wire import record_payload, usage_events
from aigw_gateway.recorder import Recorder, RecordPolicy
from aigw_gateway.spool import Spool
from aigw_testing.wait import eventually

from .test_recording_sizes import _chat, _gateway
from .test_resilience import raw_stream


def test_record_payload_is_the_struct_encoding() -> None:
    evs = [PromptRecorded(event_id="i.1", interception_id="i", at=1.5, prompt='say "hi" \u00e9'),
           InterceptionEnded(event_id="i.2", interception_id="i", at=2.0, status="ok", status_code=200)]
    raw = record_payload("rec.i.1", [msgspec.json.encode(e) for e in evs])
    assert msgspec.json.decode(raw, type=UsageRecord) == UsageRecord(record_id="rec.i.1", events=evs)
    assert usage_events(raw) == evs
    assert usage_events(msgspec.json.encode(evs[0])) == [evs[0]]


async def test_a_finished_request_is_one_stream_message(apps, make_settings, mock_upstream, nats_url) -> None:  # type: ignore[no-untyped-def]
    mock_upstream.play("openai/chatcompletions/simple")
    bus, app, url, user, usage = await _gateway(apps, make_settings, mock_upstream, nats_url)
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(3):
                assert await _chat(s, url, user.token, f"question {i}") == 200
        await usage.wait_ended(3, timeout=15)
        stored = await raw_stream(bus)
        # one record per request, or fewer: requests that end close together share one (the next test)
        assert 1 <= len(stored) <= 3 and {subj.rsplit(".", 1)[1] for subj, _ in stored} == {"record"}
        by_request: dict[str, list[UsageEvent]] = {}
        for _, data in stored:
            for e in usage_events(data):
                by_request.setdefault(e.interception_id, []).append(e)
        assert len(by_request) == 3
        for evs in by_request.values():
            kinds = [type(e).__name__ for e in evs]
            assert kinds == ["InterceptionStarted", "PromptRecorded", "TokenUsage", "InterceptionEnded"]
            assert len({e.event_id for e in evs}) == 4
    finally:
        await apps.stop(app)
        await bus.close()


async def test_a_group_over_max_payload_goes_one_event_at_a_time(bus: Bus, tmp_path: Path) -> None:
    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 22))
    await rec.start()
    try:
        half = rec.payload_limit() // 2 + 1000  # each event fits alone, two do not
        group = [ToolUsage(event_id=f"i.{n}", interception_id="i", at=1.0, name="t", arguments="",
                           error="e" * half) for n in (1, 2)]
        group.append(InterceptionEnded(event_id="i.3", interception_id="i", at=1.0, status="ok"))
        rec.emit_group(group)
        rec.emit_group([InterceptionEnded(event_id="j.1", interception_id="j", at=1.0, status="ok")])
        await eventually(lambda: rec.published == 4, 10, "four messages acknowledged")
        stored = await raw_stream(bus)
        assert sorted(subj.rsplit(".", 1)[1] for subj, _ in stored) == ["ended", "ended", "tool", "tool"]
        assert sorted(e.event_id for _, d in stored for e in usage_events(d)) == ["i.1", "i.2", "i.3", "j.1"]
    finally:
        await rec.stop()


def _request(iid: str, prompt: str = "hi") -> list[UsageEvent]:
    return [PromptRecorded(event_id=f"{iid}.1", interception_id=iid, at=1.0, prompt=prompt),
            InterceptionEnded(event_id=f"{iid}.2", interception_id=iid, at=2.0, status="ok", status_code=200)]


async def _stored_with_headers(bus: Bus) -> list[tuple[str, dict[str, str], bytes]]:
    sub = await bus.js.pull_subscribe(bus.subjects.usage_all, stream=bus.subjects.usage_stream)
    out: list[tuple[str, dict[str, str], bytes]] = []
    with contextlib.suppress(TimeoutError):
        while True:
            for m in await sub.fetch(200, timeout=0.5):
                out.append((m.subject, dict(m.headers or {}), m.data))
                await m.ack()
    await sub.unsubscribe()
    return out


async def test_requests_queued_together_share_one_record(bus: Bus, tmp_path: Path) -> None:
    """Requests that end within one publisher turn cost the bus one message: one publish, one stream entry,
    one delivery to the budget; every event keeps its id, and the record's id is its first event's."""
    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 22))
    await rec.start()
    try:
        for iid in ("a", "b", "c"):
            rec.emit_group(_request(iid))
        await eventually(lambda: rec.published == 1 and rec.in_flight == 0, 10, "one message acknowledged")
        (subject, headers, data), = await _stored_with_headers(bus)
        assert subject == bus.subjects.usage("record") and headers["Nats-Msg-Id"] == "rec.a.1"
        assert msgspec.json.decode(data, type=UsageRecord).record_id == "rec.a.1"
        assert usage_events(data) == _request("a") + _request("b") + _request("c")
    finally:
        await rec.stop()


async def test_joined_records_stay_under_max_payload(bus: Bus, tmp_path: Path) -> None:
    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 22), policy=RecordPolicy(prompt_bytes=1 << 22))
    await rec.start()
    try:
        third = "p" * (rec.payload_limit() // 3)  # two requests fit one record, three do not
        for iid in ("a", "b", "c", "d", "e"):
            rec.emit_group(_request(iid, third))
        await eventually(lambda: rec.published == 3 and rec.in_flight == 0, 10, "three messages acknowledged")
        stored = await _stored_with_headers(bus)
        assert [h["Nats-Msg-Id"] for _, h, _ in stored] == ["rec.a.1", "rec.c.1", "rec.e.1"]
        assert all(len(d) <= rec.payload_limit() for _, _, d in stored)
        events = [e for _, _, d in stored for e in usage_events(d)]
        assert events == [e for iid in "abcde" for e in _request(iid, third)]  # in order, none cut
    finally:
        await rec.stop()


@pytest.fixture
def sdk_tracing() -> Iterator[None]:
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    provider = TracerProvider()
    trace.set_tracer_provider(provider)
    yield
    provider.shutdown()
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.mark.usefixtures("sdk_tracing")
async def test_a_traced_request_keeps_a_record_and_its_trace_context(bus: Bus, tmp_path: Path) -> None:
    """With tracing on, the budget continues each request's trace from its message's headers: a traced
    request is not joined with others (one message carries one trace context)."""
    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 22))
    await rec.start()
    try:
        tracer = trace.get_tracer("test")
        parents = []
        for iid in ("a", "b"):
            with tracer.start_as_current_span(iid) as span:
                parents.append(f"{span.get_span_context().trace_id:032x}")
                rec.emit_group(_request(iid))
        rec.emit_group(_request("c"))  # no span: nothing to carry, joins no one here (it is alone)
        await eventually(lambda: rec.published == 3 and rec.in_flight == 0, 10, "three messages acknowledged")
        stored = await _stored_with_headers(bus)
        assert [h["Nats-Msg-Id"] for _, h, _ in stored] == ["rec.a.1", "rec.b.1", "rec.c.1"]
        assert [h.get("traceparent", "").split("-")[1:2] for _, h, _ in stored] == [[parents[0]], [parents[1]], []]
    finally:
        await rec.stop()


async def test_a_quiet_gateway_lingers_and_a_busy_one_coalesces(bus: Bus, tmp_path: Path) -> None:
    """After a quiet spell the first event waits ``linger`` for company, so events spread over it go as one
    message with one ack; an event within ``coalesce`` of the last batch waits only for the rest of it; and
    ``stop`` publishes a batch that is still waiting instead of spooling it."""
    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 22), coalesce=0.05, linger=0.6)
    await rec.start()
    loop = asyncio.get_running_loop()
    sent: list[float] = []
    real_send = rec._send

    async def send(items, attempts, queued):  # type: ignore[no-untyped-def]
        sent.append(loop.time())
        await real_send(items, attempts, queued)

    rec._send = send  # type: ignore[method-assign]
    try:
        t0 = loop.time()
        for n in range(3):  # spread over 0.2 s after a quiet spell: one message
            rec.emit(InterceptionEnded(event_id=f"q{n}.1", interception_id=f"q{n}", at=1.0, status="ok"))
            await asyncio.sleep(0.1)
        await eventually(lambda: rec.published == 3, 5, "the three events acknowledged")
        assert len(sent) == 1 and 0.5 <= sent[0] - t0 < 1.5, [x - t0 for x in sent]
        rec.emit(InterceptionEnded(event_id="b.1", interception_id="b", at=1.0, status="ok"))  # right behind it
        await eventually(lambda: rec.published == 4, 5, "the next event acknowledged")
        assert len(sent) == 2 and sent[1] - sent[0] < 0.3, [x - t0 for x in sent]  # coalesce, not linger
        await asyncio.sleep(0.2)
        rec.emit(InterceptionEnded(event_id="s.1", interception_id="s", at=1.0, status="ok"))
        await asyncio.sleep(0.05)  # the publisher holds it, lingering
    finally:
        await rec.stop()
    assert rec.published == 5 and rec.spooled == 0


async def test_stop_spools_a_publish_that_was_refused_instead_of_waiting_for_its_ack(bus: Bus, tmp_path: Path) -> None:
    """A publish answered with no PubAck (here: no stream, so no responders) will never be acked: ``stop`` spools
    it at once rather than waiting out its deadline (5 s) for an ack that cannot come."""
    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 22), linger=0.0)
    await rec.start()
    await bus.js.delete_stream(bus.subjects.usage_stream)
    rec.emit(InterceptionEnded(event_id="r.1", interception_id="r", at=1.0, status="ok"))
    await eventually(lambda: rec.in_flight == 1, 5, "the event published")
    await asyncio.sleep(0.2)  # its answer (no responders) comes back from the local server meanwhile
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await rec.stop()
    assert loop.time() - t0 < 1.0
    assert rec.published == 0 and rec.spooled == 1
