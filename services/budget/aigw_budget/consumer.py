"""The JetStream side of recording: a durable pull consumer on ``AIGW_USAGE``.

Only transport lives here: fetch a batch, decode it, hand all its events to the
handler in one call (:class:`~aigw_budget.batch.BatchRecorder`: one transaction,
tested on its own without a broker), then ack / nak / term each message by what
happened to its events.

- decoded and applied (or a duplicate) → ack, after the commit: a crash in
  between redelivers, and the event id makes the redelivery a no-op;
- undecodable → logged and terminated: poison is never retried;
- ``AigwError`` not retryable (the database rejects the data) → logged and terminated;
- retryable (Postgres unreachable) → nak with a growing delay, and the
  consumer pauses fetching for that delay so an outage is not a busy loop.
  ``max_deliver`` is unlimited: nothing is dropped however long the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aigw_common import tracing
from aigw_common.bus import Bus
from aigw_common.errors import AigwError, DecodeError
from aigw_common.metrics import CollectorRegistry, Counter
from aigw_common.usage_wire import usage_events

log = logging.getLogger(__name__)

# events in → per event, what applying it gave (an object with ``duplicate``) or the AigwError that refused it
BatchHandler = Callable[[list[Any]], Awaitable[Sequence[object]]]

_NATS_ERRORS = (
    nats.errors.Error,
    nats.js.errors.Error,
    OSError,
)


class UsageConsumer:
    def __init__(
        self, bus: Bus, handler: BatchHandler, registry: CollectorRegistry, *, durable: str = "budget_usage",
        batch: int = 256, ack_wait: float = 30.0, min_delay: float = 1.0, max_delay: float = 10.0,
        linger: float = 0.05,
    ) -> None:
        self.bus = bus
        self.handler = handler
        self.linger = linger  # a short batch waits this long for more (recording latency, not admission's)
        self.durable = bus.subjects.durable(durable)
        self.batch = batch
        self.ack_wait = ack_wait
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._delay = min_delay
        self._pause_until = 0.0
        self.outcomes = Counter(
            "aigw_budget_usage_events_total", "Usage events by outcome", ["outcome"], registry=registry
        )
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Consume until cancelled, re-subscribing after NATS trouble."""
        while True:
            psub = None
            try:
                await self.bus.wait_connected()
                psub = await self._subscribe()
                self.ready.set()
                await self._loop(psub)
            except _NATS_ERRORS as e:
                log.warning("usage consumer: NATS trouble; re-subscribing", extra={"error": repr(e)})
                await asyncio.sleep(1.0)
            finally:
                if psub is not None:
                    # a pull subscription left behind keeps the connection's drain waiting at shutdown
                    with contextlib.suppress(*_NATS_ERRORS):
                        await psub.unsubscribe()

    async def _subscribe(self) -> Any:
        s = self.bus.subjects
        await self.bus.ensure_usage_stream()
        cfg = ConsumerConfig(
            durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait, max_deliver=-1, max_ack_pending=max(self.batch * 4, 256),
            filter_subject=s.usage_all,
        )
        return await self.bus.js.pull_subscribe(s.usage_all, durable=self.durable, stream=s.usage_stream, config=cfg)

    async def _loop(self, psub: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self._pause_until - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                msgs = await psub.fetch(self.batch, timeout=1.0)
            except TimeoutError:  # nats-py raises its own TimeoutError or, when its deadline is spent, asyncio's
                continue
            if len(msgs) < self.batch and self.linger > 0:
                msgs += await self._more(psub, self.batch - len(msgs))
            await self.handle_batch(msgs)

    async def _more(self, psub: Any, n: int) -> list[Msg]:
        """What arrives within ``linger`` of a short batch: at a low rate a batch would otherwise be one
        request's record, and a transaction per request is most of what recording costs Postgres."""
        await asyncio.sleep(self.linger)
        try:
            return list(await psub.fetch(n, timeout=self.linger))
        except TimeoutError:
            # nats-py's own TimeoutError, or asyncio's when its short deadline is spent: nothing more came.
            # (asyncio's is an OSError, which ``run`` would take for NATS trouble and re-subscribe — leaving the
            # batch in hand unsettled until ack_wait.)
            return []
        except _NATS_ERRORS as e:  # the batch in hand is still processed and settled
            log.warning("usage consumer: fetching more failed", extra={"error": repr(e)})
            return []

    async def handle_batch(self, msgs: list[Msg]) -> list[str]:
        """Process a fetched batch with one call of the batch handler, then settle each message by its outcome."""
        per_msg: list[tuple[Msg, list[Any]]] = []
        out: list[str] = []
        for m in msgs:
            try:
                per_msg.append((m, usage_events(m.data)))
            except DecodeError as e:
                log.error("malformed usage message terminated", extra={"subject": m.subject, "error": str(e)})
                out.append(await self._settle(m, "malformed", m.term()))
        if not per_msg:
            return out
        if self._pause_until > asyncio.get_running_loop().time():
            return out + [await self._settle(m, "deferred", m.nak(delay=self._delay)) for m, _ in per_msg]
        events = [ev for _, evs in per_msg for ev in evs]
        with contextlib.ExitStack() as spans:  # each message continues its gateway request's trace
            for m, _ in per_msg:
                spans.enter_context(tracing.consumer_span("budget usage", m.headers, m.subject))
            try:
                outcomes = await self.handler(events)
            except AigwError as e:
                if not e.retryable:  # the handler reports refused data per event; this is a bug
                    raise
                delay = self._backoff()
                log.warning("usage batch deferred", extra={"events": len(events), "error": e.message,
                                                           "retry_in": delay})
                return out + [await self._settle(m, "retry", m.nak(delay=delay)) for m, _ in per_msg]
            except Exception:
                log.exception("usage batch handler failed; redelivering later", extra={"events": len(events)})
                return out + [await self._settle(m, "failed", m.nak(delay=self.max_delay * 3)) for m, _ in per_msg]
            self._delay = self.min_delay
            i = 0
            for m, evs in per_msg:
                out.append(await self._settle_applied(m, evs, outcomes[i : i + len(evs)]))
                i += len(evs)
        return out

    async def _settle_applied(self, m: Msg, events: list[Any], results: Sequence[object]) -> str:
        """Ack a message whose events were applied (or were duplicates); term one whose every event was refused.

        An event the database refused for its data is dropped (logged) either way: retrying cannot help.
        """
        for ev, res in zip(events, results, strict=True):
            if isinstance(res, AigwError):
                log.error("usage event rejected", extra={"event_id": ev.event_id, "error": res.message})
        if all(isinstance(r, AigwError) for r in results):
            return await self._settle(m, "rejected", m.term())
        new = any(not isinstance(r, AigwError) and not getattr(r, "duplicate", False) for r in results)
        return await self._settle(m, "recorded" if new else "duplicate", m.ack())

    def _backoff(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, self.max_delay)
        self._pause_until = asyncio.get_running_loop().time() + delay
        return delay

    async def _settle(self, m: Msg, outcome: str, op: Awaitable[None]) -> str:
        self.outcomes.labels(outcome).inc()
        try:
            await op
        except _NATS_ERRORS as e:
            # not acked: JetStream redelivers after ack_wait, and the event id makes that harmless
            log.warning("could not settle usage event", extra={"outcome": outcome, "error": repr(e)})
        return outcome
