"""The JetStream side of recording: the durable pull consumer on ``AIGW_USAGE``.

Transport, decoding failures and retries are :class:`aigw_common.consumer.PullConsumer`'s
(see its rules). What is budget's own is the batch: every event of a fetched batch goes
to the handler in one call (:class:`~aigw_budget.batch.BatchRecorder`: one transaction,
tested on its own without a broker), which reports per event what applying it gave, and
each message is then settled by its events:

- applied (or a duplicate) → ack, after the commit: a crash in between redelivers, and
  the event id makes the redelivery a no-op;
- every event of the message refused for its data (``AigwError`` in its place) →
  logged and terminated: retrying cannot help;
- the handler raises a retryable error (Postgres unreachable) → the whole batch naks
  with a growing delay and fetching pauses; anything else it raises is a bug: long nak.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.aio.msg import Msg

from aigw_common.bus import Bus
from aigw_common.consumer import Outcome, PullConsumer, ack, term
from aigw_common.errors import AigwError
from aigw_common.metrics import CollectorRegistry, Counter
from aigw_common.usage_wire import usage_events

log = logging.getLogger(__name__)

# events in → per event, what applying it gave (an object with ``duplicate``) or the AigwError that refused it
BatchHandler = Callable[[list[Any]], Awaitable[Sequence[object]]]


class UsageConsumer(PullConsumer[list[Any]]):
    """``linger``: how long a short batch waits for more. A batch's fixed cost (its transaction and round trips,
    the fetches, the event-loop turns) is most of what recording costs at low rates; 0.25 s makes a batch of
    ~5 requests at 20 requests/s instead of ~2, and delays recording (which admission never waits for) by as
    much."""

    def __init__(
        self, bus: Bus, handler: BatchHandler, registry: CollectorRegistry, *, durable: str = "budget_usage",
        batch: int = 256, ack_wait: float = 30.0, min_delay: float = 1.0, max_delay: float = 10.0,
        linger: float = 0.25,
    ) -> None:
        s = bus.subjects
        super().__init__(
            bus, stream=s.usage_stream, subject=s.usage_all, durable=s.durable(durable), decode=usage_events,
            outcomes=Counter("aigw_budget_usage_events_total", "Usage events by outcome", ["outcome"],
                             registry=registry),
            ensure_stream=bus.ensure_usage_stream, batch_handler=self._record, batch=batch, linger=linger,
            ack_wait=ack_wait, max_ack_pending=max(batch * 4, 256), min_delay=min_delay, max_delay=max_delay,
            bug_delay=max_delay * 3, resubscribe_max=1.0, name="budget usage", logger=log,
        )
        self.record = handler

    async def _record(self, items: list[tuple[Msg, list[Any]]]) -> list[Outcome]:
        events = [ev for _, evs in items for ev in evs]
        results = await self.record(events)
        out: list[Outcome] = []
        i = 0
        for _, evs in items:
            out.append(self._settled(evs, results[i : i + len(evs)]))
            i += len(evs)
        return out

    @staticmethod
    def _settled(events: list[Any], results: Sequence[object]) -> Outcome:
        """Ack a message whose events were applied (or were duplicates); term one whose every event was refused.

        An event the database refused for its data is dropped (logged) either way: retrying cannot help.
        """
        for ev, res in zip(events, results, strict=True):
            if isinstance(res, AigwError):
                log.error("usage event rejected", extra={"event_id": ev.event_id, "error": res.message})
        if all(isinstance(r, AigwError) for r in results):
            return term("rejected")
        new = any(not isinstance(r, AigwError) and not getattr(r, "duplicate", False) for r in results)
        return ack("recorded" if new else "duplicate")
