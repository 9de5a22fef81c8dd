"""Server-sent events framing, in one place: every SSE body we read goes through here.

Two readers over the same rules (the WHATWG event-stream format as LLM APIs use it):

- :class:`SSEDecoder`: bytes in arbitrary chunks → complete ``(event, data)`` pairs. Lines may end in LF,
  CRLF or CR (a CRLF split across chunks is one line end); ``data:`` lines of one event are joined with
  LF; ``event:`` names it; comments and other fields are ignored; an unterminated last event is still
  delivered by :meth:`SSEDecoder.finish` (upstreams that close without the final blank line).
- :class:`SSEFramer`: bytes → the raw bytes of each complete event (its blank line included), for a relay
  that must forward what it does not change byte for byte.

And one writer, :func:`encode`: an event as bytes on the wire.

Both are bounded: nothing longer than ``max_line`` is ever held. What happens past it is the caller's
choice: ``strict`` raises :class:`SSETooLarge` (a client of the stream: the stream is unusable); otherwise
the over-long line is dropped and reading goes on at the next line (a metering relay: the bytes are
forwarded anyway, only that line is not read).

The decoder is the gateway's hot loop (every streamed chunk): one ``split`` per chunk, no per-chunk copy
unless a line straddles chunks or the chunk carries a CR.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import AigwError

MAX_LINE = 16 << 20  # default bound on a line (and on an event's joined data)

Event = tuple[bytes | None, bytes]  # (the event: field or None, the joined data)
EventSink = Callable[[bytes | None, bytes], None]  # takes events one by one, as the decoder gives them


class SSETooLarge(AigwError):
    """An SSE line or event longer than the reader's bound (strict readers only)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"server-sent event line or data longer than {limit} bytes", retryable=False)
        self.limit = limit


class SSEDecoder:
    """Incremental SSE decoder: ``feed`` bytes, get the events completed by them."""

    __slots__ = ("_cr", "_data", "_event", "_overflow", "_partial", "max_line", "strict")

    def __init__(self, max_line: int = MAX_LINE, *, strict: bool = False) -> None:
        self.max_line = max_line
        self.strict = strict
        self._partial = bytearray()  # the start of a line whose end has not arrived
        self._cr = False  # the last chunk ended in CR: a LF first in the next one belongs to it
        self._overflow = False  # dropping the rest of an over-long line
        self._event: bytes | None = None
        self._data: bytes | None = None

    @property
    def pending(self) -> int:
        """Bytes held for a line not yet complete (bounded by ``max_line``)."""
        return len(self._partial)

    @property
    def held(self) -> bytes:
        """A copy of the incomplete line held (for tests and debugging)."""
        return bytes(self._partial)

    def feed(self, chunk: bytes) -> list[Event]:
        out: list[Event] = []
        if not chunk:
            return out
        if self._cr or b"\r" in chunk:
            chunk = self._fold_cr(chunk)
        lines = chunk.split(b"\n")
        rest = lines.pop()  # after the last newline: the start of a line
        if not lines:
            self._buffer(rest)
            return out
        if self._overflow:  # the tail of a line we dropped
            lines[0] = b":"
            self._overflow = False
        elif self._partial:
            lines[0] = bytes(self._partial) + lines[0]
            self._partial.clear()
        event = self._event
        data = self._data
        limit = self.max_line
        for line in lines:
            if not line:
                if data is not None:
                    out.append((event, data))
                    data = None
                event = None
            elif line.startswith(b"data:"):
                v = line[5:]
                if v[:1] == b" ":
                    v = v[1:]
                if data is None:
                    if len(v) <= limit:
                        data = v
                    elif self.strict:
                        raise SSETooLarge(limit)
                elif len(data) + len(v) < limit:
                    data = data + b"\n" + v
                elif self.strict:
                    raise SSETooLarge(limit)
            elif line.startswith(b"event:"):
                event = line[6:].strip()
        self._event = event
        self._data = data
        if rest:
            self._buffer(rest)
        return out

    def finish(self) -> list[Event]:
        """The events still held: a last line or event the stream did not terminate. Resets the decoder."""
        out: list[Event] = []
        if self._cr:
            out += self.feed(b"\n")
        if self._partial or self._data is not None:
            out += self.feed(b"\n\n")
        self._partial.clear()
        self._overflow = self._cr = False
        self._event = self._data = None
        return out

    def _fold_cr(self, chunk: bytes) -> bytes:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):  # maybe the first half of a CRLF
            chunk = chunk[:-1]
            self._cr = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _buffer(self, piece: bytes) -> None:
        if self._overflow:
            return
        if len(self._partial) + len(piece) > self.max_line:
            if self.strict:
                raise SSETooLarge(self.max_line)
            self._partial.clear()
            self._overflow = True
            return
        self._partial += piece


# an event ends at a blank line: two line ends in a row, each LF, CRLF or CR
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")


class SSEFramer:
    """Raw events for byte-for-byte relaying: ``feed`` returns the complete events (their terminating blank
    line included) and, when the held tail outgrows ``max_line``, that tail as ``overflow`` (to forward
    unread rather than hold). The concatenation of everything returned is exactly the input."""

    __slots__ = ("_buf", "max_line")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> tuple[list[bytes], bytes]:
        buf = self._buf
        if not buf and b"\r" not in chunk:  # LF only (the common case): the blank lines are the b"\n\n"s
            parts = chunk.split(b"\n\n")
            rest = parts.pop()
            if len(parts) == 1 and not rest:  # one whole event (one read per event)
                return [chunk], b""
            if len(rest) > self.max_line:
                return [p + b"\n\n" for p in parts], rest
            buf += rest
            return [p + b"\n\n" for p in parts], b""
        buf += chunk
        events: list[bytes] = []
        start = 0
        while (m := _EVENT_END.search(buf, start)) is not None:
            events.append(bytes(buf[start:m.end()]))
            start = m.end()
        del buf[:start]
        overflow = b""
        if len(buf) > self.max_line:
            overflow = bytes(buf)
            buf.clear()
        return events, overflow

    @property
    def holding(self) -> bool:
        """True while part of an event is held back (the next chunk continues it)."""
        return bool(self._buf)

    def finish(self) -> bytes:
        """The unterminated rest of the stream (possibly empty)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def encode(event: bytes | None, data: bytes) -> bytes:
    """One event on the wire: ``event:`` when named, then ``data``, one ``data:`` line per line of it."""
    if b"\n" in data or b"\r" in data:
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        body = b"".join([b"data: " + line + b"\n" for line in lines])
    else:
        body = b"data: " + data + b"\n"
    return (b"event: " + event + b"\n" + body if event else body) + b"\n"


def data_of(event: bytes) -> bytes:
    """The joined ``data:`` of one raw event (as :class:`SSEFramer` returns it), whatever its length."""
    ev = event_of(event, max(len(event), 1))
    return ev[1] if ev is not None else b""


def events_of(raws: list[bytes], max_line: int = MAX_LINE) -> list[Event]:
    """:func:`event_of` over the raw events of one chunk, those without data left out."""
    out: list[Event] = []
    for raw in raws:
        if raw[:6] == b"data: " and raw.find(b"\n") == len(raw) - 2 and raw[-1:] == b"\n" and b"\r" not in raw \
                and len(raw) - 8 <= max_line:  # event_of's fast path, inline: this runs for every event
            out.append((None, raw[6:-2]))
        elif (ev := event_of(raw, max_line)) is not None:
            out.append(ev)
    return out


def event_of(raw: bytes, max_line: int = MAX_LINE) -> Event | None:
    """The event in one raw event as :class:`SSEFramer` frames it (or in its unterminated rest), exactly as an
    :class:`SSEDecoder` reading the whole stream delivers it; None for one without data (a comment, a stray
    line end). A relay that frames the stream anyway meters from these instead of decoding the bytes again.

    The commonest shape, one ``data:`` line ended by a blank line (LF), is sliced out; anything else is read
    by a decoder. A framed event holds one dispatch at most: the framer ends it at its first blank line."""
    if raw[:6] == b"data: " and raw.find(b"\n") == len(raw) - 2 and raw[-1:] == b"\n" and b"\r" not in raw \
            and len(raw) - 8 <= max_line:
        return None, raw[6:-2]
    d = SSEDecoder(max_line)
    out = d.feed(raw)
    out += d.finish()
    return out[0] if out else None


__all__ = ["MAX_LINE", "Event", "EventSink", "SSEDecoder", "SSEFramer", "SSETooLarge", "data_of", "encode", "event_of", "events_of"]
