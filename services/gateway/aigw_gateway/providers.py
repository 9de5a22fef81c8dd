"""The provider set: built from the registry snapshot, swapped atomically, healed periodically.

Requests look up ``ProviderSet.current`` once and keep that object to the end,
so a swap never disturbs an in-flight request: it finishes on the set it
started with. Secrets arrive sealed for the bus and are opened here, once per
snapshot, never per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from yarl import URL

from aigw_common.aio import stop_task, wait_event
from aigw_common.bus import Bus
from aigw_common.crypto import Sealer
from aigw_common.errors import BusError, CryptoError
from aigw_common.schemas import ProviderConfig, ProvidersChanged, RegistrySnapshot, SnapshotRequest

from . import headers
from .adapters import Adapter, Timeouts, adapter_for
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


def build_set(snap: RegistrySnapshot, sealer: Sealer, pools: KeyPools) -> ProviderSet:
    """Load every enabled provider; one that cannot be loaded is skipped (and named) while the rest serve."""
    by_name: dict[str, Provider] = {}
    failed: list[str] = []
    live: set[tuple[str, str]] = set()
    for pc in snap.providers:
        if not pc.enabled:
            continue
        adapter = adapter_for(pc.type)
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
        settings = msgspec.json.decode(sealer.open_bytes(pc.settings_sealed))
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


@dataclass(slots=True)
class ProviderLoader:
    """Keeps ``current`` in step with the registry: on start, on every change event, and every ``interval``."""

    bus: Bus
    sealer: Sealer
    pools: KeyPools
    interval: float = 30.0
    on_swap: Callable[[ProviderSet], None] | None = None
    current: ProviderSet = field(default_factory=ProviderSet)
    loaded: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.bus.subscribe(self.bus.subjects.providers_changed, ProvidersChanged, self._on_changed)
        self.bus.on_connect(self._kick)
        self.bus.on_reconnect(self._kick)
        self._task = asyncio.create_task(self._run(), name="provider-loader")
        if self.bus.connected:
            await self.refresh()

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)

    async def _kick(self) -> None:
        self._wake.set()

    async def _on_changed(self, msg: ProvidersChanged, _m: object) -> None:
        if msg.revision != self.current.revision:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await wait_event(self._wake, self.interval if self.loaded else 1.0)
            self._wake.clear()
            if self.bus.connected:
                await self.refresh()

    async def refresh(self) -> bool:
        """Fetch a snapshot and swap when its revision differs; False when the registry did not answer."""
        try:
            snap = await self.bus.request(
                self.bus.subjects.registry_snapshot, SnapshotRequest(known_revision=self.current.revision),
                RegistrySnapshot, timeout=3.0,
            )
        except BusError as e:
            log.warning("registry snapshot unavailable; keeping the current provider set",
                        extra={"error": str(e), "revision": self.current.revision})
            return False
        self.loaded = True
        if snap.revision != self.current.revision:
            new = build_set(snap, self.sealer, self.pools)
            self.current = new
            log.info("provider set swapped", extra={"revision": new.revision, "providers": sorted(new.by_name)})
            if self.on_swap:
                self.on_swap(new)
        return True
