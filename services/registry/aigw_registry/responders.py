"""Answers on the bus: ``aigw.registry.snapshot`` and ``aigw.auth.verify``.

The logic (:func:`build_snapshot`, :func:`verify_token`) is separate from the
NATS handlers so it is tested without a broker. Secrets leave the database
opened with the at-rest key and sealed again with the bus key. Every registry
replica subscribes in one queue group, so each request is answered once.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import msgspec
from nats.aio.msg import Msg

from aigw_common.auth import same_token
from aigw_common.bus import Bus
from aigw_common.db import in_transaction
from aigw_common.errors import CryptoError
from aigw_common.ids import is_uuid
from aigw_common.llm import capabilities
from aigw_common.metrics import CollectorRegistry, Counter, Gauge
from aigw_common.schemas import (
    AuditAck,
    AuditRecord,
    AuthVerifyReply,
    AuthVerifyRequest,
    DirectoryLookup,
    DirectoryReply,
    Identity,
    ProviderConfig,
    RegistrySnapshot,
    SealedKey,
    SnapshotRequest,
    UserProviderKey,
)

from .core import Actor, Registry, audit
from .directory import lookup
from .providers import fetch_keys, settings_of

log = logging.getLogger(__name__)

QUEUE = "aigw-registry"
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


async def current_revision(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT revision FROM registry.state"))


async def build_snapshot(reg: Registry, skipped: list[str] | None = None) -> RegistrySnapshot:
    """Every enabled, live provider with its ordered keys; revision and data from one consistent read.

    A row that cannot be served — secrets that do not open with AIGW_ENCRYPTION_KEYS, a type this
    version does not know — is left out (its name appended to ``skipped``) so the others still load.
    """
    async def read(conn: asyncpg.Connection) -> tuple[int, list[asyncpg.Record], Any]:
        revision = await current_revision(conn)
        rows = await conn.fetch(
            "SELECT id, type, name, display_name, enabled, allow_byok, base_url, settings_sealed, updated_at"
            " FROM registry.ai_providers WHERE deleted_at IS NULL AND enabled ORDER BY name")
        return revision, rows, await fetch_keys(conn, [r["id"] for r in rows])

    # a read cut by a failover is read again from the new primary
    revision, rows, keys = await in_transaction(reg.pool, read, attempts=2, isolation="repeatable_read",
                                                readonly=True)
    providers = []
    for r in rows:
        pid = str(r["id"])
        if capabilities(r["type"]) is None:
            log.error("skipping stored provider of unsupported type", extra={"provider": r["name"], "type": r["type"]})
            if skipped is not None:
                skipped.append(r["name"])
            continue
        try:
            settings = settings_of(reg, r)
            sealed_keys = [SealedKey(id=str(k["id"]), position=k["position"], hint=k["hint"],
                                     sealed=reg.for_bus.seal(reg.open("provider-key", str(k["id"]), k["api_key_sealed"])))
                           for k in keys[pid]]
        except (CryptoError, msgspec.DecodeError) as e:
            log.error("skipping stored provider whose secrets cannot be opened; check AIGW_ENCRYPTION_KEYS",
                      extra={"provider": r["name"], "error": str(e)})
            if skipped is not None:
                skipped.append(r["name"])
            continue
        providers.append(ProviderConfig(
            id=pid, name=r["name"], type=r["type"], display_name=r["display_name"], base_url=r["base_url"],
            enabled=r["enabled"], allow_byok=r["allow_byok"],
            settings_sealed=reg.for_bus.seal(msgspec.json.encode(settings)) if settings else None,
            keys=sealed_keys,
            updated_at=r["updated_at"].timestamp(),
        ))
    return RegistrySnapshot(revision=revision, providers=providers)


async def verify_token(reg: Registry, token_hash: str) -> Identity | None:
    """The identity behind a token hash, or None when unknown, expired, or its user is deleted."""
    if not _HASH_RE.match(token_hash):
        return None
    found = await in_transaction(reg.pool, lambda conn: _identity_rows(conn, token_hash), attempts=2,
                                 readonly=True)  # a read cut by a failover is read again
    if found is None:
        return None
    row, groups, ukeys = found
    if not same_token(row["token_hash"], token_hash):
        return None
    uid = str(row["user_id"])
    return Identity(
        user_id=uid, username=row["username"], roles=list(row["roles"]),
        group_ids=[str(g["group_id"]) for g in groups], token_id=str(row["id"]), scope=row["scope"],
        expires_at=row["expires_at"].timestamp() if row["expires_at"] else None,
        provider_keys=[UserProviderKey(
            provider_id=str(k["provider_id"]), provider_name=k["name"], hint=k["hint"],
            sealed=reg.for_bus.seal(reg.open("user-provider-key", f"{uid}:{k['provider_id']}", k["api_key_sealed"])),
        ) for k in ukeys],
    )


async def _identity_rows(conn: asyncpg.Connection, token_hash: str) -> Any:
    """The token's row, its user's groups and stored provider keys (one read), or None."""
    row = await conn.fetchrow(
        "SELECT t.id, t.token_hash, t.scope, t.expires_at, u.id AS user_id, u.username, u.roles"
        " FROM registry.api_tokens t JOIN registry.users u ON u.id = t.user_id"
        " WHERE t.token_hash = $1 AND u.deleted_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())",
        token_hash)
    if row is None:
        return None
    groups = await conn.fetch("SELECT group_id FROM registry.group_members WHERE user_id = $1 ORDER BY group_id",
                              row["user_id"])
    ukeys = await conn.fetch(
        "SELECT k.user_id, k.provider_id, p.name, k.hint, k.api_key_sealed FROM registry.user_ai_provider_keys k"
        " JOIN registry.ai_providers p ON p.id = k.provider_id"
        " WHERE k.user_id = $1 AND p.deleted_at IS NULL AND p.enabled ORDER BY p.name", row["user_id"])
    return row, groups, ukeys


class Responders:
    """NATS handlers over :func:`build_snapshot` / :func:`verify_token`, with a snapshot cached per revision."""

    def __init__(self, reg: Registry, metrics_registry: CollectorRegistry) -> None:
        self.reg = reg
        self._cached: RegistrySnapshot | None = None
        self.requests = Counter("aigw_registry_bus_requests_total", "Bus requests answered by the registry",
                                ["subject", "outcome"], registry=metrics_registry)
        self.skipped = Gauge("aigw_registry_snapshot_providers_skipped",
                             "Enabled providers left out of the last snapshot because they cannot be loaded",
                             registry=metrics_registry)

    async def subscribe(self, bus: Bus) -> None:
        await bus.subscribe(bus.subjects.registry_snapshot, SnapshotRequest, self.on_snapshot, queue=QUEUE)
        await bus.subscribe(bus.subjects.auth_verify, AuthVerifyRequest, self.on_verify, queue=QUEUE)
        await bus.subscribe(bus.subjects.registry_directory, DirectoryLookup, self.on_directory, queue=QUEUE)
        await bus.subscribe(bus.subjects.registry_audit, AuditRecord, self.on_audit, queue=QUEUE)

    async def snapshot(self, known_revision: int | None = None) -> RegistrySnapshot:
        """The snapshot at the current revision; only that revision (``unchanged``) when the caller holds it."""
        async with self.reg.pool.acquire() as conn:
            revision = await current_revision(conn)
        if known_revision is not None and known_revision == revision:
            return RegistrySnapshot(revision=revision, unchanged=True)
        cached = self._cached
        if cached is not None and cached.revision == revision:
            return cached
        skipped: list[str] = []
        snap = await build_snapshot(self.reg, skipped)
        self.skipped.set(len(skipped))
        if skipped and not snap.providers:
            log.error("no enabled provider can be loaded; gateways serve no provider until this is fixed",
                      extra={"revision": snap.revision, "skipped": sorted(skipped)})
        self._cached = snap
        return snap

    async def on_snapshot(self, req: SnapshotRequest, _m: Msg) -> RegistrySnapshot:
        try:
            snap = await self.snapshot(req.known_revision)
        except Exception:
            self.requests.labels("snapshot", "error").inc()
            raise
        self.requests.labels("snapshot", "unchanged" if snap.unchanged else "ok").inc()
        return snap

    async def on_verify(self, req: AuthVerifyRequest, _m: Msg) -> AuthVerifyReply:
        try:
            ident = await verify_token(self.reg, req.token_hash)
        except Exception:
            self.requests.labels("auth.verify", "error").inc()
            raise
        self.requests.labels("auth.verify", "ok" if ident else "unknown").inc()
        return AuthVerifyReply(identity=ident)

    async def on_directory(self, req: DirectoryLookup, _m: Msg) -> DirectoryReply:
        try:
            async with self.reg.pool.acquire() as conn:
                reply = await lookup(conn, req)
        except Exception:
            self.requests.labels("directory", "error").inc()
            raise
        self.requests.labels("directory", "refused" if reply.error else "ok").inc()
        return reply

    async def on_audit(self, rec: AuditRecord, _m: Msg) -> AuditAck:
        """Write another service's audit record (its signature was checked on arrival: only keypool signs
        these), limited to the actions that service performs."""
        if not rec.action.startswith(AUDIT_ACTIONS[rec.signed_by]):
            self.requests.labels("audit", "refused").inc()
            return AuditAck(error=f"action {rec.action!r} is not one {rec.signed_by} performs")
        if rec.actor_id is not None and not is_uuid(rec.actor_id):
            self.requests.labels("audit", "refused").inc()
            return AuditAck(error="actor_id is not a user id")
        actor = Actor(rec.actor_id, rec.actor_name, ())
        try:
            async with self.reg.transaction() as conn:
                await audit(conn, actor, rec.action, rec.resource_type, rec.resource_id, rec.before, rec.after)
        except Exception:
            self.requests.labels("audit", "error").inc()
            raise
        self.requests.labels("audit", "ok").inc()
        return AuditAck()


# What each service may write into the audit log through aigw.registry.audit (action prefixes).
AUDIT_ACTIONS = {"keypool": ("provider_key.reset",)}
