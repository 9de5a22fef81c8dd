"""Header rules shared by the registry (validating a provider's ``forward_headers``) and the gateway
(forwarding): which client headers may never reach a provider, whatever a setting says."""

from __future__ import annotations

import re

# Never forwarded, whatever a type or the provider's settings allow (settings validation refuses them too).
NEVER = frozenset({
    "host", "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "content-length", "expect", "cookie", "cookie2",
    "authorization", "x-api-key", "api-key", "forwarded", "via", "x-real-ip", "true-client-ip",
    "cf-connecting-ip", "x-aigw-token",
})
NEVER_PREFIXES = ("x-forwarded-", "metadata", "x-aigw-", "proxy-", "x-google-metadata", "x-amz-")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def is_forwardable_name(name: str) -> bool:
    """Whether a header name may be added to a provider's ``forward_headers`` (a valid token, not on the
    never-forward list)."""
    n = name.lower()
    return bool(_TOKEN.match(n)) and n not in NEVER and not n.startswith(NEVER_PREFIXES)


def parse_names(raw: object) -> frozenset[str]:
    """``forward_headers`` from provider settings ("X-Foo, X-Bar"), lowercased; invalid names are ignored
    (the registry refuses them when the provider is saved)."""
    if not isinstance(raw, str):
        return frozenset()
    return frozenset(n.strip().lower() for n in raw.split(",") if n.strip() and is_forwardable_name(n.strip()))
