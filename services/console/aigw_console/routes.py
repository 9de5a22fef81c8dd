"""Which admin API path goes to which service: an allowlist of method + path templates, nothing else.

The console is not an open proxy. A request path is split into segments and
matched against :data:`ROUTES`; literal segments must be equal, ``{param}``
segments must look like an id or a name (:data:`SEGMENT_RE`: no ``.``/``..``,
no slash, no percent-escape). Only a match is forwarded, to a URL built from
the owning service's base URL and the validated segments (parse, then build).
The console imports no service, so the table is written out here;
``tests/test_console_routes.py`` checks it against each service's document in
``docs/openapi/`` (every entry a documented operation of its service, every
documented operation forwarded or deliberately not). Keypool's
``/keys/health`` and ``/keys/{keyId}/reset`` come before the registry's
``/keys/{keyId}`` so the literal wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEGMENT_RE = re.compile(r"^[A-Za-z0-9_@+-][A-Za-z0-9._@+-]{0,199}$")


@dataclass(frozen=True, slots=True)
class ApiRoute:
    service: str
    methods: frozenset[str]
    template: tuple[str, ...]  # segments; "{name}" is a parameter

    def match(self, segments: list[str]) -> bool:
        if len(segments) != len(self.template):
            return False
        for want, got in zip(self.template, segments, strict=True):
            if want.startswith("{"):
                if not SEGMENT_RE.match(got) or got.strip(".") == "":
                    return False
            elif want != got:
                return False
        return True


def _r(service: str, methods: str, path: str) -> ApiRoute:
    return ApiRoute(service, frozenset(methods.split()), tuple(path.strip("/").split("/")))


_P = "/api/v2/ai/providers"
_U = "/api/v2/users/{user}"
_G = "/api/v2/groups/{group}"
_C = "/api/experimental/chats"

ROUTES: tuple[ApiRoute, ...] = (
    # keypool: live key health and reset
    _r("keypool", "GET", _P + "/{provider}/keys/health"),
    _r("keypool", "POST", _P + "/{provider}/keys/{key}/reset"),
    # registry: providers, keys, users, tokens, BYOK keys, groups, audit
    _r("registry", "GET POST", _P),
    _r("registry", "GET PATCH DELETE", _P + "/{provider}"),
    _r("registry", "GET POST", _P + "/{provider}/keys"),
    _r("registry", "DELETE", _P + "/{provider}/keys/{key}"),
    _r("registry", "GET POST", "/api/v2/users"),
    _r("registry", "GET PATCH DELETE", _U),
    _r("registry", "GET POST", _U + "/tokens"),
    _r("registry", "DELETE", _U + "/tokens/{token}"),
    _r("registry", "GET", _U + "/ai/provider-keys"),
    _r("registry", "PUT DELETE", _U + "/ai/provider-keys/{provider}"),
    _r("registry", "GET", _U + "/ai/provider-configs"),
    _r("registry", "GET POST", "/api/v2/groups"),
    _r("registry", "GET PATCH DELETE", _G),
    _r("registry", "PUT DELETE", _G + "/members/{user}"),
    _r("registry", "GET", "/api/v2/audit-logs"),
    # budget: budgets, limits, usage, traffic, prices
    _r("budget", "GET PUT DELETE", _U + "/ai/budget"),
    _r("budget", "GET PUT DELETE", _G + "/ai/budget"),
    _r("budget", "GET PUT DELETE", _U + "/ai/limits"),
    _r("budget", "GET PUT DELETE", _G + "/ai/limits"),
    _r("budget", "GET", "/api/v2/ai/usage"),
    _r("budget", "GET", "/api/v2/ai/interceptions"),
    _r("budget", "GET", "/api/v2/ai/interceptions/{id}"),
    _r("budget", "GET PUT", "/api/v2/ai/prices"),
    # chatd: chats (the stream is relayed event by event) and skills
    _r("chatd", "GET POST", _C + "/model-configs"),
    _r("chatd", "GET POST", _C),
    _r("chatd", "GET PATCH DELETE", _C + "/{chat}"),
    _r("chatd", "POST", _C + "/{chat}/messages"),
    _r("chatd", "POST", _C + "/{chat}/interrupt"),
    _r("chatd", "GET", _C + "/{chat}/stream"),
    _r("chatd", "GET POST", "/api/experimental/users/{user}/skills"),
    _r("chatd", "GET PATCH DELETE", "/api/experimental/users/{user}/skills/{skill}"),
)


class NoRoute(Exception):
    """No template matches (404), or one matches but not for this method (405, with the allowed ones)."""

    def __init__(self, allowed: frozenset[str] = frozenset()) -> None:
        super().__init__("no route")
        self.allowed = allowed


def resolve(method: str, segments: list[str]) -> ApiRoute:
    """The route for ``method`` and the path's segments, or :class:`NoRoute`."""
    allowed: set[str] = set()
    for r in ROUTES:
        if r.match(segments):
            if method in r.methods:
                return r
            allowed |= r.methods
    raise NoRoute(frozenset(allowed))
