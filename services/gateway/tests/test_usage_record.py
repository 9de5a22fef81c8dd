"""One message per request: a finished request's usage events travel as one ``usage.record`` (one publish, one
stream entry, one delivery to the budget), a long request's start goes out early on its own, and a group that
would not fit the server's ``max_payload`` falls back to one message per event."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgspec

from aigw_common.bus import Bus
from aigw_common.schemas import InterceptionEnded, PromptRecorded, ToolUsage, UsageRecord
from aigw_common.usage_wire import record_payload, usage_events
from aigw_gateway.recorder import Recorder
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
        assert [subj.rsplit(".", 1)[1] for subj, _ in stored] == ["record"] * 3
        for _, data in stored:
            kinds = [type(e).__name__ for e in usage_events(data)]
            assert kinds == ["InterceptionStarted", "PromptRecorded", "TokenUsage", "InterceptionEnded"]
            evs = usage_events(data)
            assert len({e.event_id for e in evs}) == 4 and len({e.interception_id for e in evs}) == 1
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
