"""The same-origin route to the admin APIs: allowlisted paths only, the session's token injected.

The browser calls ``/api/...`` on the console; :func:`forward` resolves the
path in :mod:`aigw_console.routes`, builds the owning service's URL from its
configured base and the validated segments, sends the request with
``Authorization: Bearer <session token>`` and only a few request headers, and
relays status, a few response headers and the body chunk by chunk (a chat's
SSE stream flows event by event). Nothing here decides who may see what: the
service that owns the data checks the token's roles, exactly as it does for
curl or ``aigw admin``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from aigw_common import tracing
from aigw_common.api import BadGateway, GatewayTimeout, MethodNotAllowed, NotFound, UriTooLong
from aigw_common.metrics import CollectorRegistry, Counter, Histogram

from .routes import NoRoute, resolve

log = logging.getLogger(__name__)

MAX_QUERY = 4096
_REQUEST_HEADERS = ("Accept", "Content-Type", "Last-Event-ID")
_RESPONSE_HEADERS = ("Content-Type", "Retry-After", "Cache-Control")  # no Location: it would name an inner host
TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)


@dataclass(slots=True)
class ProxyMetrics:
    requests: Counter
    seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ProxyMetrics:
        return cls(
            Counter("aigw_console_api_requests_total", "Admin API calls relayed by the console",
                    ["service", "status"], registry=registry),
            Histogram("aigw_console_api_seconds", "Time to the upstream's response headers", ["service"],
                      registry=registry),
        )


def upstream_url(base: URL, segments: list[str], query: URL) -> URL:
    """``base`` + the validated segments + the request's query, re-encoded (never string concatenation)."""
    prefix = base.path.rstrip("/")
    return base.with_path(prefix + "/" + "/".join(segments), encoded=True).with_query(query.query)


async def forward(request: web.Request, http: aiohttp.ClientSession, bases: dict[str, URL], token: str,
                  metrics: ProxyMetrics, streams: set[aiohttp.ClientResponse]) -> web.StreamResponse:
    """Relay one request; an open SSE stream is kept in ``streams`` so shutdown can end it (see app.py)."""
    raw_path, _, raw_query = request.raw_path.partition("?")
    if len(raw_query) > MAX_QUERY:
        raise UriTooLong("query string too long")
    segments = raw_path.strip("/").split("/") if raw_path != "/" else []
    if raw_path.endswith("/") or "" in segments:
        raise NotFound(f"no admin API at {request.path}")
    try:
        route = resolve(request.method, segments)
    except NoRoute as e:
        if e.allowed:
            raise MethodNotAllowed(f"{request.method} is not allowed here", e.allowed) from None
        raise NotFound(f"no admin API at {request.path}") from None
    url = upstream_url(bases[route.service], segments, request.rel_url)
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "aigw-console"}
    for h in _REQUEST_HEADERS:
        if v := request.headers.get(h):
            headers[h] = v
    tracing.inject(headers)
    body = await request.read() if request.can_read_body else None
    streaming = segments[-1] == "stream"
    t0 = time.monotonic()
    try:
        upstream = await http.request(request.method, url, data=body, headers=headers, allow_redirects=False,
                                      timeout=STREAM_TIMEOUT if streaming else TIMEOUT)
    except (aiohttp.ClientError, TimeoutError) as e:
        metrics.requests.labels(route.service, "unavailable").inc()
        log.warning("admin API unreachable", extra={"service": route.service, "error": type(e).__name__})
        raise (GatewayTimeout if isinstance(e, TimeoutError) else BadGateway)(
            f"the {route.service} service is unavailable, try again", headers={"Retry-After": "1"}) from None
    metrics.seconds.labels(route.service).observe(time.monotonic() - t0)
    metrics.requests.labels(route.service, str(upstream.status)).inc()
    if streaming:
        streams.add(upstream)
    try:
        return await _relay(request, upstream)
    finally:
        streams.discard(upstream)


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    async with upstream:
        resp = web.StreamResponse(status=upstream.status)
        for h in _RESPONSE_HEADERS:
            if v := upstream.headers.get(h):
                resp.headers[h] = v
        resp.headers.setdefault("Cache-Control", "no-store")
        await resp.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
        except (TimeoutError, aiohttp.ClientError, ConnectionResetError):
            return resp  # the upstream or the browser went away mid-body; the status line is already sent
        await resp.write_eof()
        return resp
