"""The gateway's side of fleet-wide key health.

``KeyStateWatcher`` mirrors keypool's key-state bucket into the in-memory key
pools (``KeyPools.apply_state``), so the hot path never asks anyone: it loads
the whole bucket before the gateway reports ready, follows every change, and
re-syncs after a NATS reconnect (keeping the last state while NATS is away).

``KeyReporter`` is fed after every upstream attempt (``observe``: a few dict
operations, no I/O) and publishes per-key counts and the latest rate-limit
budget (read by :mod:`aigw_common.llm.ratelimit`) as a ``KeyReport`` on core NATS about once a second — at once when a
key's remaining budget reaches zero, so keypool can cool it fleet-wide before
the 429s start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from aigw_common.aio import stop_task
from aigw_common.bus import Bus
from aigw_common.errors import BusError
from aigw_common.keystate import KeyStateWatch, effective, is_failure, wait_event
from aigw_common.llm.ratelimit import parse_ratelimit
from aigw_common.schemas import KeyReport, KeyStat, KeyState, KeyStateName, RateLimitInfo

log = logging.getLogger(__name__)


class StateSink(Protocol):
    def apply_state(self, provider_id: str, key_id: str, state: KeyStateName, until: float | None) -> None: ...


class KeyStateWatcher:
    """Keeps ``pools`` in step with the key-state bucket."""

    def __init__(self, bus: Bus, pools: StateSink, *, resync_interval: float = 30.0) -> None:
        self.pools = pools
        self._watch = KeyStateWatch(bus, self._on_change, resync_interval=resync_interval)

    async def start(self, wait: float = 5.0) -> None:
        """Begin watching; wait up to ``wait`` s for the first full load (``ready`` says when it is done)."""
        self._watch.start()
        await wait_event(self._watch.loaded, wait)

    async def stop(self) -> None:
        await self._watch.stop()

    @property
    def ready(self) -> bool:
        return self._watch.loaded.is_set()

    def not_ready(self) -> str | None:
        """A readiness check for ``app[STATE].checks``: not ready while NATS is up and the bucket not yet loaded.

        With NATS down there is nothing to wait for: the gateway serves what it knows (``docs/contract.md``).
        """
        if self.ready or not self._watch.bus.connected:
            return None
        return "key state not loaded from keypool's bucket yet"

    def replay(self) -> None:
        """Apply every known state again, e.g. after the provider set was rebuilt with fresh pools."""
        for state, _rev in list(self._watch.states.values()):
            self._on_change(state.provider_id, state.key_id, state)

    def _on_change(self, provider_id: str, key_id: str, state: KeyState | None) -> None:
        name, until = effective(state)
        self.pools.apply_state(provider_id, key_id, name, until)


# --------------------------------------------------------------------- reporter


@dataclass(slots=True)
class _Acc:
    successes: int = 0
    failures: int = 0
    last_status: int = 0
    ratelimit: RateLimitInfo | None = None


class KeyReporter:
    """Per-key attempt counts and budgets, published as ``KeyReport`` about once a second."""

    MIN_GAP = 0.1  # an urgent flush (budget at zero) comes at most this often

    def __init__(self, bus: Bus, gateway_id: str, *, interval: float = 1.0) -> None:
        self.bus = bus
        self.gateway_id = gateway_id
        self.interval = interval
        self.published = 0
        self._acc: dict[tuple[str, str], _Acc] = {}
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def observe(self, provider_id: str, key_id: str, status: int, headers: Mapping[str, str] | None) -> None:
        """After every upstream attempt: ``status`` 0 when there was no response. No I/O."""
        k = (provider_id, key_id)
        acc = self._acc.get(k)
        if acc is None:
            acc = self._acc[k] = _Acc()
        if is_failure(status):
            acc.failures += 1
        else:
            acc.successes += 1
        acc.last_status = status
        if headers:
            rl = parse_ratelimit(headers, time.time())
            if rl is not None:
                acc.ratelimit = rl
                if rl.remaining_requests == 0 or rl.remaining_tokens == 0:
                    self._urgent.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="key-reporter")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await wait_event(self._urgent, self.interval)
            self._urgent.clear()
            await self.flush()
            await asyncio.sleep(self.MIN_GAP)

    async def flush(self) -> None:
        """Publish what was gathered since the last flush; dropped when NATS is away (stats are best effort)."""
        if not self._acc:
            return
        acc, self._acc = self._acc, {}
        if not self.bus.connected:
            return
        report = KeyReport(gateway_id=self.gateway_id, at=time.time(), keys=[
            KeyStat(provider_id=pid, key_id=kid, successes=a.successes, failures=a.failures,
                    last_status=a.last_status, ratelimit=a.ratelimit)
            for (pid, kid), a in acc.items()])
        try:
            await self.bus.publish(self.bus.subjects.keys_report, report)
        except BusError as e:
            log.warning("key report not published", extra={"error": str(e)})
            return
        self.published += 1
