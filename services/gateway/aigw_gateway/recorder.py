"""Usage events to the ``AIGW_USAGE`` stream, off the request path, acknowledged, never lost.

The proxy calls :meth:`Recorder.emit`, which only encodes and enqueues. A
background task publishes queued events in batches as plain NATS messages
whose reply subject is a private inbox, one token per event: JetStream's
acknowledgement lands there and clears the event from ``pending``. That costs
one write per batch and one callback per ack, instead of a request/response
round trip per event. Events not acknowledged within ``ack_timeout`` are
published again (the ``Nats-Msg-Id`` dedup makes that safe); while NATS is
unreachable they go to the on-disk spool, which is replayed when it returns.
On shutdown, unacknowledged and queued events are spooled before the bus closes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from dataclasses import dataclass

from aigw_common import tracing
from aigw_common.aio import stop_task, wait_event
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


_Item = tuple[str, str, bytes, "dict[str, str] | None"]  # subject, dedup id, payload, trace headers


@dataclass(slots=True)
class _Pending:
    items: list[_Item]
    sent_at: float
    attempts: int


class Recorder:
    def __init__(self, bus: Bus, spool: Spool, *, queue_size: int = 100_000, ack_timeout: float = 3.0,
                 max_attempts: int = 3, max_pending: int = 20_000, coalesce: float = 0.005) -> None:
        self.bus = bus
        self.coalesce = coalesce
        self.spool = spool
        self.ack_timeout = ack_timeout
        self.max_attempts = max_attempts
        self.max_pending = max_pending
        self.published = 0  # acknowledged by JetStream
        self.spooled = 0
        self._queue: asyncio.Queue[tuple[str, str, bytes, dict[str, str] | None]] = asyncio.Queue(queue_size)
        self._pending: dict[str, _Pending] = {}  # reply token → the group it acknowledges
        self._pending_events = 0
        self._inbox = f"_INBOX.aigw-usage.{uuid.uuid4().hex}"
        self._tokens = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._replay_wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def emit(self, event: UsageEvent) -> None:
        # the trace context of the request, captured now: the publisher task runs outside it
        trace = tracing.inject({}) or None
        item = (self.bus.subjects.usage(_KIND[type(event)]), event.event_id, encode(event), trace)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._to_spool(*item)

    @property
    def in_flight(self) -> int:
        return self._pending_events

    async def start(self) -> None:
        await self.bus.subscribe(self._inbox + ".*", bytes, self._on_ack)
        self.bus.on_connect(self._on_connect)
        self.bus.on_reconnect(self._on_connect)
        if self.bus.connected:
            await self._on_connect()
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="usage-publisher"),
            asyncio.create_task(self._sweep_loop(), name="usage-ack-sweeper"),
            asyncio.create_task(self._replay_loop(), name="usage-spool-replay"),
        ]
        if self.spool.pending():
            self._replay_wake.set()

    async def _on_connect(self) -> None:
        try:
            await self.bus.ensure_usage_stream()
        except Exception as e:
            log.warning("could not ensure the usage stream", extra={"error": str(e)})
        self._replay_wake.set()

    async def _on_ack(self, data: bytes, m: object) -> None:
        token = getattr(m, "subject", "").rpartition(".")[2]
        # a PubAck carries the stream sequence; anything else (no responders, an error) waits for the sweeper
        if b'"seq"' in data and (p := self._take(token)) is not None:
            self.published += len(p.items)

    async def _publish_loop(self) -> None:
        while True:
            item = await self._queue.get()
            batch = [item]
            while not self._queue.empty() and len(batch) < 512:
                batch.append(self._queue.get_nowait())
            try:
                await self._send_batch(batch)
                # let events gather for a moment: the NATS client then writes a whole batch in one syscall
                await asyncio.sleep(self.coalesce)
            except asyncio.CancelledError:
                for it in batch:
                    self._to_spool(*it)
                raise

    async def _send_batch(self, batch: list[tuple[str, str, bytes, dict[str, str] | None]]) -> None:
        if not self.bus.connected or self.spool.pending():
            # while a spool exists new events join it, so the replay keeps their order
            for it in batch:
                self._to_spool(*it)
            return
        if self._pending_events >= self.max_pending:  # JetStream is slow to ack: wait for room
            self._room.clear()
            await wait_event(self._room, self.ack_timeout)
        await self._send(batch, 1)

    async def _send(self, items: list[tuple[str, str, bytes, dict[str, str] | None]], attempts: int) -> None:
        """Publish ``items`` in order; only the last asks for an ack.

        One connection delivers in order and the stream stores in order, so the PubAck of the last message
        means the whole group is stored (the usage stream has no discard-new limit that could refuse one in
        the middle). No ack in time → the whole group goes again; ``Nats-Msg-Id`` drops what was stored.
        """
        token = str(next(self._tokens))
        self._pending[token] = _Pending(items, time.monotonic(), attempts)
        self._pending_events += len(items)
        last = len(items) - 1
        try:
            for i, (subject, msg_id, data, trace) in enumerate(items):
                headers = {"Nats-Msg-Id": msg_id, **trace} if trace else {"Nats-Msg-Id": msg_id}
                await self.bus.publish_raw(subject, data, reply=f"{self._inbox}.{token}" if i == last else "",
                                           headers=headers)
        except BusError:
            p = self._take(token)
            if p is not None:
                for it in p.items:
                    self._to_spool(*it)

    def _take(self, token: str) -> _Pending | None:
        p = self._pending.pop(token, None)
        if p is not None:
            self._pending_events -= len(p.items)
            if self._pending_events < self.max_pending:
                self._room.set()
        return p

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.ack_timeout / 2))
            await self._sweep()

    async def _sweep(self) -> None:
        now = time.monotonic()
        late = [t for t, p in self._pending.items() if now - p.sent_at >= self.ack_timeout]
        for token in late:
            p = self._take(token)
            if p is None:
                continue
            if self.bus.connected and p.attempts < self.max_attempts:
                await self._send(p.items, p.attempts + 1)
            else:
                for it in p.items:
                    self._to_spool(*it)

    def _to_spool(self, subject: str, msg_id: str, data: bytes, _trace: dict[str, str] | None = None) -> None:
        """Spooled events keep their dedup id; their trace context is not kept (replays start no trace)."""
        if self.spool.append(subject, msg_id, data):
            self.spooled += 1
        self._replay_wake.set()

    async def _replay_loop(self) -> None:
        while True:
            await self._replay_wake.wait()
            self._replay_wake.clear()
            while self.spool.pending():
                if not self.bus.connected:
                    await asyncio.sleep(1.0)
                    continue
                if await self._replay_once():
                    log.info("usage spool replayed")
                else:
                    await asyncio.sleep(1.0)

    async def _replay_once(self) -> bool:
        """Replay closed segments with acked publishes, deleting each once all of it is stored."""
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
        """Publish what is queued and wait for its acks (up to ``timeout``); spool whatever is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # a bounded drain at shutdown: acks arrive on the subscription's task
        while (not self._queue.empty() or self._pending) and loop.time() < deadline and self.bus.connected:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        for t in self._tasks:
            await stop_task(t)
        for p in list(self._pending.values()):
            for it in p.items:
                self._to_spool(*it)
        self._pending.clear()
        self._pending_events = 0
        while not self._queue.empty():
            self._to_spool(*self._queue.get_nowait())
        self.spool.close()
