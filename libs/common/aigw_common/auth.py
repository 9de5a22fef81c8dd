"""Who is calling: aigw tokens verified through the registry, cached in memory.

A cache hit costs no I/O. A miss asks the registry on ``aigw.auth.verify``.
Entries live ``ttl`` seconds and are evicted early on ``aigw.auth.revoked``,
so a revoked token stops working on every replica within a second. Negative
answers are cached briefly so a flood of bad tokens does not flood the bus.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web
from nats.aio.msg import Msg

from .bus import Bus
from .crypto import hash_token
from .errors import BusError
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


def is_admin(identity: Identity) -> bool:
    return ROLE_OWNER in identity.roles or ROLE_ADMIN in identity.roles


def is_owner(identity: Identity) -> bool:
    return ROLE_OWNER in identity.roles


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


@dataclass(slots=True)
class IdentityCache:
    bus: Bus
    ttl: float = 60.0
    negative_ttl: float = 2.0
    max_entries: int = 100_000
    timeout: float = 2.0
    _entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)

    async def start(self) -> None:
        await self.bus.subscribe(self.bus.subjects.auth_revoked, AuthRevoked, self._on_revoked)

    async def _on_revoked(self, msg: AuthRevoked, _m: Msg) -> None:
        self.evict(token_ids=msg.token_ids, user_ids=msg.user_ids)

    def evict(self, *, token_ids: list[str] = (), user_ids: list[str] = ()) -> int:  # type: ignore[assignment]
        tids, uids = set(token_ids), set(user_ids)
        drop = [h for h, e in self._entries.items()
                if e.identity is not None and (e.identity.token_id in tids or e.identity.user_id in uids)]
        for h in drop:
            del self._entries[h]
        return len(drop)

    def clear(self) -> None:
        self._entries.clear()

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

    async def verify(self, token: str) -> Identity | None:
        """Return the identity for ``token``, or None when unknown/revoked/expired. Raises BusError if the registry cannot be asked."""
        h = hash_token(token)
        now = time.monotonic()
        e = self._entries.get(h)
        if e is not None:
            if self._fresh(e, now):
                return e.identity
            del self._entries[h]
        reply = await self.bus.request(
            self.bus.subjects.auth_verify, AuthVerifyRequest(token_hash=h), AuthVerifyReply, timeout=self.timeout
        )
        ident = reply.identity
        self._entries[h] = _Entry(ident, now + (self.ttl if ident is not None else self.negative_ttl))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return ident


async def authenticate(request: web.Request, cache: IdentityCache) -> Identity:
    """Control-plane authentication for services other than the registry: 401 on a bad token, 403 on a
    gateway-scoped one, 503 if unverifiable. Every control-plane route goes through here (the registry's
    own ``authenticate`` applies the same rule from its database)."""
    from .api import ApiError, forbidden, unauthorized

    token = bearer_token(request)
    if not token:
        raise unauthorized("missing token: send Authorization: Bearer <aigw token>")
    try:
        ident = await cache.verify(token)
    except BusError as e:
        log.warning("token verification unavailable", extra={"error": str(e)})
        raise ApiError(503, "identity service unavailable, try again", headers={"Retry-After": "1"}) from None
    if ident is None:
        raise unauthorized()
    if ident.scope != SCOPE_ADMIN:
        raise forbidden(GATEWAY_SCOPE_REFUSED)
    return ident


__all__ = ["ROLES", "SCOPES", "SCOPE_ADMIN", "SCOPE_GATEWAY", "IdentityCache", "authenticate", "bearer_token", "is_admin", "is_owner", "same_token"]
