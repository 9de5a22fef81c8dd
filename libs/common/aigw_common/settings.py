"""Configuration: every ``AIGW_*`` variable declared once, in :data:`VARS`, and parsed up front into frozen objects.

Each :class:`Var` of the table names its variable, its format, default, meaning, the services that read it
and whether it is a secret. From that one table come the parsing into :class:`Settings`, the check that
rejects an ``AIGW_`` variable no service knows (so a typo never passes silently), the per-service secret
matrix (:data:`SECRET_HOLDERS`) and the tables of docs/configuration.md (``aigw config-doc``,
:mod:`aigw_common.configdoc`).

Nothing here reads the environment at import time. ``Settings.from_env`` takes a mapping (``os.environ`` in
production, a dict in tests), validates every value, and raises :class:`ConfigError` naming the variable on
the first problem.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import netguard
from .durations import format_duration, parse_duration
from .errors import ConfigError
from .llm import (
    ANTHROPIC_BASE_URL,
    OPENAI_BASE_URL,
    PROVIDER_TYPES,
    bedrock_runtime_url,
    capabilities,
)
from .logging import mask_url
from .signing import DEFAULT_MAX_AGE, PRODUCERS, check_private_key, parse_verify_keys

SERVICES = ("gateway", "registry", "keypool", "budget", "chatd", "console")
DEFAULT_PORTS = {"gateway": 8080, "registry": 8081, "keypool": 8082, "budget": 8083, "chatd": 8084,
                 "console": 8085}
# The services whose admin APIs the console routes to; AIGW_<NAME>_URL says where (default: its local ADDR).
CONSOLE_UPSTREAMS = ("registry", "keypool", "budget", "chatd")
PROVIDER_NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
RESERVED_PROVIDER_NAMES = frozenset({"api", "healthz", "readyz", "metrics"})


@dataclass(frozen=True, slots=True)
class ListenAddr:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """The gateway's circuit breaker (``AIGW_CIRCUIT_BREAKER_*``; defaults in :data:`VARS`)."""

    enabled: bool
    failure_threshold: int
    interval: float
    timeout: float
    max_requests: int


@dataclass(frozen=True, slots=True)
class ProviderSeed:
    """A provider declared in the environment, reconciled into the registry at boot."""

    source: str  # e.g. "AIGW_OPENAI_*" or "AIGW_PROVIDER_0_*", for error messages
    name: str
    type: str
    base_url: str
    display_name: str = ""
    keys: tuple[str, ...] = ()
    settings: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # keys are secrets: never in a repr
        return f"ProviderSeed(source={self.source!r}, name={self.name!r}, type={self.type!r}, base_url={self.base_url!r}, keys=<{len(self.keys)} hidden>)"


@dataclass(frozen=True, slots=True)
class SkippedSeed:
    """An indexed env provider whose type no service knows: skipped (the registry warns once), never fatal."""

    variable: str  # e.g. "AIGW_PROVIDER_0_TYPE"
    type: str


# ---------------------------------------------------------------- formats


@dataclass(frozen=True, slots=True)
class Kind:
    """A variable's format: how its (non-blank) text becomes a value, raising :class:`ConfigError` that names
    the variable, and how a value is written back (the default column of docs/configuration.md)."""

    label: str
    parse: Callable[[str, str], Any]  # (variable, raw text) → value
    show: Callable[[Any], str] = str


def _bool(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


def _int(name: str, raw: str, *, minimum: int = 0) -> int:
    try:
        v = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer") from None
    if v < minimum:
        raise ConfigError(f"{name}={raw!r}: must be at least {minimum}")
    return v


def _integer(minimum: int = 0, maximum: int | None = None, too_many: str = "") -> Kind:
    """Integers from ``minimum``; above ``maximum`` the error says ``too_many``."""

    def parse(name: str, raw: str) -> int:
        v = _int(name, raw, minimum=minimum)
        if maximum is not None and v > maximum:
            raise ConfigError(f"{name}={raw!r}: {too_many}")
        return v

    return Kind("integer", parse)


def _workers(name: str, raw: str) -> int:
    if raw.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = _int(name, raw, minimum=1)
    if workers > 256:
        raise ConfigError(f"{name}={raw!r}: at most 256 (or auto = one per core)")
    return workers


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 10**6, "mb": 10**6,
               "mib": 2**20, "mi": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "gi": 2**30}


def _size(name: str, raw: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]i?b?|b)?\s*", raw.lower())
    if not m:
        raise ConfigError(f"{name}={raw!r}: expected a byte size such as 33554432 or 32MiB")
    v = int(m.group(1)) * _SIZE_UNITS[m.group(2) or ""]
    if v <= 0:
        raise ConfigError(f"{name}={raw!r}: must be positive")
    return v


def _show_size(v: int) -> str:
    for unit, n in (("GiB", 2**30), ("MiB", 2**20)):
        if v % n == 0:
            return f"{v // n}{unit}"
    return str(v)


def _duration(name: str, raw: str) -> float:
    try:
        return parse_duration(raw)
    except ValueError as e:
        raise ConfigError(f"{name}={raw!r}: {e}") from None


def _addr(name: str, raw: str) -> ListenAddr:
    host, sep, port = raw.strip().rpartition(":")
    if not sep:
        raise ConfigError(f"{name}={raw!r}: expected host:port")
    p = _int(name, port)
    if p > 65535:
        raise ConfigError(f"{name}={raw!r}: port out of range")
    return ListenAddr(host.strip("[]") or "0.0.0.0", p)


def _url(name: str, raw: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    v = raw.strip()
    parts = urlsplit(v)
    if parts.scheme not in schemes or not parts.netloc:
        raise ConfigError(f"{name}={raw!r}: expected a {'/'.join(schemes)} URL")
    return v.rstrip("/")


def _nats_urls(name: str, raw: str) -> tuple[str, ...]:
    urls = tuple(_url(name, u, ("nats", "tls", "ws", "wss")) for u in raw.split(",") if u.strip())
    if not urls:
        raise ConfigError(f"{name} is set but holds no URL")
    return urls


def _encryption_keys(name: str, raw: str) -> tuple[bytes, ...]:
    keys = []
    for i, part in enumerate(p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            key = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            try:
                key = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
            except (binascii.Error, ValueError):
                raise ConfigError(f"{name}: entry {i} is not base64") from None
        if len(key) != 32:
            raise ConfigError(f"{name}: entry {i} decodes to {len(key)} bytes, expected 32")
        keys.append(key)
    if not keys:
        raise ConfigError(f"{name} is set but holds no key")
    return tuple(keys)


def _token(name: str, raw: str) -> str:
    if len(raw.strip()) < 16:
        raise ConfigError(f"{name} must be at least 16 characters")
    return raw.strip()


def _choice(*values: str, fold: Callable[[str], str] | None = None) -> Kind:
    """One of ``values`` (after stripping and ``fold``); errors and docs list them lower-case."""
    expected = ", ".join(v.lower() for v in values[:-1]) + f" or {values[-1].lower()}"

    def parse(name: str, raw: str) -> str:
        v = fold(raw.strip()) if fold else raw.strip()
        if v not in values:
            raise ConfigError(f"{name}={raw!r}: expected {expected}")
        return v

    return Kind("choice", parse, str.lower)


def _bus_prefix(name: str, raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", raw.strip()):
        raise ConfigError(f"{name}={raw!r}: expected dot-separated tokens of letters, digits, - and _")
    return raw.strip()


def _private_upstreams(name: str, raw: str) -> frozenset[str]:
    try:
        return netguard.parse_allowed(name, raw)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _keys(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _hidden(_value: object) -> str:
    return ""


TEXT = Kind("text", lambda _name, raw: raw.strip())
RAW = Kind("text", lambda _name, raw: raw)  # taken as given (the AWS chain's own variables)
PATH = Kind("path", lambda _name, raw: Path(raw))
BOOL = Kind("bool", _bool, lambda v: "true" if v else "false")
SIZE = Kind("size", _size, _show_size)
DURATION = Kind("duration", _duration, format_duration)
ADDRESS = Kind("address", _addr)
URL = Kind("URL", _url)
KEYS = Kind("key list", lambda _name, raw: _keys(raw), _hidden)  # provider API keys, comma list


# ---------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class Var:
    """One environment variable: the one place its name, format, default, meaning and readers are declared."""

    name: str  # "AIGW_…"; "<N>" stands for the index of an indexed provider (AIGW_PROVIDER_<N>_TYPE)
    field: str  # the Settings attribute it fills; "addrs.gateway" is the key "gateway" of attribute addrs
    kind: Kind
    default: Any  # the value when unset or blank; None: unset
    readers: frozenset[str]  # the services that read it ("aigw admin" for the admin CLI's own)
    doc: str  # what it means: its row of docs/configuration.md
    secret: bool = False  # its value is never logged, and never shown in the docs
    confined: bool = False  # only its readers get it: dropped from the others' Settings and environment
    default_doc: str = ""  # said after the default in the docs, or instead of "unset" when there is none
    group: str = ""  # the table of docs/configuration.md that lists it


def _section(group: str, *variables: Var) -> tuple[Var, ...]:
    return tuple(replace(v, group=group) for v in variables)


def _read_by(*services: str) -> frozenset[str]:
    return frozenset(services)


ALL = _read_by(*SERVICES)
ON_BUS = ALL - {"console"}  # every service but the console talks to NATS
TOKEN_CHECKERS = _read_by("gateway", "keypool", "budget", "chatd")  # verify tokens over the bus
SEEDS = "providers"  # the field every provider seed variable fills (read together by _seeds)
# The settings of a Bedrock provider: AIGW_BEDROCK_<F> for the legacy one, AIGW_PROVIDER_<N>_<F> for indexed ones.
BEDROCK_FIELDS = ("REGION", "ACCESS_KEY", "ACCESS_KEY_SECRET", "SESSION_TOKEN", "MODEL", "SMALL_FAST_MODEL")
_BEDROCK_CREDENTIALS = ("static AWS credentials; without them the standard AWS chain is used (`AWS_ACCESS_KEY_ID`, "
                        "`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`, `AWS_SHARED_CREDENTIALS_FILE`, "
                        "read by the gateway)")
_BEDROCK_MODELS = ("Bedrock model id every request is sent to; the small-fast one for requests whose model name "
                   "contains `haiku`")


def _seed(name: str, doc: str, kind: Kind = TEXT, default: Any = None, *, secret: bool = False,
          default_doc: str = "") -> Var:
    """A provider seed variable: the registry's alone, like the keys it carries (docs/security.md)."""
    return Var(name, SEEDS, kind, default, _read_by("registry"), doc, secret=secret, confined=True,
               default_doc=default_doc)


VARS: tuple[Var, ...] = (
    *_section(
        "infra",
        Var("AIGW_DATABASE_URL", "database_url", Kind("URL", lambda n, raw: _url(n, raw, ("postgres", "postgresql"))),
            None, _read_by("registry", "budget", "chatd"),
            "Postgres DSN (`postgresql://user:pass@host:5432/db`); each service keeps its own schema in it. With a "
            "standby, list every host and ask for the writable one: "
            "`postgresql://user:pass@pg-a:5432,pg-b:5432/db?target_session_attrs=read-write` — after a failover the "
            "services' next connections go to the new primary and the transaction that was cut runs again "
            "(docs/scaling.md)",
            secret=True, confined=True,
            default_doc="embedded in `aigw dev`; required by registry, budget and chatd otherwise"),
        Var("AIGW_NATS_URL", "nats_urls", Kind("URL list", _nats_urls, ",".join), ("nats://127.0.0.1:4222",), ON_BUS,
            "NATS server(s), comma list — every node of a cluster, so a client can reach a survivor from the start "
            "(`nats://`, `tls://`, `ws://`, `wss://`; credentials as `nats://user:pass@host:4222`; each service has "
            "its own NATS user, and logs show the URL with the password masked)",
            default_doc="embedded in `aigw dev`"),
        Var("AIGW_GATEWAY_WORKERS", "gateway_workers", Kind("integer or `auto`", _workers), 1, _read_by("gateway"),
            "gateway worker processes sharing the gateway's port (`SO_REUSEPORT`); `auto` = one per usable core. With "
            "more than 1, `aigw gateway` is a supervisor: it restarts a worker that dies (at most once a second per "
            "slot) and on SIGTERM drains every worker (each gets `AIGW_SHUTDOWN_GRACE`). Each worker has its own "
            "identity cache, budget leases, key-state watch and usage spool; `/metrics` answers for the worker the "
            "connection landed on (run one worker per pod where per-process series matter)"),
        Var("AIGW_JS_REPLICAS", "js_replicas", _integer(1, 5, "JetStream allows at most 5 replicas"), 1, ON_BUS,
            "replicas (1 to 5) of the JetStream streams aigw creates (usage events, key marks) and of the key-state "
            "bucket; a stream that exists with another count is updated in place at the next service start, never "
            "recreated. Use 3 on a 3-node JetStream cluster (an acked usage event is then on a quorum); more than the "
            "cluster has nodes fails stream creation",
            default_doc="`3` in the k8s base"),
        Var("AIGW_ENCRYPTION_KEYS", "encryption_keys", Kind("key list", _encryption_keys, _hidden), (),
            _read_by("registry", "chatd"),
            "**at-rest** keys of the service that reads it: comma list of base64 32-byte keys; the first encrypts, all "
            "decrypt, so rotation is \"prepend a new key, run `aigw admin rotate-secrets`, then drop the old one\". "
            "Held by the registry (provider keys, provider settings, users' own keys in its tables) and by chatd, "
            "which should get **its own** value (it seals a running turn's token in its rows). No other service "
            "holds it (docs/security.md)",
            secret=True, confined=True,
            default_doc="generated into `.aigw/encryption-keys` (registry) and `.aigw/chatd-encryption-keys` (chatd) "
                        "by `aigw dev`; required by registry and chatd otherwise"),
        Var("AIGW_BUS_SEALING_KEYS", "bus_sealing_keys", Kind("key list", _encryption_keys, _hidden), (),
            _read_by("registry", "gateway", "keypool", "chatd"),
            "**bus** keys: same format and rotation rule. The registry seals provider keys, provider settings and "
            "users' stored keys with it for the bus (snapshots, identity replies); the gateway, keypool (key "
            "re-checks) and chatd (direct route) open them. Unset: the bus key is derived from `AIGW_ENCRYPTION_KEYS` "
            "as before the split (the registry logs a warning, and gateways must then hold the at-rest key)",
            secret=True, confined=True,
            default_doc="generated into `.aigw/bus-sealing-keys` by `aigw dev`; set it in every deployment"),
        Var("AIGW_BOOTSTRAP_TOKEN", "bootstrap_token", Kind("text", _token), None, _read_by("registry"),
            "read by the registry alone: on the first start of a database with no owner, create the owner whose token "
            "is this value (≥ 16 characters; `admin` scope, no expiry, stored hashed, revocable like any token). "
            "Created at most once per database: once an owner exists it never comes back, so revoking it is final. "
            "Other services ignore it (and warn if it is in their environment)",
            secret=True, confined=True, default_doc="unset; `aigw dev` generates one into `.aigw/owner-token`"),
        Var("AIGW_ADMIN_TOKEN", "admin_token", TEXT, None, _read_by("aigw admin"),
            "the token `aigw admin` sends (services ignore it); `--token` overrides it",
            secret=True, default_doc="unset: `aigw admin` reads `.aigw/owner-token`"),
        *(Var(f"AIGW_{p.upper()}_SIGNING_KEY", f"signing_keys.{p}", Kind("key", check_private_key, _hidden), None,
              _read_by(p),
              "the producer's own Ed25519 private key (base64 of the raw 32 bytes): it signs what that service "
              "publishes that grants or changes authority (docs/security.md, \"The bus\"). Each of the three services "
              "reads only its own variable and refuses to start without it; mount each only into its own pods. "
              "`aigw bus-keys` prints a fresh set",
              secret=True,
              default_doc="generated into `.aigw/bus-keys/` by `aigw dev`; required by registry, budget and keypool "
                          "otherwise")
          for p in PRODUCERS),
        Var("AIGW_BUS_VERIFY_KEYS", "verify_keys",
            Kind("key list", parse_verify_keys, lambda pairs: ",".join(f"{p}:{k}" for p, k in pairs)), (), ON_BUS,
            "the producers' public keys, `registry:<b64>,budget:<b64>,keypool:<b64>` (a name may appear twice while "
            "its key is being rotated: old and new both verify). Not secret; every service needs all three and "
            "refuses to start without them",
            default_doc="generated by `aigw dev`; required otherwise"),
        Var("AIGW_BUS_MAX_MESSAGE_AGE", "bus_max_message_age", DURATION, DEFAULT_MAX_AGE, ON_BUS,
            "how old (or how far in the future, clock skew) a signed broadcast or reply may be before it is dropped "
            "as a replay"),
        Var("AIGW_BUS_PREFIX", "bus_prefix", Kind("subject token", _bus_prefix), "aigw", ON_BUS,
            "first token of every subject, stream and bucket name (`aigw.providers.changed`, `AIGW_USAGE`, "
            "`aigw_keys`); lets several installations share one NATS"),
        Var("AIGW_DATA_DIR", "data_dir", PATH, Path(".aigw"), _read_by("gateway"),
            "local state: the gateway's usage spool (`<dir>/spool/`)",
            default_doc="`aigw dev`: `.aigw/data`; image: `/var/lib/aigw`"),
    ),
    *_section(
        "wiring",
        *(Var(f"AIGW_{s.upper()}_ADDR", f"addrs.{s}", ADDRESS, ListenAddr("127.0.0.1", port),
              _read_by(s, "console") if s in CONSOLE_UPSTREAMS else _read_by(s),
              f"{s} listen address" + (" (docs/console.md)" if s == "console" else ""),
              default_doc=f"image: `0.0.0.0:{port}`")
          for s, port in DEFAULT_PORTS.items()),
        Var("AIGW_METRICS_ADDR", "metrics_addr", ADDRESS, None, _read_by("gateway"),
            "the gateway's `/metrics` on its own listener (`host:port`, e.g. a pod-internal `0.0.0.0:9090` the ingress "
            "does not route), and then **not** on the public gateway port (`/metrics` there is a 404 like any unknown "
            "route). Other services keep `/metrics` on their own port. With `AIGW_GATEWAY_WORKERS` > 1 the workers "
            "share it like the main port. Point the ServiceMonitor at it when you set it",
            default_doc="unset: `/metrics` on the gateway's port"),
        *(Var(f"AIGW_{s.upper()}_URL", f"service_urls.{s}", URL, None, _read_by("console"),
              "where the console reaches each admin API it routes to",
              default_doc="that service's `AIGW_<SERVICE>_ADDR` on this host")
          for s in CONSOLE_UPSTREAMS),
        Var("AIGW_CONSOLE_SESSION_TTL", "console_session_ttl", DURATION, 12 * 3600.0, _read_by("console"),
            "how long a console sign-in lasts (the cookie's lifetime)"),
        Var("AIGW_GATEWAY_URL", "gateway_url", URL, "http://127.0.0.1:8080", _read_by("chatd"),
            "where chatd reaches the gateway", default_doc="`aigw dev`: the gateway it started"),
        Var("AIGW_SHUTDOWN_GRACE", "shutdown_grace", DURATION, 20.0, ALL,
            "after SIGTERM: `/readyz` turns 503, the listener closes, in-flight requests get this long to finish, "
            "then background tasks stop, the bus drains and the pool closes. Keep the orchestrator's kill timeout "
            "above it (compose `stop_grace_period` 30 s, k8s `terminationGracePeriodSeconds` 40)"),
        Var("AIGW_LOG_FORMAT", "log_format", _choice("json", "text", fold=str.lower), "json", ALL,
            "`json` (one object per line) or `text`", default_doc="`aigw dev`: `text`"),
        Var("AIGW_LOG_LEVEL", "log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR", fold=str.upper), "INFO", ALL,
            "`debug`, `info`, `warning` or `error`"),
    ),
    *_section(
        "providers",
        _seed("AIGW_OPENAI_KEY", "seeds provider `openai` (type `openai`); a comma list makes an ordered key pool",
              KEYS, secret=True),
        _seed("AIGW_OPENAI_BASE_URL", "base URL of that provider (includes `/v1`)", URL, OPENAI_BASE_URL),
        _seed("AIGW_ANTHROPIC_KEY", "seeds provider `anthropic` (type `anthropic`); comma list = key pool", KEYS,
              secret=True),
        _seed("AIGW_ANTHROPIC_BASE_URL", "base URL of that provider (without `/v1`)", URL, ANTHROPIC_BASE_URL),
        _seed("AIGW_BEDROCK_REGION", "seeds provider `bedrock` (Anthropic on AWS Bedrock); region or base URL "
              "required once any `AIGW_BEDROCK_*` is set"),
        _seed("AIGW_BEDROCK_BASE_URL", "Bedrock runtime endpoint", URL,
              default_doc=f"`{bedrock_runtime_url('<region>')}`"),
        _seed("AIGW_BEDROCK_ACCESS_KEY", _BEDROCK_CREDENTIALS, secret=True),
        _seed("AIGW_BEDROCK_ACCESS_KEY_SECRET", _BEDROCK_CREDENTIALS, secret=True),
        _seed("AIGW_BEDROCK_SESSION_TOKEN", _BEDROCK_CREDENTIALS, secret=True),
        _seed("AIGW_BEDROCK_MODEL", _BEDROCK_MODELS),
        _seed("AIGW_BEDROCK_SMALL_FAST_MODEL", _BEDROCK_MODELS),
        _seed("AIGW_PROVIDER_<N>_TYPE", "indexed provider N = 0, 1, 2…: " + ", ".join(f"`{t}`" for t in PROVIDER_TYPES)
              + "; required when any `AIGW_PROVIDER_<N>_*` is set; another type is skipped with a warning",
              default_doc="required"),
        _seed("AIGW_PROVIDER_<N>_NAME", "its name in URLs (`^[a-z0-9]+(-[a-z0-9]+)*$`, not "
              + ", ".join(f"`{n}`" for n in sorted(RESERVED_PROVIDER_NAMES)) + ")", default_doc="the type"),
        _seed("AIGW_PROVIDER_<N>_DISPLAY_NAME", "human name", default_doc="empty"),
        _seed("AIGW_PROVIDER_<N>_BASE_URL", "base URL", URL,
              default_doc="OpenAI's or Anthropic's for those types; required for others"),
        _seed("AIGW_PROVIDER_<N>_KEY", "key or comma list of keys (both may be given: `KEYS` first)", KEYS,
              secret=True),
        _seed("AIGW_PROVIDER_<N>_KEYS", "key or comma list of keys (both may be given: `KEYS` first)", KEYS,
              secret=True),
        *(_seed(f"AIGW_PROVIDER_<N>_{f}", "Bedrock settings of an indexed `bedrock` provider, as above",
                secret=f in ("ACCESS_KEY", "ACCESS_KEY_SECRET", "SESSION_TOKEN"))
          for f in BEDROCK_FIELDS),
        _seed("AIGW_PROVIDER_<N>_API_VERSION", "`api-version` of an `azure` provider"),
        Var("AIGW_ALLOW_PRIVATE_UPSTREAMS", "allow_private_upstreams",
            Kind("bool or class list", _private_upstreams, lambda v: ",".join(sorted(v)) or "false"), frozenset(),
            _read_by("registry", "gateway", "keypool", "chatd"),
            "which non-public addresses a provider's base URL may resolve to: `false` (none), `true` (all), or a "
            "comma list of `loopback`, `private` (10/8, 172.16/12, 192.168/16, fc00::/7), `link-local` (169.254/16, "
            "fe80::/10), `cgnat` (100.64/10), `metadata` (cloud instance metadata: 169.254.169.254, 169.254.170.2, "
            "100.100.100.200, fd00:ec2::254, `metadata.google.internal`…), `reserved` (any other non-global address). "
            "Checked by the registry on literal addresses and metadata names when a provider is created or seeded, "
            "and by the gateway and chatd's direct route on the resolved address of **every** upstream connection "
            "(after DNS, so `169.254.169.254.nip.io` is refused too). Replaces AIGW_ALLOW_LINK_LOCAL_BASE_URLS "
            "(setting it is now a startup error naming this variable). `aigw dev` sets `loopback` unless set; for a "
            "model server on your LAN add `private`"),
    ),
    *_section(
        "gateway",
        Var("AIGW_ALLOW_BYOK", "allow_byok", BOOL, True, _read_by("gateway", "registry", "chatd"),
            "accept user-supplied provider credentials (`X-AIGW-Token` + the user's own key)"),
        Var("AIGW_DUMP_DIR", "dump_dir", PATH, None, _read_by("gateway"),
            "API dumps for debugging a provider: every upstream attempt (failed-over ones included) and pass-through "
            "routes, as `<dir>/<provider>/<interception>.<attempt>.request` and `.response`, written as streamed; "
            "credentials masked (auth headers by name — `Authorization`, `X-Api-Key`, `Api-Key`, "
            "`Ocp-Apim-Subscription-Key`, cookies, any name with key/token/secret/auth/signature/credential/password "
            "— and any header holding the pool key, the user's key or a provider setting the type does not declare "
            "public, such as Bedrock's access key). Directories "
            "`0700`, files `0600`",
            default_doc="unset (off)"),
        Var("AIGW_DUMP_MAX_BYTES", "dump_max_bytes", SIZE, 1024 * 1024 * 1024, _read_by("gateway"),
            "disk the dumps may use in total; each file is cut at 1/16 of it (with a note), and the oldest files are "
            "deleted to make room"),
        Var("AIGW_MAX_BODY_BYTES", "max_body_bytes", SIZE, 32 * 1024 * 1024, ON_BUS,
            "request body limit (413 above it)"),
        Var("AIGW_CIRCUIT_BREAKER_ENABLED", "breaker.enabled", BOOL, True, _read_by("gateway"),
            "per provider + endpoint + model breaker on 503/504/529"),
        Var("AIGW_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "breaker.failure_threshold", _integer(1), 5, _read_by("gateway"),
            "consecutive failures that open it"),
        Var("AIGW_CIRCUIT_BREAKER_INTERVAL", "breaker.interval", DURATION, 10.0, _read_by("gateway"),
            "window in which failures count"),
        Var("AIGW_CIRCUIT_BREAKER_TIMEOUT", "breaker.timeout", DURATION, 30.0, _read_by("gateway"),
            "how long it stays open before half-opening"),
        Var("AIGW_CIRCUIT_BREAKER_MAX_REQUESTS", "breaker.max_requests", _integer(1), 3, _read_by("gateway"),
            "requests allowed through while half-open; that many successes close it"),
        Var("AIGW_SPOOL_MAX_BYTES", "spool_max_bytes", SIZE, 256 * 1024 * 1024, _read_by("gateway"),
            "on-disk usage spool used while NATS is unreachable; events beyond it are dropped and counted "
            "(`aigw_gateway_usage_dropped_total`)"),
        Var("AIGW_USAGE_LINGER", "usage_linger", DURATION, 1.0, _read_by("gateway"),
            "how long a quiet gateway holds a usage event for company before publishing it (a busy one publishes "
            "every few ms anyway): one message, ack and budget transaction per second instead of per request "
            "costs the system a fifth of the CPU per request at 20 requests/s. Usage is recorded that much later "
            "(admission reads in-memory leases, never the records); a gateway killed without a drain loses what "
            "it held. `0` publishes at once"),
        Var("AIGW_RECORD_PROMPTS", "record_prompts", BOOL, True, _read_by("gateway"),
            "`false`: no prompt text and no tool-call arguments are recorded (interceptions, token usage and tool "
            "names still are)"),
        Var("AIGW_RECORD_PROMPT_BYTES", "record_prompt_bytes", SIZE, 65536, _read_by("gateway"),
            "prompts and tool-call arguments longer than this (UTF-8 bytes) are recorded cut on a character boundary, "
            "flagged `truncated`; every usage event is also cut to fit the NATS server's `max_payload`"),
        Var("AIGW_AUTH_FAILURES_PER_MINUTE", "auth_failures_per_minute", _integer(0), 30, TOKEN_CHECKERS,
            "failed authentications allowed per client address (IPv6: per /64) before a token that is not already "
            "cached is refused with 429 and `Retry-After`, without asking the registry; the allowance refills at this "
            "rate. Gateway and every control-plane service that verifies tokens over the bus. Tokens verified in the "
            "last few minutes are re-verified even from a throttled address. Behind a proxy the address is the "
            "proxy's, so size it for everyone behind it; `0` turns the throttle off"),
        Var("AIGW_IDENTITY_TTL", "identity_ttl", DURATION, 60.0, TOKEN_CHECKERS,
            "how long a verified token is cached (every service with an API); revocations evict earlier over the bus"),
        Var("AIGW_KEY_RECHECK_MIN", "key_recheck_min", DURATION, 60.0, _read_by("keypool"),
            "keypool re-checks a revoked key (with the provider's model list) this long after the revoke, doubling "
            "after each refusal"),
        Var("AIGW_KEY_RECHECK_MAX", "key_recheck_max", DURATION, 3600.0, _read_by("keypool"),
            "the longest wait between two re-checks"),
        Var("AIGW_REVISION_CHECK_INTERVAL", "revision_check_interval", DURATION, 30.0,
            _read_by("gateway", "chatd", "keypool"),
            "how often gateway, chatd and keypool compare their provider set with the registry's, healing a missed "
            "`aigw.providers.changed`; the gateway also re-syncs budgets at this pace (at least 5 s)"),
    ),
    *_section(
        "budget-chat",
        Var("AIGW_RETENTION", "retention_seconds", DURATION, 60 * 86400.0, _read_by("budget"),
            "how long recorded interceptions (prompts, tool calls, usage rows) are kept by budget"),
        Var("AIGW_CHATD_ROUTE", "chatd_route", _choice("gateway", "direct"), "gateway", _read_by("chatd"),
            "`gateway`: chatd sends model calls through the gateway (metered, budgeted, recorded); `direct`: straight "
            "to the provider"),
        Var("AIGW_CHATD_SUMMARY_MODEL", "chatd_summary_model", TEXT, None, _read_by("chatd"),
            "model for the one-line chat summaries", default_doc="the chat's own model"),
        Var("AIGW_CHATD_SERVICE_TOKEN", "chatd_service_token", TEXT, None, _read_by("chatd"),
            "accepted and parsed; no service reads it yet", secret=True),
    ),
    *_section(
        "aws",
        *(Var(name, f"aws_env.{name}", RAW, None, _read_by("gateway"),
              "the standard AWS credential chain, for Bedrock providers without static credentials (captured here "
              "so the gateway's signer never reads the process environment itself)",
              secret=name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
          for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                       "AWS_SHARED_CREDENTIALS_FILE")),
    ),
)

# Derived from the table: what the unknown-variable check accepts, and the secret matrix.
_KNOWN = frozenset(v.name for v in VARS if v.name.startswith("AIGW_") and "<N>" not in v.name)
_PROVIDER_VAR = re.compile(r"^AIGW_PROVIDER_(\d+)_([A-Z_]+)$")
_PROVIDER_FIELDS = frozenset(v.name.removeprefix("AIGW_PROVIDER_<N>_") for v in VARS if "<N>" in v.name)
# Variables that were renamed: setting the old name is an error that names the new one.
_REPLACED = {
    "AIGW_ALLOW_LINK_LOCAL_BASE_URLS": "AIGW_ALLOW_LINK_LOCAL_BASE_URLS was replaced by AIGW_ALLOW_PRIVATE_UPSTREAMS "
                                       "(true, false, or a list such as link-local,private; see docs/configuration.md)",
}


def _holder_group(v: Var) -> str:
    """The ``SECRET_HOLDERS`` entry of a confined variable: every provider seed variable is one group."""
    return "AIGW_PROVIDER_*" if v.field == SEEDS else v.name


# Which service holds which secret (docs/security.md has the matrix): each confined variable's readers.
# "AIGW_PROVIDER_*" stands for every provider seed variable (legacy AIGW_OPENAI_KEY … and AIGW_PROVIDER_<N>_*).
SECRET_HOLDERS: dict[str, frozenset[str]] = {_holder_group(v): v.readers for v in VARS if v.confined}
_HOLDER_GROUP_OF = {v.name: _holder_group(v) for v in VARS if v.confined and "<N>" not in v.name}
_CONFINED_FIELD = {_holder_group(v): v.field for v in VARS if v.confined}


def holds(service: str, secret: str) -> bool:
    """Whether ``service`` holds the secret variable (group) ``secret`` of ``SECRET_HOLDERS``."""
    return service in SECRET_HOLDERS[secret]


def _secret_var(var: str) -> str | None:
    """The ``SECRET_HOLDERS`` entry a variable belongs to, if it is a confined secret."""
    if _PROVIDER_VAR.match(var):
        return "AIGW_PROVIDER_*"
    return _HOLDER_GROUP_OF.get(var)


def env_for_service(service: str, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the secret variables ``service`` does not hold: what a launcher (``aigw dev``) hands
    each service's process. With no AIGW_BUS_SEALING_KEYS (a legacy single-key install) the bus-key holders
    keep AIGW_ENCRYPTION_KEYS, from which their bus key is derived."""
    legacy = not (env.get("AIGW_BUS_SEALING_KEYS") or "").strip()
    out = {}
    for var, value in env.items():
        group = _secret_var(var)
        if group is not None and not holds(service, group):
            if not (legacy and group == "AIGW_ENCRYPTION_KEYS" and holds(service, "AIGW_BUS_SEALING_KEYS")):
                continue
        out[var] = value
    return out


@dataclass(frozen=True, slots=True)
class Settings:
    """Every variable of :data:`VARS`, parsed; built only by :meth:`from_env` (the defaults are the table's)."""

    database_url: str | None
    nats_urls: tuple[str, ...]
    js_replicas: int  # replicas of every stream and bucket aigw creates (3 on a 3-node cluster)
    gateway_workers: int  # gateway processes sharing the port (SO_REUSEPORT) under one supervisor
    encryption_keys: tuple[bytes, ...]  # this service's at-rest keys (registry; chatd its own)
    bus_sealing_keys: tuple[bytes, ...]  # seal secrets on the bus (registry) / open them (gateway, keypool, chatd)
    bootstrap_token: str | None
    addrs: Mapping[str, ListenAddr]
    gateway_url: str
    allow_byok: bool
    dump_dir: Path | None
    dump_max_bytes: int  # all API dumps together; each file at most 1/16 of it
    breaker: BreakerSettings
    max_body_bytes: int
    retention_seconds: float
    log_format: str
    log_level: str
    bus_prefix: str
    data_dir: Path
    spool_max_bytes: int
    identity_ttl: float
    revision_check_interval: float
    shutdown_grace: float
    chatd_route: str  # "gateway" or "direct"
    chatd_service_token: str | None
    chatd_summary_model: str | None
    usage_linger: float  # a quiet gateway's usage events wait this long for company before publishing
    record_prompts: bool  # false records usage and tool names, no prompt text
    record_prompt_bytes: int  # longer prompts/tool arguments are cut
    key_recheck_min: float  # keypool re-checks a revoked key after this, doubling up to key_recheck_max
    key_recheck_max: float
    allow_private_upstreams: frozenset[str]  # address classes (netguard.CLASSES) an upstream may resolve to
    metrics_addr: ListenAddr | None  # the gateway's /metrics on its own address, off its public port
    auth_failures_per_minute: int  # per client address; 0 = no throttle
    admin_token: str | None  # for `aigw admin` only
    providers: tuple[ProviderSeed, ...]
    skipped_providers: tuple[SkippedSeed, ...]  # filled with providers, by _seeds
    aws_env: Mapping[str, str]  # the AWS chain's variables that are set
    service_urls: Mapping[str, str]  # AIGW_<CONSOLE_UPSTREAM>_URL that are set
    console_session_ttl: float
    # Bus proof of sender (aigw_common.signing): a producer's own private key, by service name, and
    # the (producer, public key) pairs every service verifies with.
    signing_keys: Mapping[str, str]
    verify_keys: tuple[tuple[str, str], ...]
    bus_max_message_age: float

    def __repr__(self) -> str:
        return (
            f"Settings(database_url={'<set>' if self.database_url else None}, "
            f"nats_urls={tuple(mask_url(u) for u in self.nats_urls)}, "
            f"encryption_keys=<{len(self.encryption_keys)} hidden>, bus_prefix={self.bus_prefix!r}, "
            f"providers={[p.name for p in self.providers]})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return _parse(env)

    def require_database(self) -> str:
        if not self.database_url:
            raise ConfigError("AIGW_DATABASE_URL is required (aigw dev sets it for you)")
        return self.database_url

    def service_url(self, name: str) -> str:
        """Where the console reaches ``name``: ``AIGW_<NAME>_URL``, else that service's local listen address."""
        if url := self.service_urls.get(name):
            return url
        a = self.addrs[name]
        host = "127.0.0.1" if a.host in ("0.0.0.0", "", "::") else a.host
        return f"http://[{host}]:{a.port}" if ":" in host else f"http://{host}:{a.port}"

    def require_encryption_keys(self) -> tuple[bytes, ...]:
        if not self.encryption_keys:
            raise ConfigError("AIGW_ENCRYPTION_KEYS is required (aigw dev generates one into .aigw/)")
        return self.encryption_keys

    def bus_keys(self) -> tuple[bytes, ...]:
        """The master keys of the bus sealer: ``AIGW_BUS_SEALING_KEYS``; without it (single-key installs from
        before the split) the bus key is derived from ``AIGW_ENCRYPTION_KEYS`` as it always was."""
        return self.bus_sealing_keys or self.encryption_keys

    def require_bus_keys(self) -> tuple[bytes, ...]:
        keys = self.bus_keys()
        if not keys:
            raise ConfigError("AIGW_BUS_SEALING_KEYS is required (aigw dev generates one into .aigw/)")
        return keys

    def _keeps_legacy_bus_key(self, service: str) -> bool:
        """A single-key install (no AIGW_BUS_SEALING_KEYS): a bus-key holder keeps AIGW_ENCRYPTION_KEYS, from
        which its bus key is derived."""
        return not self.bus_sealing_keys and holds(service, "AIGW_BUS_SEALING_KEYS")

    def for_service(self, service: str) -> Settings:
        """These settings with every secret ``service`` does not hold dropped (``SECRET_HOLDERS``), so a
        service that was handed more than it needs still keeps only its own in memory."""
        unset = _parse({})
        drop = {
            name: getattr(unset, name) for group, name in _CONFINED_FIELD.items()
            if not holds(service, group)
            and not (group == "AIGW_ENCRYPTION_KEYS" and self._keeps_legacy_bus_key(service))
        }
        return replace(self, **drop)

    def foreign_secrets(self, service: str) -> list[str]:
        """The secret variables set here that ``service`` does not hold (to warn about at its start)."""
        return [group for group, name in _CONFINED_FIELD.items()
                if getattr(self, name) and not holds(service, group)
                and not (group == "AIGW_ENCRYPTION_KEYS" and not self.bus_sealing_keys)]


# ---------------------------------------------------------------- parsing


# Attributes filled from several variables, by key: how the parsed keys become the attribute's value.
_COMPOSITES: dict[str, Callable[[dict[str, Any]], Any]] = {"breaker": lambda kw: BreakerSettings(**kw)}


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """The ``AIGW_`` variables in ``env`` that no service knows (a typo, or a variable since removed)."""
    unknown = []
    for var in env:
        if not var.startswith("AIGW_") or var in _KNOWN:
            continue
        m = _PROVIDER_VAR.match(var)
        if m and m.group(2) in _PROVIDER_FIELDS:
            continue
        unknown.append(var)
    return unknown


def _parse(env: Mapping[str, str]) -> Settings:
    if unknown := unknown_variables(env):
        var = unknown[0]
        raise ConfigError(_REPLACED.get(var) or
                          f"unknown configuration variable {var} (check the spelling; see docs/configuration.md)")
    kw: dict[str, Any] = {}
    keyed: dict[str, dict[str, Any]] = {}
    for v in VARS:
        if v.field == SEEDS:
            continue
        raw = env.get(v.name)
        value = v.kind.parse(v.name, raw) if raw is not None and raw.strip() != "" else v.default
        name, _, key = v.field.partition(".")
        if not key:
            kw[name] = value
            continue
        values = keyed.setdefault(name, {})
        if value is not None:
            values[key] = value
    for name, values in keyed.items():
        kw[name] = _COMPOSITES.get(name, dict)(values)
    if kw["key_recheck_min"] <= 0 or kw["key_recheck_max"] < kw["key_recheck_min"]:
        raise ConfigError("AIGW_KEY_RECHECK_MIN must be positive and no more than AIGW_KEY_RECHECK_MAX")
    kw["providers"], kw["skipped_providers"] = _seeds(env)
    return Settings(**kw)


# ---------------------------------------------------------------- provider seeds


def _provider_name(var: str, raw: str) -> str:
    name = raw.strip()
    if not PROVIDER_NAME_RE.match(name):
        raise ConfigError(f"{var}={raw!r}: provider names match ^[a-z0-9]+(-[a-z0-9]+)*$")
    if name in RESERVED_PROVIDER_NAMES:
        raise ConfigError(f"{var}={raw!r}: {name!r} is reserved")
    return name


def _legacy_providers(env: Mapping[str, str]) -> list[ProviderSeed]:
    seeds: list[ProviderSeed] = []
    for ptype, display_name, default_base in (("openai", "OpenAI", OPENAI_BASE_URL),
                                              ("anthropic", "Anthropic", ANTHROPIC_BASE_URL)):
        prefix = f"AIGW_{ptype.upper()}_"
        keys, base = env.get(prefix + "KEY"), env.get(prefix + "BASE_URL")
        if keys or base:
            seeds.append(ProviderSeed(source=prefix + "*", name=ptype, type=ptype, display_name=display_name,
                                      base_url=_url(prefix + "BASE_URL", base or default_base), keys=_keys(keys)))
    if any(env.get(f"AIGW_BEDROCK_{f}") for f in ("REGION", "BASE_URL", "ACCESS_KEY", "MODEL")):
        region = (env.get("AIGW_BEDROCK_REGION") or "").strip()
        base = env.get("AIGW_BEDROCK_BASE_URL")
        if not region and not base:
            raise ConfigError("AIGW_BEDROCK_REGION is required when any AIGW_BEDROCK_* variable is set")
        seeds.append(
            ProviderSeed(
                source="AIGW_BEDROCK_*",
                name="bedrock",
                type="bedrock",
                display_name="AWS Bedrock",
                base_url=_url("AIGW_BEDROCK_BASE_URL", base or bedrock_runtime_url(region)),
                settings=_bedrock_settings(env, "AIGW_BEDROCK_"),
            )
        )
    return seeds


def _bedrock_settings(env: Mapping[str, str], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in BEDROCK_FIELDS:
        v = (env.get(prefix + f) or "").strip()
        if v:
            out[f.lower()] = v
    return out


def _indexed_providers(env: Mapping[str, str], skipped: list[SkippedSeed]) -> list[ProviderSeed]:
    indices: dict[int, dict[str, str]] = {}
    for var, value in env.items():
        m = _PROVIDER_VAR.match(var)
        if m:
            indices.setdefault(int(m.group(1)), {})[m.group(2)] = value
    seeds = []
    for n in sorted(indices):
        f = indices[n]
        prefix = f"AIGW_PROVIDER_{n}_"
        ptype = (f.get("TYPE") or "").strip().lower()
        if not ptype:
            raise ConfigError(f"{prefix}TYPE is required when other {prefix}* variables are set")
        if (cap := capabilities(ptype)) is None:
            # checked before any other field: a type no service serves (aigw_common.llm) is skipped with a warning
            skipped.append(SkippedSeed(prefix + "TYPE", ptype))
            continue
        name = _provider_name(prefix + "NAME", f.get("NAME") or ptype)
        base = f.get("BASE_URL")
        settings: dict[str, str] = {}
        if ptype == "bedrock":
            settings = _bedrock_settings(env, prefix)
            region = settings.get("region", "")
            if not base and not region:
                raise ConfigError(f"{prefix}REGION or {prefix}BASE_URL is required for a bedrock provider")
            base = base or bedrock_runtime_url(region)
        elif ptype == "azure" and f.get("API_VERSION"):
            settings = {"api_version": f["API_VERSION"].strip()}
        if not base:
            base = cap.default_base_url or ""
        if not base:
            raise ConfigError(f"{prefix}BASE_URL is required for a provider of type {ptype!r}")
        keys = _keys(f.get("KEYS")) + _keys(f.get("KEY"))
        seeds.append(
            ProviderSeed(
                source=f"{prefix}*",
                name=name,
                type=ptype,
                base_url=_url(prefix + "BASE_URL", base),
                display_name=(f.get("DISPLAY_NAME") or "").strip(),
                keys=keys,
                settings=settings,
            )
        )
    return seeds


def _seeds(env: Mapping[str, str]) -> tuple[tuple[ProviderSeed, ...], tuple[SkippedSeed, ...]]:
    """The providers the seed variables declare (legacy ones first), and the indexed ones skipped."""
    seeds = _legacy_providers(env)
    legacy_names = {s.name for s in seeds}
    skipped: list[SkippedSeed] = []
    for seed in _indexed_providers(env, skipped):
        if seed.name in legacy_names:
            raise ConfigError(
                f"{seed.source} declares provider {seed.name!r}, which a legacy AIGW_{seed.name.upper()}_* "
                "variable already declares; give the indexed provider another AIGW_PROVIDER_<N>_NAME"
            )
        if any(o.name == seed.name for o in seeds):
            raise ConfigError(f"{seed.source} declares provider {seed.name!r} twice")
        seeds.append(seed)
    return tuple(seeds), tuple(skipped)
