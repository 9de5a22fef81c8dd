"""Upstream error bodies, read in one place: what a provider said went wrong.

Shapes understood:

* OpenAI (and OpenAI-compatible servers): ``{"error": {"message", "type", "code", "param"}}``;
  some compatible servers (Ollama, older vLLM) send ``{"error": "text"}``.
* Anthropic: ``{"type": "error", "error": {"type", "message"}}`` (also an SSE ``event: error`` payload).
* Bedrock / AWS: ``{"message"}`` or ``{"Message"}``, the exception name in the ``x-amzn-ErrorType``
  header (``ThrottlingException:http://…``) or a ``__type`` field (``com.amazon…#ThrottlingException``).
* A flat ``{"type", "code", "message"}`` object (Responses API stream errors).
* Anything else (HTML from a proxy, plain text): the start of the text, as the message.

Reading is bounded: at most ``MAX_ERROR_BODY`` bytes are looked at (a longer body cannot be complete JSON
and is read as text), nesting too deep for the decoder is text too, and every field is cut to a length a
log line or a stored chat error can carry. Nothing here raises on any input.

The gateway's usage dialects read stream error events in their own typed decode (one msgspec decode per
event, no second parse): they embed :class:`ErrorObject` and read it with :func:`error_text`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

MAX_ERROR_BODY = 64 * 1024  # bytes of an error body worth reading; callers read no more than this
MAX_MESSAGE = 1000  # characters kept of a message
MAX_TEXT = 300  # characters kept of a body that is not JSON
MAX_FIELD = 200  # characters kept of a type or code

Shape = Literal["openai", "anthropic", "error-string", "aws", "flat", "text", "empty"]


@dataclass(frozen=True, slots=True)
class ProviderError:
    """What an upstream error body says; empty strings for what it does not."""

    shape: Shape
    type: str = ""  # OpenAI/Anthropic error type, or the AWS exception name ("ThrottlingException")
    code: str = ""  # OpenAI error code ("context_length_exceeded", "insufficient_quota")
    message: str = ""  # the human message (for a non-JSON body: the start of its text)

    @property
    def structured(self) -> bool:
        """Whether the fields come from a JSON error object (not from free text or nothing)."""
        return self.shape not in ("text", "empty")


class ErrorObject(msgspec.Struct):
    """The error object the APIs nest (``{"message", "type", "code"}``) as a typed decoder takes it: the usage
    dialects declare ``error: ErrorObject | str | None`` in their event Structs, so an error event is read in
    the same decode as any other. The fields stay untyped so that no value a provider sends fails the event."""

    message: Any = None
    type: Any = None
    code: Any = None


def error_text(err: ErrorObject | str | None) -> str | None:
    """What a decoded error says, for a record: its message, else its code, else its type, else ``"error"``;
    a bare string as it is. Cut like every field here (``MAX_MESSAGE``); None for no error."""
    if err is None:
        return None
    if isinstance(err, str):
        return err[:MAX_MESSAGE]
    for v in (err.message, err.code, err.type):
        if isinstance(v, str) and v:
            return v[:MAX_MESSAGE]
    return "error"


def _str(v: Any, limit: int) -> str:
    if isinstance(v, str):
        return v[:limit]
    if isinstance(v, int) and not isinstance(v, bool):  # some servers send numeric codes
        return str(v)[:limit]
    return ""


def aws_error_type(raw: str) -> str:
    """``ThrottlingException:http://internal…`` / ``com.amazon.coral#ThrottlingException`` → ``ThrottlingException``."""
    return raw.partition(":")[0].rpartition("#")[2].strip()[:MAX_FIELD]


def _header(headers: Mapping[str, str] | None, name: str) -> str:
    if not headers:
        return ""
    v = headers.get(name)
    if v is None and not hasattr(headers, "getall"):  # a plain dict: look the name up case-insensitively
        v = next((val for k, val in headers.items() if k.lower() == name.lower()), None)
    return v or ""


def from_object(obj: Any, headers: Mapping[str, str] | None = None) -> ProviderError:
    """The error in an already decoded JSON value (a stream's error event, a decoded body)."""
    aws = aws_error_type(_header(headers, "x-amzn-ErrorType"))
    if not isinstance(obj, dict):
        return ProviderError("aws", aws) if aws else ProviderError("empty")
    err = obj.get("error")
    if isinstance(err, dict):
        shape: Shape = "anthropic" if obj.get("type") == "error" else "openai"
        return ProviderError(shape, _str(err.get("type"), MAX_FIELD), _str(err.get("code"), MAX_FIELD),
                             _str(err.get("message"), MAX_MESSAGE))
    if isinstance(err, str) and err:
        return ProviderError("error-string", _str(obj.get("type"), MAX_FIELD), _str(obj.get("code"), MAX_FIELD),
                             err[:MAX_MESSAGE])
    message = _str(obj.get("message"), MAX_MESSAGE) or _str(obj.get("Message"), MAX_MESSAGE)
    aws = aws or aws_error_type(_str(obj.get("__type"), MAX_FIELD * 2))
    if aws or ("Message" in obj and "message" not in obj):
        return ProviderError("aws", aws, "", message)
    etype, code = _str(obj.get("type"), MAX_FIELD), _str(obj.get("code"), MAX_FIELD)
    if etype or code or message:
        return ProviderError("flat", etype, code, message)
    return ProviderError("empty")


def parse(body: bytes | None, headers: Mapping[str, str] | None = None, *,
          limit: int = MAX_ERROR_BODY) -> ProviderError:
    """The error an upstream's error response body (and headers) describes."""
    if not body or not body.strip():
        return from_object(None, headers)
    if len(body) <= limit:
        try:
            return from_object(msgspec.json.decode(body), headers)
        except (msgspec.DecodeError, RecursionError):
            pass
    text = body[:limit].decode("utf-8", "replace").strip()[:MAX_TEXT]
    aws = aws_error_type(_header(headers, "x-amzn-ErrorType"))
    return ProviderError("text", aws, "", text)
