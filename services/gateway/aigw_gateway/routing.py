"""From a request path to (provider name, provider-relative path), stripping the accepted prefixes."""

from __future__ import annotations

import functools
from dataclasses import dataclass

PREFIXES = ("/api/v2/aibridge", "/api/v2/ai-gateway")
RESERVED = frozenset({"api", "healthz", "readyz", "metrics"})


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    path: str  # always starts with "/", e.g. "/v1/chat/completions"


def split(path: str) -> Target | None:
    """``/openai/v1/models`` → Target("openai", "/v1/models"); None for paths that address no provider."""
    return _split(path) if len(path) <= 256 else _split.__wrapped__(path)


@functools.lru_cache(maxsize=1024)  # bounded (1024 paths of <= 256 chars: client input); clients repeat a few routes
def _split(path: str) -> Target | None:
    for p in PREFIXES:
        if path == p or path.startswith(p + "/"):
            path = path[len(p):]
            break
    if not path.startswith("/"):
        return None
    name, sep, rest = path[1:].partition("/")
    if not name or name in RESERVED:
        return None
    return Target(name, "/" + rest if sep else "/")
