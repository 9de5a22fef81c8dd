"""The upstream misbehaving: resets, stalls, malformed SSE, 500/503/529, through the whole system.

Each case asserts what the real SDK client saw and then that the interception reached the budget
tables exactly once with the right outcome (``System.ledger``). The upstream is the fixture mock
behind a FaultProxy, so a reset is a real TCP reset and a stall is real silence.
"""

from __future__ import annotations

import asyncio
import time

import anthropic
import openai
import pytest
from aiohttp import web

from aigw_testing.system import System

pytestmark = pytest.mark.reliability
MSGS = [{"role": "user", "content": "how many angels?"}]


async def _first_chunk_then(s: System, fault, *, client_timeout: float = 20.0) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Stream a chat completion; after the first chunk call ``fault()``; return (text so far, error seen)."""
    m = await s.member("streamer")
    s.upstream.play("openai/chatcompletions/simple", event_delay=0.05)
    client = s.openai(m.token, timeout=client_timeout)
    text, error = "", ""
    try:
        async with await client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True) as st:
            async for chunk in st:
                if not text and chunk.choices and chunk.choices[0].delta.content:
                    fault()
                for c in chunk.choices:
                    text += c.delta.content or ""
    except (openai.APIError, openai.APITimeoutError) as e:
        error = f"{type(e).__name__}: {e}"
    return text, error


async def test_upstream_resets_mid_stream(start_system, reliability) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system()
    text, error = await _first_chunk_then(s, s.up.reset_connections)
    # the stream had started (200 sent), so the gateway ends it with an in-band error the SDK raises
    assert error.startswith("APIError") and "upstream stream broke" in error, error
    assert text and "two days instead" not in text  # a prefix of the answer, not all of it
    ledger = await s.ledger(expect=1)
    [row] = ledger.interceptions
    assert row["status"] == "error" and row["status_code"] == 200 and "broke" in row["error"], dict(row)
    reliability.record("Upstream resets the connection mid-stream",
                       client="the stream so far, then an in-band error event (openai SDK raises APIError "
                              "'upstream stream broke')",
                       usage="1 interception, status error, applied once", measured=f"{len(text)} chars before the reset")


async def test_upstream_resets_before_answering(start_system, reliability) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system()
    m = await s.member("resetme")

    async def reset(request: web.Request, _body: bytes) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()  # RST, no status line
        raise asyncio.CancelledError

    s.upstream.handler = reset
    client = s.openai(m.token)
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert e.value.status_code == 502 and "unreachable" in e.value.message, e.value
    ledger = await s.ledger(expect=1)
    [row] = ledger.interceptions
    assert row["status"] == "error" and row["status_code"] == 502, dict(row)
    reliability.record("Upstream resets the connection before answering",
                       client="502 in the provider's format ('provider … is unreachable')",
                       usage="1 interception, status error 502, applied once", measured="no retry on a reset")


async def test_upstream_stalls_mid_stream(start_system, reliability) -> None:  # type: ignore[no-untyped-def]
    """A provider that goes silent: the client's own timeout ends the wait; the gateway sees the client go,
    cancels the upstream call and records the interception as cancelled.

    (The per-provider ``idle_timeout`` would end it sooner with an in-band error, but the registry refuses
    timeout settings for every provider type, so a real deployment cannot set it; see docs/reliability.md.)"""
    s: System = await start_system()
    t0 = time.monotonic()
    text, error = await _first_chunk_then(s, s.up.stall, client_timeout=2.0)
    waited = time.monotonic() - t0
    assert error.startswith("APITimeoutError"), error
    assert text and "two days instead" not in text
    ledger = await s.ledger(expect=1)
    [row] = ledger.interceptions
    assert row["status"] == "interrupted", dict(row)
    s.up.resume()
    # the stall did not wedge the gateway: the next request is answered
    m = await s.member("after")
    r = await s.openai(m.token).chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert r.choices[0].message.content
    reliability.record("Upstream stalls mid-stream",
                       client="the stream so far, then silence until the client's timeout (APITimeoutError)",
                       usage="1 interception, status cancelled, applied once; the next request is served",
                       measured=f"client gave up after {waited:.1f} s (its 2 s read timeout)")


MALFORMED = [
    b'data: {"id":"x","object":"chat.completion.chunk","model":"gpt-4.1","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n',
    b"data: {not json at all\n\n",
    b"event: \n",
    b": comment\r\nid\r\nretry: soon\r\n\r\n",
    b"data: " + bytes(range(256)) + b"\n\n",
    b"data:" + b"x" * 100_000 + b"\n\n",
    b'data: {"choices": "not a list", "usage": {"prompt_tokens": "many"}}\n\n',
    b"\x00\xff\xfe garbage without any newline",
]


async def test_upstream_sends_malformed_sse(start_system, reliability) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system()
    m = await s.member("malformed")

    async def garbage(request: web.Request, _body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for part in MALFORMED:
            await resp.write(part)
        await resp.write_eof()
        return resp

    s.upstream.handler = garbage
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
            s.url("gateway", "/openai/v1/chat/completions"), json={"model": "gpt-4.1", "messages": MSGS, "stream": True},
            headers={"Authorization": f"Bearer {m.token}"}, timeout=aiohttp.ClientTimeout(total=20)) as r:
        assert r.status == 200
        body = await r.read()
    assert body == b"".join(MALFORMED), "the gateway must relay the upstream's bytes as they are"
    # the SDK, given the same stream, fails on the first undecodable event and says so
    client = s.openai(m.token)
    with pytest.raises(ValueError):
        async with await client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True) as st:
            async for _ in st:
                pass
    ledger = await s.ledger(expect=2)
    for row in ledger.interceptions:
        assert row["status"] in ("error", "interrupted"), dict(row)
        assert row["input_tokens"] == row["output_tokens"] == 0
    first = next(r for r in ledger.interceptions if r["status"] == "error")
    assert "terminal" in (first["error"] or ""), dict(first)
    # and the gateway is still fine
    s.upstream.handler = None
    assert (await client.chat.completions.create(model="gpt-4.1", messages=MSGS)).choices[0].message.content
    reliability.record("Upstream sends malformed SSE",
                       client="the bytes relayed unchanged; the openai SDK raises on the first bad event",
                       usage="each interception applied once, status error ('stream closed before the provider's "
                             "terminal event'), no tokens",
                       measured=f"{len(body)} bytes of garbage relayed; no gateway error")


@pytest.mark.parametrize("status", [500, 503, 529])
async def test_upstream_error_statuses(start_system, reliability, status: int) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system()
    m = await s.member("errors")
    s.upstream.on_key(
        "zzpool-anthropic-3Kd8Vb1Ns6Yp", status,
        body={"type": "error", "error": {"type": "overloaded_error" if status == 529 else "api_error", "message": "boom"}})
    client = s.anthropic(m.token)
    seen: list[int] = []
    retry_after = None
    for _ in range(6):
        try:
            await client.messages.create(model="claude-test", max_tokens=5, messages=MSGS)
            seen.append(200)
        except anthropic.APIStatusError as e:
            seen.append(e.status_code)
            retry_after = e.response.headers.get("retry-after")
    upstream_calls = len(s.upstream.requests)
    if status == 500:  # not a breaker failure: every request goes through and gets the upstream's answer
        assert seen == [500] * 6 and upstream_calls == 6
    else:  # 503 and 529 count: after 5 in a row the breaker opens and the gateway answers 503 itself
        assert seen == [status] * 5 + [503] and upstream_calls == 5, (seen, upstream_calls)
        assert retry_after and int(retry_after) > 0
    # a request the open breaker refuses never reaches the provider and is not an interception (it is counted
    # in aigw_gateway_circuit_rejects_total), like a budget refusal
    ledger = await s.ledger(expect=upstream_calls)
    assert ledger.by_status() == {"error": upstream_calls}
    assert sorted(r["status_code"] for r in ledger.interceptions) == [status] * upstream_calls
    reliability.record(
        f"Upstream answers {status}",
        client=(f"{status} relayed as is (anthropic SDK raises its {status} error) every time" if status == 500 else
                f"{status} relayed 5 times, then the breaker opens: 503 + Retry-After {retry_after} s from the gateway"),
        usage=f"{upstream_calls} interceptions (one per upstream call), status error {status}, each applied once",
        measured=f"{upstream_calls} upstream calls for 6 requests")
