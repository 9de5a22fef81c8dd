"""Recording never dies: oversized prompts and tool arguments are cut to size, publish failures are spooled, a
missing stream is re-created, and the recorder's tasks survive whatever happens to one event.

The oversized-prompt tests run against a real ``nats-server`` started with a small ``max_payload``, so the
server's limit (read from the connection) is what the gateway must fit, not a number of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest

from aigw_common.bus import Bus, NoStream, Subjects
from aigw_common.embedded import find_nats_server, free_port, log_tail, stop_process
from aigw_common.schemas import AnyUsageEvent, InterceptionEnded, PromptRecorded, ToolUsage
from aigw_gateway.app import RECORDER, create_app
from aigw_gateway.recorder import HEADER_ROOM, Recorder, RecordPolicy, cut_utf8, fit_event
from aigw_gateway.spool import Spool
from aigw_testing.buskeys import auth_for
from aigw_testing.registry_stub import RegistryStub
from aigw_testing.upstream import MockUpstream
from aigw_testing.usage import UsageCollector
from aigw_testing.wait import eventually

from .test_resilience import stream_events

SMALL_PAYLOAD = 128 * 1024


# ------------------------------------------------------------------ pure sizing


def test_cut_utf8_never_splits_a_character() -> None:
    text = "añ€😀" * 1000  # 1, 2, 3 and 4 bytes per character
    for limit in range(0, 40):
        cut = cut_utf8(text, limit)
        assert len(cut.encode()) <= limit and text.startswith(cut)
        assert len(cut.encode()) > limit - 4  # the longest prefix that fits
    assert cut_utf8("short", 100) == "short"


def test_fit_event_cuts_the_longest_text_until_it_fits() -> None:
    from aigw_common.bus import encode

    ev = ToolUsage(event_id="e", interception_id="i", at=1.0, name="n" * 5000, arguments="€" * 300_000,
                   error="x" * 70_000)
    data = encode(ev)
    fitted = fit_event(ev, data, 60_000)
    assert fitted is not None
    out, raw = fitted
    assert len(raw) <= 60_000 and raw == msgspec.json.encode(out)
    assert out.truncated and out.name == ev.name  # the short field kept whole
    assert ev.arguments.startswith(out.arguments) and ev.error.startswith(out.error or "")
    assert fit_event(ev, data, len(data)) == (ev, data)  # nothing to do
    assert fit_event(ev, data, 50) is None  # the non-text part alone is larger


# ------------------------------------------------------------------ a private nats-server with a small max_payload


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
async def small_nats(tmp_path: Path) -> AsyncIterator[str]:
    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary")
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\nmax_payload: {SMALL_PAYLOAD}\n'
                    f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n')
    log = tmp_path / "nats.log"
    proc = _spawn([str(binary), "-c", str(conf)], log)
    url = f"nats://127.0.0.1:{port}"
    try:
        probe = Bus(servers=(url,), name="probe")
        await probe.start(wait=10)
        assert probe.connected, f"nats-server did not start:\n{log_tail(log)}"
        assert probe.max_payload == SMALL_PAYLOAD  # read from the server's INFO
        await probe.close()
        yield url
    finally:
        await stop_process(proc, 15, 10, "nats")


async def _gateway(apps, make_settings, mock_upstream: MockUpstream, nats: str, **env: str):  # type: ignore[no-untyped-def]
    settings = make_settings(AIGW_NATS_URL=nats, **env)
    bus = Bus(servers=(nats,), name="test", subjects=Subjects(settings.bus_prefix), auth=auth_for(settings))
    await bus.start(wait=5)
    registry = await RegistryStub(bus, settings.bus_keys()).start()
    registry.put_provider("openai", "openai", mock_upstream.url + "/v1", ["sk-test-key-1"])
    user = registry.add_user(roles=["member"])
    usage = await UsageCollector(bus).start()
    app = create_app(settings)
    url = await apps.start(app)
    from aigw_gateway.app import LOADER

    await eventually(lambda: "openai" in app[LOADER].current.by_name, 10, "gateway has the provider")
    return bus, app, url, user, usage


async def _chat(s: aiohttp.ClientSession, url: str, token: str, prompt: str) -> int:
    async with s.post(url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
                      json={"model": "gpt-4.1", "messages": [{"role": "user", "content": prompt}]}) as r:
        await r.read()
        return r.status


@pytest.mark.parametrize("prompt_bytes", [None, "8MiB"], ids=["default-cap", "cap-above-max-payload"])
async def test_a_2mib_prompt_then_ordinary_requests_are_all_recorded(apps, make_settings, mock_upstream, small_nats,
                                                                     prompt_bytes):
    """The issue's reproduction: one huge prompt must not stop recording on the replica. With the default cap the
    prompt is cut to 64 KiB; with a cap above the server's max_payload it is cut to fit max_payload."""
    mock_upstream.play("openai/chatcompletions/simple")
    env = {"AIGW_RECORD_PROMPT_BYTES": prompt_bytes} if prompt_bytes else {}
    bus, app, url, user, usage = await _gateway(apps, make_settings, mock_upstream, small_nats, **env)
    try:
        big = "€" * (2 * 1024 * 1024 // 3) + "tail"  # 2 MiB of UTF-8, three bytes a character
        async with aiohttp.ClientSession() as s:
            assert await _chat(s, url, user.token, big) == 200
            for i in range(5):
                assert await _chat(s, url, user.token, f"ordinary {i}") == 200
        ended = await usage.wait_ended(6, timeout=15)
        assert all(e.status == "ok" for e in ended)
        prompts = {e.interception_id: e for e in usage.events if isinstance(e, PromptRecorded)}
        assert len(prompts) == 6
        cut = [p for p in prompts.values() if p.truncated]
        assert len(cut) == 1 and big.startswith(cut[0].prompt) and cut[0].prompt
        limit = 65536 if prompt_bytes is None else SMALL_PAYLOAD - HEADER_ROOM
        assert len(cut[0].prompt.encode()) <= limit
        assert sorted(p.prompt for p in prompts.values() if not p.truncated) == [f"ordinary {i}" for i in range(5)]
        rec = app[RECORDER]
        assert all(not t.done() for t in rec._tasks)  # every recorder task still running
        assert rec.spool.size == 0 and rec.spooled == 0
        # and JetStream stored them all (the budget service's view)
        stored = await stream_events(bus)
        assert len([e for e in stored if isinstance(e, InterceptionEnded)]) == 6
    finally:
        await apps.stop(app)
        await bus.close()


async def test_prompt_recording_off_keeps_usage_and_tool_names(bus: Bus, tmp_path: Path) -> None:
    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 20), policy=RecordPolicy(prompts=False))
    usage = await UsageCollector(bus).start()
    await rec.start()
    try:
        rec.emit(PromptRecorded(event_id="p1", interception_id="i1", at=1.0, prompt="secret plans"))
        rec.emit(ToolUsage(event_id="t1", interception_id="i1", at=1.0, name="get_weather", call_id="c1",
                           arguments='{"city": "Paris"}'))
        rec.emit(InterceptionEnded(event_id="e1", interception_id="i1", at=1.0, status="ok"))
        await eventually(lambda: rec.published == 2, 10, "two events acknowledged")
        kinds = sorted(type(e).__name__ for e in usage.events)
        assert kinds == ["InterceptionEnded", "ToolUsage"]
        [tool] = usage.tools()
        assert tool.name == "get_weather" and tool.arguments == "" and tool.call_id == "c1"
    finally:
        await rec.stop()


async def test_tool_arguments_are_capped_like_prompts(bus: Bus, tmp_path: Path) -> None:
    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 20), policy=RecordPolicy(prompt_bytes=1000))
    usage = await UsageCollector(bus).start()
    await rec.start()
    try:
        args = '{"text": "' + "ü" * 5000 + '"}'
        rec.emit(ToolUsage(event_id="t1", interception_id="i1", at=1.0, name="write", arguments=args))
        await eventually(lambda: len(usage.tools()) == 1, 10, "tool event")
        [tool] = usage.tools()
        assert tool.truncated and args.startswith(tool.arguments) and 996 < len(tool.arguments.encode()) <= 1000
    finally:
        await rec.stop()


# ------------------------------------------------------------------ failures that used to end a task for good


async def test_jetstream_publish_with_no_stream_is_a_bus_error(bus: Bus) -> None:
    """nats-py raises its own NoStreamResponseError (not NoRespondersError) when no stream takes the subject."""
    with pytest.raises(NoStream):
        await bus.js_publish(bus.subjects.usage("nostream"), InterceptionEnded(
            event_id="x", interception_id="i", at=1.0, status="ok"), timeout=2.0)


async def test_spool_replay_survives_a_deleted_stream(bus: Bus, tmp_path: Path) -> None:
    """The stream vanishes under a running gateway: events are spooled, the replay re-creates the stream and
    delivers them once; no recorder task ends."""
    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 20), ack_timeout=0.3)
    await rec.start()
    try:
        await bus.js.delete_stream(bus.subjects.usage_stream)
        for i in range(5):
            rec.emit(InterceptionEnded(event_id=f"ev{i}", interception_id=f"i{i}", at=1.0, status="ok"))
        await eventually(lambda: rec.spooled == 5, 15, "events spooled while the stream is missing")
        await eventually(lambda: not rec.spool.pending(), 20, "spool replayed into a re-created stream")
        assert all(not t.done() for t in rec._tasks)
        rec.emit(InterceptionEnded(event_id="ev5", interception_id="i5", at=1.0, status="ok"))
        await eventually(lambda: rec.published >= 6, 10, "a later event published directly")
    finally:
        await rec.stop()
    events = await stream_events(bus)
    assert sorted(e.event_id for e in events) == [f"ev{i}" for i in range(6)]


async def test_an_unexpected_error_in_publishing_is_spooled_and_the_publisher_lives_on(bus: Bus, tmp_path: Path,
                                                                                       monkeypatch) -> None:
    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 20))
    real = Bus.publish_raw
    calls = []

    async def broken(self, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(a)
        if len(calls) == 1:
            raise RuntimeError("something nats-py raised that nobody mapped")
        return await real(self, *a, **kw)

    monkeypatch.setattr(Bus, "publish_raw", broken)
    await rec.start()
    try:
        rec.emit(InterceptionEnded(event_id="a", interception_id="i", at=1.0, status="ok"))
        await eventually(lambda: rec.spooled == 1, 10, "the failed event spooled")
        await eventually(lambda: not rec.spool.pending(), 15, "and replayed")
        rec.emit(InterceptionEnded(event_id="b", interception_id="i", at=2.0, status="ok"))
        await eventually(lambda: rec.published == 2, 10, "the next event published")
        failures = {s.labels["reason"]: s.value for m in rec.m_failures.collect() for s in m.samples
                    if s.name.endswith("_total")}
        assert failures.get("error") == 1
        assert all(not t.done() for t in rec._tasks)
    finally:
        await rec.stop()
    assert sorted(e.event_id for e in await stream_events(bus)) == ["a", "b"]


async def test_a_spooled_event_too_large_for_the_server_is_cut_not_stuck(small_nats: str, tmp_path: Path) -> None:
    """A spool written under a larger max_payload (another server, a bigger cap) replays into a small one."""
    b = Bus(servers=(small_nats,), name="t", subjects=Subjects("tbig"))
    await b.start(wait=5)
    spool = Spool(tmp_path / "spool", 1 << 24)
    big = PromptRecorded(event_id="p", interception_id="i", at=1.0, prompt="x" * (SMALL_PAYLOAD * 2))
    spool.append(b.subjects.usage("prompt"), "p", msgspec.json.encode(big))
    spool.append(b.subjects.usage("ended"), "e", msgspec.json.encode(
        InterceptionEnded(event_id="e", interception_id="i", at=1.0, status="ok")))
    rec = Recorder(b, spool)
    await rec.start()
    try:
        await eventually(lambda: not rec.spool.pending(), 20, "the spool replayed")
    finally:
        await rec.stop()
    events: list[AnyUsageEvent] = await stream_events(b)
    by_id = {e.event_id: e for e in events}
    assert set(by_id) == {"p", "e"}
    p = by_id["p"]
    assert isinstance(p, PromptRecorded) and p.truncated and 0 < len(p.prompt) < SMALL_PAYLOAD
    with contextlib.suppress(Exception):
        await b.js.delete_stream(b.subjects.usage_stream)
    await b.close()


async def test_nothing_is_lost_when_the_queue_is_full(bus: Bus, tmp_path: Path) -> None:
    rec = Recorder(bus, Spool(tmp_path / "spool", 1 << 20), queue_size=2)
    await rec.start()
    try:
        for i in range(20):
            rec.emit(InterceptionEnded(event_id=f"q{i}", interception_id="i", at=1.0, status="ok"))
        await asyncio.sleep(0)
        await eventually(lambda: not rec.spool.pending() and rec._queue.empty() and rec.in_flight == 0, 20, "drained")
    finally:
        await rec.stop()
    assert sorted(e.event_id for e in await stream_events(bus)) == sorted(f"q{i}" for i in range(20))
