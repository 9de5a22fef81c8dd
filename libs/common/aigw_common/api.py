"""Control-plane HTTP conventions shared by registry, budget, keypool and chatd.

Errors are ``{"message", "detail", "validations": [{"field", "detail"}]}``;
request bodies are decoded into msgspec Structs that forbid unknown fields,
and a decoding problem becomes a 400 naming the field. A 500 says nothing
about internals; its cause is logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

log = logging.getLogger(__name__)
T = TypeVar("T")

_encoder = msgspec.json.Encoder()


class Validation(msgspec.Struct, frozen=True):
    field: str
    detail: str


class ApiError(Exception):
    """Raise from a handler to answer with the control-plane error shape."""

    def __init__(self, status: int, message: str, detail: str | None = None,
                 validations: list[Validation] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.validations = validations or []
        self.headers = headers

    def response(self) -> web.Response:
        return json_response(
            {"message": self.message, "detail": self.detail,
             "validations": [{"field": v.field, "detail": v.detail} for v in self.validations]},
            status=self.status, headers=self.headers,
        )


def bad_request(message: str, field: str | None = None, detail: str | None = None) -> ApiError:
    return ApiError(400, message, detail, [Validation(field, detail or message)] if field else None)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


def forbidden(message: str = "forbidden") -> ApiError:
    return ApiError(403, message)


def unauthorized(message: str = "unauthorized: missing, unknown or revoked token") -> ApiError:
    return ApiError(401, message)


def conflict(message: str, detail: str | None = None) -> ApiError:
    return ApiError(409, message, detail)


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, content_type="application/json", headers=headers)


_PATH_RE = re.compile(r"at `\$\.?(.*?)`")


async def read_json(request: web.Request, typ: type[T]) -> T:
    """Decode the body into ``typ``; every problem is a 400 with a validation entry."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "request body too large") from None
    if not raw:
        raise bad_request("request body is required", "body", "empty body")
    try:
        return msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as e:
        text = str(e)
        m = _PATH_RE.search(text)
        fld = m.group(1) if m else "body"
        if "unknown field" in text.lower():
            um = re.search(r"unknown field `(.+?)`", text)
            fld = (fld + "." if m and fld else "") + (um.group(1) if um else "")
        raise ApiError(400, "invalid request body", text, [Validation(fld or "body", text)]) from None
    except msgspec.DecodeError as e:
        raise ApiError(400, "request body is not valid JSON", str(e), [Validation("body", str(e))]) from None


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    # A body announced over the limit is refused from its headers, before any of it is read (aiohttp alone
    # would wait for the body and count it up to the limit first).
    if request.content_length is not None and request.content_length > request.client_max_size:
        return ApiError(413, "request body too large",
                        f"{request.content_length} bytes; the limit is {request.client_max_size}").response()
    try:
        return await handler(request)
    except ApiError as e:
        return e.response()
    except web.HTTPRequestEntityTooLarge:
        return ApiError(413, "request body too large").response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return ApiError(e.status, e.reason or "error").response()
    except Exception:
        log.exception("unhandled error", extra={"method": request.method, "path": request.path})
        return ApiError(500, "internal server error").response()
