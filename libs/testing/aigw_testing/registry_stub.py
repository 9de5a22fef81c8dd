"""A stand-in for the registry on the bus, for tests of services that consume it.

It answers ``aigw.registry.snapshot``, ``aigw.auth.verify`` and ``aigw.registry.directory`` on real NATS with
sealed secrets exactly as the registry does, so the consumer's real code path
(request, decode, open) is exercised. Tests that need the real registry start
``aigw_registry`` instead.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from aigw_common.bus import Bus
from aigw_common.crypto import PURPOSE_BUS, Sealer, hash_token, mask_secret, new_token
from aigw_common.schemas import (
    AuthRevoked,
    AuthVerifyReply,
    AuthVerifyRequest,
    DirectoryChanged,
    DirectoryEntry,
    DirectoryLookup,
    DirectoryReply,
    Identity,
    ProviderConfig,
    ProvidersChanged,
    RegistrySnapshot,
    SealedKey,
    SnapshotRequest,
    TokenScope,
    UserProviderKey,
)


@dataclass
class StubUser:
    user_id: str
    username: str
    roles: list[str]
    group_ids: list[str]
    token: str
    token_id: str
    provider_keys: dict[str, str] = field(default_factory=dict)  # provider name → clear key
    scope: TokenScope = "admin"  # tests of the control-plane APIs call them with the user's token
    expires_at: float | None = None


class RegistryStub:
    def __init__(self, bus: Bus, encryption_keys: tuple[bytes, ...]) -> None:
        self.bus = bus
        self.sealer = Sealer.from_keys(encryption_keys, PURPOSE_BUS)
        self.providers: dict[str, ProviderConfig] = {}
        self.users: dict[str, StubUser] = {}  # token hash → user
        self.groups: dict[str, str] = {}  # group id → name
        self.directory_requests = 0
        self.revision = 0
        self.snapshot_requests = 0
        self.verify_requests = 0
        self._ids = itertools.count(1)

    async def start(self) -> RegistryStub:
        await self.bus.subscribe(self.bus.subjects.registry_snapshot, SnapshotRequest, self._snapshot, queue="registry")
        await self.bus.subscribe(self.bus.subjects.auth_verify, AuthVerifyRequest, self._verify, queue="registry")
        await self.bus.subscribe(self.bus.subjects.registry_directory, DirectoryLookup, self._directory,
                                 queue="registry")
        assert self.bus.nc is not None
        await self.bus.nc.flush()
        return self

    async def _snapshot(self, _req: SnapshotRequest, _m: object) -> RegistrySnapshot:
        self.snapshot_requests += 1
        return RegistrySnapshot(revision=self.revision, providers=[p for p in self.providers.values() if p.enabled])

    async def _verify(self, req: AuthVerifyRequest, _m: object) -> AuthVerifyReply:
        self.verify_requests += 1
        u = self.users.get(req.token_hash)
        if u is None:
            return AuthVerifyReply(identity=None)
        keys = []
        for pname, key in u.provider_keys.items():
            p = self.providers.get(pname)
            if p is not None:
                keys.append(UserProviderKey(provider_id=p.id, provider_name=pname, hint=mask_secret(key),
                                            sealed=self.sealer.seal(key)))
        return AuthVerifyReply(identity=Identity(user_id=u.user_id, username=u.username, roles=u.roles,
                                                 group_ids=u.group_ids, token_id=u.token_id, provider_keys=keys,
                                                 scope=u.scope, expires_at=u.expires_at))

    async def _directory(self, req: DirectoryLookup, _m: object) -> DirectoryReply:
        """Like the registry: refs match a live user/group by id or (case-insensitive) name; ids match ids."""
        self.directory_requests += 1
        users = {u.user_id: u for u in self.users.values()}

        def match(ref: str, id_: str, name: str) -> bool:
            return ref == id_ or ref.lower() == name.lower()

        found_u = [u for u in users.values() if any(match(r, u.user_id, u.username) for r in req.user_refs)
                   or u.user_id in req.user_ids]
        found_g = [(i, n) for i, n in self.groups.items()
                   if any(match(r, i, n) for r in req.group_refs) or i in req.group_ids]
        return DirectoryReply(
            users=[DirectoryEntry(id=u.user_id, name=u.username, group_ids=u.group_ids) for u in found_u],
            groups=[DirectoryEntry(id=i, name=n) for i, n in found_g])

    def add_group(self, name: str, group_id: str | None = None) -> str:
        gid = group_id or f"grp-{name}"
        self.groups[gid] = name
        return gid

    async def directory_changed(self, *, user_ids: Sequence[str] = (), group_ids: Sequence[str] = ()) -> None:
        await self.bus.publish(self.bus.subjects.directory_changed,
                               DirectoryChanged(user_ids=list(user_ids), group_ids=list(group_ids)))

    # ------------------------------------------------------------ state

    def put_provider(self, name: str, type: str, base_url: str, keys: list[str] | None = None, *,
                     enabled: bool = True, allow_byok: bool = True, settings: dict[str, Any] | None = None,
                     key_ids: list[str] | None = None) -> ProviderConfig:
        """Create or replace a provider; keys get stable ids ``<name>-k<position>`` unless given."""
        old = self.providers.get(name)
        pid = old.id if old else f"prov-{name}"
        sealed_keys = [
            SealedKey(id=(key_ids[i] if key_ids else f"{name}-k{i + 1}"), position=i, hint=mask_secret(k),
                      sealed=self.sealer.seal(k))
            for i, k in enumerate(keys or [])
        ]
        p = ProviderConfig(
            id=pid, name=name, type=type, display_name=name, base_url=base_url.rstrip("/"), enabled=enabled,
            allow_byok=allow_byok, keys=sealed_keys,
            settings_sealed=self.sealer.seal(msgspec.json.encode(settings)) if settings else None,
        )
        self.providers[name] = p
        self.revision += 1
        return p

    def remove_provider(self, name: str) -> None:
        self.providers.pop(name, None)
        self.revision += 1

    def add_user(self, *, roles: list[str] | None = None, group_ids: list[str] | None = None,
                 username: str | None = None, token: str | None = None,
                 provider_keys: dict[str, str] | None = None, scope: TokenScope = "admin",
                 user_id: str | None = None) -> StubUser:
        n = next(self._ids)
        u = StubUser(user_id=user_id or f"user-{n}-{uuid.uuid4().hex[:6]}", username=username or f"user{n}", roles=roles or ["member"],
                     group_ids=group_ids or [], token=token or new_token(), token_id=f"tok-{n}",
                     provider_keys=provider_keys or {}, scope=scope)
        self.users[hash_token(u.token)] = u
        for g in u.group_ids:
            self.groups.setdefault(g, g.removeprefix("grp-"))
        return u

    async def revoke(self, user: StubUser) -> None:
        self.users.pop(hash_token(user.token), None)
        await self.bus.publish(self.bus.subjects.auth_revoked, AuthRevoked(token_ids=[user.token_id]))

    async def publish_changed(self) -> None:
        await self.bus.publish(
            self.bus.subjects.providers_changed,
            ProvidersChanged(revision=self.revision, provider_ids=[p.id for p in self.providers.values()]),
        )
