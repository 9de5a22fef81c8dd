"""A chat stream whose usage chunk is hidden is framed once (issue 18): the relay that hides the chunk hands its
framed events to the usage extractor. It must relay exactly the bytes, and meter exactly the usage, of the two
passes it replaced — the framer-only relay and an extractor decoding the bytes again — kept here as the oracle."""

from __future__ import annotations

import random
import re

import pytest

from aigw_gateway.usage import chat, stream
from aigw_gateway.usage.chat import ChatStream, UsageChunkFilter
from aigw_gateway.usage.common import Extracted
from aigw_testing.txtar import all_corpora

_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")


class _OldFramer:
    """The framer as it was (one regex search per event, whatever the line ends)."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.buf = bytearray()

    def feed(self, chunk: bytes) -> tuple[list[bytes], bytes]:
        buf = self.buf
        buf += chunk
        events, start = [], 0
        while (m := _EVENT_END.search(buf, start)) is not None:
            events.append(bytes(buf[start:m.end()]))
            start = m.end()
        del buf[:start]
        if len(buf) > self.max_line:
            overflow = bytes(buf)
            buf.clear()
            return events, overflow
        return events, b""

    def finish(self) -> bytes:
        rest = bytes(self.buf)
        self.buf.clear()
        return rest


def _two_passes(chunks: list[bytes], *, broken: bool = False) -> tuple[list[bytes], Extracted]:
    """The oracle: the relay filter frames the chunk, then the extractor reads the same bytes again."""
    framer, ext, out = _OldFramer(chat.MAX_LINE), ChatStream(), []
    for c in chunks:
        events, overflow = framer.feed(c)
        out.append(b"".join([e for e in events if not chat._usage_only(e)]) + overflow)
        ext.feed(c)
    if not broken:
        rest = framer.finish()
        out.append(b"" if chat._usage_only(rest) else rest)
    return out, ext.finish()


def _one_pass(chunks: list[bytes], *, broken: bool = False) -> tuple[list[bytes], Extracted]:
    """As the proxy drives it: feed, write what it returned, then meter; finish (again, in the proxy's finally)."""
    relay, ext, out = UsageChunkFilter(), ChatStream(), []
    read = relay.metering(ext)
    for c in chunks:
        out.append(relay.feed(c))
        read(c)
    if not broken:
        out.append(relay.finish())
    relay.finish()
    return out, ext.finish()


def _streams() -> dict[str, bytes]:
    out = {}
    for name, f in all_corpora().items():
        if not name.removeprefix("ext:").startswith("openai/chatcompletions/"):
            continue
        for section in f.sections:
            if section.startswith("streaming"):
                out[f"{name}:{section}"] = f.response(section).body
    delta = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'
    out |= {  # the shapes the corpus may lack
        "usage with choices (relayed)": delta + b'data: {"choices":[{"index":0,"delta":{}}],'
                                        b'"usage":{"prompt_tokens":5,"completion_tokens":6}}\n\ndata: [DONE]\n\n',
        "comments, names, multi-line data, stray blank lines":
            b": ping\n\n\n" + b"event: x\n" + delta + b"\n\n\n" + b'data: {"choices":[],\ndata: "usage":{"prompt_tokens":7}}\n\n'
            + b"data:[DONE]\n\n",
        "unterminated usage last": delta + usage.rstrip(),
        "unterminated delta last": usage + delta.rstrip() + b"\n",
        "no usage": delta + delta + b"data: [DONE]\n\n",
        "error body": b'{"error":{"message":"overloaded","type":"server_error"}}',
        "empty choices without usage (Azure)": b'data: {"choices":[],"prompt_filter_results":[]}\n\n' + delta + usage,
        "spaced empty choices": b'data: {"choices" : [ ],"usage":{"prompt_tokens":9}}\n\n' + delta,
        "usage: null": b'data: {"choices":[],"usage":null}\n\n' + delta,
        "a marker split across data lines": delta + delta + b'data: {"choices":[{"index":0,"delta":{}}],"usage"\n'
                                            b'data: :{"prompt_tokens":5}}\n\n' + delta,
        "mixed line ends": delta.replace(b"\n\n", b"\r\n\n") + b"data: x\rdata: y\n\n"
                           + usage.replace(b"}}\n", b"}}\r: c\n", 1) + usage.replace(b"\n\n", b"\n\r\n"),
    }
    return out


STREAMS = _streams()


def _variants(body: bytes) -> dict[str, bytes]:
    return {"lf": body, "crlf": body.replace(b"\n", b"\r\n"), "cr": body.replace(b"\n", b"\r")}


def _chunkings(body: bytes, rng: random.Random) -> list[list[bytes]]:
    events = [e for e in re.split(rb"(?<=\n\n)", body) if e]  # one read per event, as upstreams send them
    ways = [[body], [body[i:i + 1] for i in range(len(body))], events,
            [b"".join(events[i:i + 2]) for i in range(0, len(events), 2)],
            [b"".join(events[:1]), b"".join(events[1:])]]  # a fast upstream: the rest in one read
    for _ in range(6):
        chunks, i = [], 0
        while i < len(body):
            n = rng.choice((1, 2, 3, rng.randint(1, 40), rng.randint(1, 400)))
            chunks.append(body[i:i + n])
            i += n
        ways.append(chunks)
    return ways


def test_the_corpus_has_chat_streams_with_a_usage_chunk() -> None:
    corpus = [b for k, b in STREAMS.items() if k.startswith("openai/")]
    assert len(corpus) >= 5 and any(b'"choices":[]' in b and b'"usage":{' in b for b in corpus)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_one_pass_relays_and_meters_what_two_passes_did(name: str) -> None:
    rng = random.Random(name)
    for variant, body in _variants(STREAMS[name]).items():
        for chunks in _chunkings(body, rng):
            want_out, want = _two_passes(chunks)
            got_out, got = _one_pass(chunks)
            assert got_out == want_out, (variant, [len(c) for c in chunks])
            assert got == want, (variant, [len(c) for c in chunks])
            # the stream breaks off somewhere: the held tail is still metered
            cut = chunks[:rng.randint(0, len(chunks))]
            assert _one_pass(cut, broken=True) == _two_passes(cut, broken=True), variant


def test_the_hidden_chunk_is_metered_not_relayed() -> None:
    body = STREAMS["openai/chatcompletions/simple:streaming"]
    out, got = _one_pass([body])
    assert b'"choices":[]' in body and b'"choices":[]' not in b"".join(out)
    assert got.tokens.input_tokens == 31 and got.terminal


def test_over_long_tails_fall_back_to_reading_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat, "MAX_LINE", 64)
    monkeypatch.setattr(stream, "MAX_LINE", 64)
    rng = random.Random(7)
    long = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 100 + b'"}}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3}}\n\n'
    padded = b'event: u\ndata: {"choices":[],\ndata: "usage":{"prompt_tokens":5}}\n' + b": pad\n" * 12 + b"\n"
    for body in (long + usage, usage + long + b"data: [DONE]\n\n", padded + long, long + padded,
                 STREAMS["openai/chatcompletions/simple:streaming"]):
        for variant in _variants(body).values():
            for chunks in _chunkings(variant, rng):
                assert _one_pass(chunks) == _two_passes(chunks)


def test_text_deltas_in_whole_events_are_passed_over() -> None:
    """Read one event per chunk (LF), a chat stream's text deltas are relayed without being framed or metered
    (``ChatStream.unread``); the test above holds that this changes no byte relayed and no usage metered."""
    passed = 0
    for name, body in STREAMS.items():
        if not name.startswith("openai/") or b"\r" in body:
            continue
        relay, ext = UsageChunkFilter(), ChatStream()
        read = relay.metering(ext)
        for c in [e for e in re.split(rb"(?<=\n\n)", body) if e]:
            relay.feed(c)
            passed += relay._skip == (0, len(c))
            read(c)
    assert passed >= 10


def test_text_deltas_before_the_usage_chunk_in_one_read_are_passed_over() -> None:
    """A read holding many events (a fast upstream): the text deltas before the first event anything reads are
    relayed unframed; the rest is framed, the usage chunk hidden, and what is metered is what two passes meter."""
    first = b'data: {"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    deltas = b"".join(b'data: {"choices":[{"index":0,"delta":{"content":"w%d"}}],"usage":null}\n\n' % i
                      for i in range(12))
    tail = (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":12}}\n\n'
            b"data: [DONE]\n\n")
    relay, ext = UsageChunkFilter(), ChatStream()
    read = relay.metering(ext)
    out = []
    for c in (first, deltas + tail):
        out.append(relay.feed(c))
        if c is not first:
            assert relay._skip == (0, len(deltas) + tail.index(b"data: {\"choices\":[],"))
        read(c)
    out.append(relay.finish())
    hidden = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":12}}\n\n'
    assert b"".join(out) == first + deltas + tail.replace(hidden, b"")
    got = ext.finish()
    assert (got.model, got.tokens.input_tokens, got.tokens.output_tokens) == ("m", 7, 12)
    assert _one_pass([first, deltas + tail]) == _two_passes([first, deltas + tail])
    # the whole stream in one read: the first event is read, the deltas after it are passed over
    relay, ext = UsageChunkFilter(), ChatStream()
    read = relay.metering(ext)
    whole = first + deltas + tail
    relayed = relay.feed(whole)
    assert relay._skip == (len(first), len(first) + len(deltas) + tail.index(b"data: {\"choices\":[],"))
    read(whole)
    assert relayed + relay.finish() == first + deltas + tail.replace(hidden, b"")
    got = ext.finish()
    assert (got.model, got.tokens.input_tokens, got.tokens.output_tokens) == ("m", 7, 12)
    assert _one_pass([whole]) == _two_passes([whole])
