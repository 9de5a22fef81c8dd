"""aigw_common.sse: the one SSE framing (line endings, chunk boundaries, bounds, raw relaying)."""

from __future__ import annotations

import re

import pytest

from aigw_common.sse import SSEDecoder, SSEFramer, SSETooLarge, data_of, encode, event_of, events_of

STREAM = (b": comment\nevent: a\ndata: one\ndata:  two\n\nid: 7\ndata: {\"x\":1}\n\n"
          b"event: empty\n\ndata\n\nevent: b\ndata: last\n\n")
WANT = [(b"a", b"one\n two"), (None, b'{"x":1}'), (b"b", b"last")]


def _all(dec: SSEDecoder, chunks: list[bytes]) -> list[tuple[bytes | None, bytes]]:
    out = []
    for c in chunks:
        out += dec.feed(c)
    return out + dec.finish()


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings_at_every_chunk_boundary(eol: bytes) -> None:
    body = STREAM.replace(b"\n", eol)
    for size in (1, 2, 3, 5, 7, len(body)):
        chunks = [body[i:i + size] for i in range(0, len(body), size)]
        assert _all(SSEDecoder(), chunks) == WANT, size


def test_a_crlf_split_across_chunks_is_one_line_end() -> None:
    assert _all(SSEDecoder(), [b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]) == [(None, b"a"), (None, b"b")]


def test_unterminated_last_event_is_delivered_at_finish() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: {\"a\":1}\n\ndata: tail") == [(None, b'{"a":1}')]
    assert dec.finish() == [(None, b"tail")]
    assert dec.finish() == []


def test_over_long_line_is_dropped_and_reading_goes_on() -> None:
    dec = SSEDecoder(32)
    got = _all(dec, [b"data: ok\n\ndata: " + b"x" * 20, b"x" * 40, b"x\n\ndata: after\n\n"])
    assert got == [(None, b"ok"), (None, b"after")]
    assert dec.pending == 0
    # joined data is bounded too
    got = _all(SSEDecoder(32), [b"data: " + b"y" * 20 + b"\ndata: " + b"z" * 20 + b"\n\n"])
    assert got == [(None, b"y" * 20)]


def test_strict_over_long_line_is_a_clear_error_with_bounded_memory() -> None:
    dec = SSEDecoder(64, strict=True)
    assert dec.feed(b"data: fine\n\n") == [(None, b"fine")]
    with pytest.raises(SSETooLarge) as e:
        for _ in range(1000):
            dec.feed(b"y" * 1000)
    assert e.value.limit == 64 and not e.value.retryable
    assert dec.pending <= 64
    with pytest.raises(SSETooLarge):
        SSEDecoder(64, strict=True).feed(b"data: " + b"y" * 100 + b"\n\n")  # a whole line in one chunk
    with pytest.raises(SSETooLarge):
        SSEDecoder(64, strict=True).feed(b"data: " + b"a" * 40 + b"\ndata: " + b"b" * 40 + b"\n\n")


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_framer_returns_raw_events_and_loses_no_byte(eol: bytes) -> None:
    body = STREAM.replace(b"\n", eol) + b"data: unterminated"
    for size in (1, 3, 8, len(body)):
        f, out, events = SSEFramer(), bytearray(), []
        for i in range(0, len(body), size):
            evs, overflow = f.feed(body[i:i + size])
            events += evs
            out += b"".join(evs) + overflow
        out += f.finish()
        assert bytes(out) == body
        datas = [data_of(e) for e in events]
        assert b"one\n two" in datas and b"last" in datas


def test_framer_releases_an_over_long_tail_unread() -> None:
    f = SSEFramer(16)
    events, overflow = f.feed(b"data: a\n\ndata: " + b"x" * 30)
    assert events == [b"data: a\n\n"] and overflow == b"data: " + b"x" * 30
    assert f.feed(b"\n\n") == ([b"\n\n"], b"")


RAW = [
    b"data: {}\n\n", b"data:{}\n\n", b"data: a\r\n\r\n", b"data: a\n\r", b"\ndata: a\n\n", b"event: e\ndata: a\n\n",
    b"data: a\ndata: b\n\n", b"data: a\rb\n\n", b"data: a\rdata: b\n\n", b": c\n\n", b"\n\n", b"data: a",
    b"data: a\n", b"data: a\r", b"data: \n\n", b"data: " + b"x" * 20 + b"\n\n",
]
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")  # the framer's rule, one search per event


@pytest.mark.parametrize("raw", RAW)
def test_event_of_reads_a_framed_event_as_the_decoder_does(raw: bytes) -> None:
    d = SSEDecoder(16)
    want = d.feed(raw) + d.finish()
    assert event_of(raw, 16) == (want[0] if want else None)
    assert events_of([raw, raw], 16) == want + want
    # the framer's LF-only fast path frames as the regex does, wherever the chunk boundary falls
    for i in range(len(raw) + 1):
        f, buf, got, want_events = SSEFramer(), b"", [], []
        for piece in (raw[:i], raw[i:]):
            got += f.feed(piece)[0]
            buf += piece
            while (m := _EVENT_END.search(buf)) is not None:
                want_events.append(buf[:m.end()])
                buf = buf[m.end():]
        assert got == want_events and b"".join(got) + f.finish() == raw


@pytest.mark.parametrize(("event", "data"), [
    (b"message_start", b'{"type":"message_start"}'),
    (None, b"[DONE]"),
    (b"a", b"one\ntwo\r\nthree\rfour"),
    (None, b""),
])
def test_encode_is_what_the_decoder_reads_back(event: bytes | None, data: bytes) -> None:
    wire = encode(event, data)
    assert wire.endswith(b"\n\n") and b"\r" not in wire
    want = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    assert SSEDecoder().feed(wire) == [(event, want)]
    assert SSEFramer().feed(wire) == ([wire], b"")


def test_encode_bytes() -> None:
    assert encode(b"error", b"{}") == b"event: error\ndata: {}\n\n"
    assert encode(None, b"x\ny") == b"data: x\ndata: y\n\n"
