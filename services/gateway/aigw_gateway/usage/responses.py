"""OpenAI Responses (``/v1/responses``): typed stream events; the terminal event repeats the whole response.

Tool calls are ``*_call`` output items (``function_call``, ``custom_tool_call`` and the builtin ones:
``web_search_call``, ``mcp_call``, …), read from ``response.output_item.done`` and, for any the stream
did not show, from the terminal response's ``output``.
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
    Cached,
    Dialect,
    Extracted,
    Reasoning,
    ToolCall,
    json_text,
    openai_tokens,
)
from .stream import StreamExtractor

# ---------------------------------------------------------------- requests


_TEXT_PARTS = frozenset({"input_text", "text"})
_MESSAGE_ITEMS = (None, "message")  # input items that are messages (a bare one has no type)


class _Request(request.RequestShape):
    input: str | list[request.Message] | None = None
    max_output_tokens: int | None = None

    def prompt(self) -> str | None:
        if isinstance(self.input, str):
            return self.input
        if self.input:
            return request.last_user_prompt(self.input, "input", _TEXT_PARTS, _MESSAGE_ITEMS)
        return None

    def max_output(self) -> int | None:
        return self.max_output_tokens

# ---------------------------------------------------------------- responses


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    input_tokens_details: Cached | None = None
    output_tokens_details: Reasoning | None = None

    def tokens(self) -> TokenCounts:
        return openai_tokens(
            self.input_tokens, self.output_tokens, self.input_tokens_details, self.output_tokens_details
        )


class _Item(msgspec.Struct):
    type: str | None = None
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    status: str | None = None
    arguments: Any = None
    input: Any = None
    action: Any = None
    code: Any = None
    queries: Any = None
    error: Any = None

    def tool_call(self) -> ToolCall | None:
        """``function_call``, ``custom_tool_call`` and the builtin ``*_call`` items (web_search_call, mcp_call, …)."""
        kind = self.type
        if not kind or not kind.endswith("_call"):
            return None
        for value in (self.arguments, self.input, self.action, self.code, self.queries):
            if value is not None:
                args = json_text(value)
                break
        else:
            args = ""
        error = self.error
        if error is not None and not isinstance(error, str):
            error = json_text(error)  # an item's error is any JSON (decoded as Any): kept as its text
        if error is None and self.status == "failed":
            error = "failed"
        return ToolCall(
            name=self.name or kind.removesuffix("_call"),
            call_id=self.call_id or self.id or "",
            arguments=args,
            error=error,
        )


class _Response(msgspec.Struct):
    model: str | None = None
    status: str | None = None
    usage: _Usage | None = None
    output: list[_Item] | None = None
    error: ErrorObject | str | None = None

    def extracted(self) -> Extracted:
        error = error_text(self.error)
        if error is None and self.status == "failed":
            error = "response failed"
        return Extracted(
            model=self.model,
            tokens=self.usage.tokens() if self.usage else TokenCounts(),
            tool_calls=_tool_calls(self.output),
            terminal=True,
            error=error,
        )


class _Event(msgspec.Struct):
    type: str | None = None
    response: _Response | None = None
    item: _Item | None = None
    message: Any = None
    code: Any = None
    error: ErrorObject | str | None = None


class _Created(msgspec.Struct):
    response: _Response | None = None


_TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete"})
_EVENTS = frozenset(
    {b"response.output_item.done", b"response.created", b"error"} | {t.encode() for t in _TERMINAL}
)
_MARKERS = re.compile(
    rb'"(?:response\.(?:output_item\.done|completed|failed|incomplete|created)|error)"'
)


def _tool_calls(output: list[_Item] | None) -> list[ToolCall]:
    return [c for c in (item.tool_call() for item in output or ()) if c is not None]


class ResponsesStream(StreamExtractor):
    __slots__ = ("_calls", "_created", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._usage: _Usage | None = None
        self._calls: list[ToolCall] = []
        self._created: bytes | None = None

    def event(self, name: bytes | None, data: bytes) -> None:
        if name is None:
            if _MARKERS.search(data) is None:
                return
        elif name not in _EVENTS:
            return
        if name == b"response.created":
            # Big (it echoes instructions and tools) and only good for the model,
            # which the terminal event repeats: decode lazily, if at all.
            if self.model is None:
                self._created = data
            return
        try:
            ev = msgspec.json.decode(data, type=_Event)
        except DECODE_ERRORS:
            return
        kind = ev.type or (name.decode("utf-8", "replace") if name else None)
        if kind == "response.output_item.done":
            call = ev.item.tool_call() if ev.item is not None else None
            if call is not None:
                self._calls.append(call)
        elif kind in _TERMINAL:
            self.terminal = True
            r = ev.response
            if r is None:
                return
            if r.model:
                self.model = r.model
            if r.usage is not None:
                self._usage = r.usage
            seen = {c.call_id for c in self._calls}
            self._calls += [c for c in _tool_calls(r.output) if c.call_id not in seen]
            if kind == "response.failed":
                self.error = error_text(r.error) or "response failed"
        elif kind == "error":
            self.error = error_text(ev.error) or error_text(ErrorObject(ev.message, None, ev.code))
        elif kind == "response.created" and ev.response is not None and self.model is None:
            self.model = ev.response.model

    def finish(self) -> Extracted:
        got = super().finish()
        if got.model is None and self._created is not None:
            try:
                created = msgspec.json.decode(self._created, type=_Created)
            except DECODE_ERRORS:
                return got
            got.model = self.model = created.response.model if created.response else None
        return got

    def _tokens(self) -> TokenCounts:
        return self._usage.tokens() if self._usage else TokenCounts()

    def _tool_calls(self) -> list[ToolCall]:
        return list(self._calls)


class ResponsesDialect(Dialect):
    endpoint = "responses"
    request_shape = _Request
    body_shape = _Response

    def stream(self) -> ResponsesStream:
        return ResponsesStream()
