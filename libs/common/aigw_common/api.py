"""Control-plane HTTP conventions shared by registry, budget, keypool, chatd and console.

One route table per service (:class:`Route`) declares each operation's access, body and response Struct;
:func:`mount` registers it: authenticate, check the declared access, run the handler, encode what it
returns with :func:`respond`. The same table drives the OpenAPI document (``aigw_common.openapi``) and the
RBAC matrix test, so router, document and permissions cannot drift apart.

Errors are :class:`HttpError` subclasses, answered as ``{"message", "detail", "validations": [{"field", "detail"}]}``
(:class:`ErrorOut`); request bodies are decoded into msgspec Structs that forbid unknown fields, and a
decoding problem becomes a 400 naming the field. A 500 says nothing about internals; its cause is logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import msgspec
from aiohttp import web

from .auth import HasRoles, is_admin
from .errors import AigwError

log = logging.getLogger(__name__)
T = TypeVar("T")
C = TypeVar("C", bound="HasRoles")

_encoder = msgspec.json.Encoder()


# ------------------------------------------------------------------ errors


class ValidationOut(msgspec.Struct, frozen=True):
    """One problem with one field of a request."""

    field: str
    detail: str


class ErrorOut(msgspec.Struct):
    """The control-plane error shape: the body of every failed request."""

    message: str
    detail: str | None
    validations: list[ValidationOut]


class HttpError(AigwError):
    """Raise from a handler to answer ``status`` with the control-plane error shape.

    Use a subclass (they fix the status); ``retryable`` is true for 429 and 503, which carry Retry-After."""

    status = 500

    def __init__(self, message: str, detail: str | None = None, validations: Sequence[ValidationOut] = (),
                 *, headers: dict[str, str] | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.retryable = self.status in (429, 503)
        self.detail = detail
        self.validations = list(validations)
        self.headers = headers

    def body(self) -> ErrorOut:
        return ErrorOut(self.message, self.detail, self.validations)

    def response(self) -> web.Response:
        return respond(self.body(), status=self.status, headers=self.headers)


class BadRequest(HttpError):
    """400; ``field`` names the offending field (one validation entry), ``validations`` lists several."""

    status = 400

    def __init__(self, message: str, field: str | None = None, detail: str | None = None,
                 validations: Sequence[ValidationOut] = ()) -> None:
        if field is not None and not validations:
            validations = [ValidationOut(field, detail or message)]
        super().__init__(message, detail, validations)


class Unauthorized(HttpError):
    status = 401

    def __init__(self, message: str = "unauthorized: missing, unknown or revoked token") -> None:
        super().__init__(message)


class Forbidden(HttpError):
    status = 403

    def __init__(self, message: str = "forbidden", detail: str | None = None) -> None:
        super().__init__(message, detail)


class NotFound(HttpError):
    status = 404


class MethodNotAllowed(HttpError):
    status = 405

    def __init__(self, message: str, allowed: Iterable[str]) -> None:
        super().__init__(message, headers={"Allow": ", ".join(sorted(allowed))})


class Conflict(HttpError):
    status = 409


class PayloadTooLarge(HttpError):
    status = 413

    def __init__(self, detail: str | None = None) -> None:
        super().__init__("request body too large", detail)


class UriTooLong(HttpError):
    status = 414


class UnsupportedMediaType(HttpError):
    status = 415


class Unprocessable(HttpError):
    status = 422


class TooManyRequests(HttpError):
    """429 with Retry-After (whole seconds, at least 1)."""

    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after)))})


class Unavailable(HttpError):
    """503 with Retry-After: a dependency (database, bus, registry, key state store) is away; try again."""

    status = 503

    def __init__(self, message: str, retry_after: int | None = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)} if retry_after is not None else None)


class BadGateway(HttpError):
    status = 502


class GatewayTimeout(HttpError):
    status = 504


# ------------------------------------------------------------------ responses and bodies


Body = msgspec.Struct | Sequence[msgspec.Struct] | None


def respond(body: Body, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """The one encoder of control-plane answers: a Struct (or a list of them) as JSON; None as 204."""
    if body is None:
        return web.Response(status=204, headers=headers)
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json", headers=headers)


_PATH_RE = re.compile(r"at `\$\.?(.*?)`")


async def read_json(request: web.Request, typ: type[T]) -> T:
    """Decode the body into ``typ``; every problem is a 400 with a validation entry."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge() from None
    if not raw:
        raise BadRequest("request body is required", "body", "empty body")
    try:
        return msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as e:
        text = str(e)
        m = _PATH_RE.search(text)
        fld = m.group(1) if m else "body"
        if "unknown field" in text.lower():
            um = re.search(r"unknown field `(.+?)`", text)
            fld = (fld + "." if m and fld else "") + (um.group(1) if um else "")
        raise BadRequest("invalid request body", detail=text, validations=[ValidationOut(fld or "body", text)]) from None
    except msgspec.DecodeError as e:
        raise BadRequest("request body is not valid JSON", detail=str(e),
                         validations=[ValidationOut("body", str(e))]) from None


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    # A body announced over the limit is refused from its headers, before any of it is read (aiohttp alone
    # would wait for the body and count it up to the limit first).
    if request.content_length is not None and request.content_length > request.client_max_size:
        return PayloadTooLarge(f"{request.content_length} bytes; the limit is {request.client_max_size}").response()
    try:
        return await handler(request)
    except HttpError as e:
        return e.response()
    except web.HTTPRequestEntityTooLarge:
        return PayloadTooLarge().response()
    except web.HTTPException as e:  # aiohttp's own answers (no route: 404, wrong method: 405)
        if e.status < 400:
            raise
        return HttpError(e.reason or "error", status=e.status).response()
    except Exception:
        log.exception("unhandled error", extra={"method": request.method, "path": request.path})
        return HttpError("internal server error").response()


# ------------------------------------------------------------------ the route table and authorization


Access = Literal["public", "user", "admin"]


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """One operation. ``access``: "public" (no token), "user" (any signed-in caller; the handler decides self vs.
    others), "admin" (admin or owner role; checked by :func:`mount` before the handler runs). The handler takes
    (request, caller) and returns an instance of ``response`` (None when ``response`` is None: 204), or a
    ``web.StreamResponse`` for a non-JSON ``content_type``."""

    method: str
    path: str
    handler: Any  # None: served elsewhere (the document route)
    access: Access
    summary: str
    tag: str
    body: type[Any] | None = None
    response: type[Any] | None = None  # None: 204 No Content
    status: int = 200
    query: tuple[Query, ...] = field(default=())
    content_type: str = "application/json"  # of the response; text/event-stream for a stream
    not_found: bool = False  # 404 also without a path parameter (a query names a user or group that may not exist)

    @property
    def operation_id(self) -> str:
        path = re.sub(r"^/api/(v2|experimental)/", "", self.path)
        words = re.sub(r"[{}]", "", path).replace("-", "_").split("/")
        return f"{self.method.lower()}_" + "_".join(w for w in words if w)


Invoke = Callable[[Route, web.Request, Any], Awaitable[Any]]


async def _call(route: Route, request: web.Request, caller: Any) -> Any:
    return await route.handler(request, caller)


def guarded(route: Route, authenticate: Callable[[web.Request], Awaitable[C]],
            invoke: Invoke = _call) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of ``route``: the caller, the route's access, the handler, its answer encoded.

    A handler answering something other than its declared response Struct is a bug (a 500 here, and the
    OpenAPI tests fail), so the table stays the one description of every answer."""

    async def handle(request: web.Request) -> web.StreamResponse:
        caller = await authenticate(request)
        if route.access == "admin" and not is_admin(caller):
            raise Forbidden(f"{route.method} {route.path} requires the admin or owner role")
        result = await invoke(route, request, caller)
        if route.content_type != "application/json" and isinstance(result, web.StreamResponse):
            return result
        if route.response is None and result is None:
            return respond(None)
        if route.response is not None and isinstance(result, route.response):
            return respond(result, status=route.status)
        raise TypeError(f"{route.method} {route.path} answered {type(result).__name__}, "
                        f"declared {getattr(route.response, '__name__', None)}")

    return handle


def mount(app: web.Application, routes: Sequence[Route], authenticate: Callable[[web.Request], Awaitable[C]],
          invoke: Invoke = _call) -> None:
    """Register every non-public route of ``routes`` behind :func:`guarded` (in table order: a literal segment
    listed before a ``{param}`` wins). Public routes are registered by whoever serves them."""
    for r in routes:
        if r.access != "public":
            app.router.add_route(r.method, r.path, guarded(r, authenticate, invoke))


__all__ = [
    "Access",
    "BadGateway",
    "BadRequest",
    "Conflict",
    "ErrorOut",
    "Forbidden",
    "GatewayTimeout",
    "HttpError",
    "Invoke",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "Query",
    "Route",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "UnsupportedMediaType",
    "UriTooLong",
    "ValidationOut",
    "error_middleware",
    "guarded",
    "mount",
    "read_json",
    "respond",
]
