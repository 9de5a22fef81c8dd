"""The provider set: built from the registry snapshot, swapped atomically, healed periodically.

Requests look up ``ProviderSet.current`` once and keep that object to the end,
so a swap never disturbs an in-flight request: it finishes on the set it
started with. Secrets arrive sealed for the bus and are opened here, once per
snapshot, never per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from yarl import URL

from aigw_common.bus import Bus
from aigw_common.crypto import Sealer
from aigw_common.errors import CryptoError
from aigw_common.schemas import ProviderConfig, RegistrySnapshot
from aigw_common.snapshots import SnapshotFollower

from . import headers
from .adapters import Adapter, Adapters, Timeouts
from .keys import KeyPool, KeyPools, PoolKey

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Provider:
    id: str
    name: str
    type: str
    display_name: str
    base_url: str
    allow_byok: bool
    settings: Mapping[str, Any]
    pool: KeyPool
    adapter: Adapter
    timeouts: Timeouts
    base: URL  # base_url parsed once; upstream URLs are built from it (paths.build)
    forward_headers: frozenset[str] = frozenset()  # settings.forward_headers: extra client headers to forward

    def __repr__(self) -> str:
        return f"Provider(name={self.name!r}, type={self.type!r}, base_url={self.base_url!r}, keys={len(self.pool.keys)})"


@dataclass(frozen=True, slots=True)
class ProviderSet:
    revision: int = -1
    by_name: Mapping[str, Provider] = field(default_factory=dict)
    by_id: Mapping[str, Provider] = field(default_factory=dict)
    failed: tuple[str, ...] = ()  # enabled providers of the snapshot that could not be loaded


def build_set(snap: RegistrySnapshot, sealer: Sealer, pools: KeyPools, adapters: Adapters) -> ProviderSet:
    """Load every enabled provider; one that cannot be loaded is skipped (and named) while the rest serve."""
    by_name: dict[str, Provider] = {}
    failed: list[str] = []
    live: set[tuple[str, str]] = set()
    for pc in snap.providers:
        if not pc.enabled:
            continue
        adapter = adapters.get(pc.type)
        if adapter is None:
            log.warning("skipping provider of unsupported type", extra={"provider": pc.name, "type": pc.type})
            failed.append(pc.name)
            continue
        try:
            p = _build_provider(pc, adapter, sealer, pools)
        except (CryptoError, msgspec.DecodeError) as e:
            log.error("cannot open provider secrets; check AIGW_ENCRYPTION_KEYS", extra={"provider": pc.name, "error": str(e)})
            failed.append(pc.name)
            continue
        by_name[p.name] = p
        live.update((p.id, k.id) for k in p.pool.keys)
    pools.retain(live)
    if failed and not by_name:
        log.error("no provider could be loaded; the gateway serves no provider until this is fixed",
                  extra={"revision": snap.revision, "failed": sorted(failed)})
    return ProviderSet(snap.revision, by_name, {p.id: p for p in by_name.values()}, tuple(failed))


def _build_provider(pc: ProviderConfig, adapter: Adapter, sealer: Sealer, pools: KeyPools) -> Provider:
    settings: dict[str, Any] = {}
    if pc.settings_sealed:
        settings = msgspec.json.decode(sealer.open_bytes(pc.settings_sealed), type=dict[str, Any])
    keys = [
        PoolKey(k.id, k.position, k.hint, sealer.open(k.sealed), pools.health(pc.id, k.id))
        for k in sorted(pc.keys, key=lambda k: k.position)
    ]
    return Provider(
        id=pc.id, name=pc.name, type=pc.type, display_name=pc.display_name, base_url=pc.base_url.rstrip("/"),
        allow_byok=pc.allow_byok, settings=settings, pool=KeyPool(pc.id, keys), adapter=adapter,
        timeouts=Timeouts.from_settings(settings), base=URL(pc.base_url.rstrip("/")),
        forward_headers=headers.parse_names(settings.get("forward_headers")),
    )


class ProviderLoader:
    """Keeps ``current`` in step with the registry through :class:`SnapshotFollower` (on start, on every
    change event, on reconnect and every ``interval``; a snapshot that cannot be used never stops it)."""

    def __init__(self, bus: Bus, sealer: Sealer, pools: KeyPools, adapters: Adapters, interval: float = 30.0,
                 on_swap: Callable[[ProviderSet], None] | None = None) -> None:
        self.sealer = sealer
        self.pools = pools
        self.adapters = adapters
        self.on_swap = on_swap
        self.current = ProviderSet()
        self.follower = SnapshotFollower(bus, self._apply, interval=interval, timeout=3.0, name="provider-loader")

    @property
    def loaded(self) -> bool:
        return self.follower.snapshot is not None

    async def start(self) -> None:
        await self.follower.start()
        if self.follower.bus.connected:
            await self.refresh()

    async def stop(self) -> None:
        await self.follower.stop()

    async def refresh(self) -> bool:
        """Fetch a snapshot and swap when it is newer; False when the registry did not answer."""
        return await self.follower.refresh()

    async def _apply(self, _old: RegistrySnapshot | None, snap: RegistrySnapshot) -> None:
        new = build_set(snap, self.sealer, self.pools, self.adapters)
        self.current = new
        log.info("provider set swapped", extra={"revision": new.revision, "providers": sorted(new.by_name)})
        if self.on_swap:
            self.on_swap(new)
