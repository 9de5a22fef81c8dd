"""AWS event-stream framing against the spec's vectors and botocore; Bedrock → Anthropic SSE re-emission."""

from __future__ import annotations

import base64
import datetime as dt
import random
import uuid

import msgspec
import pytest
from botocore.eventstream import EventStreamBuffer

from aigw_common import sse
from aigw_gateway import eventstream as es
from aigw_gateway.usage.dialects import DIALECTS
from aigw_testing.txtar import all_corpora, load
from aigw_testing.upstream import split_events

# Vectors from the AWS event-stream test suite (as carried by botocore's unit tests).
EMPTY = b"\x00\x00\x00\x10\x00\x00\x00\x00\x05\xc2H\xeb}\x98\xc8\xff"
INT8 = b"\x00\x00\x00\x17\x00\x00\x00\x07)\x86\x01X\x04byte\x02\xff\xc2\xf8i\xdc"
ONE_STR_HEADER = (b"\x00\x00\x00=\x00\x00\x00 \x07\xfd\x83\x96\x0ccontent-type\x07\x00\x10"
                  b"application/json{'foo':'bar'}\x8d\x9c\x08\xb1")
ALL_TYPES = (b"\x00\x00\x00\x62\x00\x00\x00\x52\x03\xb5\xcb\x9c"
             b"\x010\x00\x011\x01\x012\x02\x02\x013\x03\x00\x03"
             b"\x014\x04\x00\x00\x00\x04\x015\x05\x00\x00\x00\x00\x00\x00\x00\x05"
             b"\x016\x06\x00\x05bytes\x017\x07\x00\x04utf8"
             b"\x018\x08\x00\x00\x00\x00\x00\x00\x00\x08\x019\x090123456789abcdef"
             b"\x63\x35\x36\x71")
ERROR_MSG = (b"\x00\x00\x00\x52\x00\x00\x00\x42\xbf\x23\x63\x7e"
             b"\x0d:message-type\x07\x00\x05error\x0b:error-code\x07\x00\x04code"
             b"\x0e:error-message\x07\x00\x07message\x6b\x6c\xea\x3d")
NEGATIVE = {
    "corrupted-length": b"\x01\x00\x00\x1d\x00\x00\x00\x00\xfdR\x8cZ{'foo':'bar'}\xc3e96",
    "corrupted-payload": b"\x00\x00\x00\x1d\x00\x00\x00\x00\xfdR\x8cZ{'foo':'bar'\x8d\xc3e96",
    "corrupted-headers": (b"\x00\x00\x00=\x00\x00\x00 \x07\xfd\x83\x96\x0ccontent+type\x07\x00\x10"
                          b"application/json{'foo':'bar'}\x8d\x9c\x08\xb1"),
    "corrupted-header-length": (b"\x00\x00\x00=\xff\x00\x01\x02\x07\xfd\x83\x96\x0ccontent-type\x07\x00"
                                b"\x10application/json{'foo':'bar'}\x8d\x9c\x08\xb1"),
    "duplicate-header": (b"\x00\x00\x00\x24\x00\x00\x00\x14\x4b\xb9\x82\xd0"
                         b"\x04test\x04asdf\x04test\x04asdf\xf3\xf4\x75\x63"),
}


def test_spec_vectors_decode() -> None:
    d = es.Decoder()
    msgs = d.feed(EMPTY + INT8 + ONE_STR_HEADER + ALL_TYPES + ERROR_MSG)
    assert d.pending == 0
    assert [(m.headers, m.payload) for m in msgs[:3]] == [
        ({}, b""), ({"byte": -1}, b""), ({"content-type": "application/json"}, b"{'foo':'bar'}")]
    assert msgs[3].headers == {
        "0": True, "1": False, "2": 2, "3": 3, "4": 4, "5": 5, "6": b"bytes", "7": "utf8",
        "8": dt.datetime.fromtimestamp(0.008, dt.UTC), "9": uuid.UUID(bytes=b"0123456789abcdef"),
    }
    assert msgs[4].headers[":error-code"] == "code"


def test_spec_vectors_encode_byte_for_byte() -> None:
    assert es.encode({}, b"") == EMPTY
    assert es.encode({"byte": es.IntHeader(-1, 2)}, b"") == INT8
    assert es.encode({"content-type": "application/json"}, b"{'foo':'bar'}") == ONE_STR_HEADER
    assert es.encode({"0": True, "1": False, "2": es.IntHeader(2, 2), "3": es.IntHeader(3, 3), "4": 4,
                      "5": es.IntHeader(5, 5), "6": b"bytes", "7": "utf8",
                      "8": dt.datetime.fromtimestamp(0.008, dt.UTC), "9": uuid.UUID(bytes=b"0123456789abcdef")},
                     b"") == ALL_TYPES


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_spec_negative_vectors(name: str) -> None:
    with pytest.raises(es.EventStreamError):
        es.Decoder().feed(NEGATIVE[name])


def test_incremental_feeding_at_every_split() -> None:
    stream = ONE_STR_HEADER + ALL_TYPES + es.encode({"x": "y" * 300}, b"p" * 70_000)
    whole = es.Decoder().feed(stream)
    for cut in [*range(len(stream) // 50), len(stream) - 1]:
        d = es.Decoder()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert [(m.headers, m.payload) for m in got] == [(m.headers, m.payload) for m in whole]
    rng = random.Random(7)
    d, got, i = es.Decoder(), [], 0
    while i < len(stream):
        n = rng.randint(1, 40)
        got += d.feed(stream[i : i + n])
        i += n
    assert len(got) == 3 and d.pending == 0


def test_encoder_agrees_with_botocore() -> None:
    frames = [es.encode({":event-type": "chunk", "n": 7, "big": 2**40, "b": b"\x00\x01", "t": True},
                        b'{"bytes":"eyJ9"}'), es.encode_exception("throttlingException", "slow down")]
    buf = EventStreamBuffer()
    buf.add_data(b"".join(frames))
    parsed = list(buf)
    assert parsed[0].headers == {":event-type": "chunk", "n": 7, "big": 2**40, "b": b"\x00\x01", "t": True}
    assert parsed[0].payload == b'{"bytes":"eyJ9"}'
    assert parsed[1].headers[":message-type"] == "exception"


# ---------------------------------------------------------------- Bedrock → Anthropic SSE


def bedrock_frames(sse: bytes) -> list[bytes]:
    """Turn a recorded Anthropic SSE body into the frames Bedrock sends for it."""
    out = []
    for ev in split_events(sse):
        data = next(line[6:] for line in ev.split(b"\n") if line.startswith(b"data: "))
        out.append(es.encode_chunk(data, pad="abcdefghijklmnopqrstuvwxyz"[: len(data) % 27]))
    return out


@pytest.mark.parametrize("fixture", ["anthropic/simple_bedrock", "anthropic/simple",
                                     "anthropic/multi_thinking_builtin_tool", "anthropic/single_builtin_tool"])
def test_reemitted_sse_is_byte_identical_to_anthropic(fixture: str) -> None:
    sse = load(fixture).response("streaming").body
    stream = b"".join(bedrock_frames(sse))
    expected = b"".join(split_events(sse))
    rng = random.Random(fixture)
    t, out, i = es.BedrockSSE(), [], 0
    while i < len(stream):
        n = rng.randint(1, 200)
        out.append(t.feed(stream[i : i + n]))
        i += n
    out.append(t.finish())
    assert b"".join(out) == expected
    assert t.error is None


def test_anthropic_sdk_decoder_reads_our_frames() -> None:
    """The anthropic SDK's own Bedrock decoder (botocore-based) is the oracle for what we encode."""
    from anthropic.lib.bedrock._stream_decoder import AWSEventStreamDecoder

    sse = load("anthropic/simple_bedrock").response("streaming").body
    got = list(AWSEventStreamDecoder().iter_bytes(iter(bedrock_frames(sse))))
    want = split_events(sse)
    assert [(e.event, e.data) for e in got] == [
        (ev.split(b"\n")[0][7:].decode(), ev.split(b"\n")[1][6:].decode()) for ev in want]


def test_exception_becomes_anthropic_error_event_and_ends_stream() -> None:
    start = b'{"type":"message_start","message":{"id":"m","usage":{"input_tokens":1,"output_tokens":1}}}'
    stream = (es.encode_chunk(start) + es.encode_exception("throttlingException", "Too many tokens, please wait.")
              + es.encode_chunk(b'{"type":"message_stop"}'))
    t = es.BedrockSSE()
    out = t.feed(stream)
    events = split_events(out)
    assert events[0] == b"event: message_start\ndata: " + start + b"\n\n"
    assert events[1] == (b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error",'
                         b'"message":"Too many tokens, please wait."}}\n\n')
    assert len(events) == 2 and t.done and t.error == "Too many tokens, please wait."


def test_error_message_type_and_corruption_and_truncation() -> None:
    t = es.BedrockSSE()
    out = t.feed(ERROR_MSG)
    assert b'"type":"api_error","message":"message"' in out
    t = es.BedrockSSE()
    assert b"malformed Bedrock event stream" in t.feed(NEGATIVE["corrupted-payload"])
    t = es.BedrockSSE()
    frame = es.encode_chunk(b'{"type":"ping"}')
    assert t.feed(frame + frame[:10]) == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert b"ended in the middle" in t.finish()


def test_invocation_metrics_are_stripped_and_other_events_ignored() -> None:
    stop = {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 10}}
    t = es.BedrockSSE()
    out = t.feed(es.encode({":event-type": "initial-response", ":message-type": "event"}, b"{}")
                 + es.encode_chunk(msgspec.json.encode(stop)))
    assert out == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def test_bad_chunk_payload() -> None:
    bad = es.encode({":event-type": "chunk", ":message-type": "event"},
                    msgspec.json.encode({"bytes": base64.b64encode(b"not json").decode()}))
    t = es.BedrockSSE()
    assert b"malformed Bedrock chunk" in t.feed(bad)


def test_an_event_type_with_a_line_break_cannot_forge_sse_lines() -> None:
    forged = es.encode_chunk(b'{"type":"ping\\ndata: {\\"type\\":\\"message_stop\\"}"}')
    t = es.BedrockSSE()
    out = t.feed(forged)
    assert split_events(out) == [out] and out.startswith(b"event: error\n") and t.done


@pytest.mark.parametrize(("code", "etype"), [
    ("ThrottlingException", "rate_limit_error"), ("serviceUnavailableException", "overloaded_error"),
    ("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/", "invalid_request_error"),
    ("modelStreamErrorException", "api_error"), ("AccessDeniedException", "permission_error"),
    ("InvalidSignatureException", "authentication_error"), ("ModelTimeoutException", "timeout_error"),
])
def test_error_type_mapping(code: str, etype: str) -> None:
    assert es.anthropic_error_type(code) == etype


ANTHROPIC_STREAMS = sorted(n for n, f in all_corpora().items()
                           if n.removeprefix("ext:").startswith("anthropic/") and f.has("streaming")
                           and f.response("streaming").status == 200)


@pytest.mark.parametrize("fixture", ANTHROPIC_STREAMS)
def test_sink_events_meter_like_the_sse_they_become(fixture: str) -> None:
    """The proxy meters a Bedrock stream from the events BedrockSSE hands its sink, not from its SSE output:
    both must give the Messages extractor the same usage, tool calls, terminal and error."""
    sse = all_corpora()[fixture].response("streaming").body
    stream = b"".join(bedrock_frames(sse))
    messages = DIALECTS["messages"]
    direct, read_back = messages.stream(), messages.stream()
    t = es.BedrockSSE(sink=direct.event)
    rng = random.Random(fixture)
    i = 0
    while i < len(stream):
        n = rng.randint(1, 300)
        read_back.feed(t.feed(stream[i : i + n]))
        i += n
    read_back.feed(t.finish())
    got, want = direct.finish(), read_back.finish()
    assert got == want
    assert want.terminal or want.error is not None


def test_sink_gets_the_error_an_exception_becomes() -> None:
    start = b'{"type":"message_start","message":{"model":"c","usage":{"input_tokens":3,"output_tokens":1}}}'
    stream = es.encode_chunk(start) + es.encode_exception("throttlingException", "slow down")
    seen: list[tuple[bytes | None, bytes]] = []
    t = es.BedrockSSE(sink=lambda name, data: seen.append((name, data)))
    out = t.feed(stream)
    assert [n for n, _ in seen] == [b"message_start", b"error"]
    assert b"".join(sse.encode(n, d) for n, d in seen) == out
    x = DIALECTS["messages"].stream()
    for n, d in seen:
        x.event(n, d)
    got = x.finish()
    assert (got.model, got.tokens.input_tokens, got.error, got.terminal) == ("c", 3, "slow down", False)
