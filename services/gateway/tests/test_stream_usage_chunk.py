"""The usage-only chunk the gateway asked for is metered but never reaches a client that did not ask."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from aigw_gateway.usage.chat import UsageChunkFilter

CHAT = "openai/chatcompletions/simple"


def _client(gw) -> openai.AsyncOpenAI:  # type: ignore[no-untyped-def]
    return openai.AsyncOpenAI(base_url=f"{gw.url}/openai/v1", api_key=gw.user.token, max_retries=0)


async def test_openai_sdk_stream_without_include_usage_gets_no_usage_chunk(gw) -> None:  # type: ignore[no-untyped-def]
    gw.upstream.play(CHAT)
    async with _client(gw) as c:
        stream = await c.chat.completions.create(model="gpt-4.1", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}])
        chunks = [ch async for ch in stream]
    assert chunks and all(ch.choices for ch in chunks)  # a client indexing choices[0] never crashes
    assert all(ch.usage is None for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text
    # the gateway asked upstream for usage, and metered it
    assert gw.upstream.requests[-1].json()["stream_options"] == {"include_usage": True}
    [ended] = await gw.usage.wait_ended(1)
    tokens = [t for t in gw.usage.tokens() if t.interception_id == ended.interception_id]
    assert tokens and tokens[0].tokens.input_tokens == 31 and tokens[0].tokens.output_tokens == 64
    assert ended.status == "ok"


@pytest.mark.parametrize("opts", [{"include_usage": True}])
async def test_a_client_that_asked_still_gets_it(gw, opts) -> None:  # type: ignore[no-untyped-def]
    gw.upstream.play(CHAT)
    async with _client(gw) as c:
        stream = await c.chat.completions.create(model="gpt-4.1", stream=True, stream_options=opts,
                                                 messages=[{"role": "user", "content": "hi"}])
        chunks = [ch async for ch in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.prompt_tokens == 31


async def test_raw_stream_is_otherwise_byte_for_byte(gw) -> None:  # type: ignore[no-untyped-def]
    fx = gw.upstream.play(CHAT)
    body = {"model": "gpt-4.1", "stream": True, "stream_options": {"include_usage": False},
            "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s, s.post(f"{gw.url}/openai/v1/chat/completions", json=body,
                                                    headers={"Authorization": f"Bearer {gw.user.token}"}) as r:
        got = await r.read()
    upstream = fx.response("streaming").body
    assert b'"choices":[]' not in got and b"[DONE]" in got and b'"choices":[]' in upstream
    events = [e + b"\n\n" for e in upstream.split(b"\n\n") if e.strip()]
    assert got == b"".join(e for e in events if b'"choices":[]' not in e)


def test_filter_across_arbitrary_chunk_boundaries() -> None:
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    azure_filter = b'data: {"choices":[],"prompt_filter_results":[{"prompt_index":0}]}\n\n'  # no usage: kept
    delta = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    stream = azure_filter + delta + delta + usage + b"data: [DONE]\n\n"
    want = azure_filter + delta + delta + b"data: [DONE]\n\n"
    for size in (1, 2, 3, 7, 16, 64, len(stream)):
        f = UsageChunkFilter()
        out = b"".join(f.feed(stream[i:i + size]) for i in range(0, len(stream), size)) + f.finish()
        assert out == want, size
    # CRLF framing, and an unterminated last event
    f = UsageChunkFilter()
    crlf = delta.replace(b"\n", b"\r\n") + usage.replace(b"\n", b"\r\n")
    assert f.feed(crlf) == delta.replace(b"\n", b"\r\n") and f.finish() == b""
    f = UsageChunkFilter()
    assert f.feed(delta + usage.rstrip()) == delta and f.finish() == b""
    # a complete event is relayed at once, not held for the next one
    f = UsageChunkFilter()
    assert f.feed(delta) == delta
