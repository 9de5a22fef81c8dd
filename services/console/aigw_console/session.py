"""Sign-in sessions: the aigw token in an HttpOnly, SameSite=Strict cookie, and CSRF checks for changes.

The cookie is ``v1.<issued epoch>.<token>``: the browser's scripts cannot read
it (HttpOnly), other sites cannot make the browser send it (SameSite=Strict),
and the console refuses it once older than ``AIGW_CONSOLE_SESSION_TTL``. It
holds the token itself rather than an id into server memory, so any console
replica serves any session and a restart signs nobody out. The token is only
ever sent on to the admin APIs as ``Authorization: Bearer``; every role check
stays with the service that owns the data.

Every change (any method but GET/HEAD) must carry the session's CSRF token
(``X-CSRF-Token`` or a ``csrf`` form field; an HMAC of the session under the
token, which another site cannot compute) and, when the browser says where it
comes from (``Origin``, ``Sec-Fetch-Site``), come from this origin.

Who the token belongs to is asked of the registry (``GET /api/v2/users/me``)
and kept for a few seconds in a bounded map keyed by the token's hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

COOKIE = "aigw_console"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD"})
MAX_TOKEN_LEN = 512


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    issued: int

    @property
    def csrf(self) -> str:
        mac = hmac.new(self.token.encode(), f"aigw-console-csrf|{self.issued}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def cookie_value(self) -> str:
        return f"v1.{self.issued}.{self.token}"


def read_session(request: web.Request, ttl: float, now: float | None = None) -> Session | None:
    raw = request.cookies.get(COOKIE, "")
    parts = raw.split(".", 2)
    if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdigit():
        return None
    token, issued = parts[2], int(parts[1])
    if not valid_token_shape(token):
        return None
    now = time.time() if now is None else now
    if not (now - ttl <= issued <= now + 60):
        return None
    return Session(token, issued)


def _secure(request: web.Request) -> bool:
    """TLS here, or the browser's page is https (TLS ended at a proxy in front of us): a Secure cookie."""
    return request.secure or request.headers.get("Origin", "").startswith("https://")


def set_session_cookie(response: web.StreamResponse, request: web.Request, session: Session, ttl: float) -> None:
    response.set_cookie(COOKIE, session.cookie_value(), max_age=int(ttl), path="/", httponly=True,
                        samesite="Strict", secure=_secure(request))


def clear_session_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=_secure(request))


def valid_token_shape(token: str) -> bool:
    return 0 < len(token) <= MAX_TOKEN_LEN and token.isprintable() and not any(c.isspace() for c in token)


def same_origin(request: web.Request) -> bool:
    """False when the browser tells us the request comes from another site."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    o = urlsplit(origin)
    # The host (with port) must be ours; the scheme may differ behind a TLS-terminating proxy.
    return bool(o.netloc) and o.netloc.lower() == (request.host or "").lower()


def csrf_ok(request: web.Request, session: Session, form_value: str | None = None) -> bool:
    sent = request.headers.get(CSRF_HEADER) or form_value or ""
    return same_origin(request) and hmac.compare_digest(sent.encode(), session.csrf.encode())


@dataclass(frozen=True, slots=True)
class Me:
    """The signed-in user, as the registry describes them."""

    id: str
    username: str
    roles: tuple[str, ...]
    groups: tuple[dict[str, Any], ...]


@dataclass(slots=True)
class WhoCache:
    """``sha256(token)`` → (expiry, Me), bounded; a short TTL so role changes show up within seconds."""

    ttl: float = 10.0
    max_entries: int = 4096
    _entries: OrderedDict[bytes, tuple[float, Me]] = field(default_factory=OrderedDict)

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> Me | None:
        k = self._key(token)
        e = self._entries.get(k)
        if e is None:
            return None
        if e[0] < time.monotonic():
            del self._entries[k]
            return None
        self._entries.move_to_end(k)
        return e[1]

    def put(self, token: str, me: Me) -> None:
        k = self._key(token)
        self._entries[k] = (time.monotonic() + self.ttl, me)
        self._entries.move_to_end(k)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop(self, token: str) -> None:
        self._entries.pop(self._key(token), None)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class SignInLimiter:
    """Failed sign-ins per client address: ``max_failures`` per ``window`` seconds, then a wait.

    Tokens are long random strings, so this is not what keeps them safe; it keeps a script from turning
    the sign-in form into a free way to make the registry check tokens. Bounded: the oldest addresses
    are forgotten first. Behind a reverse proxy every browser shares the proxy's address, so the limit
    is generous.
    """

    max_failures: int = 20
    window: float = 60.0
    max_entries: int = 10_000
    _entries: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)

    def retry_after(self, addr: str, now: float | None = None) -> float:
        """Seconds until ``addr`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        e = self._entries.get(addr)
        if e is None or now - e[0] >= self.window:
            return 0.0
        return self.window - (now - e[0]) if e[1] >= self.max_failures else 0.0

    def failed(self, addr: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        start, n = self._entries.get(addr, (now, 0))
        if now - start >= self.window:
            start, n = now, 0
        self._entries[addr] = (start, n + 1)
        self._entries.move_to_end(addr)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def succeeded(self, addr: str) -> None:
        self._entries.pop(addr, None)
