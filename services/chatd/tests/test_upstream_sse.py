"""chatd reads a model's event stream through aigw_common.sse: every line ending, long lines, and an
over-long line as a TurnError (never an exception past stream_turn's own error handling)."""

from __future__ import annotations

import aiohttp
import msgspec
import pytest
from aiohttp import web

from aigw_chatd import upstream
from aigw_chatd.upstream import (
    ChatMessage,
    Secret,
    TurnError,
    build_body,
    direct_route,
    stream_turn,
)


def _chunk(text: str) -> bytes:
    return msgspec.json.encode({"id": "c1", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": text}}]})


def _stream(parts: list[str], eol: bytes) -> bytes:
    events = [b"data: " + _chunk(p) for p in parts] + [b"data: [DONE]"]
    return b"".join(b": keep-alive" + eol + e + eol + eol for e in events)


async def _turn(mock_upstream, body: bytes, pieces: int = 7) -> upstream.StreamResult:  # type: ignore[no-untyped-def]
    async def handler(request: web.Request, _body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        step = max(1, len(body) // pieces)
        for i in range(0, len(body), step):  # odd cuts: a CRLF, a line, a UTF-8 sequence split across writes
            await resp.write(body[i:i + step])
        await resp.write_eof()
        return resp

    mock_upstream.handler = handler
    route = direct_route(mock_upstream.url + "/v1", "openai", "openai", provider_key=Secret("sk-user-own-key-1"))
    req = build_body("openai", "gpt-4o", [ChatMessage("user", "hi")], instructions=None, stream=True, max_tokens=64)
    async with aiohttp.ClientSession() as s:
        return await stream_turn(s, route, req, lambda _t: None, read_timeout=5, connect_timeout=5)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
async def test_every_line_ending(mock_upstream, eol: bytes) -> None:  # type: ignore[no-untyped-def]
    result = await _turn(mock_upstream, _stream(["Hel", "lo ", "wörld"], eol))
    assert result.finished and result.text == "Hello wörld"


async def test_a_long_line_is_read(mock_upstream) -> None:  # type: ignore[no-untyped-def]
    big = "x" * (3 << 20)  # past aiohttp's readline limit (512 KiB: it raised LineTooLong), below ours (8 MiB)
    result = await _turn(mock_upstream, _stream(["a", big, "b"], b"\n"), pieces=50)
    assert result.finished and result.text == "a" + big + "b"


async def test_an_over_long_line_is_a_turn_error(mock_upstream, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(upstream, "MAX_SSE_LINE", 4096)
    with pytest.raises(TurnError) as e:
        await _turn(mock_upstream, _stream(["a", "y" * 10_000, "b"], b"\n"), pieces=40)
    assert not e.value.retryable and "too large" in e.value.message
