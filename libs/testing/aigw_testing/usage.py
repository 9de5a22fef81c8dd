"""Collect the usage events a gateway publishes, by listening on the bus like the budget service would.

By default a core subscription on the usage subjects sees every publish (acked by the stream or not). With
``from_stream=True`` the collector instead reads the usage stream itself at each :meth:`sync`: what JetStream
holds is what the budget service consumes, and a reader of the stream misses nothing when the node it is
connected to dies (a core subscription misses what is published while it reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aigw_common.aio import wait_event
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
    def __init__(self, bus: Bus, *, from_stream: bool = False) -> None:
        self.bus = bus
        self.from_stream = from_stream
        self.events: list[AnyUsageEvent] = []
        self._changed = asyncio.Event()
        self._seq = 0  # last stream sequence read (from_stream)

    async def sync(self) -> bool:
        """Read what the usage stream gained since the last call (``from_stream``); False if JetStream could
        not answer right now (a node down, an election), so a polling caller simply tries again."""
        if not self.from_stream:
            return True
        s = self.bus.subjects
        try:
            js = self.bus.jetstream(2.0)
            try:
                last = (await js.stream_info(s.usage_stream)).state.last_seq
            except nats.js.errors.NotFoundError:
                return True  # nothing published yet
            if last <= self._seq:
                return True
            psub = await js.pull_subscribe(s.usage_all, stream=s.usage_stream, config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._seq + 1,
                ack_policy=AckPolicy.NONE, inactive_threshold=30.0, num_replicas=1, mem_storage=True))
            try:
                while self._seq < last:
                    for m in await psub.fetch(512, timeout=2.0):
                        self._seq = max(self._seq, m.metadata.sequence.stream)
                        self.events.extend(usage_events(m.data))
                        self._changed.set()
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await psub.unsubscribe()
        except (nats.errors.Error, OSError, TimeoutError):
            return False
        return True

    async def start(self) -> UsageCollector:
        assert self.bus.nc is not None
        if self.from_stream:
            return self

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
            await wait_event(self._changed, remaining)
        return self.ended()
