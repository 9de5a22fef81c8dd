"""What every dialect returns and the decoding pieces they share (tool-call assembly, tokens); error objects
are read by :mod:`aigw_common.llm.error_body` (``ErrorObject`` in the event Structs, ``error_text``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from aigw_common.llm import Endpoint, error_body
from aigw_common.schemas import TokenCounts

from .request import RequestShape, decode

if TYPE_CHECKING:
    from .stream import StreamExtractor

DECODE_ERRORS = (msgspec.DecodeError, RecursionError)  # what decoding an upstream body may raise


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


def nothing() -> Extracted:
    """What a blocking body that is not the API's JSON yields (the proxy knows the status)."""
    return Extracted(model=None, tokens=TokenCounts(), tool_calls=[], terminal=True, error=None)


# ---------------------------------------------------------------- errors


def body_error(body: bytes) -> str | None:
    """The message of a JSON error body (``{"error": …}``, read by :mod:`aigw_common.llm.error_body`), if it
    is one; a body without an ``error`` member (a Messages object has a ``type`` too) is not."""
    e = error_body.parse(body)
    if e.shape not in ("openai", "anthropic", "error-string"):
        return None
    return e.message or e.code or e.type or "error"


# ---------------------------------------------------------------- tool calls


def json_text(value: Any) -> str:
    """Tool arguments as text: strings as they are, anything else as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


class PartialCall:
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
            args = json_text(self.start)
        return ToolCall(name=self.name, call_id=self.call_id, arguments=args, error=self.error)


# ---------------------------------------------------------------- OpenAI token counts


class Cached(msgspec.Struct):  # prompt_tokens_details / input_tokens_details
    cached_tokens: int | None = None


class Reasoning(msgspec.Struct):  # completion_tokens_details / output_tokens_details
    reasoning_tokens: int | None = None


def openai_tokens(inp: int | None, out: int | None, cached: Cached | None, reasoning: Reasoning | None) -> TokenCounts:
    """OpenAI counts cached input inside the input; we record them apart."""
    c = (cached.cached_tokens if cached is not None else None) or 0
    return TokenCounts(
        input_tokens=max((inp or 0) - c, 0),
        output_tokens=out or 0,
        cache_read_tokens=c,
        reasoning_tokens=(reasoning.reasoning_tokens if reasoning is not None else None) or 0,
    )


# ---------------------------------------------------------------- the dialect interface


class Relay(Protocol):
    """Rewrites a streamed body on its way to the client, chunk by chunk. It frames the events to do so, so
    it meters them too (``metering``): the stream is framed once, not by the relay and again by the extractor."""

    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...

    def metering(self, ext: StreamExtractor) -> Callable[[bytes], None]:
        """Meter into ``ext`` what ``feed`` frames: the reader returned takes each chunk after ``feed`` did (and
        after the client got what it returned); ``finish`` meters the rest."""
        ...


class BodyShape(Protocol):
    """A whole response body as one API's typed Struct decodes it."""

    def extracted(self) -> Extracted: ...


class Dialect:
    """One API's shapes: what the gateway reads from its requests and responses. One instance per API."""

    endpoint: Endpoint
    request_shape: type[RequestShape]
    body_shape: type[BodyShape]

    def parse_request(self, body: bytes) -> RequestInfo:
        """Admission and recording facts; ``ValueError`` (a message for the client) → the gateway answers 400."""
        req = decode(body, self.request_shape)
        return RequestInfo(
            model=req.model,
            stream=bool(req.stream),
            prompt=req.prompt(),
            max_output_tokens=req.max_output(),
            input_bytes=len(body),
        )

    def extract_blocking(self, body: bytes) -> Extracted:
        """A whole response body; one that is not the API's JSON yields :func:`nothing`."""
        try:
            doc = msgspec.json.decode(body, type=self.body_shape)
        except DECODE_ERRORS:
            return nothing()
        return doc.extracted()

    def stream(self) -> StreamExtractor:
        """A new extractor for one streamed response."""
        raise NotImplementedError

    def ask_for_usage(self, body: bytes) -> tuple[bytes, Relay] | None:
        """A streaming request that would not report usage: the body that asks for it and the relay that hides
        from the client what it did not ask for. None: the body is forwarded as is."""
        return None
