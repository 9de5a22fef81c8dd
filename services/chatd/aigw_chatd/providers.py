"""The providers chatd may route to, followed from the registry.

Refreshed on ``aigw.providers.changed`` (when the revision moves), on connect,
and periodically (to heal a missed event) by asking ``aigw.registry.snapshot``
with a timeout. A failed refresh keeps what we last knew — in memory, and in
the model-config rows, which carry the last known provider name, type and base
URL — so chatd keeps serving while the registry is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg

from aigw_common.aio import stop_task
from aigw_common.bus import Bus
from aigw_common.crypto import Sealer
from aigw_common.errors import BusError, CryptoError
from aigw_common.schemas import ProviderConfig, ProvidersChanged, RegistrySnapshot, SnapshotRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """What chatd needs of a provider; its keys stay with the gateway."""

    id: str
    name: str
    type: str
    base_url: str
    enabled: bool = True
    allow_byok: bool = True
    small_model: str | None = None  # the provider's small, fast model (Bedrock small_fast_model): for summaries


class ProviderDirectory:
    def __init__(self, bus: Bus, on_change: Callable[[int, list[ProviderInfo]], Awaitable[object]], *,
                 timeout: float = 2.0, interval: float = 30.0, sealer: Sealer | None = None) -> None:
        self.bus = bus
        self.sealer = sealer  # opens provider settings (for the small model); None: no small models known
        self.on_change = on_change
        self.timeout = timeout
        self.interval = interval
        self.providers: dict[str, ProviderInfo] = {}
        self.revision: int | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.bus.subscribe(self.bus.subjects.providers_changed, ProvidersChanged, self._on_changed)
        self.bus.on_connect(self._refresh_quietly)
        self.bus.on_reconnect(self._refresh_quietly)
        self._task = asyncio.create_task(self._periodic(), name="chatd-provider-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)

    async def _on_changed(self, msg: ProvidersChanged, _m: Msg) -> None:
        if self.revision is None or msg.revision != self.revision:
            await self.refresh()

    async def _refresh_quietly(self) -> None:
        await self.refresh()

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()

    async def refresh(self) -> bool:
        """Ask the registry for the snapshot; on failure keep the last known providers."""
        async with self._lock:
            try:
                snap = await self.bus.request(self.bus.subjects.registry_snapshot, SnapshotRequest(), RegistrySnapshot,
                                              timeout=self.timeout)
            except BusError as e:
                self.last_error = str(e)
                log.warning("registry snapshot unavailable; keeping the last known providers", extra={"error": str(e)})
                return False
            self.last_error = None
            if self.revision is not None and snap.revision <= self.revision:
                return True  # nothing new (or an answer older than what we hold)
            self.providers = {
                p.id: ProviderInfo(p.id, p.name, p.type, p.base_url, p.enabled, p.allow_byok, self._small_model(p))
                for p in snap.providers
            }
            self.revision = snap.revision
            try:
                await self.on_change(snap.revision, list(self.providers.values()))
            except Exception:  # the next refresh retries; the in-memory view is already current
                log.exception("could not apply the provider snapshot")
                self.revision = None
                return False
            return True

    def _small_model(self, p: ProviderConfig) -> str | None:
        if self.sealer is None or not p.settings_sealed:
            return None
        try:
            settings = msgspec.json.decode(self.sealer.open_bytes(p.settings_sealed))
        except (CryptoError, msgspec.DecodeError) as e:
            log.warning("provider settings cannot be opened; no small model for summaries",
                        extra={"provider": p.name, "error": str(e)})
            return None
        small = settings.get("small_fast_model") if isinstance(settings, dict) else None
        return small if isinstance(small, str) and small else None

    def resolve(self, id_or_name: str) -> ProviderInfo | None:
        if (p := self.providers.get(id_or_name)) is not None:
            return p
        return next((p for p in self.providers.values() if p.name == id_or_name), None)
