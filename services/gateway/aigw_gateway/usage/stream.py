"""The streaming extractor every dialect specialises: SSE bytes → events → the dialect's ``event``.

``feed`` runs for every streamed chunk, so framing is :class:`aigw_common.sse.SSEDecoder` (one C ``split``
per chunk) and each dialect decides from the ``event:`` name or a substring test whether an event can
matter before decoding it (typed msgspec Structs that skip every field we do not read). Text deltas —
nearly all events — are never decoded. A source that already has the events (Bedrock's event stream)
calls ``event`` directly and skips the SSE round trip; a relay that frames the stream anyway (a chat stream
whose usage chunk is hidden) hands over its raw events (``framed``) rather than the bytes.
"""

from __future__ import annotations

from aigw_common.schemas import TokenCounts
from aigw_common.sse import MAX_LINE as SSE_MAX_LINE
from aigw_common.sse import SSEDecoder, events_of

from .common import Extracted, ToolCall, body_error

MAX_LINE = SSE_MAX_LINE  # an SSE line (or event) longer than this is dropped: bounded memory
HEAD = 64 << 10  # kept of a "stream" that never produced an event (an error body in JSON)


class StreamExtractor:
    """One streamed response: ``feed`` bytes (or ``event`` decoded events), then ``finish``.

    At ``finish`` an unterminated last event is still read (upstreams that close without the final blank
    line). An over-long line is dropped (the relay forwards it anyway; only metering skips it). A stream
    that never produced an event but starts with a JSON error body (an error status relayed as is) yields
    that error. Subclasses implement ``event`` and say what they found through ``_tokens`` and
    ``_tool_calls``.
    """

    __slots__ = ("_head", "_sse", "error", "model", "terminal")

    def __init__(self) -> None:
        self._sse = SSEDecoder(MAX_LINE)
        self._head: bytearray | None = bytearray()
        self.model: str | None = None
        self.terminal = False
        self.error: str | None = None

    @property
    def held(self) -> bytes:
        """The incomplete line held (bounded; for tests and debugging)."""
        return self._sse.held

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._head is not None and len(self._head) < HEAD:
            self._head += chunk[: HEAD - len(self._head)]
        events = self._sse.feed(chunk)
        if events:
            self._head = None
            for name, data in events:
                self.event(name, data)

    def framed(self, chunk: bytes, events: list[bytes]) -> None:
        """``chunk`` as a relay already framed it (:class:`aigw_common.sse.SSEFramer`): ``events`` are the raw
        events it completed. The same as ``feed(chunk)`` without framing the stream a second time; the raw
        events must start where the extractor's own reading stands (use one or the other per stream)."""
        if self._head is not None and len(self._head) < HEAD:
            self._head += chunk[: HEAD - len(self._head)]
        if events and (decoded := events_of(events, MAX_LINE)):
            self._head = None
            event = self.event
            for name, data in decoded:
                event(name, data)

    def event(self, name: bytes | None, data: bytes) -> None:
        """One event: its ``event:`` name (None when the stream names none) and its joined ``data``."""
        raise NotImplementedError

    def unread(self, chunk: bytes) -> tuple[int, int]:
        """``(start, end)``: the whole events of ``chunk[start:end]`` — ``chunk`` being whole LF-framed events,
        nothing held before it — are ones :meth:`event` would not read, provided it reads ``chunk[:start]``
        first; a relay that frames the stream itself may leave them unframed and unmetered (most events are text
        deltas). A dialect that can tell from the raw bytes says so; by default none is passed over."""
        return 0, 0

    def finish(self) -> Extracted:
        for name, data in self._sse.finish():
            self._head = None
            self.event(name, data)
        if self._head is not None and self._head.lstrip()[:1] == b"{" and self.error is None:
            self.error = body_error(bytes(self._head))
        return Extracted(
            model=self.model,
            tokens=self._tokens(),
            tool_calls=self._tool_calls(),
            terminal=self.terminal,
            error=self.error,
        )

    def _tokens(self) -> TokenCounts:
        raise NotImplementedError

    def _tool_calls(self) -> list[ToolCall]:
        raise NotImplementedError
