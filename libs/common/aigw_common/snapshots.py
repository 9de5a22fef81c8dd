"""Following the registry's provider snapshot: the one follower every service uses.

The gateway (its provider set), keypool (its view of keys) and chatd (its
provider directory) each hold a copy of ``aigw.registry.snapshot``. They keep it
in step the same way, so the rules live here once:

- **Wake** on ``aigw.providers.changed`` (when the event names a revision other
  than the one held), on every (re)connect to NATS, and every ``interval`` to
  heal a missed event; ``refresh()`` may also be called directly (a lookup that
  missed).
- **Monotonic revision**: the registry's revision is a counter in its database,
  so an answer at or below the revision held (an older replica, a reply that
  crossed a change) is ignored.
- **Cheap when current**: the request carries ``known_revision``; a registry at
  that revision answers ``unchanged`` with the revision only (no providers, no
  sealed keys), so the periodic check costs a few bytes, not a snapshot.
- **Survives a bad reply**: a reply that cannot be decoded or is not signed by
  the registry is dropped by :meth:`Bus.request`; a snapshot the service cannot
  apply (its ``apply`` raised) is logged and retried with a short backoff, and
  the revision is not advanced, so the next attempt applies it again. No error
  ends the refresh loop; only :meth:`stop` does.
- Until the first snapshot is applied, the loop retries quickly (0.2 s
  doubling to 5 s) instead of waiting a full interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from .aio import stop_task, wait_event
from .bus import Bus
from .errors import AigwError, BusError
from .schemas import ProvidersChanged, RegistrySnapshot, SnapshotRequest

log = logging.getLogger(__name__)

# (previous applied snapshot or None, new snapshot); raising leaves the previous one in place
Apply = Callable[[RegistrySnapshot | None, RegistrySnapshot], Awaitable[None]]

RETRY_MIN = 0.2
RETRY_MAX = 5.0


class SnapshotFollower:
    """Keeps ``snapshot`` equal to the registry's latest, applying each new one through ``apply``."""

    def __init__(self, bus: Bus, apply: Apply, *, interval: float = 30.0, timeout: float = 2.0,
                 name: str = "registry-snapshot") -> None:
        self.bus = bus
        self.apply = apply
        self.interval = interval
        self.timeout = timeout
        self.name = name
        self.snapshot: RegistrySnapshot | None = None  # the last snapshot applied successfully
        self.last_error: str | None = None  # why the last refresh failed (None: it succeeded)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def revision(self) -> int | None:
        return None if self.snapshot is None else self.snapshot.revision

    async def start(self) -> None:
        await self.bus.subscribe(self.bus.subjects.providers_changed, ProvidersChanged, self._on_changed)
        self.bus.on_connect(self._kick)
        self.bus.on_reconnect(self._kick)
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task, name=self.name)
            self._task = None

    def wake(self) -> None:
        """Refresh soon (on the loop), without waiting for the answer."""
        self._wake.set()

    async def _kick(self) -> None:
        self._wake.set()

    async def _on_changed(self, msg: ProvidersChanged, _m: Msg) -> None:
        if msg.revision != self.revision:
            self._wake.set()

    async def refresh(self) -> bool:
        """Ask for the snapshot and apply it if newer; False when the registry did not answer or it could
        not be applied (what was held before stays)."""
        async with self._lock:
            try:
                snap = await self.bus.request(
                    self.bus.subjects.registry_snapshot, SnapshotRequest(known_revision=self.revision),
                    RegistrySnapshot, timeout=self.timeout,
                )
            except BusError as e:
                self.last_error = str(e)
                log.warning("registry snapshot unavailable; keeping what we have",
                            extra={"follower": self.name, "error": str(e), "revision": self.revision})
                return False
            old = self.snapshot
            if snap.unchanged:  # the registry is at the revision we asked with: nothing to apply
                if old is not None and snap.revision == old.revision:
                    self.last_error = None
                    return True
                # not an answer to what we asked (we hold no snapshot, or another revision): ask again in full
                self.last_error = f"registry said revision {snap.revision} is unchanged; we hold {self.revision}"
                log.warning("unexpected unchanged snapshot; asking again",
                            extra={"follower": self.name, "revision": snap.revision, "held": self.revision})
                return False
            if old is not None and snap.revision <= old.revision:
                self.last_error = None
                return True  # nothing new (or an answer older than what we hold)
            try:
                await self.apply(old, snap)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure to apply: keep the old snapshot, retry on the loop
                self.last_error = f"cannot apply snapshot {snap.revision}: {e}"
                if isinstance(e, AigwError) and e.retryable:
                    log.warning("applying the registry snapshot failed; will retry",
                                extra={"follower": self.name, "revision": snap.revision, "error": str(e)})
                else:
                    log.exception("applying the registry snapshot failed; will retry",
                                  extra={"follower": self.name, "revision": snap.revision})
                return False
            self.snapshot = snap
            self.last_error = None
            return True

    async def _run(self) -> None:
        delay = RETRY_MIN
        while True:
            self._wake.clear()
            ok = self.bus.connected and await self.refresh()
            if ok:
                delay = RETRY_MIN
                await wait_event(self._wake, self.interval)
            else:
                # not yet answered, or not applied: try again soon (a connect or change event wakes us sooner)
                await wait_event(self._wake, delay)
                delay = min(delay * 2, RETRY_MAX)
