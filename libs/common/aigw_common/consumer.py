"""One JetStream pull consumer: the transport and settlement rules every durable in aigw shares.

A service gives it a stream, a durable name, a decoder and a handler; it fetches,
decodes, calls the handler and settles each message by what happened:

- handled → what the handler said: ``ack`` (after its effect is durable: a crash in
  between redelivers, and consumers are idempotent on the event id) or ``term``
  (refused data: retrying cannot help, the handler logged why);
- undecodable → logged and terminated: poison is never retried;
- a breaking message version this code does not read
  (:class:`~aigw_common.errors.UnsupportedVersion`) → nak with ``bug_delay``: an
  upgraded replica may take it, and it is never dropped;
- ``AigwError`` retryable (Postgres or NATS unreachable) → nak with a growing
  delay, and fetching pauses for that delay so an outage is not a busy loop;
- anything else — a bug, an error no one foresaw, a non-retryable error raised
  for a whole batch — → logged with its traceback, nak with ``bug_delay``: the
  message waits for a fix or a healthier replica, and the consumer goes on with
  the next ones. ``max_deliver`` is unlimited: nothing is dropped silently.

NATS trouble (fetch, subscribe, a lost connection, a stream or durable that is
gone — noticed by a consumer-info call after ``idle_check`` seconds without a
message, since a fetch from a deleted consumer only times out) never ends the
consumer: it re-subscribes with a short backoff (ensuring the stream again) and
after every reconnect. Only cancellation ends :meth:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter

from . import tracing
from .aio import stop_task
from .bus import Bus
from .errors import AigwError, DecodeError, UnsupportedVersion

log = logging.getLogger(__name__)

T = TypeVar("T")

# what NATS or the socket under it may raise at any step; asyncio's TimeoutError is an OSError too
NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, nats.js.errors.Error, OSError)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How to settle one message, and the ``outcome`` label it is counted under."""

    action: Literal["ack", "term", "nak"]
    label: str
    delay: float = 0.0  # nak only


def ack(label: str) -> Outcome:
    return Outcome("ack", label)


def term(label: str) -> Outcome:
    return Outcome("term", label)


# a batch of (message, decoded value) → one outcome per message, in order
BatchHandler = Callable[[list[tuple[Msg, T]]], Awaitable[Sequence[Outcome]]]
# one decoded value → the ack label (raising settles it by the rules above)
OneHandler = Callable[[T, Msg], Awaitable[str]]


class PullConsumer(Generic[T]):
    """A durable pull consumer on ``stream`` (``subject``) that calls ``handler`` per batch or per message.

    Give exactly one of ``batch_handler`` (one call per fetched batch, e.g. one database transaction) and
    ``handler`` (one call per message, in order). ``outcomes`` counts settled messages by label.
    """

    def __init__(
        self, bus: Bus, *, stream: str, subject: str, durable: str, decode: Callable[[bytes], T],
        outcomes: Counter, ensure_stream: Callable[[], Awaitable[None]],
        handler: OneHandler[T] | None = None, batch_handler: BatchHandler[T] | None = None,
        batch: int = 64, linger: float = 0.0, ack_wait: float = 30.0, max_ack_pending: int = 1000,
        min_delay: float = 1.0, max_delay: float = 10.0, bug_delay: float = 30.0,
        resubscribe_max: float = 1.0, idle_check: float = 10.0, name: str = "",
        logger: logging.Logger | None = None,
    ) -> None:
        if (handler is None) == (batch_handler is None):
            raise TypeError("PullConsumer needs exactly one of handler and batch_handler")
        self.bus = bus
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self.decode = decode
        self.outcomes = outcomes
        self.ensure_stream = ensure_stream
        self.handler = handler
        self.batch_handler = batch_handler
        self.batch = batch
        self.linger = linger  # a short batch waits this long for more (fewer, larger handler calls)
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.bug_delay = bug_delay
        self.resubscribe_max = resubscribe_max
        # while nothing arrives, check this often that the consumer still exists: a fetch from a deleted
        # stream or consumer just times out, and would forever
        self.idle_check = idle_check
        self.name = name or durable
        self.log = logger or log  # the owning service's logger: its operators look for its name
        self.ready = asyncio.Event()  # set once subscribed the first time
        self.consuming = False  # subscribed right now
        self._delay = min_delay
        self._pause_until = 0.0
        self._reinit = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.bus.on_reconnect(self._on_reconnect)
        self._task = asyncio.create_task(self.run(), name=f"consumer-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task, name=f"consumer-{self.name}")
            self._task = None

    async def _on_reconnect(self) -> None:
        self._reinit.set()  # a new connection (maybe another node): subscribe afresh

    async def run(self) -> None:
        """Consume until cancelled, re-subscribing after NATS trouble."""
        delay = 0.2
        while True:
            psub = None
            try:
                await self.bus.wait_connected()
                self._reinit.clear()
                psub = await self._subscribe()
                self.consuming = True
                self.ready.set()
                delay = 0.2
                await self._loop(psub)
            except NATS_ERRORS as e:
                self.consuming = False
                self.log.warning("consumer: NATS trouble; re-subscribing", extra={
                    "consumer": self.name, "error": repr(e), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.resubscribe_max)
            finally:
                self.consuming = False
                if psub is not None:
                    # a pull subscription left behind keeps the connection's drain waiting at shutdown
                    with contextlib.suppress(*NATS_ERRORS):
                        await psub.unsubscribe()

    async def _subscribe(self) -> Any:
        await self.ensure_stream()
        cfg = ConsumerConfig(
            durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait, max_deliver=-1, max_ack_pending=self.max_ack_pending,
            filter_subject=self.subject,
        )
        return await self.bus.js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream, config=cfg)

    async def _loop(self, psub: Any) -> None:
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while not self._reinit.is_set():
            wait = self._pause_until - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                msgs = await psub.fetch(self.batch, timeout=1.0)
            except TimeoutError:  # nats-py raises its own TimeoutError or, when its deadline is spent, asyncio's
                if loop.time() - checked >= self.idle_check:
                    # NotFoundError (a NATS error) when the stream or the durable is gone: re-subscribe
                    await self.bus.js.consumer_info(self.stream, self.durable)
                    checked = loop.time()
                continue
            checked = loop.time()
            if len(msgs) < self.batch and self.linger > 0:
                msgs += await self._more(psub, self.batch - len(msgs))
            await self.handle_batch(msgs)

    async def _more(self, psub: Any, n: int) -> list[Msg]:
        """What arrives within ``linger`` of a short batch."""
        await asyncio.sleep(self.linger)
        try:
            return list(await psub.fetch(n, timeout=self.linger))
        except TimeoutError:
            # nats-py's own TimeoutError, or asyncio's when its short deadline is spent: nothing more came.
            # (asyncio's is an OSError, which ``run`` would take for NATS trouble and re-subscribe — leaving the
            # batch in hand unsettled until ack_wait.)
            return []
        except NATS_ERRORS as e:  # the batch in hand is still processed and settled
            self.log.warning("consumer: fetching more failed", extra={"consumer": self.name, "error": repr(e)})
            return []

    # ------------------------------------------------------------ handling

    async def handle_batch(self, msgs: list[Msg]) -> list[str]:
        """Decode, handle and settle a fetched batch; the outcome label of each message (poison first)."""
        items: list[tuple[Msg, T]] = []
        out: list[str] = []
        for m in msgs:
            try:
                items.append((m, self.decode(m.data)))
            except UnsupportedVersion as e:  # logged once per version, counted in aigw_bus_unsupported_messages
                self.bus.auth.newer_version(e, m.subject)
                out.append(await self._settle(m, Outcome("nak", "unsupported_version", self.bug_delay)))
            except DecodeError as e:
                self.log.error("malformed message terminated",
                               extra={"consumer": self.name, "subject": m.subject, "error": str(e)})
                out.append(await self._settle(m, term("malformed")))
        if not items:
            return out
        if self._pause_until > asyncio.get_running_loop().time():
            return out + [await self._settle(m, Outcome("nak", "deferred", self._delay)) for m, _ in items]
        if self.batch_handler is not None:
            outcomes = await self._run_batch(items)
        else:
            outcomes = [await self._run_one(m, v) for m, v in items]
        return out + [await self._settle(m, o) for (m, _), o in zip(items, outcomes, strict=True)]

    async def _run_batch(self, items: list[tuple[Msg, T]]) -> Sequence[Outcome]:
        assert self.batch_handler is not None
        with contextlib.ExitStack() as spans:  # each message continues its producer's trace
            for m, _ in items:
                spans.enter_context(tracing.consumer_span(self.name, m.headers, m.subject))
            try:
                outcomes = await self.batch_handler(items)
            except Exception as e:
                o = self._failed(e, len(items))
                return [o] * len(items)
        self._delay = self.min_delay
        return outcomes

    async def _run_one(self, m: Msg, value: T) -> Outcome:
        assert self.handler is not None
        if self._pause_until > asyncio.get_running_loop().time():
            return Outcome("nak", "deferred", self._delay)  # an earlier message of this batch paused us
        with tracing.consumer_span(self.name, m.headers, m.subject):
            try:
                label = await self.handler(value, m)
            except AigwError as e:
                if e.retryable:
                    return self._failed(e, 1)
                self.log.error("message refused; terminated",
                               extra={"consumer": self.name, "subject": m.subject, "error": e.message})
                return term("refused")
            except Exception as e:
                return self._failed(e, 1)
        self._delay = self.min_delay
        return ack(label)

    def _failed(self, e: Exception, n: int) -> Outcome:
        if isinstance(e, AigwError) and e.retryable:
            delay = self._backoff()
            self.log.warning("consumer: handling deferred",
                             extra={"consumer": self.name, "messages": n, "error": e.message, "retry_in": delay})
            return Outcome("nak", "retry", delay)
        self.log.error("consumer: handler failed; redelivering later", exc_info=e,
                       extra={"consumer": self.name, "messages": n, "retry_in": self.bug_delay})
        return Outcome("nak", "failed", self.bug_delay)

    def _backoff(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, self.max_delay)
        self._pause_until = asyncio.get_running_loop().time() + delay
        return delay

    async def _settle(self, m: Msg, o: Outcome) -> str:
        self.outcomes.labels(o.label).inc()
        try:
            if o.action == "ack":
                await m.ack()
            elif o.action == "term":
                await m.term()
            else:
                await m.nak(delay=o.delay)
        except NATS_ERRORS as e:
            # not settled: JetStream redelivers after ack_wait, and consumers are idempotent on the event id
            self.log.warning("could not settle message",
                             extra={"consumer": self.name, "outcome": o.label, "error": repr(e)})
        return o.label


__all__ = ["NATS_ERRORS", "Outcome", "PullConsumer", "ack", "term"]
