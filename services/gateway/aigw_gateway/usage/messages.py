"""Anthropic Messages (``/v1/messages``, also Bedrock's, whose event stream is decoded into these events).

Usage is spread over ``message_start`` and ``message_delta`` (each field takes its latest non-null value);
tool calls are ``*tool_use`` content blocks whose input streams as ``input_json_delta`` fragments, and a
server tool's ``*_tool_result`` block can mark its call failed.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from aigw_common.llm.error_body import ErrorObject, error_text
from aigw_common.schemas import TokenCounts

from . import request
from .common import (
    DECODE_ERRORS,
    Dialect,
    Extracted,
    PartialCall,
    ToolCall,
)
from .stream import StreamExtractor

# ---------------------------------------------------------------- requests


_TEXT_PARTS = frozenset({"text"})


class _Request(request.RequestShape):
    messages: list[request.Message] | None = None
    max_tokens: int | None = None

    def prompt(self) -> str | None:
        return request.last_user_prompt(self.messages, "messages", _TEXT_PARTS) if self.messages else None

    def max_output(self) -> int | None:
        return self.max_tokens

# ---------------------------------------------------------------- responses


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _Block(msgspec.Struct):
    type: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: Any = None
    is_error: Any = None

    def result_error(self) -> str | None:
        """A server tool's ``*_tool_result`` block that reports an error: its code."""
        c = self.content
        if isinstance(c, dict) and str(c.get("type", "")).endswith("_error"):
            return str(c.get("error_code") or c.get("type"))
        if self.is_error is True:
            return "error"
        return None


class _Delta(msgspec.Struct):
    type: str | None = None
    partial_json: Any = None


class _Message(msgspec.Struct):  # a whole response, or message_start's message
    type: str | None = None
    model: str | None = None
    usage: _Usage | None = None
    content: list[_Block] | None = None
    error: ErrorObject | str | None = None

    def extracted(self) -> Extracted:
        usage = _Tokens()
        usage.merge(self.usage)
        calls = _Calls()
        for block in self.content or ():
            calls.block(block)
        error = error_text(self.error)
        if error is None and self.type == "error":
            error = "error"
        return Extracted(
            model=self.model,
            tokens=usage.tokens(),
            tool_calls=calls.done(),
            terminal=True,
            error=error,
        )


class _Event(msgspec.Struct):
    type: str | None = None
    message: _Message | None = None
    index: int | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: ErrorObject | str | None = None


class _Tokens:
    """Usage merged over events: each field takes its latest non-null value."""

    __slots__ = (
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "input_tokens",
        "output_tokens",
    )

    def __init__(self) -> None:
        self.input_tokens = self.output_tokens = 0
        self.cache_read_input_tokens = self.cache_creation_input_tokens = 0

    def merge(self, u: _Usage | None) -> None:
        if u is None:
            return
        if u.input_tokens is not None:
            self.input_tokens = u.input_tokens
        if u.output_tokens is not None:
            self.output_tokens = u.output_tokens
        if u.cache_read_input_tokens is not None:
            self.cache_read_input_tokens = u.cache_read_input_tokens
        if u.cache_creation_input_tokens is not None:
            self.cache_creation_input_tokens = u.cache_creation_input_tokens

    def tokens(self) -> TokenCounts:
        return TokenCounts(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_input_tokens,
            cache_write_tokens=self.cache_creation_input_tokens,
        )


class _Calls:
    """Tool calls from content blocks, in order: a tool-use block opens one, a ``*_tool_result`` block can
    mark its call's error."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: list[PartialCall] = []

    def block(self, b: _Block) -> PartialCall | None:
        """The call the block opens (its input may still stream in), if it is a tool use."""
        kind = b.type or ""
        if kind.endswith("tool_use"):  # tool_use, server_tool_use, mcp_tool_use
            acc = PartialCall(b.name or "", b.id or "", start=b.input)
            self._calls.append(acc)
            return acc
        if kind.endswith("_tool_result"):
            err = b.result_error()
            if err is not None:
                for acc in self._calls:
                    if acc.call_id == b.tool_use_id:
                        acc.error = err
        return None

    def done(self) -> list[ToolCall]:
        return [a.done() for a in self._calls]


_DECODE = frozenset({b"message_start", b"content_block_start", b"message_delta", b"error"})
_MARKERS = re.compile(
    rb'input_json_delta|"(?:message_start|content_block_start|message_delta|message_stop|error)"'
)


class MessagesStream(StreamExtractor):
    __slots__ = ("_calls", "_open", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._usage = _Tokens()
        self._calls = _Calls()
        self._open: dict[int | None, PartialCall] = {}  # content block index → its call

    def event(self, name: bytes | None, data: bytes) -> None:
        if name is None:
            if _MARKERS.search(data) is None:
                return
        elif name == b"content_block_delta":
            if b"input_json_delta" not in data:
                return
        elif name == b"message_stop":
            self.terminal = True
            return
        elif name not in _DECODE:
            return
        try:
            ev = msgspec.json.decode(data, type=_Event)
        except DECODE_ERRORS:
            return
        kind = ev.type
        if kind == "content_block_delta":
            d = ev.delta
            if d is not None and d.type == "input_json_delta" and isinstance(d.partial_json, str):
                acc = self._open.get(ev.index)
                if acc is not None:
                    acc.parts.append(d.partial_json)
        elif kind == "content_block_start":
            if ev.content_block is not None:
                acc = self._calls.block(ev.content_block)
                if acc is not None:
                    self._open[ev.index] = acc
        elif kind == "message_start":
            m = ev.message
            if m is not None:
                if m.model:
                    self.model = m.model
                self._usage.merge(m.usage)
        elif kind == "message_delta":
            self._usage.merge(ev.usage)
        elif kind == "message_stop":
            self.terminal = True
        elif kind == "error":
            self.error = error_text(ev.error) or "error"

    def _tokens(self) -> TokenCounts:
        return self._usage.tokens()

    def _tool_calls(self) -> list[ToolCall]:
        return self._calls.done()


class MessagesDialect(Dialect):
    endpoint = "messages"
    request_shape = _Request
    body_shape = _Message

    def stream(self) -> MessagesStream:
        return MessagesStream()
