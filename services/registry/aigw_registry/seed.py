"""Boot-time reconciliation: env-declared providers and the bootstrap owner.

Runs in one transaction under an advisory lock, before the registry answers
anything, so two replicas starting at once do the work once. A provider the
env declares is inserted (with its env keys) when no row of that name exists;
left alone when the stored row's canonical hash matches; and fails startup
with both sides named when it does not. A soft-deleted row stays deleted. The
registry is the source of truth once a row exists: env keys are only used on
insert.

The hash is SHA-256 over exactly the runtime fields env seeding can set and
that must agree: type, base URL and, for Bedrock, region, access key id,
secret, model and small fast model. Settings only the API manages (timeouts,
``thinking_mode``, ``api_version``) and the Bedrock session token — rotated
often, set only on insert like keys — are never part of it, so changing them
through the API never stops the next start.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import asyncpg
import msgspec

from aigw_common.auth import ROLE_OWNER, SCOPE_ADMIN
from aigw_common.crypto import hash_token
from aigw_common.errors import ConfigError
from aigw_common.llm import PROVIDER_TYPES, ProviderType
from aigw_common.settings import ProviderSeed

from . import validate as v
from .core import SEED_LOCK, SYSTEM, Registry
from .identity import insert_token, insert_user
from .providers import insert_provider, settings_of

log = logging.getLogger(__name__)


class SeedConflict(ConfigError):
    """An env-declared provider differs from its row in the registry."""


@dataclass(slots=True)
class SeedReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # soft-deleted rows left deleted
    skipped: list[str] = field(default_factory=list)  # unknown types
    owner_created: bool = False


# Per type, the settings env seeding sets that take part in the conflict check.
HASHED_SETTINGS: dict[str, frozenset[str]] = {
    ProviderType.BEDROCK: frozenset({"region", "access_key", "access_key_secret", "model", "small_fast_model"}),
}


def canonical(ptype: str, base_url: str, settings: Mapping[str, str]) -> dict[str, str]:
    """The fields that identify a provider's configuration (flattened, so differences can be named)."""
    hashed = HASHED_SETTINGS.get(ptype, frozenset())
    out = {"type": ptype, "base_url": base_url}
    out.update({f"settings.{k}": val for k, val in sorted(settings.items()) if val and k in hashed})
    return out


def canonical_hash(ptype: str, base_url: str, settings: Mapping[str, str]) -> str:
    data = msgspec.json.encode(canonical(ptype, base_url, settings), order="sorted")
    return hashlib.sha256(data).hexdigest()


def _describe_conflict(seed: ProviderSeed, env: dict[str, str], row: dict[str, str], ptype: str) -> str:
    secrets = {f"settings.{k}" for k in v.secret_settings(ptype)}
    parts = []
    for f in sorted(set(env) | set(row)):
        if env.get(f) == row.get(f):
            continue
        if f in secrets:
            parts.append(f"{f} (secret; values differ)")
        else:
            parts.append(f"{f}: env {env.get(f)!r}, registry {row.get(f)!r}")
    return (
        f"provider {seed.name!r} declared by {seed.source} differs from the registry: {'; '.join(parts)}. "
        f"The registry is the source of truth once a provider exists. To resolve, either change {seed.source} "
        f"to match the registry, remove {seed.source} from the environment, or update the provider through the "
        f"API (aigw admin providers update {seed.name} …) to match the environment."
    )


def _prepare(seed: ProviderSeed, allowed: frozenset[str]) -> tuple[str, dict[str, str], list[str]]:
    """Normalise a seed with the API's rules; a bad value is a startup error naming the variable."""
    try:
        base = v.base_url(seed.base_url, allowed=allowed, field=f"{seed.source} BASE_URL")
        keys = [v.secret_value(k, f"{seed.source} KEY[{i}]") for i, k in enumerate(seed.keys)]
    except v.Invalid as e:
        raise ConfigError(f"provider {seed.name!r}: {e.field} {e.detail}") from None
    settings = {k: val.strip() for k, val in seed.settings.items() if val and val.strip()}
    return base, settings, keys


async def _seed_one(reg: Registry, conn: asyncpg.Connection, seed: ProviderSeed, report: SeedReport) -> None:
    base, settings, keys = _prepare(seed, reg.settings.allow_private_upstreams)
    row = await conn.fetchrow(
        "SELECT id, type, base_url, settings_sealed FROM registry.ai_providers"
        " WHERE name = $1 AND deleted_at IS NULL", seed.name)
    if row is None:
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM registry.ai_providers WHERE name = $1)", seed.name):
            log.info("env provider was deleted through the API; leaving it deleted",
                     extra={"provider": seed.name, "source": seed.source})
            report.deleted.append(seed.name)
            return
        await insert_provider(
            reg, conn, SYSTEM, name=seed.name, ptype=seed.type, base_url=base,
            display_name=seed.display_name, enabled=True, allow_byok=True, settings=settings, keys=keys,
            action="provider.seed",
        )
        log.info("seeded provider from env", extra={"provider": seed.name, "source": seed.source, "keys": len(keys)})
        report.created.append(seed.name)
        return
    stored = settings_of(reg, row)
    if canonical_hash(seed.type, base, settings) == canonical_hash(row["type"], row["base_url"], stored):
        report.unchanged.append(seed.name)
        return
    raise SeedConflict(_describe_conflict(seed, canonical(seed.type, base, settings),
                                          canonical(row["type"], row["base_url"], stored), row["type"]))


async def _bootstrap_owner(conn: asyncpg.Connection, token: str) -> bool:
    """Create the first owner with ``token`` (admin scope, no expiry: the operator chose it in config).

    At most once per database: once an owner has existed the flag stays set, so a revoked bootstrap
    token is never brought back by the next start.
    """
    if await conn.fetchval("SELECT bootstrapped FROM registry.state FOR UPDATE"):
        return False
    if await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM registry.users WHERE deleted_at IS NULL AND $1 = ANY(roles))", ROLE_OWNER):
        await conn.execute("UPDATE registry.state SET bootstrapped = true")
        return False
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM registry.api_tokens WHERE token_hash = $1)",
                           hash_token(token)):
        log.warning("AIGW_BOOTSTRAP_TOKEN already belongs to a user who is not an owner; no owner created")
        return False
    username, n = "owner", 1
    while await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM registry.users WHERE lower(username) = $1 AND deleted_at IS NULL)", username):
        n += 1
        username = f"owner-{n}"
    user = await insert_user(conn, SYSTEM, username, None, [ROLE_OWNER], action="user.bootstrap")
    await insert_token(conn, SYSTEM, user.id, token, "bootstrap", None, SCOPE_ADMIN, action="token.bootstrap")
    await conn.execute("UPDATE registry.state SET bootstrapped = true")
    log.info("created the bootstrap owner", extra={"username": username})
    return True


async def reconcile(reg: Registry) -> SeedReport:
    """Seed env providers and the bootstrap owner, serialised across replicas by an advisory lock."""
    report = SeedReport()
    async with reg.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SEED_LOCK)
        for sk in reg.settings.skipped_providers:
            log.warning(f"skipping env provider of unknown type: {sk.variable}={sk.type!r}",
                        extra={"variable": sk.variable, "type": sk.type, "known_types": ",".join(PROVIDER_TYPES)})
            report.skipped.append(sk.variable)
        for seed in reg.settings.providers:
            await _seed_one(reg, conn, seed, report)
        if reg.settings.bootstrap_token:
            report.owner_created = await _bootstrap_owner(conn, reg.settings.bootstrap_token)
    return report
