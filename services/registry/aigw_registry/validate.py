"""Input rules of the registry API: names, base URLs, secrets and per-type provider settings.

Every function here is pure: it returns the normalised value or raises
:class:`Invalid` naming the field, so handlers can collect several problems
into one 400 and the seeder can reuse the same rules for env providers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aigw_common import headers, llm, netguard
from aigw_common.api import BadRequest, ValidationOut
from aigw_common.auth import ROLES
from aigw_common.crypto import mask_secret
from aigw_common.durations import parse_duration
from aigw_common.ids import is_uuid
from aigw_common.settings import PROVIDER_NAME_RE, RESERVED_PROVIDER_NAMES

T = TypeVar("T")

MAX_API_KEY_BYTES = 10 * 1024
MAX_KEYS_PER_PROVIDER = 100
MAX_NAME = 63
MAX_DISPLAY_NAME = 128
MAX_URL = 2048

_ACCOUNT_RE = re.compile(r"^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$")
_HOST_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$")
_EMAIL_RE = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


# Provider settings by type: (field, required, secret), from the type's record. Unknown fields are refused.
SETTINGS_FIELDS: dict[str, tuple[tuple[str, bool, bool], ...]] = {
    t: tuple((f.name, f.required, f.secret) for f in cap.settings) for t, cap in llm.CAPABILITIES.items() if cap.settings
}
# Upstream timeouts every type accepts (durations such as "30s", "10m"; the gateway's defaults otherwise).
TIMEOUT_FIELDS = tuple(f.name for f in llm.COMMON_SETTINGS if f.kind == "duration")
# Extra client headers the gateway forwards to this provider: "X-Foo, X-Bar" (aigw_common.headers rules).
[FORWARD_HEADERS] = [f.name for f in llm.COMMON_SETTINGS if f.kind == "header_names"]
MAX_FORWARD_HEADERS = 32
THINKING_MODES = frozenset({"budget", "adaptive", "adaptive-only"})
MAX_TIMEOUT_SECONDS = 86400.0


class Invalid(ValueError):
    """One field failed validation."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class Problems:
    """Collects :class:`Invalid` so one 400 lists every bad field."""

    def __init__(self) -> None:
        self.items: list[ValidationOut] = []

    def check(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T | None:
        try:
            return fn(*args, **kw)
        except Invalid as e:
            self.items.append(ValidationOut(e.field, e.detail))
            return None

    def add(self, field: str, detail: str) -> None:
        self.items.append(ValidationOut(field, detail))

    def raise_if_any(self) -> None:
        if self.items:
            first = self.items[0]
            raise BadRequest(f"invalid {first.field}: {first.detail}", validations=self.items)


def provider_name(raw: str, field: str = "name") -> str:
    name = raw.strip()
    if not name:
        raise Invalid(field, "is required")
    if len(name) > MAX_NAME:
        raise Invalid(field, f"must be at most {MAX_NAME} characters")
    if not PROVIDER_NAME_RE.match(name):
        raise Invalid(field, "must be lowercase letters, digits and single hyphens (^[a-z0-9]+(-[a-z0-9]+)*$)")
    if name in RESERVED_PROVIDER_NAMES:
        raise Invalid(field, f"{name!r} is reserved")
    if is_uuid(name):
        raise Invalid(field, "must not look like an id")
    return name


def provider_type(raw: str, field: str = "type") -> str:
    t = llm.provider_type(raw.strip().lower())
    if t is None:
        raise Invalid(field, f"unknown provider type {raw!r}; expected one of {', '.join(llm.PROVIDER_TYPES)}")
    return t.value


def display_name(raw: str, field: str = "display_name") -> str:
    v = raw.strip()
    if len(v) > MAX_DISPLAY_NAME:
        raise Invalid(field, f"must be at most {MAX_DISPLAY_NAME} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise Invalid(field, "must not contain control characters")
    return v


def base_url(raw: str, *, allowed: frozenset[str], field: str = "base_url") -> str:
    """Normalise: scheme http/https, lowercase host, no credentials/query/fragment, no trailing slash.

    A literal address (in any form ``inet_aton`` reads) or a well-known metadata name of a class that
    ``allowed`` (``AIGW_ALLOW_PRIVATE_UPSTREAMS``) does not list is refused here; names are not resolved
    at create time: every upstream connection is checked on its resolved address (aigw_common.netguard)."""
    v = raw.strip()
    if not v:
        raise Invalid(field, "is required")
    if len(v) > MAX_URL:
        raise Invalid(field, f"must be at most {MAX_URL} characters")
    if any(ord(c) <= 32 or ord(c) == 127 for c in v):
        raise Invalid(field, "must not contain whitespace or control characters")
    try:
        parts = urlsplit(v)
        port = parts.port
    except ValueError as e:
        raise Invalid(field, f"is not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Invalid(field, "must start with http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise Invalid(field, "must not contain credentials; add keys through the keys API")
    if parts.fragment or "#" in v:
        raise Invalid(field, "must not contain a fragment")
    if parts.query or "?" in v:
        raise Invalid(field, "must not contain a query string")
    host = (parts.hostname or "").lower()
    if not host:
        raise Invalid(field, "must name a host")
    ip = netguard.literal_address(host)
    if ip is None and not _HOST_RE.match(host):
        raise Invalid(field, f"host {host!r} is not a valid hostname")
    klass = netguard.classify_host(host)
    if klass is not None and klass not in allowed:
        raise Invalid(
            field,
            f"points at a {klass} address; set AIGW_ALLOW_PRIVATE_UPSTREAMS={klass} (or true) to allow it",
        )
    netloc = f"[{host}]" if isinstance(ip, ipaddress.IPv6Address) else host
    if port is not None and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        netloc += f":{port}"
    path = re.sub(r"/{2,}", "/", parts.path).rstrip("/")
    return f"{scheme}://{netloc}{path}"


def secret_value(raw: str, field: str) -> str:
    """API keys and credentials: trimmed, non-empty, printable ASCII (they go into headers), ≤ 10 KiB."""
    v = raw.strip()
    if not v:
        raise Invalid(field, "must not be empty")
    if len(v.encode()) > MAX_API_KEY_BYTES:
        raise Invalid(field, f"must be at most {MAX_API_KEY_BYTES} bytes")
    if not _PRINTABLE.match(v):
        raise Invalid(field, "must be printable ASCII without spaces or line breaks")
    return v


def provider_settings(p: Problems, ptype: str, raw: Mapping[str, str], field: str = "settings") -> dict[str, str]:
    """Validate the settings object of a provider type into ``p``; returns it trimmed, empties dropped."""
    spec = SETTINGS_FIELDS.get(ptype, ()) + tuple((f.name, f.required, f.secret) for f in llm.COMMON_SETTINGS)
    known = {f for f, _, _ in spec}
    for k in raw:
        if k not in known:
            p.add(f"{field}.{k}", f"unknown setting for a {ptype} provider"
                  + (f"; expected {', '.join(sorted(known))}" if known else "; this type takes no settings"))
    out: dict[str, str] = {}
    for name, required, secret in spec:
        v = (raw.get(name) or "").strip()
        if not v:
            if required:
                p.add(f"{field}.{name}", "is required")
            continue
        if secret:
            v = p.check(secret_value, v, f"{field}.{name}") or ""
        elif len(v) > 256 or any(ord(c) < 32 for c in v):
            p.add(f"{field}.{name}", "must be at most 256 printable characters")
        out[name] = v
    for name in TIMEOUT_FIELDS:
        if name in out:
            try:
                secs = parse_duration(out[name])
            except ValueError:
                secs = -1.0
            if not 0 < secs <= MAX_TIMEOUT_SECONDS:
                p.add(f"{field}.{name}", "must be a duration above 0 and at most 1 day, e.g. 30s or 10m")
    if FORWARD_HEADERS in out:
        names = [n.strip() for n in out[FORWARD_HEADERS].split(",") if n.strip()]
        bad = [n for n in names if not headers.is_forwardable_name(n)]
        if bad:
            p.add(f"{field}.{FORWARD_HEADERS}", f"{', '.join(bad)}: not a header name the gateway may forward "
                  "(credentials, cookies, hop-by-hop, forwarding, metadata and X-AIGW-* headers never are)")
        elif len(names) > MAX_FORWARD_HEADERS:
            p.add(f"{field}.{FORWARD_HEADERS}", f"at most {MAX_FORWARD_HEADERS} names")
    if "thinking_mode" in out and out["thinking_mode"] not in THINKING_MODES:
        p.add(f"{field}.thinking_mode", f"expected one of {', '.join(sorted(THINKING_MODES))}")
    if ptype == "bedrock" and bool(out.get("access_key")) != bool(out.get("access_key_secret")):
        p.add(f"{field}.access_key_secret", "access_key and access_key_secret go together")
    return out


def secret_settings(ptype: str) -> frozenset[str]:
    cap = llm.capabilities(ptype)
    return frozenset() if cap is None else cap.secret_settings


def mask_settings(ptype: str, settings: Mapping[str, str]) -> dict[str, str]:
    secrets = secret_settings(ptype)
    return {k: (mask_secret(v) if k in secrets else v) for k, v in settings.items()}


def merge_settings(ptype: str, current: Mapping[str, str], patch: Mapping[str, str | None]) -> dict[str, str]:
    """A PATCH merges into the stored settings; ``null`` drops a field, and a secret sent back in its
    masked form (as a read returned it) keeps the stored value."""
    secrets = secret_settings(ptype)
    out = dict(current)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif k in secrets and k in current and v == mask_secret(current[k]):
            continue
        else:
            out[k] = v
    return out


def account_name(raw: str, field: str) -> str:
    """Usernames and group names: letters, digits and . _ - between them; not 'me', not id-shaped."""
    v = raw.strip()
    if not v:
        raise Invalid(field, "is required")
    if len(v) > 64:
        raise Invalid(field, "must be at most 64 characters")
    if not _ACCOUNT_RE.match(v):
        raise Invalid(field, "must be letters and digits, optionally separated by single '.', '_' or '-'")
    if v.lower() == "me":
        raise Invalid(field, "'me' is reserved")
    if is_uuid(v):
        raise Invalid(field, "must not look like an id")
    return v


def email(raw: str | None, field: str = "email") -> str | None:
    if raw is None:
        return None
    v = raw.strip()
    if not v:
        return None
    if len(v) > 254 or not _EMAIL_RE.match(v):
        raise Invalid(field, "is not a valid email address")
    return v


def roles(raw: list[str], field: str = "roles") -> list[str]:
    out: list[str] = []
    for i, r in enumerate(raw):
        r2 = r.strip().lower()
        if r2 not in ROLES:
            raise Invalid(f"{field}[{i}]", f"unknown role {r!r}; expected one of {', '.join(ROLES)}")
        if r2 not in out:
            out.append(r2)
    if not out:
        raise Invalid(field, "at least one role is required")
    return sorted(out, key=ROLES.index)


def token_name(raw: str, field: str = "name") -> str:
    v = raw.strip()
    if len(v) > 128:
        raise Invalid(field, "must be at most 128 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise Invalid(field, "must not contain control characters")
    return v
