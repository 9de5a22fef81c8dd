"""A gateway process stopped (SIGTERM) or killed (SIGKILL) while a client is mid-stream, and a gateway
restarted while usage events wait in its on-disk spool.

The gateway runs as a real child process (``aigw gateway``), the rest of the stack in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import openai
import pytest

from aigw_testing.system import ServiceProcess, System
from aigw_testing.wait import eventually

pytestmark = pytest.mark.reliability
MSGS = [{"role": "user", "content": "how many angels?"}]
SERVICES = ("registry", "keypool", "budget")


async def _gateway(s: System, tmp_path, name: str, **env: str) -> ServiceProcess:  # type: ignore[no-untyped-def]
    return await ServiceProcess("gateway", {**s.env, **env}, tmp_path / f"{name}.log").start()


def _client(gw: ServiceProcess, token: str, timeout: float = 30.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/openai/v1", api_key=token, max_retries=0, timeout=timeout)


async def _stream(client: openai.AsyncOpenAI, on_first, after: float = 0.0) -> tuple[str, bool, str]:  # type: ignore[no-untyped-def]
    """(text, finished, error): stream a completion, calling ``on_first()`` once ``after`` s of it have passed."""
    text, finished, error, fired = "", False, "", False
    t0 = time.monotonic()
    try:
        async with await client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True) as st:
            async for chunk in st:
                for c in chunk.choices:
                    text += c.delta.content or ""
                    finished = finished or c.finish_reason is not None
                if not fired and text and time.monotonic() - t0 >= after:
                    fired = True
                    on_first()
    except openai.APIError as e:
        error = f"{type(e).__name__}: {e}"
    return text, finished, error


async def test_gateway_sigterm_mid_stream_finishes_the_stream(start_system, tmp_path, reliability) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=SERVICES)
    m = await s.member("graceful")
    gw = await _gateway(s, tmp_path, "gw-term", AIGW_SHUTDOWN_GRACE="20s")
    s.upstream.play("openai/chatcompletions/simple", event_delay=0.01)
    stopping: list[asyncio.Task[int]] = []
    t0 = time.monotonic()
    text, finished, error = await _stream(_client(gw, m.token), lambda: stopping.append(asyncio.create_task(gw.stop())))
    code = await stopping[0]
    took = time.monotonic() - t0
    assert not error and finished, (text[-80:], error)
    assert code == 0, f"gateway exit code {code}"
    ledger = await s.ledger(expect=1)
    assert ledger.by_status() == {"ok": 1}
    reliability.record("Gateway stopped (SIGTERM) mid-stream",
                       client="the whole answer: in-flight streams drain before the process exits (code 0)",
                       usage="1 interception, status ok, applied once",
                       measured=f"stream ended and process exited {took:.1f} s after it started")


async def test_gateway_killed_mid_stream(start_system, tmp_path, reliability) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=SERVICES)
    m = await s.member("killed")
    gw = await _gateway(s, tmp_path, "gw-kill", AIGW_USAGE_LINGER="1s")
    s.upstream.play("openai/chatcompletions/simple", event_delay=0.06)  # 53 events: ~3.2 s
    killing: list[asyncio.Task[None]] = []
    # past the gateway's 1 s START_DELAY and then the 1 s a quiet gateway holds an event for company, so the
    # interception's "started" event is already out
    text, finished, error = await _stream(_client(gw, m.token), lambda: killing.append(asyncio.create_task(gw.kill())),
                                          after=2.5)
    await killing[0]
    assert error.startswith("APIConnectionError") or "incomplete" in error or "peer closed" in error, error
    assert text and not finished
    # what the killed process had published is applied exactly once; the interception stays open (no end
    # event can come from a process that no longer exists)
    ledger = await s.ledger(expect=None)
    assert len(ledger.interceptions) == 1, ledger.interceptions
    row = ledger.interceptions[0]
    assert row["status"] is None and row["started_at"] is not None, dict(row)
    # a replacement gateway serves at once
    gw2 = await _gateway(s, tmp_path, "gw-kill-2")
    s.upstream.play("openai/chatcompletions/simple")
    r = await _client(gw2, m.token).chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert r.choices[0].message.content
    await gw2.stop()
    reliability.record("Gateway killed (SIGKILL) mid-stream",
                       client="the stream so far, then a broken connection (openai SDK: APIConnectionError); "
                              "a replacement gateway serves at once",
                       usage="the events published before the kill (started, prompt) applied once; the interception "
                             "stays open (no end status, no tokens): nothing is left to send them",
                       measured=f"{len(text)} chars received before the kill")


async def test_spooled_usage_survives_a_gateway_restart(start_system, tmp_path, reliability) -> None:  # type: ignore[no-untyped-def]
    """NATS is down, the gateway spools usage to disk and is then stopped; a new gateway process on the same
    data dir must send what was spooled once NATS is back."""
    s: System = await start_system(services=SERVICES)
    m = await s.member("spooler")
    gw = await _gateway(s, tmp_path, "gw-a")
    client = _client(gw, m.token)
    assert (await client.chat.completions.create(model="gpt-4.1", messages=MSGS)).choices[0].message.content
    await s.ledger(expect=1)
    await s.nats.down()
    for _ in range(5):
        assert (await client.chat.completions.create(model="gpt-4.1", messages=MSGS)).choices[0].message.content
    assert await gw.stop() == 0
    spooled = [p for p in (tmp_path / "data" / "spool").rglob("*") if p.is_file() and p.stat().st_size]
    assert spooled, "the stopped gateway left no spool behind"
    spooled_bytes = sum(p.stat().st_size for p in spooled)
    await s.nats.up()
    gw2 = await _gateway(s, tmp_path, "gw-b")
    try:
        with contextlib.suppress(AssertionError):
            await eventually(lambda: len(s.usage.ended()) >= 6, 15, "the spooled events to be replayed")
        ledger = await s.ledger(expect=None, timeout=5)
        assert len(ledger.interceptions) == 6, (
            f"{6 - len(ledger.interceptions)} of 5 interceptions spooled by the stopped gateway never reached the "
            f"budget: the restarted gateway did not replay {[str(p.relative_to(tmp_path)) for p in spooled]}")
        assert ledger.by_status() == {"ok": 6}
    finally:
        await gw2.stop()
    reliability.record("Gateway restarted with usage in its spool (NATS down meanwhile)",
                       client="all answered while NATS was down",
                       usage="the 5 spooled interceptions replayed by the next gateway process, each applied once",
                       measured=f"{spooled_bytes} B spooled across the restart")


def test_spool_adopts_only_the_segments_of_gone_processes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from aigw_gateway.spool import Spool

    live = Spool(tmp_path / "gateway-aaa", 1 << 20)
    live.append("s.usage.ended", "live-1", b"{}")
    gone = Spool(tmp_path / "gateway-bbb", 1 << 20)
    gone.append("s.usage.ended", "gone-1", b"{}")
    gone.close()  # its process stopped with the event still spooled
    new = Spool(tmp_path / "gateway-ccc", 1 << 20)
    assert new.adopted == 1 and new.pending()
    assert [r.msg_id for seg in new.segments() for r in new.read(seg)] == ["gone-1"]
    assert not (tmp_path / "gateway-bbb").exists()
    assert [r.msg_id for seg in live.segments() for r in live.read(seg)] == ["live-1"]  # a live spool is left alone
