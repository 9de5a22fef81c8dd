"""Talking to the model: request bodies, credentials, streaming parsers and error classification.

chatd speaks each provider's own API (through the gateway by default, so the
call is authenticated, failed over, metered and budgeted like any other):
each provider type's chat route and API come from its record in
:mod:`aigw_common.llm` (Messages for ``anthropic`` and ``bedrock``, chat
completions for the rest). Everything here is transport-free except
:func:`stream_turn` / :func:`complete_once`, which take an aiohttp session.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import msgspec

from aigw_common.llm import ANTHROPIC_VERSION, MAX_ERROR_BODY, Api, Wire, capabilities, error_body
from aigw_common.logging import redact
from aigw_common.retry_after import retry_after
from aigw_common.sse import SSEDecoder, SSETooLarge

USER_AGENT = "aigw-chatd/0.1.0"
BUDGET_RETRY_WITHIN = 60.0
ErrorKind = Literal["rate_limit", "overloaded", "auth", "budget", "context_length", "timeout", "stream_closed", "generic"]


class Secret:
    """A credential: usable through ``.reveal()``, redacted in every string form."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class TurnError(Exception):
    """A failed model call, in the structured shape persisted as a chat's ``last_error``."""

    def __init__(self, message: str, kind: ErrorKind, *, provider: str = "", retryable: bool = False,
                 status_code: int | None = None, detail: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = redact(message)
        self.kind = kind
        self.provider = provider
        self.retryable = retryable
        self.status_code = status_code
        self.detail = redact(detail) if detail else None
        self.retry_after = retry_after

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "kind": self.kind, "provider": self.provider, "retryable": self.retryable,
                "status_code": self.status_code, "detail": self.detail}

    def __repr__(self) -> str:
        return f"TurnError(kind={self.kind!r}, retryable={self.retryable}, status_code={self.status_code}, message={self.message!r})"


# --------------------------------------------------------------------- routes


@dataclass(frozen=True, slots=True)
class Route:
    """Where and how one model call goes. Credentials are :class:`Secret`, so a repr never leaks them."""

    api: Api
    url: str
    provider: str  # provider name, for error reports
    token: Secret | None = None  # the user's aigw token (gateway route)
    provider_key: Secret | None = None  # the user's own provider key (BYOK, or the direct route)
    chat_id: str = ""
    direct: bool = False

    @property
    def credential_kind(self) -> str:
        return "byok" if self.provider_key is not None else "centralised"

    def headers(self) -> dict[str, str]:
        """Built at send time only; never logged."""
        h = {"Content-Type": "application/json", "Accept": "text/event-stream", "User-Agent": USER_AGENT}
        if self.api == "anthropic":
            h["anthropic-version"] = ANTHROPIC_VERSION
        if not self.direct:
            h["X-AIGW-Chat-Id"] = self.chat_id  # the gateway records it as the session (and the client as aigw-chatd)
            if self.token is not None and self.provider_key is not None:
                h["X-AIGW-Token"] = self.token.reveal()
            elif self.token is not None:
                h["Authorization"] = f"Bearer {self.token.reveal()}"
        if self.provider_key is not None:
            if self.api == "anthropic":
                h["X-Api-Key"] = self.provider_key.reveal()
            else:
                h["Authorization"] = f"Bearer {self.provider_key.reveal()}"
        return h


def api_of(provider_type: str) -> Api:
    cap = capabilities(provider_type)
    return cap.api if cap is not None else "openai"


def gateway_route(gateway_url: str, provider_name: str, provider_type: str, *, token: Secret,
                  provider_key: Secret | None, chat_id: str) -> Route:
    """Through the gateway, on the type's own chat route (Copilot's has no ``/v1``)."""
    cap = capabilities(provider_type)
    api, path = (cap.api, cap.chat_path) if cap is not None else ("openai", "/v1/chat/completions")
    return Route(api, f"{gateway_url.rstrip('/')}/{provider_name}{path}", provider_name, token=token,
                 provider_key=provider_key, chat_id=chat_id)


# API families chatd cannot call itself: what they need is the gateway's (signing, settings chatd does not hold).
_NOT_DIRECT = {Wire.BEDROCK: "SigV4", Wire.AZURE: "api-key and the provider's api_version"}


def direct_route(base_url: str, provider_name: str, provider_type: str, *, provider_key: Secret | None) -> Route:
    """Straight to the provider with the user's own key; central keys never leave the gateway."""
    cap = capabilities(provider_type)
    if cap is not None and (why := _NOT_DIRECT.get(cap.wire)) is not None:
        raise TurnError(f"direct routing does not support {provider_type} providers ({why}); route through the gateway",
                        "generic", provider=provider_name)
    if provider_key is None:
        raise TurnError(f"direct routing needs your own key for provider {provider_name!r}; store one "
                        "(PUT /api/v2/users/me/ai/provider-keys/{provider}) or route through the gateway",
                        "auth", provider=provider_name)
    api = api_of(provider_type)
    base = base_url.rstrip("/")
    # SDK conventions (``docs/api.md``, "Routes"): an openai base URL includes /v1, an anthropic one does not.
    url = f"{base}/v1/messages" if api == "anthropic" else f"{base}/chat/completions"
    return Route(api, url, provider_name, provider_key=provider_key, direct=True)


# --------------------------------------------------------------------- bodies


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["user", "assistant"]
    content: str


def build_body(api: str, model: str, history: list[ChatMessage], *, instructions: str | None, stream: bool,
               max_tokens: int) -> dict[str, Any]:
    msgs = [{"role": m.role, "content": m.content} for m in history if m.content]
    if api == "anthropic":
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": msgs, "stream": stream}
        if instructions:
            body["system"] = instructions
        return body
    if instructions:
        msgs.insert(0, {"role": "system", "content": instructions})
    body = {"model": model, "messages": msgs, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    else:
        body["max_tokens"] = max_tokens
    return body


# --------------------------------------------------------------------- errors

_CONTEXT_RE = re.compile(
    r"context[ _]length|context window|prompt is too long|input tokens exceed|too many (input )?tokens|maximum context",
    re.I,
)


def classify_http(status: int, raw: bytes, provider: str, headers: Any = None) -> TurnError:
    """A non-2xx answer (from the gateway or the provider) as a structured error."""
    e = error_body.parse(raw, headers)
    # only what a JSON error object says classifies it; free text is shown, never matched
    etype, code, message = (e.type, e.code, e.message) if e.structured else ("", "", "")
    text = e.message or (raw[:300].decode("utf-8", "replace") if raw else "") or f"HTTP {status}"
    ra = retry_after(headers)
    both = f"{etype} {code} {message}".lower()

    def err(kind: ErrorKind, retryable: bool, msg: str | None = None) -> TurnError:
        return TurnError(msg or text, kind, provider=provider, retryable=retryable, status_code=status,
                         detail=(etype or code) or None, retry_after=ra)

    if status == 429:
        # The gateway answers 429 both for an exhausted budget (its message names the budget) and for a pool
        # whose every key is cooling; only the latter is worth retrying.
        if "budget" in both or "insufficient_quota" in both:
            # exhausted for the period (Retry-After: the period's end) is final; "no room right now"
            # (a short Retry-After while reservations settle) is worth another try
            return err("budget", ra is not None and ra <= BUDGET_RETRY_WITHIN)
        return err("rate_limit", True)
    if status in (401, 403):
        return err("auth", False)
    if status in (400, 413, 422) and (code == "context_length_exceeded" or _CONTEXT_RE.search(message)):
        return err("context_length", False)
    if status in (408, 504):
        return err("timeout", True)
    if status in (503, 529) or "overloaded" in both:
        return err("overloaded", True)
    if status >= 500:
        return err("generic", True)
    return err("generic", False)


def classify_stream_error(payload: Any, provider: str) -> TurnError:
    """An error event inside a stream (Anthropic ``event: error``, an OpenAI chunk with ``error``)."""
    e = error_body.from_object(payload)
    etype, code, message = e.type, e.code, e.message
    both = f"{etype} {code} {message}".lower()
    msg = message or "the provider reported an error mid-stream"
    detail = etype or code or None
    if "overloaded" in both:
        return TurnError(msg, "overloaded", provider=provider, retryable=True, detail=detail)
    if "rate_limit" in both or "rate limit" in both:
        return TurnError(msg, "rate_limit", provider=provider, retryable=True, detail=detail)
    if "budget" in both:
        return TurnError(msg, "budget", provider=provider, detail=detail)
    if etype in ("authentication_error", "permission_error"):
        return TurnError(msg, "auth", provider=provider, detail=detail)
    if code == "context_length_exceeded" or _CONTEXT_RE.search(message):
        return TurnError(msg, "context_length", provider=provider, detail=detail)
    if etype in ("invalid_request_error", "not_found_error", "request_too_large"):
        return TurnError(msg, "generic", provider=provider, detail=detail)
    if "timeout" in both:
        return TurnError(msg, "timeout", provider=provider, retryable=True, detail=detail)
    return TurnError(msg, "generic", provider=provider, retryable=True, detail=detail)


def stream_closed(provider: str, why: str) -> TurnError:
    return TurnError(f"the stream closed before the provider's final event ({why})", "stream_closed",
                     provider=provider, retryable=True)


# --------------------------------------------------------------------- SSE


MAX_SSE_LINE = 8 << 20  # an event line (or joined data) longer than this ends the call: bounded memory


async def sse_events(content: aiohttp.StreamReader, *, max_line: int | None = None) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream body, as they arrive (framing: :mod:`aigw_common.sse`).

    Raises :class:`SSETooLarge` for a line or event over ``max_line`` (default ``MAX_SSE_LINE``)."""
    decoder = SSEDecoder(max_line or MAX_SSE_LINE, strict=True)
    async for chunk in content.iter_any():
        for event, data in decoder.feed(chunk):
            yield _text(event) or "message", data.decode("utf-8", "replace")
    for event, data in decoder.finish():
        yield _text(event) or "message", data.decode("utf-8", "replace")


def _text(event: bytes | None) -> str:
    return event.decode("utf-8", "replace") if event else ""


@dataclass(slots=True)
class StreamResult:
    text: str = ""
    finished: bool = False
    usage: dict[str, Any] = field(default_factory=dict)


def _json(data: str) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None


def parse_openai_event(data: str, result: StreamResult, provider: str) -> str | None:
    """One chat-completions chunk: returns new text; ``[DONE]`` is the terminal event."""
    if data.strip() == "[DONE]":
        result.finished = True
        return None
    obj = _json(data)
    if not isinstance(obj, dict):
        return None
    if obj.get("error"):
        raise classify_stream_error(obj, provider)
    if isinstance(obj.get("usage"), dict):
        result.usage = obj["usage"]
    out = []
    for ch in obj.get("choices") or ():
        delta = ch.get("delta") or {}
        if isinstance(delta.get("content"), str):
            out.append(delta["content"])
    return "".join(out) or None


def parse_anthropic_event(event: str, data: str, result: StreamResult, provider: str) -> str | None:
    """One Messages event: text deltas; ``message_stop`` is the terminal event."""
    obj = _json(data)
    if not isinstance(obj, dict):
        return None
    typ = obj.get("type") or event
    if typ == "error":
        raise classify_stream_error(obj, provider)
    if typ == "content_block_delta":
        d = obj.get("delta") or {}
        if d.get("type") == "text_delta" and isinstance(d.get("text"), str):
            return d["text"]
    elif typ == "message_delta" and isinstance(obj.get("usage"), dict):
        result.usage = obj["usage"]
    elif typ == "message_stop":
        result.finished = True
    return None


async def _error_of(resp: aiohttp.ClientResponse, provider: str) -> TurnError:
    try:
        raw = await resp.content.read(MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    return classify_http(resp.status, raw, provider, resp.headers)


async def stream_turn(session: aiohttp.ClientSession, route: Route, body: dict[str, Any],
                      on_text: Callable[[str], Any], *, read_timeout: float, connect_timeout: float) -> StreamResult:
    """One streamed call; ``on_text`` gets every text delta. Raises :class:`TurnError` on any failure,
    including a stream that ends before the provider's terminal event (retryable ``stream_closed``)."""
    result = StreamResult()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
    parts: list[str] = []
    try:
        async with session.post(route.url, data=msgspec.json.encode(body), headers=route.headers(), allow_redirects=False,
                                timeout=timeout) as resp:
            if resp.status >= 300:  # a redirect is never followed (it would carry the credential): an error
                raise await _error_of(resp, route.provider)
            async for event, data in sse_events(resp.content):
                if route.api == "anthropic":
                    text = parse_anthropic_event(event, data, result, route.provider)
                else:
                    text = parse_openai_event(data, result, route.provider)
                if text:
                    parts.append(text)
                    r = on_text(text)
                    if asyncio.iscoroutine(r):
                        await r
                if result.finished and route.api == "anthropic":
                    break
    except (TimeoutError, aiohttp.ServerTimeoutError) as e:
        raise TurnError(f"no data from the model for {read_timeout:g}s" if parts else "the model call timed out",
                        "timeout", provider=route.provider, retryable=True, detail=type(e).__name__) from None
    except aiohttp.ClientPayloadError as e:
        raise stream_closed(route.provider, type(e).__name__) from None
    except SSETooLarge as e:
        raise TurnError("the model sent an event too large to read", "generic", provider=route.provider,
                        retryable=False, detail=e.message) from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
        if parts:
            raise stream_closed(route.provider, type(e).__name__) from None
        raise TurnError("could not reach the model endpoint", "generic", provider=route.provider, retryable=True,
                        detail=type(e).__name__) from None
    except aiohttp.ClientError as e:
        raise TurnError("the model call failed", "generic", provider=route.provider, retryable=True,
                        detail=type(e).__name__) from None
    if not result.finished:
        raise stream_closed(route.provider, "no terminal event")
    result.text = "".join(parts)
    return result


async def complete_once(session: aiohttp.ClientSession, route: Route, body: dict[str, Any], *,
                        limit_seconds: float) -> str:
    """A small non-streamed call (the turn summary); returns the text."""
    try:
        async with session.post(route.url, data=msgspec.json.encode(body), headers=route.headers(), allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=limit_seconds)) as resp:
            if resp.status >= 300:  # a redirect is never followed (it would carry the credential): an error
                raise await _error_of(resp, route.provider)
            obj = _json((await resp.read()).decode("utf-8", "replace"))
    except (TimeoutError, aiohttp.ClientError) as e:
        raise TurnError("the summary call failed", "timeout" if isinstance(e, TimeoutError) else "generic",
                        provider=route.provider, retryable=True, detail=type(e).__name__) from None
    if not isinstance(obj, dict):
        return ""
    if route.api == "anthropic":
        return "".join(b.get("text", "") for b in obj.get("content") or () if isinstance(b, dict))
    choices = obj.get("choices") or [{}]
    msg = (choices[0] or {}).get("message") or {}
    return msg.get("content") or ""


def backoff(attempt: int, *, base: float, cap: float, retry_after: float | None, retry_after_cap: float) -> float:
    """Exponential backoff for attempt n (1-based), honouring a server's Retry-After up to a cap."""
    d = min(cap, base * (2 ** (attempt - 1)))
    if retry_after is not None:
        d = max(d, min(retry_after, retry_after_cap))
    # a little jitter so replicas retrying the same provider do not stampede
    return d * (1 + (time.monotonic_ns() % 1000) / 5000)
