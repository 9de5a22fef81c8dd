"""Configuration: every ``AIGW_*`` variable parsed once, up front, into frozen objects.

Nothing here reads the environment at import time. ``Settings.from_env`` takes
a mapping (``os.environ`` in production, a dict in tests), validates every
value, and raises :class:`ConfigError` naming the variable on the first
problem. An ``AIGW_`` variable that no service knows is an error too, so a
typo never passes silently.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import netguard
from .durations import parse_duration
from .errors import ConfigError
from .llm import ANTHROPIC_BASE_URL, OPENAI_BASE_URL, bedrock_runtime_url, capabilities
from .logging import mask_url
from .signing import DEFAULT_MAX_AGE, PRODUCERS, check_private_key, parse_verify_keys

SERVICES = ("gateway", "registry", "keypool", "budget", "chatd", "console")
DEFAULT_PORTS = {"gateway": 8080, "registry": 8081, "keypool": 8082, "budget": 8083, "chatd": 8084,
                 "console": 8085}
# The services whose admin APIs the console routes to; AIGW_<NAME>_URL says where (default: its local ADDR).
CONSOLE_UPSTREAMS = ("registry", "keypool", "budget", "chatd")
PROVIDER_NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
RESERVED_PROVIDER_NAMES = frozenset({"api", "healthz", "readyz", "metrics"})

# Which service holds which secret (docs/security.md has the matrix). "AIGW_PROVIDER_*" stands for every
# provider seed variable (legacy AIGW_OPENAI_KEY … and AIGW_PROVIDER_<N>_*): their keys are the registry's.
SECRET_HOLDERS: dict[str, frozenset[str]] = {
    "AIGW_BOOTSTRAP_TOKEN": frozenset({"registry"}),
    "AIGW_PROVIDER_*": frozenset({"registry"}),
    "AIGW_ENCRYPTION_KEYS": frozenset({"registry", "chatd"}),  # at rest; chatd's value is its own key
    "AIGW_BUS_SEALING_KEYS": frozenset({"registry", "gateway", "keypool", "chatd"}),
    "AIGW_DATABASE_URL": frozenset({"registry", "budget", "chatd"}),
}

def holds(service: str, secret: str) -> bool:
    """Whether ``service`` holds the secret variable (group) ``secret`` of ``SECRET_HOLDERS``."""
    return service in SECRET_HOLDERS[secret]


def _secret_var(var: str) -> str | None:
    """The ``SECRET_HOLDERS`` entry a variable belongs to, if it is a secret."""
    if var in SECRET_HOLDERS:
        return var
    if _PROVIDER_VAR.match(var) or var.startswith(("AIGW_OPENAI_", "AIGW_ANTHROPIC_", "AIGW_BEDROCK_")):
        return "AIGW_PROVIDER_*"
    return None


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


# Scalar variables every service knows. Provider variables are matched separately.
_SCALARS = frozenset(
    {
        "AIGW_DATABASE_URL",
        "AIGW_NATS_URL",
        "AIGW_JS_REPLICAS",
        "AIGW_GATEWAY_WORKERS",
        "AIGW_ENCRYPTION_KEYS",
        "AIGW_BUS_SEALING_KEYS",
        "AIGW_BOOTSTRAP_TOKEN",
        "AIGW_GATEWAY_URL",
        "AIGW_ALLOW_BYOK",
        "AIGW_DUMP_DIR",
        "AIGW_DUMP_MAX_BYTES",
        "AIGW_CIRCUIT_BREAKER_ENABLED",
        "AIGW_CIRCUIT_BREAKER_FAILURE_THRESHOLD",
        "AIGW_CIRCUIT_BREAKER_INTERVAL",
        "AIGW_CIRCUIT_BREAKER_TIMEOUT",
        "AIGW_CIRCUIT_BREAKER_MAX_REQUESTS",
        "AIGW_MAX_BODY_BYTES",
        "AIGW_RETENTION",
        "AIGW_LOG_FORMAT",
        "AIGW_LOG_LEVEL",
        "AIGW_BUS_PREFIX",
        "AIGW_DATA_DIR",
        "AIGW_SPOOL_MAX_BYTES",
        "AIGW_IDENTITY_TTL",
        "AIGW_REVISION_CHECK_INTERVAL",
        "AIGW_SHUTDOWN_GRACE",
        "AIGW_CHATD_ROUTE",
        "AIGW_CHATD_SERVICE_TOKEN",
        "AIGW_CHATD_SUMMARY_MODEL",
        "AIGW_RECORD_PROMPTS",
        "AIGW_AUTH_FAILURES_PER_MINUTE",
        "AIGW_RECORD_PROMPT_BYTES",
        "AIGW_KEY_RECHECK_MIN",
        "AIGW_KEY_RECHECK_MAX",
        "AIGW_ALLOW_PRIVATE_UPSTREAMS",
        "AIGW_METRICS_ADDR",
        "AIGW_BUS_VERIFY_KEYS",
        "AIGW_BUS_MAX_MESSAGE_AGE",
        "AIGW_ADMIN_TOKEN",  # the token `aigw admin` sends (services ignore it)
        "AIGW_OPENAI_KEY",
        "AIGW_OPENAI_BASE_URL",
        "AIGW_ANTHROPIC_KEY",
        "AIGW_ANTHROPIC_BASE_URL",
        "AIGW_BEDROCK_REGION",
        "AIGW_BEDROCK_BASE_URL",
        "AIGW_BEDROCK_ACCESS_KEY",
        "AIGW_BEDROCK_ACCESS_KEY_SECRET",
        "AIGW_BEDROCK_SESSION_TOKEN",
        "AIGW_BEDROCK_MODEL",
        "AIGW_BEDROCK_SMALL_FAST_MODEL",
    }
    | {f"AIGW_{s.upper()}_ADDR" for s in SERVICES}
    | {f"AIGW_{s.upper()}_URL" for s in CONSOLE_UPSTREAMS}
    | {"AIGW_CONSOLE_SESSION_TTL"}
    | {f"AIGW_{s.upper()}_SIGNING_KEY" for s in PRODUCERS}
)
# The standard AWS credential chain's variables (not AIGW_*): captured here so the gateway's
# Bedrock signer never reads the process environment itself.
AWS_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_SHARED_CREDENTIALS_FILE")
_PROVIDER_VAR = re.compile(r"^AIGW_PROVIDER_(\d+)_([A-Z_]+)$")
_PROVIDER_FIELDS = frozenset(
    {
        "TYPE",
        "NAME",
        "DISPLAY_NAME",
        "BASE_URL",
        "KEY",
        "KEYS",
        "REGION",
        "ACCESS_KEY",
        "ACCESS_KEY_SECRET",
        "SESSION_TOKEN",
        "MODEL",
        "SMALL_FAST_MODEL",
        "API_VERSION",
    }
)


@dataclass(frozen=True, slots=True)
class ListenAddr:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    enabled: bool = True
    failure_threshold: int = 5
    interval: float = 10.0
    timeout: float = 30.0
    max_requests: int = 3


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


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = None
    nats_urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    js_replicas: int = 1  # replicas of every stream and bucket aigw creates (3 on a 3-node cluster)
    gateway_workers: int = 1  # gateway processes sharing the port (SO_REUSEPORT) under one supervisor
    encryption_keys: tuple[bytes, ...] = ()  # this service's at-rest keys (registry; chatd its own)
    bus_sealing_keys: tuple[bytes, ...] = ()  # seal secrets on the bus (registry) / open them (gateway, keypool, chatd)
    bootstrap_token: str | None = None
    addrs: Mapping[str, ListenAddr] = field(
        default_factory=lambda: {s: ListenAddr("127.0.0.1", p) for s, p in DEFAULT_PORTS.items()}
    )
    gateway_url: str = "http://127.0.0.1:8080"
    allow_byok: bool = True
    dump_dir: Path | None = None
    dump_max_bytes: int = 1024 * 1024 * 1024  # all API dumps together; each file at most 1/16 of it
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    max_body_bytes: int = 32 * 1024 * 1024
    retention_seconds: float = 60 * 86400.0
    log_format: str = "json"
    log_level: str = "INFO"
    bus_prefix: str = "aigw"
    data_dir: Path = Path(".aigw")
    spool_max_bytes: int = 256 * 1024 * 1024
    identity_ttl: float = 60.0
    revision_check_interval: float = 30.0
    shutdown_grace: float = 20.0
    chatd_route: str = "gateway"  # "gateway" or "direct"
    chatd_service_token: str | None = None
    chatd_summary_model: str | None = None
    record_prompts: bool = True  # AIGW_RECORD_PROMPTS: false records usage and tool names, no prompt text
    record_prompt_bytes: int = 65536  # AIGW_RECORD_PROMPT_BYTES: longer prompts/tool arguments are cut
    key_recheck_min: float = 60.0  # keypool re-checks a revoked key after this, doubling up to key_recheck_max
    key_recheck_max: float = 3600.0
    # address classes (aigw_common.netguard.CLASSES) an upstream may resolve to; none by default
    allow_private_upstreams: frozenset[str] = frozenset()
    metrics_addr: ListenAddr | None = None  # the gateway's /metrics on its own address, off its public port
    auth_failures_per_minute: int = 30  # AIGW_AUTH_FAILURES_PER_MINUTE: per client address; 0 = no throttle
    admin_token: str | None = field(default=None, repr=False)  # for `aigw admin` only
    providers: tuple[ProviderSeed, ...] = ()
    skipped_providers: tuple[SkippedSeed, ...] = ()
    aws_env: Mapping[str, str] = field(default_factory=dict, repr=False)  # AWS_ENV_VARS that are set
    service_urls: Mapping[str, str] = field(default_factory=dict)  # AIGW_<CONSOLE_UPSTREAM>_URL that are set
    console_session_ttl: float = 12 * 3600.0
    # Bus proof of sender (aigw_common.signing): a producer's own private key, by service name, and
    # the (producer, public key) pairs every service verifies with.
    signing_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    verify_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    bus_max_message_age: float = DEFAULT_MAX_AGE

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

    def for_service(self, service: str) -> Settings:
        """These settings with every secret ``service`` does not hold dropped (``SECRET_HOLDERS``), so a
        service that was handed more than it needs still keeps only its own in memory."""
        drop: dict[str, object] = {}
        if not holds(service, "AIGW_BOOTSTRAP_TOKEN"):
            drop["bootstrap_token"] = None
        if not holds(service, "AIGW_PROVIDER_*"):
            drop["providers"] = ()
        if not holds(service, "AIGW_DATABASE_URL"):
            drop["database_url"] = None
        bus_holder = holds(service, "AIGW_BUS_SEALING_KEYS")
        if not bus_holder:
            drop["bus_sealing_keys"] = ()
        if not holds(service, "AIGW_ENCRYPTION_KEYS") and (self.bus_sealing_keys or not bus_holder):
            drop["encryption_keys"] = ()
        return replace(self, **drop) if drop else self  # type: ignore[arg-type]  # drop: field → its empty value

    def foreign_secrets(self, service: str) -> list[str]:
        """The secret variables set here that ``service`` does not hold (to warn about at its start)."""
        held = {"AIGW_BOOTSTRAP_TOKEN": self.bootstrap_token, "AIGW_PROVIDER_*": self.providers,
                "AIGW_DATABASE_URL": self.database_url, "AIGW_BUS_SEALING_KEYS": self.bus_sealing_keys,
                "AIGW_ENCRYPTION_KEYS": self.encryption_keys if self.bus_sealing_keys else ()}
        return [var for var, value in held.items() if value and not holds(service, var)]


# ---------------------------------------------------------------- parsing helpers


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


def _size(name: str, raw: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]i?b?|b)?\s*", raw.lower())
    if not m:
        raise ConfigError(f"{name}={raw!r}: expected a byte size such as 33554432 or 32MiB")
    mult = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 10**6, "mb": 10**6,
            "mib": 2**20, "mi": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "gi": 2**30}
    v = int(m.group(1)) * mult[m.group(2) or ""]
    if v <= 0:
        raise ConfigError(f"{name}={raw!r}: must be positive")
    return v


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


def _keys(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def _provider_name(var: str, raw: str) -> str:
    name = raw.strip()
    if not PROVIDER_NAME_RE.match(name):
        raise ConfigError(f"{var}={raw!r}: provider names match ^[a-z0-9]+(-[a-z0-9]+)*$")
    if name in RESERVED_PROVIDER_NAMES:
        raise ConfigError(f"{var}={raw!r}: {name!r} is reserved")
    return name


def _legacy_providers(env: Mapping[str, str]) -> list[ProviderSeed]:
    seeds: list[ProviderSeed] = []
    if env.get("AIGW_OPENAI_KEY") or env.get("AIGW_OPENAI_BASE_URL"):
        seeds.append(
            ProviderSeed(
                source="AIGW_OPENAI_*",
                name="openai",
                type="openai",
                display_name="OpenAI",
                base_url=_url("AIGW_OPENAI_BASE_URL", env.get("AIGW_OPENAI_BASE_URL") or OPENAI_BASE_URL),
                keys=_keys(env.get("AIGW_OPENAI_KEY")),
            )
        )
    if env.get("AIGW_ANTHROPIC_KEY") or env.get("AIGW_ANTHROPIC_BASE_URL"):
        seeds.append(
            ProviderSeed(
                source="AIGW_ANTHROPIC_*",
                name="anthropic",
                type="anthropic",
                display_name="Anthropic",
                base_url=_url(
                    "AIGW_ANTHROPIC_BASE_URL", env.get("AIGW_ANTHROPIC_BASE_URL") or ANTHROPIC_BASE_URL
                ),
                keys=_keys(env.get("AIGW_ANTHROPIC_KEY")),
            )
        )
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
    for f in ("REGION", "ACCESS_KEY", "ACCESS_KEY_SECRET", "SESSION_TOKEN", "MODEL", "SMALL_FAST_MODEL"):
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


def _parse(env: Mapping[str, str]) -> Settings:
    for var in env:
        if not var.startswith("AIGW_") or var in _SCALARS:
            continue
        m = _PROVIDER_VAR.match(var)
        if m and m.group(2) in _PROVIDER_FIELDS:
            continue
        if var == "AIGW_ALLOW_LINK_LOCAL_BASE_URLS":
            raise ConfigError("AIGW_ALLOW_LINK_LOCAL_BASE_URLS was replaced by AIGW_ALLOW_PRIVATE_UPSTREAMS "
                              "(true, false, or a list such as link-local,private; see docs/configuration.md)")
        raise ConfigError(f"unknown configuration variable {var} (check the spelling; see docs/configuration.md)")

    def get(name: str) -> str | None:
        v = env.get(name)
        return v if v is not None and v.strip() != "" else None

    kw: dict[str, Any] = {}
    if v := get("AIGW_DATABASE_URL"):
        kw["database_url"] = _url("AIGW_DATABASE_URL", v, ("postgres", "postgresql"))
    if v := get("AIGW_NATS_URL"):
        urls = tuple(_url("AIGW_NATS_URL", u, ("nats", "tls", "ws", "wss")) for u in v.split(",") if u.strip())
        if not urls:
            raise ConfigError("AIGW_NATS_URL is set but holds no URL")
        kw["nats_urls"] = urls
    if v := get("AIGW_GATEWAY_WORKERS"):
        if v.strip().lower() == "auto":
            kw["gateway_workers"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1)
        else:
            workers = kw["gateway_workers"] = _int("AIGW_GATEWAY_WORKERS", v, minimum=1)
            if workers > 256:
                raise ConfigError(f"AIGW_GATEWAY_WORKERS={v!r}: at most 256 (or auto = one per core)")
    if v := get("AIGW_JS_REPLICAS"):
        replicas = _int("AIGW_JS_REPLICAS", v, minimum=1)
        if replicas > 5:
            raise ConfigError(f"AIGW_JS_REPLICAS={v!r}: JetStream allows at most 5 replicas")
        kw["js_replicas"] = replicas
    if v := get("AIGW_ENCRYPTION_KEYS"):
        kw["encryption_keys"] = _encryption_keys("AIGW_ENCRYPTION_KEYS", v)
    if v := get("AIGW_BUS_SEALING_KEYS"):
        kw["bus_sealing_keys"] = _encryption_keys("AIGW_BUS_SEALING_KEYS", v)
    if v := get("AIGW_BOOTSTRAP_TOKEN"):
        if len(v.strip()) < 16:
            raise ConfigError("AIGW_BOOTSTRAP_TOKEN must be at least 16 characters")
        kw["bootstrap_token"] = v.strip()
    addrs = {s: ListenAddr("127.0.0.1", p) for s, p in DEFAULT_PORTS.items()}
    for s in SERVICES:
        if v := get(f"AIGW_{s.upper()}_ADDR"):
            addrs[s] = _addr(f"AIGW_{s.upper()}_ADDR", v)
    kw["addrs"] = addrs
    if v := get("AIGW_GATEWAY_URL"):
        kw["gateway_url"] = _url("AIGW_GATEWAY_URL", v)
    if v := get("AIGW_ALLOW_BYOK"):
        kw["allow_byok"] = _bool("AIGW_ALLOW_BYOK", v)
    if v := get("AIGW_DUMP_DIR"):
        kw["dump_dir"] = Path(v)
    if v := get("AIGW_DUMP_MAX_BYTES"):
        kw["dump_max_bytes"] = _size("AIGW_DUMP_MAX_BYTES", v)
    b: dict[str, Any] = {}
    if v := get("AIGW_CIRCUIT_BREAKER_ENABLED"):
        b["enabled"] = _bool("AIGW_CIRCUIT_BREAKER_ENABLED", v)
    if v := get("AIGW_CIRCUIT_BREAKER_FAILURE_THRESHOLD"):
        b["failure_threshold"] = _int("AIGW_CIRCUIT_BREAKER_FAILURE_THRESHOLD", v, minimum=1)
    if v := get("AIGW_CIRCUIT_BREAKER_INTERVAL"):
        b["interval"] = _duration("AIGW_CIRCUIT_BREAKER_INTERVAL", v)
    if v := get("AIGW_CIRCUIT_BREAKER_TIMEOUT"):
        b["timeout"] = _duration("AIGW_CIRCUIT_BREAKER_TIMEOUT", v)
    if v := get("AIGW_CIRCUIT_BREAKER_MAX_REQUESTS"):
        b["max_requests"] = _int("AIGW_CIRCUIT_BREAKER_MAX_REQUESTS", v, minimum=1)
    kw["breaker"] = BreakerSettings(**b)
    if v := get("AIGW_MAX_BODY_BYTES"):
        kw["max_body_bytes"] = _size("AIGW_MAX_BODY_BYTES", v)
    if v := get("AIGW_RETENTION"):
        kw["retention_seconds"] = _duration("AIGW_RETENTION", v)
    if v := get("AIGW_LOG_FORMAT"):
        if v.strip().lower() not in {"json", "text"}:
            raise ConfigError(f"AIGW_LOG_FORMAT={v!r}: expected json or text")
        kw["log_format"] = v.strip().lower()
    if v := get("AIGW_LOG_LEVEL"):
        if v.strip().upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"AIGW_LOG_LEVEL={v!r}: expected debug, info, warning or error")
        kw["log_level"] = v.strip().upper()
    if v := get("AIGW_BUS_PREFIX"):
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", v.strip()):
            raise ConfigError(f"AIGW_BUS_PREFIX={v!r}: expected dot-separated tokens of letters, digits, - and _")
        kw["bus_prefix"] = v.strip()
    if v := get("AIGW_DATA_DIR"):
        kw["data_dir"] = Path(v)
    if v := get("AIGW_SPOOL_MAX_BYTES"):
        kw["spool_max_bytes"] = _size("AIGW_SPOOL_MAX_BYTES", v)
    if v := get("AIGW_IDENTITY_TTL"):
        kw["identity_ttl"] = _duration("AIGW_IDENTITY_TTL", v)
    if v := get("AIGW_REVISION_CHECK_INTERVAL"):
        kw["revision_check_interval"] = _duration("AIGW_REVISION_CHECK_INTERVAL", v)
    if v := get("AIGW_SHUTDOWN_GRACE"):
        kw["shutdown_grace"] = _duration("AIGW_SHUTDOWN_GRACE", v)
    if v := get("AIGW_CHATD_ROUTE"):
        if v.strip() not in {"gateway", "direct"}:
            raise ConfigError(f"AIGW_CHATD_ROUTE={v!r}: expected gateway or direct")
        kw["chatd_route"] = v.strip()
    if v := get("AIGW_CHATD_SERVICE_TOKEN"):
        kw["chatd_service_token"] = v.strip()
    if v := get("AIGW_CHATD_SUMMARY_MODEL"):
        kw["chatd_summary_model"] = v.strip()
    if v := get("AIGW_RECORD_PROMPTS"):
        kw["record_prompts"] = _bool("AIGW_RECORD_PROMPTS", v)
    if v := get("AIGW_AUTH_FAILURES_PER_MINUTE"):
        kw["auth_failures_per_minute"] = _int("AIGW_AUTH_FAILURES_PER_MINUTE", v)
    if v := get("AIGW_RECORD_PROMPT_BYTES"):
        kw["record_prompt_bytes"] = _size("AIGW_RECORD_PROMPT_BYTES", v)
    if v := get("AIGW_KEY_RECHECK_MIN"):
        kw["key_recheck_min"] = _duration("AIGW_KEY_RECHECK_MIN", v)
    if v := get("AIGW_KEY_RECHECK_MAX"):
        kw["key_recheck_max"] = _duration("AIGW_KEY_RECHECK_MAX", v)
    if float(kw.get("key_recheck_min", 60.0)) <= 0 or float(kw.get("key_recheck_max", 3600.0)) < float(kw.get("key_recheck_min", 60.0)):
        raise ConfigError("AIGW_KEY_RECHECK_MIN must be positive and no more than AIGW_KEY_RECHECK_MAX")
    if v := get("AIGW_METRICS_ADDR"):
        kw["metrics_addr"] = _addr("AIGW_METRICS_ADDR", v)
    if v := get("AIGW_ALLOW_PRIVATE_UPSTREAMS"):
        try:
            kw["allow_private_upstreams"] = netguard.parse_allowed("AIGW_ALLOW_PRIVATE_UPSTREAMS", v)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if v := get("AIGW_ADMIN_TOKEN"):
        kw["admin_token"] = v.strip()
    kw["service_urls"] = {s: _url(f"AIGW_{s.upper()}_URL", v) for s in CONSOLE_UPSTREAMS
                          if (v := get(f"AIGW_{s.upper()}_URL"))}
    if v := get("AIGW_CONSOLE_SESSION_TTL"):
        kw["console_session_ttl"] = _duration("AIGW_CONSOLE_SESSION_TTL", v)

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
    kw["providers"] = tuple(seeds)
    kw["skipped_providers"] = tuple(skipped)
    kw["aws_env"] = {k: env[k] for k in AWS_ENV_VARS if env.get(k)}
    kw["signing_keys"] = {p: check_private_key(f"AIGW_{p.upper()}_SIGNING_KEY", v) for p in PRODUCERS
                          if (v := get(f"AIGW_{p.upper()}_SIGNING_KEY"))}
    if v := get("AIGW_BUS_VERIFY_KEYS"):
        kw["verify_keys"] = parse_verify_keys("AIGW_BUS_VERIFY_KEYS", v)
    if v := get("AIGW_BUS_MAX_MESSAGE_AGE"):
        kw["bus_max_message_age"] = _duration("AIGW_BUS_MAX_MESSAGE_AGE", v)
    return Settings(**kw)
