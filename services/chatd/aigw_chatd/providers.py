"""The providers chatd may route to, followed from the registry.

Refreshed on ``aigw.providers.changed`` (when the revision moves), on connect,
and periodically (to heal a missed event) by asking ``aigw.registry.snapshot``
with a timeout. A failed refresh keeps what we last knew — in memory, and in
the model-config rows, which carry the last known provider name, type and base
URL — so chatd keeps serving while the registry is away.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from aigw_common.bus import Bus
from aigw_common.crypto import Sealer
from aigw_common.errors import CryptoError
from aigw_common.schemas import ProviderConfig, RegistrySnapshot
from aigw_common.snapshots import SnapshotFollower

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
    """The providers chatd knows, followed by :class:`SnapshotFollower`; ``on_change`` stores them."""

    def __init__(self, bus: Bus, on_change: Callable[[int, list[ProviderInfo]], Awaitable[object]], *,
                 timeout: float = 2.0, interval: float = 30.0, sealer: Sealer | None = None) -> None:
        self.sealer = sealer  # opens provider settings (for the small model); None: no small models known
        self.on_change = on_change
        self.providers: dict[str, ProviderInfo] = {}
        self.follower = SnapshotFollower(bus, self._apply, interval=interval, timeout=timeout,
                                         name="chatd-provider-refresh")

    @property
    def revision(self) -> int | None:
        return self.follower.revision

    @property
    def last_error(self) -> str | None:
        return self.follower.last_error

    async def start(self) -> None:
        await self.follower.start()

    async def stop(self) -> None:
        await self.follower.stop()

    async def refresh(self) -> bool:
        """Ask the registry for the snapshot; on failure keep the last known providers."""
        return await self.follower.refresh()

    async def _apply(self, _old: RegistrySnapshot | None, snap: RegistrySnapshot) -> None:
        # the in-memory view moves at once; if storing fails the follower retries this snapshot
        self.providers = {
            p.id: ProviderInfo(p.id, p.name, p.type, p.base_url, p.enabled, p.allow_byok, self._small_model(p))
            for p in snap.providers
        }
        await self.on_change(snap.revision, list(self.providers.values()))

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
