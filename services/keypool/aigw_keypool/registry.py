"""What the registry says exists: providers and their ordered keys, from its snapshot.

Refreshed at start (retried until the registry answers), on every
``providers.changed`` and every ``revision_check_interval`` to heal a missed
event. Each refresh hands the previous and the new snapshot to ``on_snapshot``,
which clears the state of replaced/re-enabled keys and of removed ones (a signed valid state: readers
ignore deletes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from aigw_common.aio import stop_task
from aigw_common.bus import Bus
from aigw_common.errors import BusError
from aigw_common.keystate import TRANSIENT, wait_event
from aigw_common.schemas import ProviderConfig, ProvidersChanged, RegistrySnapshot, SnapshotRequest

log = logging.getLogger(__name__)

OnSnapshot = Callable[[RegistrySnapshot | None, RegistrySnapshot], Awaitable[None]]


class RegistryView:
    def __init__(self, bus: Bus, on_snapshot: OnSnapshot, *, interval: float = 30.0, timeout: float = 2.0) -> None:
        self.bus = bus
        self.on_snapshot = on_snapshot
        self.interval = interval
        self.timeout = timeout
        self.snapshot: RegistrySnapshot | None = None
        self.by_id: dict[str, ProviderConfig] = {}
        self.by_name: dict[str, ProviderConfig] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.bus.subscribe(self.bus.subjects.providers_changed, ProvidersChanged, self._on_changed)
        self._task = asyncio.create_task(self._run(), name="keypool-registry")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)

    async def _on_changed(self, _msg: ProvidersChanged, _m: Msg) -> None:
        self._wake.set()

    def find(self, id_or_name: str) -> ProviderConfig | None:
        return self.by_id.get(id_or_name) or self.by_name.get(id_or_name)

    async def refresh(self) -> bool:
        """Fetch the snapshot now; False when the registry cannot be asked."""
        async with self._lock:
            try:
                snap = await self.bus.request(self.bus.subjects.registry_snapshot, SnapshotRequest(),
                                              RegistrySnapshot, timeout=self.timeout)
            except BusError as e:
                log.warning("registry snapshot unavailable", extra={"error": str(e)})
                return False
            old = self.snapshot
            if old is not None and snap.revision < old.revision:
                return True  # an older replica's answer; keep what we have
            self.by_id = {p.id: p for p in snap.providers}
            self.by_name = {p.name: p for p in snap.providers}
            try:
                await self.on_snapshot(old, snap)
            except TRANSIENT as e:  # keep the old snapshot so the next refresh redoes the clearing
                log.warning("applying registry snapshot failed; will retry", extra={"error": str(e)})
                return False
            self.snapshot = snap
            return True

    async def _run(self) -> None:
        delay = 0.2
        while True:
            await self.bus.wait_connected()
            self._wake.clear()
            if not await self.refresh():
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            await wait_event(self._wake, self.interval)
