"""Who is calling: aigw tokens verified through the registry, cached in memory.

A cache hit costs no I/O. A miss asks the registry on ``aigw.auth.verify``.
Entries live ``ttl`` seconds and are evicted early on ``aigw.auth.revoked``,
so a revoked token stops working on every replica within a second.

Token guessing costs the registry nothing per try (docs/security.md): unknown
tokens are cached negatively for a few seconds in a map of their own (a flood
of them cannot push real identities out), concurrent look-ups of one token share
one request, and failed authentications are counted per client address
(:class:`FailureThrottle`): past the allowance, a token not already cached is
refused with 429 before anything is asked.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from nats.aio.msg import Msg

from .bus import Bus
from .crypto import hash_token
from .errors import AigwError, BusError
from .schemas import AuthRevoked, AuthVerifyReply, AuthVerifyRequest, Identity

log = logging.getLogger(__name__)

ROLE_OWNER = "owner"
ROLE_ADMIN = "admin"
ROLE_MEMBER = "member"
ROLES = (ROLE_OWNER, ROLE_ADMIN, ROLE_MEMBER)

SCOPE_GATEWAY = "gateway"  # LLM routes only
SCOPE_ADMIN = "admin"  # LLM routes and the control-plane routes the user's roles allow
SCOPES = (SCOPE_GATEWAY, SCOPE_ADMIN)
GATEWAY_SCOPE_REFUSED = ("this token has gateway scope (LLM routes only); the control-plane APIs need a token "
                         "created with \"scope\": \"admin\"")


class HasRoles(Protocol):
    """A control-plane caller: another service's ``Identity`` or the registry's ``Actor``."""

    @property
    def roles(self) -> Sequence[str]: ...


def is_admin(caller: HasRoles) -> bool:
    return ROLE_OWNER in caller.roles or ROLE_ADMIN in caller.roles


def is_owner(caller: HasRoles) -> bool:
    return ROLE_OWNER in caller.roles


def bearer_token(request: web.Request) -> str | None:
    """The aigw token of a control-plane request (``Authorization: Bearer``)."""
    h = request.headers.get("Authorization", "")
    if h[:7].lower() == "bearer ":
        t = h[7:].strip()
        return t or None
    return None


def same_token(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(slots=True)
class _Entry:
    identity: Identity | None
    expires: float
    stale_until: float | None = None  # set while served past expiry: the registry was unreachable to re-verify


class AuthThrottled(AigwError):
    """This client address failed to authenticate too often: answer 429 with ``retry_after``."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed authentications from this address; retry after {retry_after:.0f}s")
        self.retry_after = retry_after


def client_key(address: str | None) -> str:
    """The throttling key of a client address: the IPv4 address, or the /64 of an IPv6 one (one host's share)."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(getattr(ip, "ipv4_mapped", None) or ip)


class FailureThrottle:
    """Failed authentications per client address: a token bucket of ``per_minute`` (refilled at that rate).

    Bounded: at most ``max_clients`` addresses are tracked, the least recently failing forgotten first, so a
    flood of addresses costs fixed memory (an address forgotten starts again with a full allowance).
    """

    def __init__(self, per_minute: int = 30, *, max_clients: int = 10_000) -> None:
        self.burst = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self.throttled = 0  # requests refused (a counter for metrics)
        self._b: OrderedDict[str, list[float]] = OrderedDict()  # key → [allowance, monotonic time of it]

    def retry_after(self, key: str) -> float | None:
        """Seconds until ``key`` may try an unknown token again; None when it may now."""
        b = self._b.get(key)
        if b is None or self.rate <= 0:
            return None
        allowance = min(self.burst, b[0] + (time.monotonic() - b[1]) * self.rate)
        return None if allowance >= 1.0 else (1.0 - allowance) / self.rate

    def failed(self, key: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        b = self._b.get(key)
        if b is None:
            b = self._b[key] = [self.burst, now]
            while len(self._b) > self.max_clients:
                self._b.popitem(last=False)
        else:
            self._b.move_to_end(key)
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate) - 1.0
        b[1] = now


@dataclass(slots=True)
class IdentityCache:
    bus: Bus
    ttl: float = 60.0
    negative_ttl: float = 5.0
    max_entries: int = 100_000
    max_negative: int = 20_000
    timeout: float = 2.0
    failures: FailureThrottle = field(default_factory=FailureThrottle)
    verify_requests: int = 0  # asked of the registry (a counter for metrics and tests)
    stale_grace: float = 300.0  # how long past expiry a verified token may be served while the registry is away
    stale_retry: float = 5.0  # meanwhile, how often one request asks the registry again
    _entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    _negative: OrderedDict[str, float] = field(default_factory=OrderedDict)  # token hash → expiry (monotonic)
    _inflight: dict[str, asyncio.Future[Identity | None]] = field(default_factory=dict)

    async def start(self) -> None:
        await self.bus.subscribe(self.bus.subjects.auth_revoked, AuthRevoked, self._on_revoked)

    async def _on_revoked(self, msg: AuthRevoked, _m: Msg) -> None:
        self.evict(token_ids=msg.token_ids, user_ids=msg.user_ids)

    def evict(self, *, token_ids: Iterable[str] = (), user_ids: Iterable[str] = ()) -> int:
        tids, uids = set(token_ids), set(user_ids)
        drop = [h for h, e in self._entries.items()
                if e.identity is not None and (e.identity.token_id in tids or e.identity.user_id in uids)]
        for h in drop:
            del self._entries[h]
        return len(drop)

    def clear(self) -> None:
        self._entries.clear()
        self._negative.clear()

    def cached(self, token: str) -> Identity | None:
        e = self._entries.get(hash_token(token))
        if e is not None and self._fresh(e, time.monotonic()):
            return e.identity
        return None

    @staticmethod
    def _fresh(e: _Entry, now: float) -> bool:
        """Still inside the cache TTL, and the token itself has not expired meanwhile."""
        return e.expires > now and (e.identity is None or e.identity.expires_at is None
                                    or e.identity.expires_at > time.time())

    async def verify(self, token: str, client: str | None = None) -> Identity | None:
        """The identity for ``token``, or None when unknown/revoked/expired.

        ``client`` is the caller's address: its failures are counted, and once over the allowance a token
        that is not cached raises :class:`AuthThrottled` without asking anyone. Raises BusError if the
        registry cannot be asked — unless the token was verified less than ``stale_grace`` seconds past its
        cache expiry: then the known identity keeps serving while the registry is unreachable (a NATS node or
        the database failing over), as the rest of the gateway's in-memory state does, and the registry is
        asked again every ``stale_retry`` seconds. A revocation heard meanwhile still evicts it at once.
        """
        h = hash_token(token)
        now = time.monotonic()
        e = self._entries.get(h)
        stale: _Entry | None = None
        if e is not None:
            if self._fresh(e, now):
                return e.identity
            del self._entries[h]
            stale_until = e.stale_until if e.stale_until is not None else e.expires + self.stale_grace
            live = e.identity is not None and (e.identity.expires_at is None or e.identity.expires_at > time.time())
            if live and now < stale_until:
                stale = _Entry(e.identity, now + self.stale_retry, stale_until)
        key = client_key(client) if client is not None else None
        neg = self._negative.get(h)
        if neg is not None:
            if neg > now:
                if key is not None:
                    self.failures.failed(key)
                return None
            del self._negative[h]
        # a token verified recently (its entry just expired) is re-verified even from a throttled address:
        # behind a proxy every client shares one, and guessing must not lock out the users already known
        if key is not None and stale is None and (wait := self.failures.retry_after(key)) is not None:
            self.failures.throttled += 1
            raise AuthThrottled(wait)
        try:
            ident = await self._ask(h)
        except BusError as err:
            if stale is None or h in self._entries:
                raise
            log.warning("registry unreachable; a known token keeps its cached identity",
                        extra={"token_id": stale.identity.token_id if stale.identity else None, "error": err.message})
            self._entries[h] = stale  # asked again after stale_retry, never served past stale_until
            return stale.identity
        if ident is None and key is not None:
            self.failures.failed(key)
        return ident

    async def _ask(self, h: str) -> Identity | None:
        """One registry request per token hash at a time: concurrent misses of the same token share it."""
        fut = self._inflight.get(h)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[h] = fut
        try:
            self.verify_requests += 1
            reply = await self.bus.request(
                self.bus.subjects.auth_verify, AuthVerifyRequest(token_hash=h), AuthVerifyReply, timeout=self.timeout,
                attempts=2,  # a lookup: asked again if the first question or its answer died with a NATS node
            )
        except BaseException as exc:
            fut.set_exception(exc if isinstance(exc, Exception) else BusError("verification cancelled"))
            fut.exception()  # retrieved here: a lone request with no one sharing it must not warn
            raise
        finally:
            self._inflight.pop(h, None)
        ident = reply.identity
        now = time.monotonic()
        if ident is not None:
            self._entries[h] = _Entry(ident, now + self.ttl)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._negative[h] = now + self.negative_ttl
            while len(self._negative) > self.max_negative:
                self._negative.popitem(last=False)
        fut.set_result(ident)
        return ident


async def authenticate(request: web.Request, cache: IdentityCache) -> Identity:
    """Control-plane authentication for services other than the registry: 401 on a bad token, 403 on a
    gateway-scoped one, 503 if unverifiable. Every control-plane route goes through here (the registry's
    own ``authenticate`` applies the same rule from its database)."""
    from .api import (  # api imports this module
        Forbidden,
        TooManyRequests,
        Unauthorized,
        Unavailable,
    )

    token = bearer_token(request)
    if not token:
        raise Unauthorized("missing token: send Authorization: Bearer <aigw token>")
    try:
        ident = await cache.verify(token, client=request.remote or "")
    except AuthThrottled as e:
        raise TooManyRequests(e.message, e.retry_after) from None
    except BusError as e:
        log.warning("token verification unavailable", extra={"error": str(e)})
        raise Unavailable("identity service unavailable, try again") from None
    if ident is None:
        raise Unauthorized()
    if ident.scope != SCOPE_ADMIN:
        raise Forbidden(GATEWAY_SCOPE_REFUSED)
    return ident


__all__ = ["ROLES", "SCOPES", "SCOPE_ADMIN", "SCOPE_GATEWAY", "AuthThrottled", "FailureThrottle", "HasRoles", "IdentityCache", "authenticate", "bearer_token", "client_key", "is_admin", "is_owner", "same_token"]
