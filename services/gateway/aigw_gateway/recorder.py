"""Usage events to the ``AIGW_USAGE`` stream, off the request path, acknowledged, never lost.

The proxy calls :meth:`Recorder.emit_group`, which only encodes and enqueues. A
background task publishes queued events in batches as plain NATS messages —
the requests of one batch joined into as few ``usage.record`` messages as
``max_payload`` allows — whose reply subject is a private inbox, one token per
batch: JetStream's acknowledgement of its last message lands there and clears
the batch from ``pending``. That costs one write per batch and one callback
per ack, instead of a request/response round trip per event. Events not acknowledged within ``ack_timeout`` are
published again (the ``Nats-Msg-Id`` dedup makes that safe); while NATS is
unreachable they go to the on-disk spool, which is replayed when it returns.
On shutdown, unacknowledged and queued events are spooled before the bus closes.

Recording never stops (docs/security.md, "Recording"): every event is sized in
:meth:`Recorder.emit_group` — prompts and tool arguments cut to ``AIGW_RECORD_PROMPT_BYTES``
(or left out with ``AIGW_RECORD_PROMPTS=false``), then the whole event to the
server's ``max_payload`` — each cut on a UTF-8 boundary and flagged
``truncated``. Any publish failure is logged (rate-limited), counted in
``aigw_gateway_usage_publish_failures_total`` and spooled; the background tasks
are supervised and restarted if anything escapes them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from aigw_common import tracing
from aigw_common.aio import stop_task, wait_event
from aigw_common.bus import Bus, NoStream, encode
from aigw_common.errors import AigwError, BusError, PayloadTooLarge
from aigw_common.metrics import CollectorRegistry, Counter, new_registry
from aigw_common.schemas import (
    InterceptionEnded,
    InterceptionStarted,
    PromptRecorded,
    TokenUsage,
    ToolUsage,
    UsageEvent,
)
from aigw_common.usage_wire import events_fragment, record_payload, record_size, usage_events

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

HEADER_ROOM = 4096  # of max_payload, kept for the headers (dedup id, trace context, signatures)


@dataclass(frozen=True, slots=True)
class RecordPolicy:
    """What of a request's text is recorded (``AIGW_RECORD_PROMPTS``, ``AIGW_RECORD_PROMPT_BYTES``)."""

    prompts: bool = True
    prompt_bytes: int = 65536


def cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits ``max_bytes`` (never half a character)."""
    if len(text) * 4 <= max_bytes:  # fits whatever the characters (cheap test for the usual case)
        return text
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return text
    return raw[:max(0, max_bytes)].decode("utf-8", "ignore")


def fit_event(ev: UsageEvent, data: bytes, limit: int) -> tuple[UsageEvent, bytes] | None:
    """Cut the longest text fields of ``ev`` until its encoding fits ``limit`` bytes; None when it cannot.

    Removing k bytes of UTF-8 from a string removes at least k bytes of its JSON (escapes only add), so each
    round either fits or empties one field; the loop ends after at most one round per text field.
    """
    while len(data) > limit:
        texts = [(len(v), f) for f in ev.__struct_fields__ if isinstance(v := getattr(ev, f), str) and v]
        if not texts:
            return None
        _, name = max(texts)
        value: str = getattr(ev, name)
        over = len(data) - limit
        keep = len(value.encode("utf-8", "surrogatepass")) - over - 16
        ev = msgspec.structs.replace(ev, **{name: cut_utf8(value, keep) if keep > 0 else ""}, truncated=True)
        data = encode(ev)
    return ev, data


@dataclass(slots=True)
class _Pending:
    items: list[_Item]
    queued: int  # the queued items (requests' records, single events) these messages carry: max_pending counts them
    sent_at: float
    attempts: int
    refused: bool = False  # answered, but not with a PubAck (no responders, a JetStream error): no ack will come


class Recorder:
    def __init__(self, bus: Bus, spool: Spool, *, queue_size: int = 100_000, ack_timeout: float = 3.0,
                 max_attempts: int = 3, max_pending: int = 20_000, coalesce: float = 0.005, linger: float = 1.0,
                 policy: RecordPolicy | None = None, registry: CollectorRegistry | None = None) -> None:
        self.bus = bus
        self.policy = policy or RecordPolicy()
        r = registry if registry is not None else new_registry()
        self.m_failures = Counter("aigw_gateway_usage_publish_failures_total",
                                  "Usage publishes that failed (the events were spooled)", ["reason"], registry=r)
        self.m_truncated = Counter("aigw_gateway_usage_truncated_total", "Usage events recorded with text cut",
                                   ["cause"], registry=r)
        self.m_unsendable = Counter("aigw_gateway_usage_unsendable_total",
                                    "Usage events that could not be made to fit max_payload (dropped)", registry=r)
        self.m_restarts = Counter("aigw_gateway_usage_task_restarts_total",
                                  "Usage recorder tasks restarted after an unexpected error", ["task"], registry=r)
        self._last_log: dict[str, float] = {}
        self.coalesce = coalesce
        self.linger = linger
        self._flush = asyncio.Event()  # set by stop(): a batch waiting for company goes at once
        self._holding = False  # the publisher holds items taken from the queue and not yet sent
        self.spool = spool
        self.ack_timeout = ack_timeout
        self.max_attempts = max_attempts
        self.max_pending = max_pending
        self.published = 0  # acknowledged by JetStream
        self.spooled = 0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self._pending: dict[str, _Pending] = {}  # reply token → the group it acknowledges
        self._pending_events = 0
        self._inbox = f"{bus.inbox_prefix}.usage.{uuid.uuid4().hex}"  # under the service inbox NATS lets it read
        self._tokens = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._replay_wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._limit_of = (-1, 0)  # (max_payload, payload_limit of it)

    def emit(self, event: UsageEvent) -> None:
        """Size ``event`` (policy, then max_payload) and queue it; never raises, never waits."""
        self.emit_group([event])

    def emit_group(self, events: list[UsageEvent]) -> None:
        """Queue the events of one request for a :class:`UsageRecord` message when together they fit
        ``max_payload``; else one by one. The publisher joins the records of requests queued together into
        one message (one publish, one stream entry, one delivery to the budget) as far as they fit."""
        kept = [e for ev in events if (e := self._by_policy(ev)) is not None]
        if not kept:
            return
        limit = self.payload_limit()
        if len(kept) > 1:
            record_id = "rec." + kept[0].event_id
            frag = events_fragment(kept)  # one encoder call for the whole request
            if record_size(record_id, len(frag), 1) <= limit:
                self._enqueue("", record_id, frag)
                return
        sized = [s for ev in kept if (s := self._fit(ev, limit)) is not None]
        if len(sized) > 1:
            record_id = "rec." + sized[0][0].event_id
            if record_size(record_id, sum(len(d) for _, d in sized), len(sized)) <= limit:
                self._enqueue("", record_id, b",".join(data for _, data in sized))
                return
        for ev, data in sized:
            self._enqueue(self.bus.subjects.usage(_KIND[type(ev)]), ev.event_id, data)

    def _by_policy(self, event: UsageEvent) -> UsageEvent | None:
        """``event`` with its prompt or tool arguments cut to the policy; None when it is not recorded."""
        pol = self.policy
        if isinstance(event, PromptRecorded):
            if not pol.prompts:
                return None
            if len(event.prompt) * 4 > pol.prompt_bytes and (cut := cut_utf8(event.prompt, pol.prompt_bytes)) != event.prompt:
                event = msgspec.structs.replace(event, prompt=cut, truncated=True)
                self.m_truncated.labels("prompt_bytes").inc()
        elif isinstance(event, ToolUsage) and event.arguments:
            if not pol.prompts:
                event = msgspec.structs.replace(event, arguments="")
            elif len(event.arguments) * 4 > pol.prompt_bytes and \
                    (cut := cut_utf8(event.arguments, pol.prompt_bytes)) != event.arguments:
                event = msgspec.structs.replace(event, arguments=cut, truncated=True)
                self.m_truncated.labels("prompt_bytes").inc()
        return event

    def _fit(self, event: UsageEvent, limit: int) -> tuple[UsageEvent, bytes] | None:
        """``event`` and its encoding, cut to ``limit`` bytes; None when it cannot be made to fit."""
        data = encode(event)
        if len(data) > limit:
            fitted = fit_event(event, data, limit)
            if fitted is None:
                self.m_unsendable.inc()
                log.error("usage event cannot fit max_payload; dropped",
                          extra={"event_id": event.event_id, "kind": _KIND[type(event)], "bytes": len(data)})
                return None
            event, data = fitted
            self.m_truncated.labels("max_payload").inc()
        return event, data

    def _enqueue(self, subject: str, msg_id: str, data: bytes) -> None:
        """Queue one message; ``subject`` "" marks a request's events (:func:`events_fragment`) that the
        publisher puts into a record, with ``msg_id`` that record's id when it is the first in it."""
        # the trace context of the request, captured now: the publisher task runs outside it
        trace = (dict(tracing.inject({})) or None) if tracing.enabled() else None  # off: no propagator run
        item = (subject, msg_id, data, trace)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._failed("queue_full", "usage queue full")
            self._to_spool(*item)

    def payload_limit(self) -> int:
        """The largest event body that goes out with its headers under the server's ``max_payload``."""
        mp = self.bus.max_payload
        if mp != self._limit_of[0]:  # once per server INFO value, not per event
            self._limit_of = (mp, max(mp - HEADER_ROOM, mp // 2))
        return self._limit_of[1]

    def _failed(self, reason: str, error: object) -> None:
        """Count a publish failure; log it at most every 5 s per reason (an outage must not flood the log)."""
        self.m_failures.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e9) >= 5.0:
            self._last_log[reason] = now
            log.warning("usage publish failed; events spooled", extra={"reason": reason, "error": str(error)})

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
            asyncio.create_task(self._supervise("publisher", self._publish_loop), name="usage-publisher"),
            asyncio.create_task(self._supervise("ack-sweeper", self._sweep_loop), name="usage-ack-sweeper"),
            asyncio.create_task(self._supervise("spool-replay", self._replay_loop), name="usage-spool-replay"),
        ]
        if self.spool.pending():
            self._replay_wake.set()

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` for as long as the recorder runs: whatever escapes it is logged, counted, and the loop
        restarts (with a growing pause, so a persistent fault cannot spin)."""
        pause = 0.1
        while True:
            try:
                await loop()
                raise RuntimeError("loop returned")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("usage recorder task failed; restarting", extra={"task": name})
                self.m_restarts.labels(name).inc()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _on_connect(self) -> None:
        await self._ensure_stream()
        self._replay_wake.set()

    async def _ensure_stream(self) -> bool:
        try:
            await self.bus.ensure_usage_stream()
        except Exception as e:  # nats-py raises its own hierarchy here; we retry on the next failure
            log.warning("could not ensure the usage stream", extra={"error": str(e)})
            return False
        return True

    async def _on_ack(self, data: bytes, m: object) -> None:
        token = getattr(m, "subject", "").rpartition(".")[2]
        # a PubAck carries the stream sequence; anything else (no responders, an error) waits for the sweeper,
        # marked refused so that stop() does not wait for an ack that will not come
        if b'"seq"' in data:
            if (p := self._take(token)) is not None:
                self.published += len(p.items)
        elif (p := self._pending.get(token)) is not None:
            p.refused = True

    async def _publish_loop(self) -> None:
        """Batches: one publisher turn's items go as few messages, with one ack per message.

        Under load (an event within ``coalesce`` of the last batch) events gather until ``coalesce`` after it.
        On a quieter gateway the first event waits ``linger`` (``AIGW_USAGE_LINGER``) for company, so a request
        every 50 ms costs the gateway, NATS and the budget one message, one ack and one transaction per ~20
        requests, not per request: that batch's fixed cost, not the events, is most of what recording costs at
        such rates. Usage is then recorded up to ``linger`` later; admission reads in-memory leases, never the
        records.
        ``stop`` cuts the wait short, so a draining gateway publishes what it holds.
        """
        loop = asyncio.get_running_loop()
        last = -self.linger
        while True:
            batch = [await self._queue.get()]
            self._holding = True
            try:
                now = loop.time()
                wait = last + self.coalesce - now if now - last < self.coalesce else self.linger
                if wait > 0 and not self._flush.is_set():
                    await wait_event(self._flush, wait)
                while not self._queue.empty() and len(batch) < 512:
                    batch.append(self._queue.get_nowait())
                last = loop.time()
                await self._send_batch(batch)
            except BaseException:  # cancelled, or a bug (the supervisor restarts the loop): never lose the batch
                for it in batch:
                    self._to_spool(*it)
                raise
            finally:
                self._holding = False

    async def _send_batch(self, batch: list[_Item]) -> None:
        if not self.bus.connected or self.spool.pending():
            # while a spool exists new events join it, so the replay keeps their order
            if not self.bus.connected:
                self._failed("disconnected", "NATS is disconnected")
            for it in batch:
                self._to_spool(*it)
            return
        if self._pending_events >= self.max_pending:  # JetStream is slow to ack: wait for room
            self._room.clear()
            await wait_event(self._room, self.ack_timeout)
        await self._send(self._joined(batch), 1, len(batch))

    def _joined(self, batch: list[_Item]) -> list[_Item]:
        """``batch`` as messages: consecutive requests' events joined into records as far as ``max_payload``
        allows, in queue order. A record's id is its first request's, so a retry or a replay of it (the
        spool keeps messages as sent) is dropped by ``Nats-Msg-Id``. A request with trace context keeps a
        record of its own, so the consumer continues its trace."""
        out: list[_Item] = []
        limit = self.payload_limit()
        subject = self.bus.subjects.usage("record")
        parts: list[bytes] = []
        first, size = "", 0
        for it in batch:
            subj, msg_id, data, trace = it
            if subj or trace is not None:
                if parts:
                    out.append((subject, first, record_payload(first, parts), None))
                    parts = []
                out.append(it if subj else (subject, msg_id, record_payload(msg_id, [data]), trace))
                continue
            if parts and size + 1 + len(data) > limit:  # the part and the comma before it
                out.append((subject, first, record_payload(first, parts), None))
                parts = []
            if not parts:  # the record around its parts; the first part has no comma before it
                first, size = msg_id, record_size(msg_id, 0, 1) - 1
            parts.append(data)
            size += 1 + len(data)
        if parts:
            out.append((subject, first, record_payload(first, parts), None))
        return out

    async def _send(self, items: list[_Item], attempts: int, queued: int) -> None:
        """Publish ``items`` in order; only the last asks for an ack.

        One connection delivers in order and the stream stores in order, so the PubAck of the last message
        means the whole group is stored (the usage stream has no discard-new limit that could refuse one in
        the middle). No ack in time → the whole group goes again; ``Nats-Msg-Id`` drops what was stored.
        """
        token = str(next(self._tokens))
        self._pending[token] = _Pending(items, queued, time.monotonic(), attempts)
        self._pending_events += queued
        last = len(items) - 1
        try:
            for i, (subject, msg_id, data, trace) in enumerate(items):
                headers = {"Nats-Msg-Id": msg_id, **trace} if trace else {"Nats-Msg-Id": msg_id}
                await self.bus.publish_raw(subject, data, reply=f"{self._inbox}.{token}" if i == last else "",
                                           headers=headers)
        except Exception as e:  # BusError, or anything nats-py raises that we did not map: never lose the group
            self._failed("too_large" if isinstance(e, PayloadTooLarge) else
                         "bus" if isinstance(e, BusError) else "error", e)
            p = self._take(token)
            if p is not None:
                for it in p.items:
                    self._to_spool(*it)

    def _take(self, token: str) -> _Pending | None:
        p = self._pending.pop(token, None)
        if p is not None:
            self._pending_events -= p.queued
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
                await self._send(p.items, p.attempts + 1, p.queued)
            else:
                self._failed("no_ack", f"no acknowledgement after {p.attempts} attempts")
                for it in p.items:
                    self._to_spool(*it)

    def _to_spool(self, subject: str, msg_id: str, data: bytes, _trace: dict[str, str] | None = None) -> None:
        """Spooled events keep their dedup id; their trace context is not kept (replays start no trace)."""
        if not subject:  # a request's events not yet joined: a record of their own
            subject, data = self.bus.subjects.usage("record"), record_payload(msg_id, [data])
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
                try:
                    replayed = await self._replay_once()
                except Exception:
                    # a bug or an error no one foresaw must not end the replay: the spool would wait
                    # for a restart with events the budget never sees
                    log.exception("usage spool replay failed; retrying")
                    replayed = False
                if replayed:
                    log.info("usage spool replayed")
                else:
                    await asyncio.sleep(1.0)

    async def _replay_once(self) -> bool:
        """Replay closed segments with acked publishes, deleting each once all of it is stored.

        A missing stream is created again; an event no server limit will ever accept is cut to fit (or, when
        it cannot be, dropped and counted) so one bad record cannot hold the spool back forever.
        """
        for seg in self.spool.segments():
            try:
                for rec in self.spool.read(seg):
                    await self._replay_record(rec.subject, rec.msg_id, bytes(rec.data))
            except NoStream as e:
                self._failed("no_stream", e)
                await self._ensure_stream()
                return False
            except BusError as e:
                self._failed("bus", e)
                log.warning("spool replay interrupted", extra={"error": str(e)})
                return False
            self.spool.done(seg)
        return True

    async def _replay_record(self, subject: str, msg_id: str, data: bytes) -> None:
        """Publish one spooled event; one refused for good (too large for the server or the stream) is cut to
        half its size and tried again, a few times, then dropped and counted."""
        ev: UsageEvent | None = None
        for _ in range(4):
            try:
                await self.bus.js_publish(subject, None, msg_id=msg_id, data=data, timeout=5.0)
            except BusError as e:
                if e.retryable:
                    raise
                error = e
            else:
                self.published += 1
                return
            try:
                events = usage_events(data)
            except AigwError:
                break  # not usage at all: nothing to cut
            if len(events) > 1:  # a record the server now refuses: its events go one by one
                for part in events:
                    await self._replay_record(self.bus.subjects.usage(_KIND[type(part)]), part.event_id,
                                              encode(part))
                return
            ev = ev or events[0]
            fitted = fit_event(ev, data, min(self.payload_limit(), len(data) // 2))
            if fitted is None:
                break
            ev, data = fitted
            self.m_truncated.labels("max_payload").inc()
        self.m_unsendable.inc()
        log.error("spooled usage event refused for good; dropped", extra={"event_id": msg_id, "error": str(error)})

    async def stop(self, timeout: float = 5.0) -> None:
        """Publish what is queued and wait for its acks (up to ``timeout``); spool whatever is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._flush.set()
        # a bounded drain at shutdown: acks arrive on the subscription's task; a publish already refused will
        # not be acked (it is spooled below, not waited for until the deadline)
        while ((not self._queue.empty() or self._holding  # noqa: ASYNC110
                or any(not p.refused for p in self._pending.values()))
               and loop.time() < deadline and self.bus.connected):
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
