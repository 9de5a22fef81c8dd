"""Which headers cross the gateway: an allowlist upstream, a short denylist back to the client.

Upstream, only the provider API's own headers go (per provider type, plus any the provider's settings name
in ``forward_headers``); cookies, proxy and forwarding headers, cloud-metadata headers, our own
``X-AIGW-*`` and the client's credentials never do (credentials are set per attempt by the adapter).
Headers named in ``Connection`` are hop-by-hop by definition and dropped whatever their name.

Back to the client, everything the provider sends that describes the answer (request ids, rate-limit
headers) is relayed, except hop-by-hop headers, ``Set-Cookie`` (the upstream's cookies are not for our
clients) and ``Server`` / ``Alt-Svc`` / ``Via`` (they describe the upstream's servers, not ours).
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from aigw_common.headers import NEVER, NEVER_PREFIXES, parse_names

__all__ = ["COMMON", "Allowlist", "allowed", "downstream", "parse_names"]

# Forwarded for every provider type.
COMMON = frozenset({
    "content-type", "accept", "accept-language", "user-agent", "idempotency-key", "x-request-id",
    "x-client-request-id", "traceparent", "tracestate",
})
_RESPONSE_DROP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length", "content-encoding",
    "upgrade", "trailer", "proxy-authenticate", "set-cookie", "set-cookie2", "server", "alt-svc", "via",
})
_STANDARD_CONNECTION = frozenset({"keep-alive", "close", "upgrade"})


def allowed(names: Iterable[str]) -> frozenset[str]:
    """A type's forwarded header names: :data:`COMMON` plus ``names``, lowercase, minus :data:`NEVER`
    (computed once per adapter class, so the per-request check is one set lookup)."""
    return frozenset(n.lower() for n in (*COMMON, *names)) - NEVER


def _connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    names: set[str] = set()
    for h in ("Connection", "Proxy-Connection"):
        for v in headers.getall(h, ()):
            names.update(t.strip().lower() for t in v.split(","))
    names -= _STANDARD_CONNECTION
    names.discard("")
    return frozenset(names)


class Allowlist:
    """One provider type's request-header allowlist: :data:`COMMON` plus its names, or a name starting with
    one of its prefixes that no never-forward rule covers. Decisions are remembered per header name as the
    client spelled it (a bounded map: names are client input), so a request costs one lookup per header."""

    MAX_REMEMBERED = 1024

    def __init__(self, names: Iterable[str], prefixes: tuple[str, ...]) -> None:
        self.names = allowed(names)
        self.prefixes = tuple(p.lower() for p in prefixes)
        self._seen: dict[str, bool] = {}

    def allows(self, name: str) -> bool:
        ok = self._seen.get(name)
        if ok is None:
            lk = name.lower()
            ok = lk in self.names or (lk.startswith(self.prefixes) and lk not in NEVER
                                      and not lk.startswith(NEVER_PREFIXES))
            if len(self._seen) < self.MAX_REMEMBERED:
                self._seen[name] = ok
        return ok

    def upstream(self, headers: CIMultiDictProxy[str], extra: frozenset[str] = frozenset()) -> CIMultiDict[str]:
        """The client's headers that may go upstream: allowed here or named in ``extra`` (the provider's
        ``forward_headers``, already filtered by the never-forward rules), minus anything named in
        ``Connection``."""
        conn = headers.get("Connection")
        plain = conn is None or conn.lower() in _STANDARD_CONNECTION  # "keep-alive" / "close": names no header
        hop = _connection_named(headers) if not plain or "Proxy-Connection" in headers else None
        out: CIMultiDict[str] = CIMultiDict()
        for k, v in headers.items():
            if self.allows(k) or (extra and k.lower() in extra):
                if hop and k.lower() in hop:
                    continue
                out.add(k, v)
        out["Accept-Encoding"] = "identity"  # usage is read from the bytes we relay
        return out


def downstream(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers a client may see."""
    hop = _connection_named(headers) if "Connection" in headers else None
    if not hop:
        return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _RESPONSE_DROP)
    return CIMultiDict((k, v) for k, v in headers.items() if (lk := k.lower()) not in _RESPONSE_DROP and lk not in hop)
