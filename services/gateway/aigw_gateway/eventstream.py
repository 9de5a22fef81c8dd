"""AWS event-stream framing (``application/vnd.amazon.eventstream``) and Bedrock → Anthropic SSE.

A message on the wire (all integers big-endian)::

    total length u32 | headers length u32 | prelude CRC32 u32 | headers | payload | message CRC32 u32

The prelude CRC covers the first 8 bytes; the message CRC covers everything
before it. A header is ``name length u8 | name | value type u8 | value``; value
types 0/1 bool true/false (no value), 2 i8, 3 i16, 4 i32, 5 i64, 6 bytes (u16
length), 7 string (u16 length), 8 timestamp (i64 ms), 9 uuid (16 bytes).

Bedrock's ``InvokeModelWithResponseStream`` sends ``:message-type event`` /
``:event-type chunk`` messages whose payload is ``{"bytes": "<base64>"}``; the
base64 decodes to one Anthropic stream event as JSON. Failures mid-stream come
as ``:message-type exception`` (``:exception-type`` names it, payload
``{"message": …}``) or ``:message-type error`` (``:error-code`` /
``:error-message`` headers). :class:`BedrockSSE` turns that into the SSE an
Anthropic client expects, ``event: <type>\\ndata: <json>\\n\\n``, with the JSON
passed through byte for byte, and exceptions as an Anthropic ``event: error``;
its ``sink`` gets the same events undecoded-from-SSE (the usage extractor reads
them there, with no SSE round trip).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from aigw_common import sse
from aigw_common.errors import AigwError
from aigw_common.llm import error_body
from aigw_common.sse import EventSink

from .errors import anthropic_error

PRELUDE = 12
MAX_MESSAGE = 16 * 1024 * 1024  # the spec's limit
MAX_HEADERS = 128 * 1024
CONTENT_TYPE = "application/vnd.amazon.eventstream"

HeaderValue = bool | int | bytes | str | uuid.UUID | _dt.datetime
_INT_FORMATS = {2: ">b", 3: ">h", 4: ">i", 5: ">q"}  # header value type → fixed-width integer


class EventStreamError(AigwError):
    """The byte stream is not valid event-stream framing (bad length, CRC, header type)."""


@dataclass(slots=True)
class IntHeader:
    """Marks an int header that must be encoded with a specific width (default is i32/i64)."""

    value: int
    type: int = 2  # 2 i8, 3 i16, 4 i32, 5 i64


@dataclass(slots=True)
class Message:
    headers: dict[str, HeaderValue]
    payload: bytes

    def header(self, name: str) -> str:
        v = self.headers.get(name)
        return v if isinstance(v, str) else ""


# ---------------------------------------------------------------- encoding


def _encode_header(name: str, value: HeaderValue | IntHeader) -> bytes:
    raw_name = name.encode()
    if len(raw_name) > 255:
        raise EventStreamError(f"header name {name!r} longer than 255 bytes")
    head = bytes([len(raw_name)]) + raw_name
    if isinstance(value, bool):
        return head + bytes([0 if value else 1])
    if isinstance(value, IntHeader):
        fmt = _INT_FORMATS[value.type]
        return head + bytes([value.type]) + struct.pack(fmt, value.value)
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return head + b"\x04" + struct.pack(">i", value)
        return head + b"\x05" + struct.pack(">q", value)
    if isinstance(value, bytes):
        return head + b"\x06" + struct.pack(">H", len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head + b"\x07" + struct.pack(">H", len(raw)) + raw
    if isinstance(value, _dt.datetime):
        return head + b"\x08" + struct.pack(">q", int(value.timestamp() * 1000))
    if isinstance(value, uuid.UUID):
        return head + b"\x09" + value.bytes
    raise EventStreamError(f"unsupported header value type {type(value).__name__}")


def encode(headers: Mapping[str, HeaderValue | IntHeader], payload: bytes) -> bytes:
    """One complete message."""
    hdrs = b"".join(_encode_header(k, v) for k, v in headers.items())
    total = PRELUDE + len(hdrs) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hdrs))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + hdrs + payload
    return body + struct.pack(">I", zlib.crc32(body))


# ---------------------------------------------------------------- decoding


def _decode_headers(buf: memoryview) -> dict[str, HeaderValue]:
    out: dict[str, HeaderValue] = {}
    i, n = 0, len(buf)
    try:
        while i < n:
            ln = buf[i]
            name = bytes(buf[i + 1 : i + 1 + ln]).decode()
            i += 1 + ln
            t = buf[i]
            i += 1
            value: HeaderValue
            if t == 0 or t == 1:
                value = t == 0
            elif t in _INT_FORMATS:
                fmt = _INT_FORMATS[t]
                (value,) = struct.unpack_from(fmt, buf, i)
                i += struct.calcsize(fmt)
            elif t == 6 or t == 7:
                (ln2,) = struct.unpack_from(">H", buf, i)
                raw = bytes(buf[i + 2 : i + 2 + ln2])
                if len(raw) != ln2:
                    raise EventStreamError("header value runs past the header block")
                value = raw if t == 6 else raw.decode()
                i += 2 + ln2
            elif t == 8:
                (ms,) = struct.unpack_from(">q", buf, i)
                value = _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC)
                i += 8
            elif t == 9:
                raw = bytes(buf[i : i + 16])
                if len(raw) != 16:
                    raise EventStreamError("uuid header runs past the header block")
                value = uuid.UUID(bytes=raw)
                i += 16
            else:
                raise EventStreamError(f"unknown header value type {t}")
            if name in out:
                raise EventStreamError(f"duplicate header {name!r}")
            out[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise EventStreamError(f"malformed headers: {e}") from None
    if i != n:
        raise EventStreamError("headers overrun their declared length")
    return out


class Decoder:
    """Incremental: feed arbitrary chunks, get the messages completed so far."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held back (non-zero at end of stream = truncated)."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[Message]:
        self._buf += chunk
        out: list[Message] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= PRELUDE:
            total, hlen, pcrc = struct.unpack_from(">III", buf, pos)
            if zlib.crc32(memoryview(buf)[pos : pos + 8]) != pcrc:
                raise EventStreamError("prelude CRC mismatch")
            if total < PRELUDE + 4 + hlen or total > self._max or hlen > MAX_HEADERS:
                raise EventStreamError(f"implausible lengths (total {total}, headers {hlen})")
            if len(buf) - pos < total:
                break
            mv = memoryview(buf)[pos : pos + total]
            (mcrc,) = struct.unpack_from(">I", mv, total - 4)
            if zlib.crc32(mv[: total - 4]) != mcrc:
                raise EventStreamError("message CRC mismatch")
            headers = _decode_headers(mv[PRELUDE : PRELUDE + hlen])
            out.append(Message(headers, bytes(mv[PRELUDE + hlen : total - 4])))
            mv.release()
            pos += total
        if pos:
            del self._buf[:pos]
        return out


# ---------------------------------------------------------------- Bedrock → Anthropic SSE

# Bedrock exception names (case-insensitive, without a trailing "Exception") → Anthropic error type.
_ANTHROPIC_ERROR_TYPES = {
    "throttling": "rate_limit_error",
    "servicequotaexceeded": "rate_limit_error",
    "serviceunavailable": "overloaded_error",
    "modelnotready": "overloaded_error",
    "validation": "invalid_request_error",
    "accessdenied": "permission_error",
    "unrecognizedclient": "authentication_error",
    "invalidsignature": "authentication_error",
    "expiredtoken": "authentication_error",
    "resourcenotfound": "not_found_error",
    "modeltimeout": "timeout_error",
}


def anthropic_error_type(aws_code: str) -> str:
    """``ThrottlingException`` / ``throttlingException`` / ``ThrottlingException:http://…`` → ``rate_limit_error``."""
    key = aws_code.partition(":")[0].strip().lower().removesuffix("exception")
    return _ANTHROPIC_ERROR_TYPES.get(key, "api_error")


class _Chunk(msgspec.Struct):
    bytes: str = ""


class _Typed(msgspec.Struct):
    type: str = ""



_chunk_dec = msgspec.json.Decoder(_Chunk)
_typed_dec = msgspec.json.Decoder(_Typed)


def _strip_invocation_metrics(event: bytes) -> bytes:
    # Bedrock adds "amazon-bedrock-invocationMetrics" to message_stop; Anthropic never sends it.
    obj = msgspec.json.decode(event)
    if isinstance(obj, dict):
        obj.pop("amazon-bedrock-invocationMetrics", None)
    return msgspec.json.encode(obj)


class BedrockSSE:
    """Feed raw Bedrock response bytes; get Anthropic SSE bytes back, event by event.

    After a framing error or an exception message the stream is over: later bytes are ignored.
    ``error`` holds the in-band error message (for recording), if any. ``sink``, when set, also gets
    every event as ``(name, data)``, before its bytes are returned.
    """

    def __init__(self, sink: EventSink | None = None) -> None:
        self._dec = Decoder()
        self.done = False
        self.error: str | None = None
        self.sink = sink

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        try:
            msgs = self._dec.feed(chunk)
        except EventStreamError as e:
            return self._fail("api_error", f"malformed Bedrock event stream: {e.message}")
        out = []
        for m in msgs:
            out.append(self._convert(m))
            if self.done:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        """At end of the upstream body: an error event if it stopped mid-message."""
        if not self.done and self._dec.pending:
            return self._fail("api_error", "Bedrock event stream ended in the middle of a message")
        return b""

    def _fail(self, error_type: str, message: str) -> bytes:
        self.done = True
        self.error = message
        return self._emit(b"error", anthropic_error(error_type, message))

    def _emit(self, name: bytes, data: bytes) -> bytes:
        if self.sink is not None:
            self.sink(name, data)
        return sse.encode(name, data)

    def _convert(self, m: Message) -> bytes:
        mtype = m.header(":message-type") or "event"
        if mtype == "exception":
            code = m.header(":exception-type") or "InternalServerException"
            return self._fail(anthropic_error_type(code), error_body.parse(m.payload).message or code)
        if mtype == "error":
            code = m.header(":error-code") or "InternalFailure"
            return self._fail(anthropic_error_type(code), m.header(":error-message") or code)
        if m.header(":event-type") != "chunk":
            return b""  # other event types (e.g. initial-response) carry nothing for the client
        try:
            event = base64.b64decode(_chunk_dec.decode(m.payload).bytes, validate=True)
            etype = _typed_dec.decode(event).type
        except (msgspec.DecodeError, binascii.Error) as e:
            return self._fail("api_error", f"malformed Bedrock chunk: {e}")
        if not etype or "\n" in etype or "\r" in etype:  # a line break in the name would forge SSE lines
            return self._fail("api_error", "Bedrock chunk without a usable event type")
        if etype == "message_stop" and b"amazon-bedrock-invocationMetrics" in event:
            event = _strip_invocation_metrics(event)
        elif b"\n" in event or b"\r" in event:
            event = msgspec.json.encode(msgspec.json.decode(event))  # keep one data line per event
        if etype == "error":
            self.done = True
        return self._emit(etype.encode(), event)


# ---------------------------------------------------------------- encoding Bedrock frames (mock Bedrock, tests)


def encode_chunk(event_json: bytes, *, pad: str = "") -> bytes:
    """A Bedrock ``chunk`` message carrying one Anthropic stream event (``p`` is Bedrock's length padding)."""
    payload = {"bytes": base64.b64encode(event_json).decode()}
    if pad:
        payload["p"] = pad
    return encode(
        {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
        msgspec.json.encode(payload),
    )


def encode_exception(exception_type: str, message: str) -> bytes:
    return encode(
        {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"},
        msgspec.json.encode({"message": message}),
    )
