"""Errors the gateway itself returns, in the provider's own format, so SDKs raise their usual exceptions."""

from __future__ import annotations

import msgspec
from aiohttp import web

from aigw_common import sse
from aigw_common.llm import Api

__all__ = ["Api", "anthropic_error", "error_body", "error_response", "sse_error_event"]

_enc = msgspec.json.Encoder()

# HTTP status → (OpenAI type, OpenAI code, Anthropic type)
_KINDS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "invalid_request_error"),
    401: ("authentication_error", "invalid_api_key", "authentication_error"),
    403: ("permission_error", "forbidden", "permission_error"),
    404: ("not_found_error", "not_found", "not_found_error"),
    405: ("invalid_request_error", "method_not_allowed", "invalid_request_error"),
    413: ("invalid_request_error", "request_too_large", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded", "rate_limit_error"),
    500: ("server_error", "internal_error", "api_error"),
    502: ("server_error", "bad_gateway", "api_error"),
    503: ("server_error", "service_unavailable", "overloaded_error"),
    504: ("server_error", "timeout", "timeout_error"),
}


def anthropic_error(error_type: str, message: str) -> bytes:
    """An Anthropic error body (also the data of its ``error`` event)."""
    return _enc.encode({"type": "error", "error": {"type": error_type, "message": message}})


def error_body(api: Api, status: int, message: str, *, code: str | None = None) -> bytes:
    otype, ocode, atype = _KINDS.get(status, ("server_error", None, "api_error"))
    if api == "anthropic":
        return anthropic_error(atype, message)
    return _enc.encode({"error": {"message": message, "type": otype, "param": None, "code": code or ocode}})


def error_response(api: Api, status: int, message: str, *, code: str | None = None,
                   retry_after: float | None = None) -> web.Response:
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    return web.Response(status=status, body=error_body(api, status, message, code=code), headers=headers)


def sse_error_event(api: Api, message: str, status: int = 502) -> bytes:
    """An in-band error for a stream that already started (the status line is gone)."""
    body = error_body(api, status, message)
    return sse.encode(b"error" if api == "anthropic" else None, body)
