"""Request parsing and usage / tool-call extraction for the three bridged APIs.

The gateway forwards bodies byte for byte; this module only *reads* them: the
request for admission and recording, the response for token usage, tool calls,
the terminal event and in-band errors. ``StreamExtractor.feed`` runs for every
streamed chunk, so it splits SSE lines in C (``bytes.split``) and decides from
the ``event:`` name or a substring test whether an event can matter before
decoding it (typed msgspec Structs that skip every field we do not read).
Text deltas — nearly all events — are never decoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from aigw_common.schemas import TokenCounts
from aigw_common.sse import MAX_LINE as SSE_MAX_LINE
from aigw_common.sse import SSEDecoder, SSEFramer
from aigw_common.sse import data_of as sse_data

Endpoint = Literal["chat_completions", "responses", "messages"]
ENDPOINTS: tuple[Endpoint, ...] = ("chat_completions", "responses", "messages")

MAX_LINE = SSE_MAX_LINE  # an SSE line (or event) longer than this is dropped: bounded memory
_HEAD = 64 << 10  # kept of a "stream" that never produced an event (an error body in JSON)
_NULL = msgspec.Raw(b"null")
_DecodeErrors = (msgspec.DecodeError, RecursionError)


@dataclass(slots=True)
class RequestInfo:
    model: str  # "" when absent
    stream: bool
    prompt: str | None  # the last user prompt as text (for recording)
    max_output_tokens: int | None  # max_tokens / max_completion_tokens / max_output_tokens
    input_bytes: int  # len(body): a cheap proxy for input size in budget estimates


@dataclass(slots=True)
class ToolCall:
    name: str
    call_id: str
    arguments: str
    injected: bool = False
    error: str | None = None


@dataclass(slots=True)
class Extracted:
    model: str | None  # the model the upstream reports
    tokens: TokenCounts
    tool_calls: list[ToolCall]
    terminal: bool  # saw the API's terminal event; always True for a blocking body
    error: str | None  # an in-band error (event: error, response.failed, an error body)


# ---------------------------------------------------------------- requests


class _Part(msgspec.Struct):
    type: Any = None
    text: Any = None


class _Message(msgspec.Struct):
    role: str | None = None
    type: Any = None  # Responses input items
    content: msgspec.Raw = _NULL  # decoded only for the last user message


class _ChatRequest(msgspec.Struct):
    model: str = ""
    stream: bool | None = None
    messages: list[_Message] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class _ResponsesRequest(msgspec.Struct):
    model: str = ""
    stream: bool | None = None
    input: str | list[_Message] | None = None
    max_output_tokens: int | None = None


class _MessagesRequest(msgspec.Struct):
    model: str = ""
    stream: bool | None = None
    messages: list[_Message] | None = None
    max_tokens: int | None = None


_REQUEST_TYPES: dict[str, type] = {
    "chat_completions": _ChatRequest,
    "responses": _ResponsesRequest,
    "messages": _MessagesRequest,
}
# Which content parts of a user message are prompt text.
_TEXT_PARTS: dict[str, frozenset[str]] = {
    "chat_completions": frozenset({"text"}),
    "responses": frozenset({"input_text", "text"}),
    "messages": frozenset({"text"}),
}
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]*)`, got `(?P<got>[^`]*)`$")
_KINDS = {
    "str": "a string",
    "bool": "a boolean",
    "int": "an integer",
    "float": "a number",
    "array": "an array",
    "object": "an object",
}
_GOT = {"str": "string", "int": "number", "float": "number", "bool": "boolean"}


def _field_error(err: msgspec.ValidationError, at: str = "") -> ValueError:
    """msgspec's "Expected `str`, got `int` - at `$.model`" → "model: expected a string, got number"."""
    m = _AT.match(str(err))
    msg, path = (m["msg"], m["path"]) if m else (str(err), None)
    path = at + (path or "")
    where = path.lstrip(".") or "request body"
    e = _EXPECTED.match(msg)
    if e is None:
        return ValueError(f"{where}: {msg[:1].lower()}{msg[1:]}")
    want = [_KINDS.get(k, k) for k in e["want"].split(" | ") if k != "null"] or ["null"]
    if not path and want == ["an object"]:
        want = ["a JSON object"]
    got = _GOT.get(e["got"], e["got"])
    return ValueError(f"{where}: expected {' or '.join(want)}, got {got}")


_CONTENT = str | list[_Part] | None


def _prompt_text(endpoint: str, msg: _Message, where: str) -> str | None:
    try:
        content = msgspec.json.decode(msg.content, type=_CONTENT)
    except msgspec.ValidationError as e:
        raise _field_error(e, where) from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply") from None
    if content is None or isinstance(content, str):
        return content
    kinds = _TEXT_PARTS[endpoint]
    texts = [
        p.text
        for p in content
        if isinstance(p.type, str) and p.type in kinds and isinstance(p.text, str)
    ]
    return "\n".join(texts) if texts else None


def parse_request(endpoint: Endpoint, body: bytes) -> RequestInfo:
    """Read what admission and recording need; ``ValueError`` (a human message) → the gateway answers 400."""
    kind = _REQUEST_TYPES.get(endpoint)
    if kind is None:
        raise ValueError(f"unknown endpoint {endpoint!r}")
    try:
        req: Any = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as e:
        raise _field_error(e) from None
    except msgspec.DecodeError as e:
        raise ValueError(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError("request body is nested too deeply") from None
    prompt: str | None = None
    if isinstance(req, _ResponsesRequest):
        max_out = req.max_output_tokens
        if isinstance(req.input, str):
            prompt = req.input
        elif req.input:
            prompt = _last_user_prompt(endpoint, req.input, "input", item_types=(None, "message"))
    else:
        max_out = (
            req.max_completion_tokens or req.max_tokens
            if isinstance(req, _ChatRequest)
            else req.max_tokens
        )
        if req.messages:
            prompt = _last_user_prompt(endpoint, req.messages, "messages", item_types=None)
    return RequestInfo(
        model=req.model,
        stream=bool(req.stream),
        prompt=prompt,
        max_output_tokens=max_out,
        input_bytes=len(body),
    )


def _last_user_prompt(
    endpoint: str, items: list[_Message], field: str, item_types: tuple[str | None, ...] | None
) -> str | None:
    for i in range(len(items) - 1, -1, -1):
        m = items[i]
        if m.role == "user" and (item_types is None or m.type in item_types):
            return _prompt_text(endpoint, m, f"{field}[{i}].content")
    return None


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
    except _DecodeErrors:
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
    """

    __slots__ = ("_framer",)

    def __init__(self) -> None:
        self._framer = SSEFramer(MAX_LINE)

    def feed(self, chunk: bytes) -> bytes:
        events, overflow = self._framer.feed(chunk)
        if not events:
            return overflow
        return b"".join([e for e in events if not _usage_only(e)]) + overflow

    def finish(self) -> bytes:
        rest = self._framer.finish()
        return b"" if _usage_only(rest) else rest


def _usage_only(event: bytes) -> bool:
    if not _EMPTY_CHOICES.search(event):
        return False
    try:
        doc = msgspec.json.decode(sse_data(event), type=_UsageOnly)
    except _DecodeErrors:
        return False
    return doc.choices == [] and isinstance(doc.usage, dict)


# ------------------------------------------------------------ shared pieces


class _Err(msgspec.Struct):
    message: Any = None
    type: Any = None
    code: Any = None


def _err_text(err: _Err | str | None) -> str | None:
    if err is None or isinstance(err, str):
        return err
    for v in (err.message, err.code, err.type):
        if isinstance(v, str) and v:
            return v
    return "error"


class _ErrorBody(msgspec.Struct):
    error: _Err | str | None = None


def _json_text(value: Any) -> str:
    """Tool arguments as text: strings as they are, anything else as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


class _Acc:
    """A tool call being assembled from stream fragments."""

    __slots__ = ("call_id", "error", "name", "parts", "start")

    def __init__(self, name: str, call_id: str, start: Any = None) -> None:
        self.name = name
        self.call_id = call_id
        self.parts: list[str] = []
        self.start = start  # Anthropic: the block's initial ``input``
        self.error: str | None = None

    def done(self) -> ToolCall:
        args = "".join(self.parts)
        if not args and self.start is not None:
            args = _json_text(self.start)
        return ToolCall(name=self.name, call_id=self.call_id, arguments=args, error=self.error)


def _openai_tokens(
    inp: int | None, out: int | None, cached: int | None, reasoning: int | None
) -> TokenCounts:
    cached = cached or 0
    return TokenCounts(
        input_tokens=max((inp or 0) - cached, 0),
        output_tokens=out or 0,
        cache_read_tokens=cached,
        reasoning_tokens=reasoning or 0,
    )


# ---------------------------------------------------------------- streams


class StreamExtractor:
    """SSE reader: bytes in arbitrary chunks → events (:class:`SSEDecoder`) → the API-specific ``_dispatch``.

    At ``finish`` an unterminated last event is still read (upstreams that close without the final blank
    line). An over-long line is dropped (the relay forwards it anyway; only metering skips it). A stream
    that never produced an event but starts with a JSON error body (an error status relayed as is) yields
    that error.
    """

    __slots__ = (
        "_head",
        "_sse",
        "error",
        "model",
        "terminal",
    )

    def __init__(self) -> None:
        self._sse = SSEDecoder(MAX_LINE)
        self._head: bytearray | None = bytearray()
        self.model: str | None = None
        self.terminal = False
        self.error: str | None = None

    @property
    def _partial(self) -> bytes:
        """The incomplete line held (bounded; for tests and debugging)."""
        return self._sse.held

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._head is not None and len(self._head) < _HEAD:
            self._head += chunk[: _HEAD - len(self._head)]
        events = self._sse.feed(chunk)
        if events:
            self._head = None
            for event, data in events:
                self._dispatch(event, data)

    def finish(self) -> Extracted:
        for event, data in self._sse.finish():
            self._head = None
            self._dispatch(event, data)
        if self._head is not None and self._head.lstrip()[:1] == b"{" and self.error is None:
            self.error = _blocking_error(bytes(self._head))
        return self._result()

    def _dispatch(self, event: bytes | None, data: bytes) -> None:
        raise NotImplementedError

    def _result(self) -> Extracted:
        raise NotImplementedError


def _blocking_error(body: bytes) -> str | None:
    try:
        return _err_text(msgspec.json.decode(body, type=_ErrorBody).error)
    except _DecodeErrors:
        return None


# ---- OpenAI chat completions


class _ChatFunction(msgspec.Struct):
    name: str | None = None
    arguments: Any = None
    input: Any = None  # custom tools


class _ChatToolCall(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    type: str | None = None
    function: _ChatFunction | None = None
    custom: _ChatFunction | None = None


class _ChatDelta(msgspec.Struct):
    tool_calls: list[_ChatToolCall] | None = None
    function_call: _ChatFunction | None = None  # the legacy single call


class _ChatChoice(msgspec.Struct):
    index: int = 0
    delta: _ChatDelta | None = None
    message: _ChatDelta | None = None


class _Cached(msgspec.Struct):  # prompt_tokens_details / input_tokens_details
    cached_tokens: int | None = None


class _Reasoning(msgspec.Struct):  # completion_tokens_details / output_tokens_details
    reasoning_tokens: int | None = None


class _ChatUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _Cached | None = None
    completion_tokens_details: _Reasoning | None = None

    def tokens(self) -> TokenCounts:
        p, c = self.prompt_tokens_details, self.completion_tokens_details
        return _openai_tokens(
            self.prompt_tokens,
            self.completion_tokens,
            p.cached_tokens if p else None,
            c.reasoning_tokens if c else None,
        )


class _ChatBody(msgspec.Struct):
    model: str | None = None
    choices: list[_ChatChoice] | None = None
    usage: _ChatUsage | None = None
    error: _Err | str | None = None


# Chunks that can matter: tool-call fragments, errors, a usage object (not ``"usage":null``).
_CHAT_MARKERS = re.compile(rb'"(?:tool_calls|function_call|error)"|"usage"\s*:\s*\{')


class _ChatStream(StreamExtractor):
    __slots__ = ("_calls", "_first", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._usage: _ChatUsage | None = None
        self._calls: dict[tuple[int, int], _Acc] = {}
        self._first = True

    def _dispatch(self, event: bytes | None, data: bytes) -> None:
        if data[:1] != b"{":
            data = data.strip()
            if data == b"[DONE]":
                self.terminal = True
                return
            if data[:1] != b"{":
                return
        if not self._first and _CHAT_MARKERS.search(data) is None:
            return
        self._first = False
        try:
            chunk = msgspec.json.decode(data, type=_ChatBody)
        except _DecodeErrors:
            return
        if chunk.model:
            self.model = chunk.model
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.error is not None:
            self.error = _err_text(chunk.error)
        for choice in chunk.choices or ():
            delta = choice.delta or choice.message
            if delta is not None:
                self._add(choice.index, delta)

    def _add(self, choice: int, delta: _ChatDelta) -> None:
        calls = self._calls
        if delta.function_call is not None:
            fc = delta.function_call
            acc = calls.get((choice, -1))
            if acc is None:
                acc = calls[(choice, -1)] = _Acc("", "")
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
                acc = calls[(choice, index)] = _Acc("", "")
            if tc.id:
                acc.call_id = tc.id
            fn = tc.function or tc.custom
            if fn is not None:
                if fn.name:
                    acc.name = fn.name
                frag = fn.arguments if fn.arguments is not None else fn.input
                if frag is not None:
                    acc.parts.append(_json_text(frag))

    def _result(self) -> Extracted:
        return Extracted(
            model=self.model,
            tokens=self._usage.tokens() if self._usage else TokenCounts(),
            tool_calls=[a.done() for a in self._calls.values()],
            terminal=self.terminal,
            error=self.error,
        )


# ---- OpenAI Responses


class _RUsage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    input_tokens_details: _Cached | None = None
    output_tokens_details: _Reasoning | None = None

    def tokens(self) -> TokenCounts:
        i, o = self.input_tokens_details, self.output_tokens_details
        return _openai_tokens(
            self.input_tokens,
            self.output_tokens,
            i.cached_tokens if i else None,
            o.reasoning_tokens if o else None,
        )


class _RItem(msgspec.Struct):
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
                args = _json_text(value)
                break
        else:
            args = ""
        error = self.error
        if error is not None and not isinstance(error, str):
            error = _err_text(error) if isinstance(error, _Err) else _json_text(error)
        if error is None and self.status == "failed":
            error = "failed"
        return ToolCall(
            name=self.name or kind.removesuffix("_call"),
            call_id=self.call_id or self.id or "",
            arguments=args,
            error=error,
        )


class _RResponse(msgspec.Struct):
    model: str | None = None
    status: str | None = None
    usage: _RUsage | None = None
    output: list[_RItem] | None = None
    error: _Err | str | None = None


class _REvent(msgspec.Struct):
    type: str | None = None
    response: _RResponse | None = None
    item: _RItem | None = None
    message: Any = None
    code: Any = None
    error: _Err | str | None = None


class _RCreated(msgspec.Struct):
    response: _RResponse | None = None


_R_TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete"})
_R_EVENTS = frozenset(
    {b"response.output_item.done", b"response.created", b"error"}
    | {t.encode() for t in _R_TERMINAL}
)
_R_MARKERS = re.compile(
    rb'"(?:response\.(?:output_item\.done|completed|failed|incomplete|created)|error)"'
)


def _response_tool_calls(output: list[_RItem] | None) -> list[ToolCall]:
    return [c for c in (item.tool_call() for item in output or ()) if c is not None]


class _ResponsesStream(StreamExtractor):
    __slots__ = ("_calls", "_created", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._usage: _RUsage | None = None
        self._calls: list[ToolCall] = []
        self._created: bytes | None = None

    def _dispatch(self, event: bytes | None, data: bytes) -> None:
        if event is None:
            if _R_MARKERS.search(data) is None:
                return
        elif event not in _R_EVENTS:
            return
        if event == b"response.created":
            # Big (it echoes instructions and tools) and only good for the model,
            # which the terminal event repeats: decode lazily, if at all.
            if self.model is None:
                self._created = data
            return
        try:
            ev = msgspec.json.decode(data, type=_REvent)
        except _DecodeErrors:
            return
        kind = ev.type or (event.decode("utf-8", "replace") if event else None)
        if kind == "response.output_item.done":
            call = ev.item.tool_call() if ev.item is not None else None
            if call is not None:
                self._calls.append(call)
        elif kind in _R_TERMINAL:
            self.terminal = True
            r = ev.response
            if r is None:
                return
            if r.model:
                self.model = r.model
            if r.usage is not None:
                self._usage = r.usage
            seen = {c.call_id for c in self._calls}
            self._calls += [c for c in _response_tool_calls(r.output) if c.call_id not in seen]
            if kind == "response.failed":
                self.error = _err_text(r.error) or "response failed"
        elif kind == "error":
            self.error = _err_text(ev.error) or _err_text(_Err(ev.message, None, ev.code))
        elif kind == "response.created" and ev.response is not None and self.model is None:
            self.model = ev.response.model

    def _result(self) -> Extracted:
        if self.model is None and self._created is not None:
            try:
                created = msgspec.json.decode(self._created, type=_RCreated)
                self.model = created.response.model if created.response else None
            except _DecodeErrors:
                pass
        return Extracted(
            model=self.model,
            tokens=self._usage.tokens() if self._usage else TokenCounts(),
            tool_calls=list(self._calls),
            terminal=self.terminal,
            error=self.error,
        )


# ---- Anthropic Messages


class _AUsage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _ABlock(msgspec.Struct):
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


class _ADelta(msgspec.Struct):
    type: str | None = None
    partial_json: Any = None


class _AMessage(msgspec.Struct):
    type: str | None = None
    model: str | None = None
    usage: _AUsage | None = None
    content: list[_ABlock] | None = None
    error: _Err | str | None = None


class _AEvent(msgspec.Struct):
    type: str | None = None
    message: _AMessage | None = None
    index: int | None = None
    content_block: _ABlock | None = None
    delta: _ADelta | None = None
    usage: _AUsage | None = None
    error: _Err | str | None = None


class _AnthropicTokens:
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

    def merge(self, u: _AUsage | None) -> None:
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


_A_DECODE = frozenset({b"message_start", b"content_block_start", b"message_delta", b"error"})
_A_MARKERS = re.compile(
    rb'input_json_delta|"(?:message_start|content_block_start|message_delta|message_stop|error)"'
)


def _anthropic_block(b: _ABlock, calls: list[_Acc]) -> _Acc | None:
    """A tool-use block opens a call; a ``*_tool_result`` block marks its call's error."""
    kind = b.type or ""
    if kind.endswith("tool_use"):  # tool_use, server_tool_use, mcp_tool_use
        acc = _Acc(b.name or "", b.id or "", start=b.input)
        calls.append(acc)
        return acc
    if kind.endswith("_tool_result"):
        err = b.result_error()
        if err is not None:
            for acc in calls:
                if acc.call_id == b.tool_use_id:
                    acc.error = err
    return None


class _AnthropicStream(StreamExtractor):
    __slots__ = ("_calls", "_open", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._usage = _AnthropicTokens()
        self._calls: list[_Acc] = []
        self._open: dict[int | None, _Acc] = {}  # content block index → its call

    def _dispatch(self, event: bytes | None, data: bytes) -> None:
        if event is None:
            if _A_MARKERS.search(data) is None:
                return
        elif event == b"content_block_delta":
            if b"input_json_delta" not in data:
                return
        elif event == b"message_stop":
            self.terminal = True
            return
        elif event not in _A_DECODE:
            return
        try:
            ev = msgspec.json.decode(data, type=_AEvent)
        except _DecodeErrors:
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
                acc = _anthropic_block(ev.content_block, self._calls)
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
            self.error = _err_text(ev.error) or "error"

    def _result(self) -> Extracted:
        return Extracted(
            model=self.model,
            tokens=self._usage.tokens(),
            tool_calls=[a.done() for a in self._calls],
            terminal=self.terminal,
            error=self.error,
        )


_STREAMS: dict[str, type[StreamExtractor]] = {
    "chat_completions": _ChatStream,
    "responses": _ResponsesStream,
    "messages": _AnthropicStream,
}


def stream_extractor(endpoint: Endpoint) -> StreamExtractor:
    kind = _STREAMS.get(endpoint)
    if kind is None:
        raise ValueError(f"unknown endpoint {endpoint!r}")
    return kind()


# ---------------------------------------------------------------- blocking


def extract_blocking(endpoint: Endpoint, body: bytes) -> Extracted:
    """A whole response body; one that is not JSON yields nothing (the proxy knows the status)."""
    if endpoint not in _STREAMS:
        raise ValueError(f"unknown endpoint {endpoint!r}")
    empty = Extracted(model=None, tokens=TokenCounts(), tool_calls=[], terminal=True, error=None)
    try:
        if endpoint == "chat_completions":
            c = msgspec.json.decode(body, type=_ChatBody)
            stream = _ChatStream()
            for choice in c.choices or ():
                if choice.message is not None:
                    stream._add(choice.index, choice.message)
            return Extracted(
                model=c.model,
                tokens=c.usage.tokens() if c.usage else TokenCounts(),
                tool_calls=[a.done() for a in stream._calls.values()],
                terminal=True,
                error=_err_text(c.error),
            )
        if endpoint == "responses":
            r = msgspec.json.decode(body, type=_RResponse)
            error = _err_text(r.error)
            if error is None and r.status == "failed":
                error = "response failed"
            return Extracted(
                model=r.model,
                tokens=r.usage.tokens() if r.usage else TokenCounts(),
                tool_calls=_response_tool_calls(r.output),
                terminal=True,
                error=error,
            )
        m = msgspec.json.decode(body, type=_AMessage)
    except _DecodeErrors:
        return empty
    usage = _AnthropicTokens()
    usage.merge(m.usage)
    calls: list[_Acc] = []
    for block in m.content or ():
        _anthropic_block(block, calls)
    error = _err_text(m.error)
    if error is None and m.type == "error":
        error = "error"
    return Extracted(
        model=m.model,
        tokens=usage.tokens(),
        tool_calls=[a.done() for a in calls],
        terminal=True,
        error=error,
    )
