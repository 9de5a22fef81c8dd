"""The request path: authenticate, route, admit, pick a key, forward, relay, meter, record.

Everything here is in memory: providers, key health, identities (after the
first sight of a token), breakers and budget leases. Bodies are forwarded
byte for byte (the one exception: ``stream_options.include_usage`` is added to
a streamed chat completion that lacks it, or there would be no usage to
meter), and streams are relayed chunk by chunk as they arrive while the usage
extractor reads along.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import msgspec
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from aigw_common import netguard
from aigw_common.auth import AuthThrottled, IdentityCache
from aigw_common.crypto import Sealer, mask_secret
from aigw_common.errors import BusError, CryptoError
from aigw_common.schemas import (
    Identity,
    InterceptionEnded,
    InterceptionStarted,
    PromptRecorded,
    TokenCounts,
    TokenUsage,
    ToolUsage,
    UsageEvent,
)
from aigw_common.settings import Settings

from . import headers as hdr
from . import paths, routing
from .adapters import (
    Adapter,
    AdapterRefusal,
    Endpoint,
    Outgoing,
    ResponseFilter,
    guess_api,
)
from .breaker import Breakers
from .budget import Admission, BudgetGuard
from .catalog import ModelCatalog
from .clients import detect_client, session_id
from .dump import AttemptDump, DumpStore, secret_settings
from .errors import Api, error_response, sse_error_event
from .keys import KeyPools, PoolKey
from .limits import LimitDecision, LimitGuard
from .metrics import GatewayMetrics
from .providers import Provider, ProviderLoader
from .recorder import Recorder
from .upstream import UpstreamClient, UpstreamResponse
from .usage.common import Dialect, Extracted, Relay, RequestInfo
from .usage.dialects import DIALECTS

log = logging.getLogger(__name__)

MAX_MODEL_BYTES = 256

def upstream_headers(request: web.Request, provider: Provider) -> CIMultiDict[str]:
    return provider.adapter.headers.upstream(request.headers, provider.forward_headers)


async def _translated(chunks: AsyncIterator[bytes], filt: ResponseFilter) -> AsyncIterator[bytes]:
    """The body as a translating filter gives it to the client (Bedrock's event stream as SSE): what each
    chunk turns into, then what the filter adds at the end, so the relay handles both the same way."""
    async for chunk in chunks:
        if out := filt.feed(chunk):
            yield out
    if tail := filt.finish():
        yield tail


class _Idle:
    """The idle timeout of one upstream body: ``content`` fails with TimeoutError when nothing arrives for
    ``idle`` seconds. One timer per body, re-armed lazily: a chunk only records when it arrived (``touch``),
    so the per-chunk cost stays an assignment (an ``asyncio.timeout`` per chunk would schedule and cancel a
    timer each time)."""

    __slots__ = ("_content", "_handle", "_idle", "_loop", "last")

    def __init__(self, content: aiohttp.StreamReader, idle: float) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._content, self._idle = content, idle
        self.last = loop.time()
        self._handle: asyncio.TimerHandle | None = loop.call_at(self.last + idle, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        if self._loop.time() - self.last >= self._idle:
            self._handle = None
            self._content.set_exception(TimeoutError(f"nothing received for {self._idle:g}s"))
        else:
            self._handle = self._loop.call_at(self.last + self._idle, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None  # the timer and _check refer to each other: freed now, not by the cycle collector


async def _chunks(resp: UpstreamResponse, idle: float) -> AsyncIterator[bytes]:
    """The body as it arrives; TimeoutError when nothing arrives for ``idle`` seconds (the idle timeout).

    Each chunk is everything received so far, not one network read: when the upstream is faster than the
    relay, what has piled up goes to the client (and the meter) in one write instead of one per read —
    nothing waits for it, so latency is unchanged while a busy gateway makes fewer writes and calls."""
    content = resp.content
    timer = _Idle(content, idle)
    try:
        while True:
            chunk = await content.readany()
            if not chunk:
                return
            timer.touch()
            if content.exception() is None and (more := content.read_nowait()):
                chunk += more
            yield chunk
    finally:
        timer.cancel()


async def _whole(resp: UpstreamResponse, idle: float) -> bytes:
    """The whole body, under the same idle timeout as :func:`_chunks`; a plain coroutine, so a blocking
    answer costs no async generator (and its registration with the loop) per request."""
    content = resp.content
    timer = _Idle(content, idle)
    parts: list[bytes] = []
    try:
        while chunk := await content.readany():
            timer.touch()
            parts.append(chunk)
    finally:
        timer.cancel()
    return parts[0] if len(parts) == 1 else b"".join(parts)


_ERROR_BODY_LIMIT = 64 * 1024


@functools.lru_cache(maxsize=64)
def _client_timeout(connect: float) -> aiohttp.ClientTimeout:
    """The client timeout for a connect timeout (one object per value, not one per request): ``connect``
    bounds pool wait + DNS + connect, ``sock_connect`` the connect itself."""
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=None)


async def _read_error_body(resp: UpstreamResponse) -> bytes | None:
    """Read an upstream error body up to a bound (None when larger: treated as saying nothing)."""
    parts: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        parts.append(chunk)
        size += len(chunk)
        if size > _ERROR_BODY_LIMIT:
            break
    data = b"".join(parts)
    # hand the relay a reader holding what was read, so the client still gets the body byte for byte
    loop = asyncio.get_running_loop()
    reader = aiohttp.StreamReader(BaseProtocol(loop), _ERROR_BODY_LIMIT, loop=loop)
    reader.feed_data(data)
    reader.feed_eof()
    resp.content = reader
    if size > _ERROR_BODY_LIMIT:
        return None
    return data


async def _read_dump_body(resp: UpstreamResponse, idle: float) -> bytes:
    """The body of an answer we fail over from, for its dump (bounded; whatever arrives in time)."""
    try:
        async with asyncio.timeout(idle):
            return await resp.content.read(_ERROR_BODY_LIMIT)
    except (TimeoutError, aiohttp.ClientError) as e:
        return f"[body unreadable: {type(e).__name__}]".encode()


def _filtered_headers(headers: CIMultiDictProxy[str], filt: ResponseFilter | None) -> CIMultiDict[str]:
    out = hdr.downstream(headers)
    if filt is not None:
        out["Content-Type"] = filt.content_type
    return out


class RandomIds:
    """Random UUID v4 ids (as hex) from the OS's generator, 4 KiB at a time: ``uuid4()`` makes a system call
    and a ``UUID`` object per id, and the gateway draws one per request."""

    __slots__ = ("_buf", "_pos")

    _CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version nibble and the variant bits
    _SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def next(self) -> str:
        if self._pos >= len(self._buf):
            self._buf, self._pos = os.urandom(4096), 0
        n = int.from_bytes(self._buf[self._pos:self._pos + 16], "big")
        self._pos += 16
        return f"{n & self._CLEAR | self._SET:032x}"


@dataclass(slots=True)
class Caller:
    identity: Identity
    byok: bool
    credential: str | None  # BYOK: the provider credential to forward (header value)
    credential_header: str | None
    hint: str


class Refused(Exception):
    """A request the gateway answers itself, in the provider's error format."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class Gateway:
    def __init__(
        self, settings: Settings, loader: ProviderLoader, pools: KeyPools, breakers: Breakers,
        identities: IdentityCache, recorder: Recorder, guard: BudgetGuard, metrics: GatewayMetrics,
        upstream: UpstreamClient, bus_sealer: Sealer, dumps: DumpStore | None = None,
        limits: LimitGuard | None = None,
    ) -> None:
        self.limits = limits
        self.settings = settings
        self.loader = loader
        self.pools = pools
        self.breakers = breakers
        self.identities = identities
        self.recorder = recorder
        self.guard = guard
        self.m = metrics
        self.upstream = upstream
        self.bus_sealer = bus_sealer
        self.dumps = dumps
        self.catalog = ModelCatalog()
        self.ids = RandomIds()

    # ------------------------------------------------------------ entry

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if (why := paths.refusal(request.raw_path)) is not None:
            return self._bad_path(request, why)
        target = routing.split(request.path)
        if target is None:
            return error_response(guess_api(request.path), 404, f"no route for {request.path}")
        if target.provider == "v1" and target.path == "/models" and request.method == "GET":
            return await self.catalog.handle(self, request)  # no provider route is /models: no clash with a provider "v1"
        provider = self.loader.current.by_name.get(target.provider)
        if provider is None:
            return error_response(guess_api(target.path), 404, f"unknown provider {target.provider!r}")
        adapter = provider.adapter
        endpoint = adapter.endpoint(request.method, target.path)
        if endpoint is None and not adapter.passthrough(request.method, target.path):
            return error_response(adapter.api, 404, f"route {request.method} {target.path} is not served for provider {provider.name!r}")
        try:
            caller = await self._authenticate(request, provider, adapter)
            body = await self._read_body(request)
            if endpoint is None:
                return await self._passthrough(request, provider, target.path, caller, body)
            return await self._bridged(request, provider, endpoint, target.path, caller, body)
        except Refused as r:
            return error_response(adapter.api, r.status, r.message, retry_after=r.retry_after)

    def _bad_path(self, request: web.Request, why: str) -> web.Response:
        """400 before routing, in the format of the provider the path names (when it names one)."""
        target = routing.split(request.path)
        provider = self.loader.current.by_name.get(target.provider) if target is not None else None
        api = provider.adapter.api if provider is not None else guess_api(request.path)
        log.info("refused a hostile path", extra={"reason": why, "method": request.method})
        return error_response(api, 400, f"invalid request path: {why}")

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Refused(413, f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes")
        content = request.content
        if content.is_eof():  # the whole body came with the head (most requests): take it as is, no await
            data = content.read_nowait()
            if len(data) > limit:
                raise Refused(413, f"request body exceeds the limit of {limit} bytes")
            return data
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Refused(413, f"request body exceeds the limit of {limit} bytes") from None

    async def verify_token(self, token: str | None, client: str = "") -> Identity:
        """The identity behind an aigw token, or Refused (401 unknown, 503 when it cannot be checked now)."""
        if not token:
            raise Refused(401, "missing aigw token: send it as Authorization: Bearer <token> or X-Api-Key")
        try:
            identity = await self.identities.verify(token, client=client)
        except AuthThrottled as e:
            raise Refused(429, e.message, retry_after=e.retry_after) from None
        except BusError as e:
            log.warning("cannot verify token", extra={"error": str(e)})
            raise Refused(503, "cannot verify the token right now; retry shortly", retry_after=1) from None
        if identity is None:
            raise Refused(401, "invalid, expired or revoked aigw token")
        return identity

    def stored_key_caller(self, identity: Identity, provider: Provider) -> Caller | None:
        """A BYOK caller with the user's stored key for ``provider`` (registry ``user_ai_provider_keys``)."""
        for k in identity.provider_keys:
            if k.provider_id == provider.id:
                try:
                    secret = self.bus_sealer.open(k.sealed)
                except CryptoError:
                    log.error("cannot open a stored user key", extra={"provider": provider.name})
                    return None
                hdr = "X-Api-Key" if provider.adapter.api == "anthropic" else "Authorization"
                value = secret if hdr == "X-Api-Key" else f"Bearer {secret}"
                return Caller(identity, True, value, hdr, k.hint)
        return None

    async def _authenticate(self, request: web.Request, provider: Provider, adapter: Adapter) -> Caller:
        h = request.headers
        aigw_token = h.get("X-AIGW-Token")
        byok = aigw_token is not None or adapter.byok_only
        token = aigw_token
        if token is None:
            auth = h.get("Authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else (h.get("X-Api-Key") or None)
        identity = await self.verify_token(token, request.remote or "")
        if not byok:
            return Caller(identity, False, None, None, "")
        if not self.settings.allow_byok or not provider.allow_byok:
            raise Refused(403, f"BYOK is not enabled for provider {provider.name!r}: "
                               "remove X-AIGW-Token and authenticate with your aigw token")
        cred = adapter.client_credential(h) if aigw_token is not None else None
        if cred is None:
            if (stored := self.stored_key_caller(identity, provider)) is not None:
                return stored
            raise Refused(401, f"BYOK request for provider {provider.name!r} carries no provider credential "
                               "and you have no stored key for it")
        name, value = cred
        raw = value[7:] if value[:7].lower() == "bearer " else value
        return Caller(identity, True, value, name, mask_secret(raw))

    # ------------------------------------------------------------ upstream attempts

    async def _send(
        self, request: web.Request, provider: Provider, endpoint: Endpoint | None, url: URL,
        headers: CIMultiDict[str], body: bytes, caller: Caller, dump_id: str | None = None,
    ) -> tuple[UpstreamResponse, PoolKey | None, ResponseFilter | None, AttemptDump | None]:
        """Walk the key pool (or make the single BYOK attempt); return the response to relay, how the
        adapter wants its body rewritten for the client (None: as is), and the dump of that attempt
        (with ``AIGW_DUMP_DIR``: every attempt is dumped, the failed-over ones whole)."""
        adapter = provider.adapter
        t = provider.timeouts
        # connect: the client timeout; first byte: upstream.request's timer; idle between chunks: _Idle while relaying
        timeout = _client_timeout(t.connect)
        if caller.byok:
            keys: list[PoolKey | None] = [None]
        else:
            keys = list(provider.pool.usable())
            if not keys and not provider.pool.keys and adapter.keyless:
                keys = [None]  # credentials outside the pool (Bedrock's AWS keys) or none needed
            elif not keys:
                self._exhausted(provider)
        for i, key in enumerate(keys):
            h = headers.copy()
            if key is None:
                if caller.credential_header and caller.credential:
                    if caller.credential_header.lower() == "x-api-key":
                        h.popall("Authorization", None)
                    h[caller.credential_header] = caller.credential
            else:
                adapter.set_credential(h, key.secret)
            try:
                out = adapter.prepare(provider, endpoint, Outgoing(request.method, url, h, body))
                if out.url is not url:  # rebuilt by the adapter (Bedrock: the model is in the path)
                    paths.check_under(out.url, provider.base)
            except AdapterRefusal as e:
                raise Refused(e.status, e.message) from None
            except paths.UnsafeUpstream as e:
                log.warning("refused an upstream URL outside the provider's base path",
                            extra={"provider": provider.name, "error": str(e)})
                raise Refused(400, "the request would leave the provider's API path") from None
            ad: AttemptDump | None = None
            if dump_id is not None and self.dumps is not None:
                secrets = (key.secret if key is not None else caller.credential or "", *secret_settings(adapter.cap, provider.settings))
                ad = self.dumps.attempt(provider.name, dump_id, i + 1)
                ad.request(out.method, out.url, out.headers, out.body, secrets)
            try:
                resp = await self.upstream.request(out.method, out.url, out.headers, out.body, timeout, t.first_byte)
            except (TimeoutError, aiohttp.ClientError) as e:
                if ad is not None:
                    ad.error(f"{type(e).__name__}: {e}")
                    ad.close()
                if isinstance(e, TimeoutError):
                    raise Refused(504, f"provider {provider.name!r} did not answer within {t.connect + t.first_byte:.0f}s") from None
                if (forbidden := netguard.forbidden_cause(e)) is not None:
                    log.warning("upstream address refused", extra={"provider": provider.name, "error": str(forbidden)})
                    raise Refused(502, f"provider {provider.name!r} resolves to a {forbidden.klass} address, "
                                       "which this gateway may not call (AIGW_ALLOW_PRIVATE_UPSTREAMS)") from None
                log.warning("upstream unreachable", extra={"provider": provider.name, "error": str(e)})
                raise Refused(502, f"provider {provider.name!r} is unreachable") from None
            if key is None:
                return resp, None, adapter.response_filter(provider, out, resp.status, resp.headers), ad
            body403 = None
            if resp.status == 403:
                try:
                    async with asyncio.timeout(t.idle):
                        body403 = await _read_error_body(resp)
                except (TimeoutError, aiohttp.ClientError):
                    body403 = None  # unreadable: says nothing, so the 403 counts against the key
            marked = self.pools.observe(provider.id, key.id, resp.status, resp.headers, body403)
            self.m.upstream_attempts.labels(provider.name, key.id, str(resp.status)).inc()
            if marked is None:
                return resp, key, adapter.response_filter(provider, out, resp.status, resp.headers), ad
            if ad is not None:  # the answer that made us fail over: what an operator needs most
                ad.response_head(resp.status, resp.headers)
                ad.chunk(body403 if body403 is not None else await _read_dump_body(resp, t.idle))
                ad.close()
            resp.release()
            if i + 1 < len(keys):
                self.m.failovers.labels(provider.name, key.id, marked).inc()
        self._exhausted(provider)
        raise AssertionError("unreachable")

    def _exhausted(self, provider: Provider) -> None:
        self.m.exhaustions.labels(provider.name).inc()
        if not provider.pool.keys:
            raise Refused(502, f"provider {provider.name!r} has no API key configured")
        soonest = provider.pool.soonest_back()
        if soonest is not None:
            raise Refused(429, f"every key of provider {provider.name!r} is rate limited; retry after {soonest:.0f}s",
                          retry_after=soonest)
        raise Refused(502, f"every key of provider {provider.name!r} was rejected by the provider (revoked)")

    @staticmethod
    def _upstream_url(provider: Provider, path: str, request: web.Request) -> URL:
        try:
            return provider.adapter.upstream_url(provider, path, request.query)
        except paths.UnsafeUpstream as e:
            log.warning("refused an upstream URL outside the provider's base path",
                        extra={"provider": provider.name, "error": str(e)})
            raise Refused(400, "the request would leave the provider's API path") from None

    # ------------------------------------------------------------ pass-through

    async def _passthrough(self, request: web.Request, provider: Provider, path: str, caller: Caller,
                           body: bytes) -> web.StreamResponse:
        url = self._upstream_url(provider, path, request)
        dump_id = uuid.uuid4().hex if self.dumps is not None else None
        resp, _key, filt, ad = await self._send(request, provider, None, url, upstream_headers(request, provider), body,
                                                caller, dump_id)
        try:
            out = web.StreamResponse(status=resp.status, headers=_filtered_headers(resp.headers, filt))
            await out.prepare(request)
            if ad is not None:
                ad.response_head(resp.status, resp.headers)
            try:
                async for chunk in _chunks(resp, provider.timeouts.idle):
                    if filt is not None:
                        chunk = filt.feed(chunk)
                    if ad is not None:
                        ad.chunk(chunk)
                    await out.write(chunk)
            except TimeoutError:
                log.warning("pass-through upstream went quiet; response truncated",
                            extra={"provider": provider.name, "idle_timeout": provider.timeouts.idle})
                return out
            if filt is not None:
                tail = filt.finish()
                if ad is not None:
                    ad.chunk(tail)
                await out.write(tail)
            await out.write_eof()
            return out
        finally:
            resp.close()
            if ad is not None:
                ad.close()
            self.m.passthrough.labels(provider.name, str(resp.status)).inc()

    # ------------------------------------------------------------ bridged

    async def _bridged(self, request: web.Request, provider: Provider, endpoint: Endpoint, path: str,
                       caller: Caller, body: bytes) -> web.StreamResponse:
        api = provider.adapter.api
        dialect = DIALECTS[endpoint]
        try:
            info = dialect.parse_request(body)
        except ValueError as e:
            raise Refused(400, f"invalid request body: {e}") from None
        if len(info.model.encode()) > MAX_MODEL_BYTES:  # breakers, metrics and records are keyed by it
            raise Refused(400, f"model: longer than {MAX_MODEL_BYTES} bytes")
        # rate and concurrency limits, then the budget: in memory while the grants have room; only an empty
        # grant waits (bounded) for a refill
        limit = await self.limits.acquire(caller.identity) if self.limits is not None else None
        if limit is not None and not limit.allowed:
            raise Refused(429, limit.message, retry_after=limit.retry_after)
        try:
            admission = await self.guard.acquire(caller.identity, provider.name, info.model, info)
            if not admission.allowed:
                raise Refused(429, admission.message or "budget exhausted", retry_after=admission.retry_after)
            bkey = (provider.name, endpoint, info.model)
            breaker = self.breakers.get(*bkey)
            if not self.breakers.allow(breaker, bkey):
                self.guard.settle(admission, info.model, None)
                self.m.circuit_rejects.labels(provider.name, endpoint).inc()
                assert breaker is not None
                raise Refused(503, f"circuit open for {provider.name} {endpoint} {info.model or '(no model)'}: "
                                   "the provider is overloaded", retry_after=breaker.retry_after(time.monotonic()))
        except BaseException:
            if self.limits is not None:
                self.limits.settle(limit, None)
            raise
        hidden: Relay | None = None  # we asked for usage the client did not: what it did not ask for is metered, not relayed
        if info.stream and (asked := dialect.ask_for_usage(body)) is not None:
            body, hidden = asked

        rec = _Interception(self, request, provider, endpoint, caller, info, admission)
        rec.limit = limit
        rec.start()
        outcome = "error"
        status = 0
        try:
            url = self._upstream_url(provider, path, request)
            headers = upstream_headers(request, provider)
            try:
                resp, key, filt, rec.dump = await self._send(request, provider, endpoint, url, headers, body, caller,
                                                             rec.id)
            except Refused as r:
                status = r.status
                rec.error = r.message
                raise
            status = resp.status
            rec.key = key
            try:
                self.breakers.record(breaker, bkey, status)
                breaker = None  # outcome recorded
                ctype = filt.content_type if filt is not None else resp.headers.get("Content-Type", "")
                if status == 200 and "text/event-stream" in ctype:
                    out = await self._relay_stream(request, resp, dialect, api, rec, filt, hidden)
                else:
                    out = await self._relay_blocking(resp, dialect, rec, filt)
            finally:
                resp.close()
            outcome = "ok" if status < 400 and rec.error is None else "error"
            return out
        except asyncio.CancelledError:  # aiohttp cancels the handler when the client disconnects
            outcome = "interrupted"
            raise
        finally:
            if breaker is not None:
                breaker.release()
            rec.end(outcome, status)

    async def _relay_blocking(self, resp: UpstreamResponse, dialect: Dialect,
                              rec: _Interception, filt: ResponseFilter | None = None) -> web.Response:
        idle = rec.provider.timeouts.idle
        try:
            data = await _whole(resp, idle)
        except TimeoutError:
            rec.error = f"provider {rec.provider.name!r} sent nothing for {idle:g}s while answering"
            return error_response(rec.provider.adapter.api, 504, rec.error)
        if filt is not None:
            data = filt.feed(data) + filt.finish()
        if rec.dump is not None:
            rec.dump.response_head(resp.status, resp.headers)
            rec.dump.chunk(data)
        if resp.status < 400:
            rec.extracted = dialect.extract_blocking(data)
        else:
            upstream_msg = dialect.extract_blocking(data).error
            rec.error = f"upstream answered {resp.status}" + (f": {upstream_msg}" if upstream_msg else "")
        return web.Response(status=resp.status, body=data, headers=_filtered_headers(resp.headers, filt))

    async def _relay_stream(self, request: web.Request, resp: UpstreamResponse, dialect: Dialect,
                            api: Api, rec: _Interception, filt: ResponseFilter | None = None,
                            hidden: Relay | None = None) -> web.StreamResponse:
        out = web.StreamResponse(status=resp.status, headers=_filtered_headers(resp.headers, filt))
        out.headers["Cache-Control"] = "no-cache"
        out.headers["X-Accel-Buffering"] = "no"
        await out.prepare(request)
        ext = dialect.stream()
        # a filter that decodes the events itself (Bedrock) hands them over; a relay that hides events frames
        # them anyway and hands them over (one pass over the SSE); otherwise the extractor reads the SSE
        read = (None if filt is not None and filt.meter(ext.event)
                else ext.feed if hidden is None else hidden.metering(ext))
        dump = rec.dump
        if dump is not None:
            dump.response_head(resp.status, resp.headers)
        try:
            try:
                chunks = _chunks(resp, rec.provider.timeouts.idle)
                async for chunk in (chunks if filt is None else _translated(chunks, filt)):
                    if dump is not None:
                        dump.chunk(chunk)
                    relay = chunk if hidden is None else hidden.feed(chunk)
                    try:
                        if relay:
                            await out.write(relay)
                    finally:  # the client's bytes first, metered after (time to first byte); metered even
                        if read is not None:  # when the write fails (the provider produced them)
                            read(chunk)
                if hidden is not None and (tail := hidden.finish()):
                    await out.write(tail)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
                if isinstance(e, (ConnectionResetError, aiohttp.ClientConnectionResetError)) and request.transport is None:
                    raise  # the client went away
                msg = (f"upstream stream timed out (nothing for {rec.provider.timeouts.idle:g}s)"
                       if isinstance(e, TimeoutError) else "upstream stream broke")
                log.warning(msg, extra={"provider": rec.provider.name, "error": str(e)})
                rec.error = msg
                await out.write(sse_error_event(api, f"{msg}; the response is incomplete"))
            await out.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            rec.cancelled = True
        finally:
            if hidden is not None:
                hidden.finish()  # meters the tail of a stream that broke off (nothing when finished above)
            rec.extracted = ext.finish()
        return out


START_DELAY = 1.0  # seconds a request may run before its "started" event is sent on its own


class _Interception:
    """The record of one bridged request: emits its usage events and settles its budget reservation."""

    __slots__ = (
        "_seq",
        "_session",
        "_start_timer",
        "admission",
        "caller",
        "cancelled",
        "client",
        "dump",
        "endpoint",
        "error",
        "extracted",
        "gw",
        "id",
        "info",
        "key",
        "limit",
        "provider",
        "started_at",
        "t0",
    )

    def __init__(self, gw: Gateway, request: web.Request, provider: Provider, endpoint: Endpoint, caller: Caller,
                 info: RequestInfo, admission: Admission) -> None:
        self.gw = gw
        self.id = gw.ids.next()
        self.provider = provider
        self.endpoint = endpoint
        self.caller = caller
        self.info = info
        self.admission = admission
        self.limit: LimitDecision | None = None
        self.key: PoolKey | None = None
        self.extracted: Extracted | None = None
        self.error: str | None = None
        self.cancelled = False
        self.t0 = time.monotonic()
        self.started_at = time.time()
        self._start_timer: asyncio.TimerHandle | None = None
        self._seq = 0
        self.client = detect_client(request.headers)
        self._session = session_id(request.headers)
        self.dump: AttemptDump | None = None  # the attempt being relayed (set by _send)

    def start(self) -> None:
        """Count the request in flight; its started/prompt events wait for the end (or ``START_DELAY``), so a
        short request costs the bus one batch instead of two, while a long one still shows up as started."""
        self.gw.m.in_flight.labels(self.provider.name).inc()
        self._start_timer = asyncio.get_running_loop().call_later(START_DELAY, self._emit_start)

    def _event_id(self) -> str:
        """Unique per event without a random draw each: the interception id (random) and a sequence number."""
        self._seq += 1
        return f"{self.id}.{self._seq}"

    def _emit_start(self) -> None:
        """The request is still running after ``START_DELAY``: show it as started now."""
        if self._start_timer is not None:
            self._start_timer = None
            self.gw.recorder.emit_group(self._start_events())

    def _start_events(self) -> list[UsageEvent]:
        ident, key = self.caller.identity, self.key
        # built with at most 15 keyword arguments, the rest by replace: CPython leaves its fast call path at
        # 16 (this call took 0.83 µs with all 19, 0.43 µs in two steps)
        started = InterceptionStarted(
            event_id=self._event_id(), interception_id=self.id, at=self.started_at, user_id=ident.user_id,
            group_ids=ident.group_ids, token_id=ident.token_id, provider_id=self.provider.id,
            provider_name=self.provider.name, provider_type=self.provider.type, endpoint=self.endpoint,
            model=self.info.model, client=self.client, session_id=self._session,
            credential_kind="byok" if self.caller.byok else "centralised",
            credential_hint=key.hint if key is not None else self.caller.hint,
        )
        out: list[UsageEvent] = [msgspec.structs.replace(
            started, key_id=key.id if key is not None else None, streaming=self.info.stream,
            reservation_micros=self.admission.reservation_micros, gateway_id=self.admission.lease_holder)]
        if self.info.prompt:
            out.append(PromptRecorded(event_id=self._event_id(), interception_id=self.id, at=self.started_at,
                                      prompt=self.info.prompt))
        return out

    def end(self, outcome: str, status: int) -> None:
        events: list[UsageEvent] = []
        if self._start_timer is not None:  # a short request: its start goes out with its end, as one message
            self._start_timer.cancel()
            self._start_timer = None
            events = self._start_events()
        gw, now = self.gw, time.time()
        pname = self.provider.name
        ext = self.extracted
        tokens: TokenCounts | None = None
        if self.cancelled and outcome == "ok":
            outcome = "interrupted"
        if ext is not None:
            model = ext.model or self.info.model
            mlabel = gw.m.model(model)
            tokens = ext.tokens
            events.append(TokenUsage(event_id=self._event_id(), interception_id=self.id, at=now, model=model,
                                     tokens=tokens))
            for kind, n in (("input", tokens.input_tokens), ("output", tokens.output_tokens),
                            ("cache_read", tokens.cache_read_tokens), ("cache_write", tokens.cache_write_tokens),
                            ("reasoning", tokens.reasoning_tokens)):
                if n:
                    gw.m.tokens.labels(pname, mlabel, kind).inc(n)
            for tc in ext.tool_calls:
                events.append(ToolUsage(event_id=self._event_id(), interception_id=self.id, at=now, name=tc.name,
                                        call_id=tc.call_id, arguments=tc.arguments, injected=tc.injected,
                                        error=tc.error))
            if ext.error and self.error is None:
                self.error = ext.error
            if not ext.terminal and outcome == "ok" and self.info.stream:
                self.error = self.error or "stream closed before the provider's terminal event"
            if self.error and outcome == "ok":
                outcome = "error"
        duration = time.monotonic() - self.t0
        events.append(InterceptionEnded(event_id=self._event_id(), interception_id=self.id, at=now,
                                        status=outcome, status_code=status,  # type: ignore[arg-type]  # outcome: str, one of the Literal
                                        duration_ms=int(duration * 1000), error=self.error,
                                        key_id=self.key.id if self.key is not None else None,
                                        key_hint=self.key.hint if self.key is not None else ""))
        gw.recorder.emit_group(events)
        gw.guard.settle(self.admission, (ext.model if ext else None) or self.info.model, tokens)
        if gw.limits is not None:
            gw.limits.settle(self.limit, tokens)
        gw.m.in_flight.labels(pname).dec()
        gw.m.interceptions.labels(pname, self.endpoint, str(status or 0), self.client).inc()
        gw.m.duration.labels(pname, self.endpoint).observe(duration)
        if self.dump is not None:
            self.dump.close()
