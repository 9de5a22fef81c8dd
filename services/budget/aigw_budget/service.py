"""The budget service's bus side: lease and snapshot responders, state and price publishing, retention.

Handlers here only translate between bus messages and the ledger / recorder;
the arithmetic is in :mod:`aigw_budget.ledger`, the recording in
:mod:`aigw_budget.recorder`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg
from nats.aio.msg import Msg

from aigw_common.bus import Bus
from aigw_common.errors import AigwError
from aigw_common.metrics import CollectorRegistry, Counter
from aigw_common.pricing import PriceTable
from aigw_common.schemas import (
    AnyUsageEvent,
    BudgetLeaseReply,
    BudgetLeaseRequest,
    BudgetPrices,
    BudgetReclaim,
    BudgetSnapshot,
    BudgetSnapshotRequest,
    BudgetState,
    LimitLeaseReply,
    LimitLeaseRequest,
    LimitReclaim,
    LimitsSnapshot,
    LimitsSnapshotRequest,
    LimitsState,
    SubjectKey,
)
from aigw_common.settings import Settings

from .batch import BatchRecorder
from .consumer import UsageConsumer
from .errors import DB_ERRORS, classify
from .ledger import Ledger
from .limits import LimitStore
from .names import Directory
from .recorder import Applied, PriceBook, Recorder

log = logging.getLogger(__name__)

LEASE_TTL = 60.0  # a gateway renews its leases well within this
LEASE_GRACE = 600.0  # an expired lease still counts this long: requests admitted before expiry may still run


class BudgetService:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, bus: Bus, registry: CollectorRegistry, *,
                 lease_ttl: float = LEASE_TTL, lease_grace: float = LEASE_GRACE) -> None:
        self.settings = settings
        self.pool = pool
        self.bus = bus
        self.prices = PriceBook()
        self.directory = Directory(bus, ttl=settings.identity_ttl)
        self.ledger = Ledger(pool, self.directory, ttl=lease_ttl, grace=lease_grace)
        self.limits = LimitStore(pool, self.directory)
        self.recorder = Recorder(pool, self.prices)
        self.batches = BatchRecorder(self.recorder)
        self.consumer = UsageConsumer(bus, self.record_batch, registry)
        self.retention_deleted = Counter(
            "aigw_budget_retention_deleted_total", "Interceptions deleted by retention", registry=registry
        )
        self.unpriced = Counter(
            "aigw_budget_unpriced_usage_total", "Token usage recorded at cost 0 for want of a price", registry=registry
        )
        self._dirty: set[SubjectKey] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.prices.load(self.pool)
        await self.directory.start()
        s = self.bus.subjects
        await self.bus.subscribe(s.budget("lease"), BudgetLeaseRequest, self.on_lease, queue="budget")
        await self.bus.subscribe(s.budget_snapshot, BudgetSnapshotRequest, self.on_snapshot, queue="budget")
        await self.bus.subscribe(s.budget("prices"), BudgetPrices, self.on_prices)
        await self.bus.subscribe(s.budget("limits.lease"), LimitLeaseRequest, self.on_limit_lease, queue="budget")
        await self.bus.subscribe(s.budget("limits.snapshot"), LimitsSnapshotRequest, self.on_limits_snapshot,
                                 queue="budget")
        self._tasks = [
            asyncio.create_task(self.consumer.run(), name="budget-usage-consumer"),
            asyncio.create_task(self._publish_loop(), name="budget-state-publisher"),
            asyncio.create_task(self._retention_loop(), name="budget-retention"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=5)
            for t in pending:
                log.warning("background task did not stop in time", extra={"task": t.get_name()})
        self._tasks = []

    # ------------------------------------------------------------ recording

    async def record_batch(self, events: list[AnyUsageEvent]) -> list[Applied | AigwError]:
        """What the usage consumer hands over: a fetched batch, applied in one transaction."""
        res = await self.batches.apply_batch(events)
        if res.unpriced:
            self.unpriced.inc(res.unpriced)
        if res.budgets:
            self.mark_dirty(list(res.budgets))
        return res.outcomes

    def mark_dirty(self, keys: list[SubjectKey]) -> None:
        self._dirty.update(keys)
        self._wake.set()

    # ------------------------------------------------------------ bus responders

    async def on_lease(self, req: BudgetLeaseRequest, _m: Msg | None) -> BudgetLeaseReply:
        grants = []
        try:
            for item in req.items:
                grant, reclaim = await self.ledger.grant(req.gateway_id, item)
                grants.append(grant)
                if reclaim:
                    await self._publish(self.bus.subjects.budget("reclaim"), BudgetReclaim(
                        scope=item.scope, subject_id=item.subject_id, period_start=grant.period_start,
                        requester=req.gateway_id,
                    ))
        except AigwError as e:
            log.warning("lease request failed", extra={"gateway_id": req.gateway_id, "error": e.message})
            return BudgetLeaseReply(grants=grants, error=e.message)
        return BudgetLeaseReply(grants=grants)

    async def on_snapshot(self, _req: BudgetSnapshotRequest, _m: Msg | None) -> BudgetSnapshot:
        try:
            states = await self.ledger.states()
        except AigwError as e:
            log.warning("budget snapshot failed", extra={"error": e.message})
            return BudgetSnapshot(states=[], prices=None, lease_ttl=self.ledger.ttl)
        return BudgetSnapshot(states=states, prices=list(self.prices.table.prices), lease_ttl=self.ledger.ttl)

    async def on_prices(self, msg: BudgetPrices, _m: Msg | None) -> None:
        """Another replica changed prices: use its table (it is the committed one)."""
        self.prices.table = PriceTable(msg.prices)

    # ------------------------------------------------------------ publishing

    async def on_limit_lease(self, req: LimitLeaseRequest, _m: Msg | None) -> LimitLeaseReply:
        grants = []
        try:
            for item in req.items:
                grant, reclaim = await self.limits.grant(req.gateway_id, item)
                grants.append(grant)
                if reclaim:
                    await self._publish(self.bus.subjects.budget("limits.reclaim"), LimitReclaim(
                        scope=item.scope, subject_id=item.subject_id, window=item.window, requester=req.gateway_id))
        except AigwError as e:
            log.warning("limit lease request failed", extra={"gateway_id": req.gateway_id, "error": e.message})
            return LimitLeaseReply(grants=grants, error=e.message)
        return LimitLeaseReply(grants=grants)

    async def on_limits_snapshot(self, _req: LimitsSnapshotRequest, _m: Msg | None) -> LimitsSnapshot:
        try:
            return LimitsSnapshot(states=await self.limits.states())
        except AigwError as e:
            log.warning("limits snapshot failed", extra={"error": e.message})
            return LimitsSnapshot(states=None)

    async def publish_limits(self, keys: list[SubjectKey]) -> None:
        """Tell gateways a subject's limits changed (or are gone); they also heal from the periodic snapshot."""
        try:
            states = await self.limits.states(keys, include_deleted=True)
        except AigwError as e:
            log.warning("limits state unavailable", extra={"error": e.message})
            return
        for st in states:
            await self._publish(self.bus.subjects.budget("limits"), st)

    async def _publish(self, subject: str, msg: BudgetState | BudgetPrices | BudgetReclaim | LimitsState | LimitReclaim) -> None:
        try:
            await self.bus.publish(subject, msg)
        except AigwError as e:  # gateways heal from the periodic snapshot
            log.warning("publish failed", extra={"subject": subject, "error": e.message})

    async def publish_prices(self) -> None:
        await self._publish(self.bus.subjects.budget("prices"), BudgetPrices(prices=list(self.prices.table.prices)))

    async def publish_states(self, keys: list[SubjectKey], *, include_deleted: bool = False) -> None:
        for st in await self.ledger.states(keys, include_deleted=include_deleted):
            await self._publish(self.bus.subjects.budget_state, st)

    async def _publish_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(0.2)  # coalesce a burst of recordings into one state per budget
            self._wake.clear()
            keys, self._dirty = sorted(self._dirty), set()
            try:
                await self.publish_states(keys)
            except AigwError as e:
                log.warning("budget state publish failed", extra={"error": e.message})
                self._dirty.update(keys)
                await asyncio.sleep(1.0)
                self._wake.set()

    # ------------------------------------------------------------ retention

    async def retention_pass(self, *, now: float | None = None, batch: int = 1000) -> int:
        """Delete interceptions older than AIGW_RETENTION, ``batch`` rows per transaction; returns how many."""
        now = time.time() if now is None else now
        cutoff = datetime.fromtimestamp(now, UTC) - timedelta(seconds=self.settings.retention_seconds)
        total = 0
        try:
            while True:
                n = int((await self.pool.execute(
                    "DELETE FROM interceptions WHERE id IN"
                    " (SELECT id FROM interceptions WHERE occurred_at < $1 ORDER BY occurred_at LIMIT $2)",
                    cutoff, batch,
                )).split()[-1])
                total += n
                self.retention_deleted.inc(n)
                if n < batch:
                    break
                await asyncio.sleep(0.05)  # let other work in between batches
            await self.ledger.expire_old(now=now)
            await self.limits.expire_old(now=now)
        except DB_ERRORS as e:
            raise classify(e) from e
        return total

    async def _retention_loop(self) -> None:
        interval = max(60.0, min(3600.0, self.settings.retention_seconds / 24))
        while True:
            try:
                n = await self.retention_pass()
                if n:
                    log.info("retention deleted interceptions", extra={"deleted": n})
            except AigwError as e:
                log.warning("retention pass failed", extra={"error": e.message})
            await asyncio.sleep(interval)
