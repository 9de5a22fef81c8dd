"""What the registry says exists: providers and their ordered keys, from its snapshot.

Refreshed at start (retried until the registry answers), on every
``providers.changed`` and every ``revision_check_interval`` to heal a missed
event (the rules: :mod:`aigw_common.snapshots`). Each refresh hands the previous and the new snapshot to ``on_snapshot``,
which clears the state of replaced/re-enabled keys and of removed ones (a signed valid state: readers
ignore deletes).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aigw_common.bus import Bus
from aigw_common.schemas import ProviderConfig, RegistrySnapshot
from aigw_common.snapshots import SnapshotFollower

log = logging.getLogger(__name__)

OnSnapshot = Callable[[RegistrySnapshot | None, RegistrySnapshot], Awaitable[None]]


class RegistryView:
    """The registry's providers by id and name, followed by :class:`SnapshotFollower`."""

    def __init__(self, bus: Bus, on_snapshot: OnSnapshot, *, interval: float = 30.0, timeout: float = 2.0) -> None:
        self.on_snapshot = on_snapshot
        self.by_id: dict[str, ProviderConfig] = {}
        self.by_name: dict[str, ProviderConfig] = {}
        self.follower = SnapshotFollower(bus, self._apply, interval=interval, timeout=timeout, name="keypool-registry")

    @property
    def snapshot(self) -> RegistrySnapshot | None:
        """The last snapshot whose clearing was applied (a failed apply is redone from this one)."""
        return self.follower.snapshot

    async def start(self) -> None:
        await self.follower.start()

    async def stop(self) -> None:
        await self.follower.stop()

    def find(self, id_or_name: str) -> ProviderConfig | None:
        return self.by_id.get(id_or_name) or self.by_name.get(id_or_name)

    async def refresh(self) -> bool:
        """Fetch the snapshot now; False when the registry cannot be asked (or applying it failed)."""
        return await self.follower.refresh()

    async def _apply(self, old: RegistrySnapshot | None, snap: RegistrySnapshot) -> None:
        self.by_id = {p.id: p for p in snap.providers}
        self.by_name = {p.name: p for p in snap.providers}
        await self.on_snapshot(old, snap)
