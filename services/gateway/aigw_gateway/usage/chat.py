"""OpenAI chat completions (``/v1/chat/completions``): requests, bodies, ``data:``-only streams ending in ``[DONE]``.

A chat stream carries usage only when the request asked for it (``stream_options.include_usage``); the gateway
asks on the client's behalf and hides the extra usage-only chunk from a client that did not
(:class:`UsageChunkFilter`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from aigw_common.llm.error_body import ErrorObject, error_text
from aigw_common.schemas import TokenCounts
from aigw_common.sse import SSEFramer
from aigw_common.sse import data_of as sse_data

from . import request
from .common import (
    DECODE_ERRORS,
    Cached,
    Dialect,
    Extracted,
    PartialCall,
    Reasoning,
    ToolCall,
    json_text,
    openai_tokens,
)
from .stream import MAX_LINE, StreamExtractor

# ---------------------------------------------------------------- requests


_TEXT_PARTS = frozenset({"text"})


class _Request(request.RequestShape):
    messages: list[request.Message] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None

    def prompt(self) -> str | None:
        return request.last_user_prompt(self.messages, "messages", _TEXT_PARTS) if self.messages else None

    def max_output(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class _StreamFlags(msgspec.Struct):
    stream: Any = None
    stream_options: Any = msgspec.UNSET


_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


def inject_include_usage(body: bytes) -> bytes | None:
    """Chat + ``stream: true`` without ``stream_options.include_usage``: a body that asks for usage.

    Without it an OpenAI chat stream carries no usage at all. When the client
    sent no ``stream_options`` the key is spliced in after the opening brace,
    so a large body is not re-encoded.
    """
    try:
        flags = msgspec.json.decode(body, type=_StreamFlags)
    except DECODE_ERRORS:
        return None
    if flags.stream is not True:
        return None
    opts = flags.stream_options
    if opts is msgspec.UNSET:
        at = body.index(b"{") + 1
        return body[:at] + _INCLUDE_USAGE + body[at:]
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return None
    doc = msgspec.json.decode(body)
    doc["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return msgspec.json.encode(doc)


_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


class _UsageOnly(msgspec.Struct):
    choices: Any = None
    usage: Any = None


class UsageChunkFilter:
    """Drops the usage-only chunk (``choices: []`` with ``usage``) from a chat stream whose client did not
    ask for usage; every other event is relayed byte for byte, as soon as its blank line arrives.

    The gateway adds ``stream_options.include_usage`` for metering; clients that index ``choices[0]``
    would crash on a chunk they never asked for. Only the incomplete tail of the stream is held back
    (at most ``MAX_LINE``; past that it is relayed unread rather than held). Framing: :class:`SSEFramer`.

    It frames every event anyway, so it also meters them (:meth:`metering`): the stream's extractor gets the
    framed events instead of reading the bytes a second time (one pass over the SSE, not two). Should a tail
    outgrow ``MAX_LINE`` the extractor reads the bytes itself from there on, as it would without a relay.
    """

    __slots__ = ("_events", "_ext", "_framer", "_skip", "_split", "_unframed")

    def __init__(self) -> None:
        self._framer = SSEFramer(MAX_LINE)
        self._ext: StreamExtractor | None = None
        self._events: list[bytes] = []  # framed by the last feed, not metered yet
        self._unframed: bytes | None = b""  # a tail relayed unread (None once the extractor reads the bytes)
        self._skip = (0, 0)  # the last feed's chunk[a:b]: whole events neither hiding nor metering needs
        self._split = 0  # of the events framed around them, how many came before

    def metering(self, ext: StreamExtractor) -> Callable[[bytes], None]:
        """Meter into ``ext`` what this relay frames: call the reader returned with each chunk after ``feed``
        (after writing what it returned: the client's bytes first); ``finish`` meters the rest."""
        self._ext = ext
        return self._meter

    def feed(self, chunk: bytes) -> bytes:
        ext = self._ext
        a = b = 0
        if ext is not None and self._unframed == b"" and chunk[-2:] == b"\n\n" and b"\r" not in chunk \
                and not self._framer.holding:
            # whole events (nothing held before, the chunk ends at a blank line): those the relay does not hide
            # and the extractor does not read (text deltas) are relayed as they are, neither framed nor metered
            a, b = ext.unread(chunk)
            if b == len(chunk) and a == 0:
                self._skip = (a, b)
                return chunk
        self._skip = (a, b)
        if b > a:
            return self._around(chunk, a, b)
        events, overflow = self._framer.feed(chunk)
        if self._ext is not None and self._unframed is not None:
            self._events = events
            if overflow:
                self._unframed = overflow
        if not events:
            return overflow
        search = _EMPTY_CHOICES.search  # _usage_only's first test, inline: this runs for every event
        if len(events) == 1 and not overflow:  # one event per read: the commonest case
            e = events[0]
            return b"" if search(e) and _usage_only(e) else e
        return b"".join(_shown(events)) + overflow

    def _around(self, chunk: bytes, a: int, b: int) -> bytes:
        """Frame ``chunk[:a]`` and ``chunk[b:]``, relay ``chunk[a:b]`` as it is (nothing was held before)."""
        head = self._framer.feed(chunk[:a])[0] if a else []
        tail, overflow = self._framer.feed(chunk[b:]) if b < len(chunk) else ([], b"")
        self._events, self._split = head + tail, len(head)
        if overflow:
            self._unframed = overflow
        kept_head, kept_tail = _shown(head), _shown(tail)
        if len(kept_head) == len(head) and len(kept_tail) == len(tail) and not overflow \
                and not self._framer.holding:
            return chunk
        return b"".join([*kept_head, chunk[a:b], *kept_tail, overflow])

    def _meter(self, chunk: bytes) -> None:
        (a, b), self._skip = self._skip, (0, 0)
        if a == 0 and b and b == len(chunk):
            return
        ext = self._ext
        assert ext is not None
        if self._unframed is None:  # past an over-long tail: the extractor reads the bytes
            ext.feed(chunk)
            return
        events, self._events = self._events, []
        if b > a:
            n = self._split
            if a:
                ext.framed(chunk[:a], events[:n])
            ext.framed(chunk[b:], events[n:])
        else:
            ext.framed(chunk, events)
        if self._unframed:
            ext.feed(self._unframed)
            self._unframed = None

    def finish(self) -> bytes:
        """The rest to relay (metered when metering). Again after the end: nothing."""
        rest = self._framer.finish()
        if self._ext is not None and self._unframed is not None and rest:
            self._ext.framed(b"", [rest])
        return b"" if _usage_only(rest) else rest


def _shown(events: list[bytes]) -> list[bytes]:
    """The events a client that did not ask for usage gets: all but the usage-only chunk."""
    search = _EMPTY_CHOICES.search  # _usage_only's first test, inline: this runs for every event
    return [e for e in events if not (search(e) and _usage_only(e))]


def _usage_only(event: bytes) -> bool:
    if not _EMPTY_CHOICES.search(event):
        return False
    try:
        doc = msgspec.json.decode(sse_data(event), type=_UsageOnly)
    except DECODE_ERRORS:
        return False
    return doc.choices == [] and isinstance(doc.usage, dict)


# ---------------------------------------------------------------- responses


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: Any = None
    input: Any = None  # custom tools


class _ToolCall(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    type: str | None = None
    function: _Function | None = None
    custom: _Function | None = None


class _Delta(msgspec.Struct):  # a stream chunk's delta, or a whole body's message
    tool_calls: list[_ToolCall] | None = None
    function_call: _Function | None = None  # the legacy single call


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    message: _Delta | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: Cached | None = None
    completion_tokens_details: Reasoning | None = None

    def tokens(self) -> TokenCounts:
        return openai_tokens(
            self.prompt_tokens,
            self.completion_tokens,
            self.prompt_tokens_details,
            self.completion_tokens_details,
        )


class _Body(msgspec.Struct):  # a whole response, or one stream chunk
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: ErrorObject | str | None = None

    def extracted(self) -> Extracted:
        calls = _Calls()
        for choice in self.choices or ():
            if choice.message is not None:
                calls.add(choice.index, choice.message)
        return Extracted(
            model=self.model,
            tokens=self.usage.tokens() if self.usage else TokenCounts(),
            tool_calls=calls.done(),
            terminal=True,
            error=error_text(self.error),
        )


class _Calls:
    """Tool calls assembled per (choice, index) from deltas (a stream) or messages (a body)."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[tuple[int, int], PartialCall] = {}

    def add(self, choice: int, delta: _Delta) -> None:
        calls = self._calls
        if delta.function_call is not None:
            fc = delta.function_call
            acc = calls.get((choice, -1))
            if acc is None:
                acc = calls[(choice, -1)] = PartialCall("", "")
            if fc.name:
                acc.name = fc.name
            if isinstance(fc.arguments, str):
                acc.parts.append(fc.arguments)
        for tc in delta.tool_calls or ():
            index = tc.index
            if index is None:  # some OpenAI-compatible servers omit it: a new id opens a new call
                mine = [k[1] for k in calls if k[0] == choice and k[1] >= 0]
                last = max(mine, default=-1)
                new = last < 0 or (tc.id is not None and tc.id != calls[(choice, last)].call_id)
                index = last + 1 if new else last
            acc = calls.get((choice, index))
            if acc is None:
                acc = calls[(choice, index)] = PartialCall("", "")
            if tc.id:
                acc.call_id = tc.id
            fn = tc.function or tc.custom
            if fn is not None:
                if fn.name:
                    acc.name = fn.name
                frag = fn.arguments if fn.arguments is not None else fn.input
                if frag is not None:
                    acc.parts.append(json_text(frag))

    def done(self) -> list[ToolCall]:
        return [a.done() for a in self._calls.values()]


# Chunks that can matter: tool-call fragments, errors, a usage object (not ``"usage":null``).
_MARKERS = re.compile(rb'"(?:tool_calls|function_call|error)"|"usage"\s*:\s*\{')


class ChatStream(StreamExtractor):
    __slots__ = ("_calls", "_first", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._usage: _Usage | None = None
        self._calls = _Calls()
        self._first = True

    def unread(self, chunk: bytes) -> tuple[int, int]:
        """Past the first event (the model) only markers and the terminal ``[DONE]`` are read; the usage-only
        chunk's empty choices count too, for the relay that hides it. A read that holds the first event passes
        over what follows it when it is one ``data: {`` line (read first, it is the first event); then everything
        up to the event holding the first of those, provided each data line there opens an event (a marker
        cannot then be split across the lines of one)."""
        start = 0
        if self._first:
            start = chunk.find(b"\n\n") + 2
            if chunk[:7] != b"data: {" or chunk.find(b"\n") != start - 2 or start == len(chunk):
                return 0, 0
        # three searches with literal prefixes: one regex with the alternatives at its top is 3x slower here
        end = len(chunk)
        at = chunk.find(b"[DONE]", start)
        if at < 0:
            at = end
        if (m := _EMPTY_CHOICES.search(chunk, start, at)) is not None:
            at = m.start()
        if (m := _MARKERS.search(chunk, start, at)) is not None:
            at = m.start()
        if at < end:  # back to the start of the event that holds it
            at = chunk.rfind(b"\n\n", start, at) + 2
            if at < 2:
                return 0, 0
        if chunk.find(b"\n", start) != at - 2 and \
                chunk.count(b"\ndata:", start, at) != chunk.count(b"\n\ndata:", start, at):
            return 0, 0  # one event, or each data line opens one
        return start, at

    def event(self, name: bytes | None, data: bytes) -> None:
        if data[:1] != b"{":
            data = data.strip()
            if data == b"[DONE]":
                self.terminal = True
                return
            if data[:1] != b"{":
                return
        if not self._first and _MARKERS.search(data) is None:
            return
        self._first = False
        try:
            chunk = msgspec.json.decode(data, type=_Body)
        except DECODE_ERRORS:
            return
        if chunk.model:
            self.model = chunk.model
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.error is not None:
            self.error = error_text(chunk.error)
        for choice in chunk.choices or ():
            delta = choice.delta or choice.message
            if delta is not None:
                self._calls.add(choice.index, delta)

    def _tokens(self) -> TokenCounts:
        return self._usage.tokens() if self._usage else TokenCounts()

    def _tool_calls(self) -> list[ToolCall]:
        return self._calls.done()


class ChatDialect(Dialect):
    endpoint = "chat_completions"
    request_shape = _Request
    body_shape = _Body

    def stream(self) -> ChatStream:
        return ChatStream()

    def ask_for_usage(self, body: bytes) -> tuple[bytes, UsageChunkFilter] | None:
        with_usage = inject_include_usage(body)
        return None if with_usage is None else (with_usage, UsageChunkFilter())
