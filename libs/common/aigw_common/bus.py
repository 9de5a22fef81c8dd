"""The NATS bus: connect with retry and reconnect, typed publish/subscribe/request, JetStream helpers.

A service that starts while NATS is down keeps running: the connection is made
in the background and retried forever; subscriptions registered before it
succeeds are applied on connect. ``Subjects`` holds every subject name of the
contract under a configurable prefix (``aigw`` in production; tests use a
unique prefix each so they can run in parallel on one server).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_args, overload

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import (
    ConnectionClosedError,
    MaxPayloadError,
    NoRespondersError,
    NoServersError,
    OutboundBufferLimitError,
)
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError
from prometheus_client import CollectorRegistry, Counter

from . import tracing
from .aio import stop_task, wait_event
from .errors import (
    AigwError,
    BusError,
    ConfigError,
    DecodeError,
    PayloadTooLarge,
    RemoteError,
    UnsupportedVersion,
)
from .schemas import BusErrorReply, Message, SignedEntry
from .signing import HEADER as SIG_HEADER
from .signing import PRODUCERS, Rejected, Signer, Verifier

log = logging.getLogger(__name__)
DEFAULT_MAX_PAYLOAD = 1024 * 1024
T = TypeVar("T", bound=msgspec.Struct)
# How long JetStream remembers a usage event id: a gateway replaying its spool after a long outage must
# still find the ids it published before, so the replay cannot record anything twice.
USAGE_DUPLICATE_WINDOW = 600.0

_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decoder_for(t: Any) -> msgspec.json.Decoder[Any]:
    d = _decoders.get(t)
    if d is None:
        d = _decoders[t] = msgspec.json.Decoder(t)
    return d


@overload
def decode(data: bytes, t: type[T]) -> T: ...
@overload
def decode(data: bytes, t: Any) -> Any: ...
def decode(data: bytes, t: Any) -> Any:
    """Decode ``data`` into ``t`` (a Struct class, or any msgspec type such as a Union) or raise
    :class:`DecodeError` (a poison message) — :class:`UnsupportedVersion` when it is a message whose ``v``
    is newer than this code's (docs/bus.md, "Message versions"), whether or not its fields still fit."""
    try:
        obj = decoder_for(t).decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        _refuse_newer(data, t)
        raise DecodeError(f"cannot decode {getattr(t, '__name__', t)}: {e}") from e
    if isinstance(obj, Message) and obj.v > known_version(type(obj)):
        raise UnsupportedVersion(type(obj).kind_tag(), obj.v, known_version(type(obj)))
    return obj


class _Head(msgspec.Struct):
    """The two fields every message starts with: read when a message does not decode, to tell a newer
    version (not poison: an upgraded replica reads it) from garbage."""

    kind: str = ""
    v: int = 1


@functools.cache
def known_version(t: type[Message]) -> int:
    """The ``v`` this code writes for ``t`` (its field default), the newest it reads."""
    for f in msgspec.structs.fields(t):
        if f.name == "v":
            return int(f.default)
    return 1


def _refuse_newer(data: bytes, t: Any) -> None:
    try:
        head = msgspec.json.decode(data, type=_Head)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return
    for m in get_args(t) or (t,):
        if isinstance(m, type) and issubclass(m, Message) and m.kind_tag() == head.kind:
            if head.v > known_version(m):
                raise UnsupportedVersion(head.kind, head.v, known_version(m))
            return


def _or_error(t: Any) -> Any:
    """What a reply to a request expecting ``t`` may be: ``t`` or the responder's error reply."""
    return t | BusErrorReply if isinstance(t, type) and issubclass(t, Message) else t


ERROR_MESSAGE_MAX = 300  # characters of an error reply's message: a reason, not a dump


def error_reply(e: BaseException) -> BusErrorReply:
    """The error reply for a handler that raised ``e``: an :class:`AigwError` says what it says (its text is
    written for callers) and whether to retry; anything else is a bug whose details stay in the responder's
    log, so the caller hears only "internal error" (retryable: another replica, or a later try, may work)."""
    if isinstance(e, AigwError):
        return BusErrorReply(code="unavailable" if e.retryable else "refused",
                             message=e.message[:ERROR_MESSAGE_MAX], retryable=e.retryable)
    return BusErrorReply(code="internal", message="internal error", retryable=True)


def _raise_remote(subject: str, err: BusErrorReply) -> None:
    raise RemoteError(f"{subject}: {err.code}: {err.message}", code=err.code, retryable=err.retryable)


def _token(prefix: str) -> str:
    return prefix.replace(".", "_").replace("-", "_")


@dataclass(frozen=True, slots=True)
class Subjects:
    """Every subject, stream and bucket name of the contract (``docs/bus.md``), under one prefix."""

    prefix: str = "aigw"

    @property
    def providers_changed(self) -> str:
        return f"{self.prefix}.providers.changed"

    @property
    def registry_snapshot(self) -> str:
        return f"{self.prefix}.registry.snapshot"

    @property
    def registry_directory(self) -> str:
        return f"{self.prefix}.registry.directory"

    @property
    def registry_audit(self) -> str:
        return f"{self.prefix}.registry.audit"

    @property
    def directory_changed(self) -> str:
        return f"{self.prefix}.registry.directory.changed"

    @property
    def auth_verify(self) -> str:
        return f"{self.prefix}.auth.verify"

    @property
    def auth_revoked(self) -> str:
        return f"{self.prefix}.auth.revoked"

    @property
    def keys_marked(self) -> str:
        return f"{self.prefix}.keys.marked"

    @property
    def keys_report(self) -> str:
        return f"{self.prefix}.keys.report"

    @property
    def keys_exhausted(self) -> str:
        return f"{self.prefix}.keys.exhausted"

    @property
    def keys_state(self) -> str:
        return f"{self.prefix}.keys.state"

    def usage(self, kind: str) -> str:
        return f"{self.prefix}.usage.{kind}"

    @property
    def usage_all(self) -> str:
        return f"{self.prefix}.usage.>"

    @property
    def budget_state(self) -> str:
        return f"{self.prefix}.budget.state"

    @property
    def budget_snapshot(self) -> str:
        return f"{self.prefix}.budget.snapshot"

    def budget(self, verb: str) -> str:
        return f"{self.prefix}.budget.{verb}"

    def chat(self, chat_id: str) -> str:
        return f"{self.prefix}.chat.{chat_id}"

    # JetStream names: "AIGW_USAGE" and "aigw_keys" under the default prefix.
    @property
    def usage_stream(self) -> str:
        return f"{_token(self.prefix).upper()}_USAGE"

    @property
    def keys_marked_stream(self) -> str:
        return f"{_token(self.prefix).upper()}_KEYS_MARKED"

    @property
    def keys_bucket(self) -> str:
        return f"{_token(self.prefix)}_keys"

    def durable(self, name: str) -> str:
        return f"{_token(self.prefix)}_{name}"


Handler = Callable[[Any, Msg], Awaitable[msgspec.Struct | None]]


def _signed_by(t: Any) -> str:
    return getattr(t, "signed_by", "") if isinstance(t, type) else ""


class BusAuth:
    """Proof of sender on the bus: signs what this process produces, checks what it receives.

    ``signers`` are the producer identities this process may sign as (a service: its own, if it is a
    producer; the test harness: any). A received message whose type declares ``signed_by`` is
    accepted only with a valid signature of that producer; anything else is dropped, counted in
    ``aigw_bus_rejected_messages_total`` and logged once per (claimed sender, kind, reason).
    The default (no keys) signs nothing and accepts no signed message: fail closed.
    """

    def __init__(self, signers: dict[str, Signer] | None = None, verifier: Verifier | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.signers = dict(signers or {})
        self.verifier = verifier or Verifier()
        registry = registry or CollectorRegistry()
        self.rejected = Counter("aigw_bus_rejected_messages", "Bus messages dropped for failing the proof-of-sender "
                                "check", ["kind", "claimed", "reason"], registry=registry)
        self.unsupported = Counter("aigw_bus_unsupported_messages", "Bus messages refused for a breaking version "
                                   "newer than this service reads", ["kind", "v"], registry=registry)
        self._logged: set[tuple[str, str, str]] = set()

    @classmethod
    def from_settings(cls, settings: Any, service: str, registry: CollectorRegistry | None = None) -> BusAuth:
        """The service's own signing key (producers only) and every producer's public key (all services)."""
        signers = {}
        if service in PRODUCERS:
            raw = settings.signing_keys.get(service)
            if not raw:
                raise ConfigError(f"AIGW_{service.upper()}_SIGNING_KEY is required: {service} signs what it "
                                  "publishes on the bus (aigw dev generates it; see docs/security.md)")
            signers[service] = Signer.from_b64(service, raw, f"AIGW_{service.upper()}_SIGNING_KEY")
        verifier = Verifier.from_pairs(settings.verify_keys, "AIGW_BUS_VERIFY_KEYS", settings.bus_max_message_age)
        missing = [p for p in PRODUCERS if not verifier.knows(p)]
        if missing:
            raise ConfigError(f"AIGW_BUS_VERIFY_KEYS has no public key for {', '.join(missing)}: every service "
                              "checks who sent the bus messages it acts on (see docs/security.md)")
        for name, signer in signers.items():
            if not any(signer.public_b64() == k for n, k in settings.verify_keys if n == name):
                raise ConfigError(f"AIGW_{name.upper()}_SIGNING_KEY does not match any {name} key in "
                                  "AIGW_BUS_VERIFY_KEYS: other services would drop everything it signs")
        return cls(signers, verifier, registry)

    def sign(self, t: Any, subject: str, context: str, payload: bytes, headers: dict[str, str] | None) -> dict[str, str] | None:
        """Headers with this message's signature added when its type requires one."""
        return self.sign_as(_signed_by(t), getattr(t, "__name__", str(t)), subject, context, payload, headers)

    def sign_as(self, who: str, kind: str, subject: str, context: str, payload: bytes,
                headers: dict[str, str] | None) -> dict[str, str] | None:
        """Headers with ``who``'s signature added (unchanged when ``who`` is empty: nothing to prove)."""
        if not who:
            return headers
        signer = self.signers.get(who)
        if signer is None:
            raise BusError(f"cannot publish {kind}: only {who} may sign it", retryable=False)
        h = dict(headers) if headers else {}
        h[SIG_HEADER] = signer.header(subject, context, payload)
        return h

    def accept(self, obj: Any, headers: dict[str, str] | None, subject: str, context: str, payload: bytes) -> bool:
        """True when ``obj`` needs no proof or carries a valid one; otherwise count, log once, and refuse."""
        return self.accept_from(_signed_by(type(obj)), type(obj), headers, subject, context, payload)

    def accept_from(self, who: str, t: Any, headers: dict[str, str] | None, subject: str, context: str,
                    payload: bytes) -> bool:
        """True when ``who`` is empty (no proof needed) or signed this payload; otherwise count, log once, refuse."""
        if not who:
            return True
        try:
            self.verifier.check_header(who, (headers or {}).get(SIG_HEADER), subject, context, payload)
        except Rejected as r:
            self.refused(t, r, subject, who)
            return False
        return True

    def refused(self, t: Any, r: Rejected, subject: str, expected: str = "") -> None:
        kind = getattr(t, "__name__", str(t))
        self.rejected.labels(kind, r.claimed or "none", r.reason).inc()
        key = (kind, r.claimed, r.reason)
        if key not in self._logged:
            self._logged.add(key)
            log.warning("dropping bus message that failed the proof-of-sender check (logged once per sender)",
                        extra={"kind": kind, "subject": subject, "claimed_sender": r.claimed or "none",
                               "reason": r.reason, "expected_sender": expected or _signed_by(t)})

    def newer_version(self, e: UnsupportedVersion, subject: str) -> None:
        """Count a message refused for its version; log it once per (kind, version)."""
        self.unsupported.labels(e.kind, str(e.v)).inc()
        key = ("version", e.kind, str(e.v))
        if key not in self._logged:
            self._logged.add(key)
            log.error("refusing bus messages of a newer version than this service reads (logged once per "
                      "version): finish the rolling upgrade", extra={"kind": e.kind, "v": e.v, "subject": subject,
                                                                     "error": e.message})

    def seal_entry(self, subject: str, msg: msgspec.Struct) -> bytes:
        """A stored value (KV) for ``msg``, signed over ``subject`` (bucket.key) without expiry."""
        payload = encode(msg)
        who = _signed_by(type(msg))
        if not who:
            return payload
        signer = self.signers.get(who)
        if signer is None:
            raise BusError(f"cannot store {type(msg).__name__}: only {who} may sign it", retryable=False)
        ts, sig = signer.sign(subject, "", payload)
        return encode(SignedEntry(signer=signer.name, ts=ts, sig=sig, payload=msgspec.Raw(payload)))

    def open_entry(self, subject: str, data: bytes, t: type[T]) -> T | None:
        """The value stored under ``subject`` if its signature holds (None: refused, counted and logged)."""
        who = _signed_by(t)
        if not who:
            return decode(data, t)
        try:
            env = decode(data, SignedEntry)
        except DecodeError:
            self.refused(t, Rejected("unsigned"), subject)
            return None
        payload = bytes(env.payload)
        try:
            self.verifier.check(who, subject, "", payload, env.signer, env.ts, env.sig, max_age=0)
        except Rejected as r:
            self.refused(t, r, subject)
            return None
        return decode(payload, t)


@dataclass(slots=True)
class _Sub:
    subject: str
    msg_type: Any
    handler: Handler
    queue: str
    nats_sub: Any = None


@dataclass(slots=True)
class Bus:
    """One NATS connection per service process."""

    servers: tuple[str, ...]
    name: str
    subjects: Subjects = field(default_factory=Subjects)
    connect_timeout: float = 2.0
    js_replicas: int = 1  # replicas of every stream and bucket this bus creates (AIGW_JS_REPLICAS)
    auth: BusAuth = field(default_factory=BusAuth)
    inbox_prefix: str = "_INBOX"
    nc: NatsClient | None = None
    _subs: list[_Sub] = field(default_factory=list)
    _connected: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _on_connect: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _on_reconnect: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _closing: bool = False
    _cb_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # ------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts (its INFO ``max_payload``; NATS' 1 MiB default before the
        first connect). Headers count against it too: leave them room."""
        nc = self.nc
        return nc.max_payload if nc is not None else DEFAULT_MAX_PAYLOAD

    async def wait_connected(self, timeout: float | None = None) -> bool:
        return await wait_event(self._connected, timeout)

    def on_connect(self, cb: Callable[[], Awaitable[None]]) -> None:
        """Run ``cb`` after the first successful connect (and at once if already connected)."""
        self._on_connect.append(cb)

    def on_reconnect(self, cb: Callable[[], Awaitable[None]]) -> None:
        self._on_reconnect.append(cb)

    async def start(self, *, wait: float | None = 0.0) -> None:
        """Begin connecting in the background; optionally wait up to ``wait`` seconds for it."""
        if self._task is None:
            self._task = asyncio.create_task(self._connect_loop(), name=f"bus-connect-{self.name}")
        if wait:
            await self.wait_connected(wait)

    async def _connect_loop(self) -> None:
        delay = 0.2
        while not self._closing:
            try:
                nc = await nats.connect(
                    servers=list(self.servers),
                    name=self.name,
                    inbox_prefix=self.inbox_prefix,
                    connect_timeout=self.connect_timeout,
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    ping_interval=10,
                    max_outstanding_pings=3,
                    error_cb=self._error_cb,
                    disconnected_cb=self._disconnected_cb,
                    reconnected_cb=self._reconnected_cb,
                )
            except (NoServersError, OSError, TimeoutError, NatsTimeout) as e:
                log.warning("nats connect failed; retrying", extra={"error": str(e), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.nc = nc
            for s in self._subs:
                await self._apply(s)
            self._connected.set()
            u = nc.connected_url
            # host and port only: the URL's userinfo holds this service's NATS password
            log.info("nats connected", extra={"server": f"{u.hostname}:{u.port}" if u else "", "user": (u.username or "") if u else ""})
            for cb in list(self._on_connect):
                await self._run_cb(cb)
            return

    async def _run_cb(self, cb: Callable[[], Awaitable[None]]) -> None:
        try:
            await cb()
        except Exception:
            log.exception("bus connect callback failed")

    async def _error_cb(self, e: Exception) -> None:
        log.warning("nats error", extra={"error": str(e)})

    async def _disconnected_cb(self) -> None:
        if not self._closing:
            log.warning("nats disconnected")

    async def _reconnected_cb(self) -> None:
        log.info("nats reconnected")
        for cb in list(self._on_reconnect):
            t = asyncio.create_task(self._run_cb(cb))
            self._cb_tasks.add(t)  # keep a reference until done (the loop holds tasks weakly)
            t.add_done_callback(self._cb_tasks.discard)

    async def close(self) -> None:
        """Drain subscriptions and close; safe to call twice."""
        self._closing = True
        if self._task is not None and not self._task.done():
            await stop_task(self._task)
        if self.nc is not None and not self.nc.is_closed:
            try:
                if self.nc.is_connected:
                    async with asyncio.timeout(5):  # not wait_for: it can swallow a cancel (aio.py)
                        await self.nc.drain()
                else:
                    await self.nc.close()
            except (TimeoutError, ConnectionClosedError, NatsTimeout, OSError):
                # the server may be gone already (shut down first): closing must not raise
                with contextlib.suppress(OSError, ConnectionClosedError):
                    await self.nc.close()

    def _require(self) -> NatsClient:
        nc = self.nc
        if nc is None or nc.is_closed:
            raise BusError("not connected to NATS")
        return nc

    # ------------------------------------------------------------ core pub/sub

    @staticmethod
    def _headers(headers: dict[str, str] | None) -> dict[str, str] | None:
        """A copy of ``headers`` (signing adds to it) with the trace context, when tracing is on: with it off
        the propagators find nothing to carry and cost ~1 µs per message."""
        if not tracing.enabled():
            return dict(headers) if headers else None
        h = dict(headers) if headers else {}
        tracing.inject(h)
        return h or None

    async def publish(self, subject: str, msg: msgspec.Struct, *, headers: dict[str, str] | None = None) -> None:
        nc = self._require()
        if not nc.is_connected:
            raise BusError("NATS is disconnected")
        data = encode(msg)
        h = self.auth.sign(type(msg), subject, "", data, self._headers(headers))
        try:
            await nc.publish(subject, data, headers=h)
        except MaxPayloadError as e:
            raise PayloadTooLarge(f"publish to {subject}: message larger than the server's max_payload") from e
        except (ConnectionClosedError, OutboundBufferLimitError) as e:
            raise BusError(f"publish to {subject} failed: {e}") from e

    async def publish_raw(self, subject: str, data: bytes, *, reply: str = "",
                          headers: dict[str, str] | None = None) -> None:
        """Publish encoded bytes without waiting for anything (the caller tracks acks on ``reply`` itself)."""
        nc = self._require()
        if not nc.is_connected:
            raise BusError("NATS is disconnected")
        try:
            await nc.publish(subject, data, reply=reply, headers=self._headers(headers))
        except MaxPayloadError as e:
            raise PayloadTooLarge(f"publish to {subject}: {len(data)} bytes exceed the server's max_payload") from e
        except (ConnectionClosedError, OutboundBufferLimitError) as e:
            raise BusError(f"publish to {subject} failed: {e}") from e

    @overload
    async def request(self, subject: str, msg: msgspec.Struct, reply_type: type[T], *, timeout: float = 2.0,
                      headers: dict[str, str] | None = None, attempts: int = 1, retry_delay: float = 0.2) -> T: ...
    @overload
    async def request(self, subject: str, msg: msgspec.Struct, reply_type: Any, *, timeout: float = 2.0,
                      headers: dict[str, str] | None = None, attempts: int = 1, retry_delay: float = 0.2) -> Any: ...
    async def request(
        self, subject: str, msg: msgspec.Struct, reply_type: Any, *, timeout: float = 2.0,
        headers: dict[str, str] | None = None, attempts: int = 1, retry_delay: float = 0.2,
    ) -> Any:
        """Ask and decode the reply. ``attempts`` > 1 is for idempotent questions (lookups): a request or its
        reply is lost when the node carrying it dies, or meets no responder while the responder reconnects
        to a surviving node; asking again a moment later gets the answer instead of an error."""
        nc = self._require()
        data = encode(msg)
        # a request whose type names its sender (an audit record) is signed like a publish of it
        h = self.auth.sign(type(msg), subject, "", data, self._headers(headers))
        for attempt in range(1, attempts + 1):
            try:
                if _signed_by(reply_type):
                    return await self._signed_request(nc, subject, data, reply_type, timeout, h)
                return await self._request_once(nc, subject, data, reply_type, timeout, h)
            except BusError as e:
                if attempt == attempts or not e.retryable:
                    raise
                log.info("bus request unanswered; asking again", extra={"subject": subject, "error": e.message})
                await asyncio.sleep(retry_delay)
                nc = self._require()
        raise AssertionError("unreachable")

    async def _request_once(self, nc: NatsClient, subject: str, data: bytes, reply_type: Any, timeout: float,
                            headers: dict[str, str] | None) -> Any:
        try:
            reply = await nc.request(subject, data, timeout=timeout, headers=headers)
        except NoRespondersError as e:
            raise BusError(f"no responder on {subject}") from e
        except (NatsTimeout, TimeoutError) as e:
            raise BusError(f"request on {subject} timed out after {timeout}s") from e
        except ConnectionClosedError as e:
            raise BusError(f"request on {subject}: connection closed") from e
        obj = decode(reply.data, _or_error(reply_type))
        if isinstance(obj, BusErrorReply) and reply_type is not BusErrorReply:
            _raise_remote(subject, obj)
        return obj

    async def _signed_request(self, nc: NatsClient, subject: str, data: bytes, reply_type: Any, timeout: float,
                              headers: dict[str, str] | None) -> Any:
        """A request whose reply must carry its producer's signature over (inbox, request subject).

        Replies that fail the check are dropped and the wait goes on, so a rogue responder that answers
        first neither wins nor denies service: the real producer's reply is still taken. An error reply
        must carry the same producer's signature to end the wait.
        """
        who = _signed_by(reply_type)
        inbox = nc.new_inbox()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            sub = await nc.subscribe(inbox)
        except ConnectionClosedError as e:
            raise BusError(f"request on {subject}: connection closed") from e
        try:
            try:
                await nc.publish(subject, data, reply=inbox, headers=headers)
            except (ConnectionClosedError, OutboundBufferLimitError) as e:
                raise BusError(f"request on {subject} failed: {e}") from e
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise BusError(f"request on {subject} timed out after {timeout}s")
                try:
                    m = await sub.next_msg(timeout=remaining)
                except (NatsTimeout, TimeoutError) as e:
                    raise BusError(f"request on {subject} timed out after {timeout}s") from e
                except ConnectionClosedError as e:
                    raise BusError(f"request on {subject}: connection closed") from e
                if not m.data and m.headers and m.headers.get("Status") == "503":
                    raise BusError(f"no responder on {subject}")
                try:
                    obj = decode(m.data, _or_error(reply_type))
                except UnsupportedVersion as e:
                    self.auth.newer_version(e, subject)
                    continue
                except DecodeError as e:
                    log.warning("dropping undecodable reply", extra={"subject": subject, "error": str(e)})
                    continue
                if not self.auth.accept_from(who, type(obj), m.headers, m.subject, subject, m.data):
                    continue
                if isinstance(obj, BusErrorReply):
                    _raise_remote(subject, obj)
                return obj
        finally:
            with contextlib.suppress(ConnectionClosedError, nats.errors.BadSubscriptionError):
                await sub.unsubscribe()

    async def subscribe(self, subject: str, msg_type: Any, handler: Handler, *, queue: str = "") -> _Sub:
        """Register a typed handler (``msg_type=bytes`` for raw payloads); a returned Struct is sent as the
        reply when the message has one. Re-applied on every (re)connect."""
        sub = _Sub(subject, msg_type, handler, queue)
        self._subs.append(sub)
        if self.connected:
            await self._apply(sub)
        return sub

    async def unsubscribe(self, sub: _Sub) -> None:
        """Drop a subscription made by :meth:`subscribe` (e.g. interest in one chat's events ended)."""
        if sub in self._subs:
            self._subs.remove(sub)
        nsub, sub.nats_sub = sub.nats_sub, None
        if nsub is not None and self.nc is not None and not self.nc.is_closed:
            try:
                await nsub.unsubscribe()
            except (ConnectionClosedError, nats.errors.BadSubscriptionError) as e:
                log.debug("unsubscribe failed", extra={"subject": sub.subject, "error": str(e)})

    async def flush(self, timeout: float = 2.0) -> None:
        """Wait until the server has processed everything sent so far (e.g. a new subscription)."""
        nc = self._require()
        try:
            await nc.flush(timeout=timeout)  # type: ignore[arg-type]  # nats-py annotates int, takes any seconds
        except (NatsTimeout, TimeoutError, ConnectionClosedError) as e:
            raise BusError(f"flush failed: {e}") from e

    async def _apply(self, sub: _Sub) -> None:
        assert self.nc is not None

        # an error reply is signed as the service that answers this request type (see BusErrorReply)
        answerer = getattr(sub.msg_type, "answered_by", "")

        async def cb(m: Msg) -> None:
            try:
                obj = m.data if sub.msg_type is bytes else decode(m.data, sub.msg_type)
            except DecodeError as e:
                if isinstance(e, UnsupportedVersion):
                    self.auth.newer_version(e, m.subject)
                else:
                    log.warning("dropping undecodable message", extra={"subject": m.subject, "error": str(e)})
                if m.reply:  # a request: say so rather than leave the caller waiting
                    await self._reply(m, BusErrorReply(code="bad_request", message=str(e)[:ERROR_MESSAGE_MAX],
                                                       retryable=e.retryable), answerer)
                return
            if not self.auth.accept(obj, m.headers, m.subject, "", m.data):
                return
            try:
                reply = await sub.handler(obj, m)
            except Exception as e:
                if isinstance(e, AigwError):
                    log.warning("bus handler failed", extra={"subject": m.subject, "error": e.message,
                                                             "retryable": e.retryable})
                else:
                    log.exception("bus handler failed", extra={"subject": m.subject})
                if m.reply:
                    await self._reply(m, error_reply(e), answerer)
                return
            if reply is not None and m.reply:
                await self._reply(m, reply, _signed_by(type(reply)))

        sub.nats_sub = await self.nc.subscribe(sub.subject, queue=sub.queue, cb=cb)

    async def _reply(self, m: Msg, reply: msgspec.Struct, who: str) -> None:
        """Answer ``m`` with ``reply`` signed as ``who`` over (inbox, request subject). An error reply that
        cannot be signed goes out unsigned: a caller that needs the proof drops it and times out as before."""
        data = encode(reply)
        try:
            h = self.auth.sign_as(who, type(reply).__name__, m.reply, m.subject, data, None)
        except BusError as e:
            if not isinstance(reply, BusErrorReply):
                log.error("cannot sign reply", extra={"subject": m.subject, "error": str(e)})
                return
            h = None
        try:
            await self._require().publish(m.reply, data, headers=h)
        except (BusError, ConnectionClosedError, OutboundBufferLimitError) as e:
            log.warning("could not send reply", extra={"subject": m.subject, "error": str(e)})

    # ------------------------------------------------------------ JetStream

    @property
    def js(self) -> JetStreamContext:
        return self._require().jetstream()

    def jetstream(self, timeout: float) -> JetStreamContext:
        """A JetStream context whose API calls give up after ``timeout`` (the default waits 5 s)."""
        return self._require().jetstream(timeout=timeout)

    async def ensure_stream(
        self, name: str, subjects: list[str], *, max_age: float | None = None, duplicate_window: float = 120.0,
        max_bytes: int | None = None,
    ) -> None:
        """Create the stream with ``js_replicas`` replicas, or bring an existing one to this configuration.

        An existing stream is updated in place (never deleted and recreated: it holds events not yet
        consumed), and only when something differs, so every replica of every service may call this at
        each (re)connect. A replica count change is such an update: JetStream then adds or removes peers
        and copies the data to the new ones.
        """
        want = StreamConfig(
            name=name, subjects=subjects, duplicate_window=duplicate_window, max_age=max_age,
            max_bytes=max_bytes if max_bytes is not None else -1, num_replicas=self.js_replicas,
        )
        js = self.js
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            try:
                await js.add_stream(want)
                return
            except nats.js.errors.BadRequestError:
                info = await js.stream_info(name)  # another replica created it between our calls
        have = info.config
        if _stream_differs(have, want):
            log.info("updating stream configuration", extra={
                "stream": name, "replicas": f"{have.num_replicas}->{want.num_replicas}"})
            await js.update_stream(dataclasses.replace(
                have, subjects=want.subjects, duplicate_window=want.duplicate_window, max_age=want.max_age,
                max_bytes=want.max_bytes, num_replicas=want.num_replicas))

    async def ensure_usage_stream(self) -> None:
        """``AIGW_USAGE``: the one definition every publisher and consumer ensures (a second copy with
        other settings would flip the stream's configuration at each start of either side)."""
        s = self.subjects
        await self.ensure_stream(s.usage_stream, [s.usage_all], duplicate_window=USAGE_DUPLICATE_WINDOW)

    async def js_publish(
        self, subject: str, msg: msgspec.Struct | None, *, msg_id: str | None = None, timeout: float = 2.0,
        headers: dict[str, str] | None = None, data: bytes | None = None,
    ) -> None:
        """Publish to JetStream and wait for the ack; ``msg_id`` is the dedup id (``Nats-Msg-Id``)."""
        if data is not None:
            payload = data
        elif msg is not None:
            payload = encode(msg)
        else:
            raise TypeError("js_publish needs a message or its encoded data")
        h = self.auth.sign(type(msg), subject, "", payload, self._headers(headers)) or {}
        if msg_id:
            h["Nats-Msg-Id"] = msg_id
        try:
            await self.js.publish(subject, payload, timeout=timeout, headers=h)
        except (NatsTimeout, TimeoutError) as e:
            raise BusError(f"jetstream publish to {subject} timed out") from e
        except (NoRespondersError, NoStreamResponseError) as e:  # nats-py raises the latter when no stream listens
            raise NoStream(f"no stream for {subject}") from e
        except MaxPayloadError as e:
            raise PayloadTooLarge(f"jetstream publish to {subject}: {len(payload)} bytes exceed max_payload") from e
        except APIError as e:
            # the stream answered with an error: 5xx and "not found" may pass (a stream being created, a leader
            # election); anything else (a message the stream refuses by size or rule) never will
            retry = (e.code or 0) >= 500 or e.code == 404
            raise BusError(f"jetstream publish to {subject} refused: {e.description or e}", retryable=retry) from e
        except nats.errors.Error as e:  # connection closed, draining, reconnecting, outbound buffer full…
            raise BusError(f"jetstream publish to {subject} failed: {e}") from e
        except nats.js.errors.Error as e:
            # NoStreamResponseError: the stream has no leader right now (a cluster electing one after a node
            # died) — nats-py turns the no-responders status into this; or an API error in the PubAck.
            # Either way the message is not stored: the caller keeps it and tries again.
            raise BusError(f"jetstream publish to {subject} not stored: {type(e).__name__}: {e}") from e


def _stream_differs(have: StreamConfig, want: StreamConfig) -> bool:
    def seconds(v: float | None) -> float:
        return float(v or 0.0)

    return (
        sorted(have.subjects or []) != sorted(want.subjects or [])
        or abs(seconds(have.duplicate_window) - seconds(want.duplicate_window)) > 1e-3
        or abs(seconds(have.max_age) - seconds(want.max_age)) > 1e-3
        or (have.max_bytes if have.max_bytes is not None else -1) != want.max_bytes
        or (have.num_replicas or 1) != want.num_replicas
    )


class NoStream(BusError):
    """No JetStream stream takes the subject (deleted, or not created yet): ensure it, then retry."""


def now() -> float:
    return time.time()


def make_bus(settings: Any, service: str, registry: CollectorRegistry | None = None) -> Bus:
    """A bus for ``service`` from :class:`~aigw_common.settings.Settings`: its own signing key (if it is a
    producer), every producer's public key, and its own inbox prefix (``_INBOX.<service>``) so NATS can
    confine each service to its own replies."""
    return Bus(servers=tuple(settings.nats_urls), name=f"aigw-{service}", subjects=Subjects(settings.bus_prefix),
               js_replicas=settings.js_replicas, auth=BusAuth.from_settings(settings, service, registry),
               inbox_prefix=f"_INBOX.{service}")


__all__ = ["Bus", "BusAuth", "Message", "Subjects", "decode", "decoder_for", "encode", "make_bus"]
