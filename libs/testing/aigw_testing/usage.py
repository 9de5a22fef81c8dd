"""Collect the usage events a gateway publishes, by listening on the bus like the budget service would."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from nats.aio.msg import Msg

from aigw_common.bus import Bus
from aigw_common.schemas import (
    AnyUsageEvent,
    InterceptionEnded,
    InterceptionStarted,
    TokenUsage,
    ToolUsage,
)
from aigw_common.usage_wire import usage_events


class UsageCollector:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.events: list[AnyUsageEvent] = []
        self._changed = asyncio.Event()

    async def start(self) -> UsageCollector:
        assert self.bus.nc is not None

        async def cb(m: Msg) -> None:
            self.events.extend(usage_events(m.data))
            self._changed.set()

        await self.bus.nc.subscribe(self.bus.subjects.usage_all, cb=cb)
        await self.bus.nc.flush()
        return self

    def by_interception(self) -> dict[str, list[AnyUsageEvent]]:
        out: dict[str, list[AnyUsageEvent]] = defaultdict(list)
        for e in self.events:
            out[e.interception_id].append(e)
        return dict(out)

    def ended(self) -> list[InterceptionEnded]:
        return [e for e in self.events if isinstance(e, InterceptionEnded)]

    def started(self) -> list[InterceptionStarted]:
        return [e for e in self.events if isinstance(e, InterceptionStarted)]

    def tokens(self) -> list[TokenUsage]:
        return [e for e in self.events if isinstance(e, TokenUsage)]

    def tools(self) -> list[ToolUsage]:
        return [e for e in self.events if isinstance(e, ToolUsage)]

    async def wait_ended(self, n: int, timeout: float = 5.0) -> list[InterceptionEnded]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.ended()) < n:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"expected {n} ended interceptions, saw {len(self.ended())}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        return self.ended()
