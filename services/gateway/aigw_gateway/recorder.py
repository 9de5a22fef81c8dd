"""Usage events to the ``AIGW_USAGE`` stream, off the request path.

The proxy calls :meth:`Recorder.emit`, which only encodes and enqueues. A
background task publishes to JetStream (acked, ``Nats-Msg-Id`` = event id,
many in flight at once); whatever cannot be published — NATS down, no ack —
goes to the on-disk spool and is replayed when NATS is back. On shutdown the
queue is flushed (or spooled) before the bus closes.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from aigw_common.bus import Bus, encode
from aigw_common.errors import BusError
from aigw_common.schemas import (
    InterceptionEnded,
    InterceptionStarted,
    PromptRecorded,
    TokenUsage,
    ToolUsage,
    UsageEvent,
)

from .spool import Spool

log = logging.getLogger(__name__)

_KIND = {
    InterceptionStarted: "started",
    TokenUsage: "tokens",
    PromptRecorded: "prompt",
    ToolUsage: "tool",
    InterceptionEnded: "ended",
}


class Recorder:
    def __init__(self, bus: Bus, spool: Spool, *, max_in_flight: int = 128, queue_size: int = 100_000) -> None:
        self.bus = bus
        self.spool = spool
        self.max_in_flight = max_in_flight
        self.published = 0
        self.spooled = 0
        self._queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue(queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._replay_wake = asyncio.Event()
        self._stream_ready = False
        self._sem = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()

    def emit(self, event: UsageEvent) -> None:
        item = (self.bus.subjects.usage(_KIND[type(event)]), event.event_id, encode(event))
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._to_spool(*item)

    async def start(self) -> None:
        self.bus.on_connect(self._on_connect)
        self.bus.on_reconnect(self._on_connect)
        if self.bus.connected:
            await self._on_connect()
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="usage-publisher"),
            asyncio.create_task(self._replay_loop(), name="usage-spool-replay"),
        ]
        if self.spool.pending():
            self._replay_wake.set()

    async def _on_connect(self) -> None:
        try:
            s = self.bus.subjects
            await self.bus.ensure_stream(s.usage_stream, [s.usage_all], duplicate_window=600.0)
            self._stream_ready = True
        except Exception as e:  # noqa: BLE001 - any failure here means "retry on the next connect"; logged
            log.warning("could not ensure the usage stream", extra={"error": str(e)})
        self._replay_wake.set()

    async def _publish_loop(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._sem.acquire()
            except asyncio.CancelledError:
                self._to_spool(*item)
                raise
            t = asyncio.create_task(self._publish_one(*item))
            self._in_flight.add(t)
            t.add_done_callback(self._in_flight.discard)

    async def _publish_one(self, subject: str, msg_id: str, data: bytes) -> None:
        try:
            if not self.bus.connected or self.spool.pending():
                # keep order roughly intact: while a spool exists, new events join it
                raise BusError("spooling")
            await self.bus.js_publish(subject, None, msg_id=msg_id, data=data, timeout=5.0)  # type: ignore[arg-type]
            self.published += 1
        except BusError:
            self._to_spool(subject, msg_id, data)
        finally:
            self._sem.release()

    def _to_spool(self, subject: str, msg_id: str, data: bytes) -> None:
        if self.spool.append(subject, msg_id, data):
            self.spooled += 1
        self._replay_wake.set()

    async def _replay_loop(self) -> None:
        while True:
            await self._replay_wake.wait()
            self._replay_wake.clear()
            if not self.spool.pending():
                continue
            while self.spool.pending():
                if not self.bus.connected:
                    await asyncio.sleep(1.0)
                    continue
                if await self._replay_once():
                    log.info("usage spool replayed")
                else:
                    await asyncio.sleep(1.0)

    async def _replay_once(self) -> bool:
        for seg in self.spool.segments():
            try:
                for rec in self.spool.read(seg):
                    await self.bus.js_publish(rec.subject, None, msg_id=rec.msg_id, data=bytes(rec.data), timeout=5.0)  # type: ignore[arg-type]
                    self.published += 1
            except BusError as e:
                log.warning("spool replay interrupted", extra={"error": str(e)})
                return False
            self.spool.done(seg)
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        """Publish what is queued (or spool it), then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._queue.empty() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=max(0.1, deadline - loop.time()))
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with suppress(asyncio.CancelledError):
                await t
        while not self._queue.empty():
            self._to_spool(*self._queue.get_nowait())
        self.spool.close()
