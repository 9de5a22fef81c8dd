"""Budget admission in the gateway: in memory, against leases of headroom granted by the budget service.

For every budget that applies to a request (the user's, each of the user's
groups') this replica holds a *lease*: a cumulative grant of micro-USD from the
budget service. A request is admitted when every such lease has room for its
reservation (an upper bound of its cost: ``aigw_common.pricing``); the
reservation is held while the request runs and replaced by the real cost when
it settles. Leases are renewed in the background before they run low or
expire, so ``admit`` never waits. ``acquire`` is ``admit`` that, when a lease
is short but the budget may still have room (held by other replicas or not
granted yet), asks the service and waits briefly instead of refusing; the
service then asks replicas with idle headroom to hand it back.

The guard never lets a lease be used past its expiry (measured from before
the request that granted it was sent), and the service counts a lease as held
until the costs admitted under it are recorded: see docs/architecture.md,
"Budgets and usage", for the overshoot bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg

from aigw_common.aio import stop_task
from aigw_common.bus import Bus
from aigw_common.errors import AigwError
from aigw_common.metrics import CollectorRegistry, Counter
from aigw_common.pricing import PriceTable, cost_micros, reservation_micros
from aigw_common.schemas import (
    BudgetLeaseReply,
    BudgetLeaseRequest,
    BudgetPrices,
    BudgetReclaim,
    BudgetScope,
    BudgetSnapshot,
    BudgetSnapshotRequest,
    BudgetState,
    Identity,
    LeaseGrant,
    LeaseItem,
    SubjectKey,
    TokenCounts,
)
from aigw_common.settings import Settings

from .flight import Flight, Outcome
from .usage.common import RequestInfo

log = logging.getLogger(__name__)

Key = SubjectKey  # (scope, subject id)
PREFETCH_MAX_BUDGETS = 200  # with at most this many budgets, every one gets a lease before its first request
IDLE_RELEASE = 300.0  # a lease unused this long is handed back instead of renewed


@dataclass(slots=True)
class Admission:
    allowed: bool
    reservation_micros: int = 0
    message: str = ""  # when refused: names the budget and when it resets
    retry_after: float | None = None  # seconds
    token: object = None  # opaque, handed back to settle()
    lease_holder: str = ""  # this replica's lease id: goes into InterceptionStarted.gateway_id


@dataclass(slots=True)
class _Budget:
    scope: BudgetScope
    subject_id: str
    name: str
    limit: int
    spent: int
    period_start: float
    period_end: float

    def label(self) -> str:
        return f"{self.scope} '{self.name or self.subject_id}'"


@dataclass(slots=True, eq=False)
class _Lease:
    key: Key
    period_start: float
    granted: int = 0
    consumed: int = 0
    inflight: int = 0
    waiting: int = 0  # reservations of acquire() calls waiting for this lease
    waiters: collections.Counter[int] = field(default_factory=collections.Counter)  # the same, by reservation size
    expires: float = 0.0  # monotonic; unusable after
    seq: int = 0
    exhausted_at: float = -1e9  # monotonic time the service last said the need cannot be met
    retry_at: float | None = None
    last_used: float = 0.0  # monotonic time of the last admission
    flight: Flight = field(default_factory=Flight)  # its lease requests, one at a time
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def available(self, now: float) -> int:
        if now >= self.expires:
            return 0
        return self.granted - self.consumed - self.inflight


@dataclass(slots=True)
class _Ticket:
    leases: list[_Lease]
    reservation: int
    settled: bool = False


class BudgetGuard:
    def __init__(self, bus: Bus, settings: Settings, registry: CollectorRegistry, *,
                 holder_id: str | None = None, wait: float = 5.0, request_timeout: float = 2.0,
                 snapshot_interval: float | None = None) -> None:
        self.bus = bus
        self.settings = settings
        self.id = holder_id or f"gw-{uuid.uuid4().hex[:12]}"
        self.wait = wait
        self.request_timeout = request_timeout
        self.snapshot_interval = snapshot_interval or max(5.0, settings.revision_check_interval)
        self.prices = PriceTable()
        self.budgets: dict[Key, _Budget] = {}
        self.leases: dict[Key, _Lease] = {}
        self.lease_ttl = 60.0
        self.synced = asyncio.Event()  # a snapshot arrived at least once
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.decisions = Counter("aigw_gateway_budget_admissions_total", "Budget admission decisions",
                                 ["outcome"], registry=registry)
        self.lease_requests = Counter("aigw_gateway_budget_lease_requests_total", "Lease requests to the budget service",
                                      ["result"], registry=registry)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.bus.subjects
        await self.bus.subscribe(s.budget_state, BudgetState, self._on_state)
        await self.bus.subscribe(s.budget("prices"), BudgetPrices, self._on_prices)
        await self.bus.subscribe(s.budget("reclaim"), BudgetReclaim, self._on_reclaim)
        self._loop_task = asyncio.create_task(self._maintain(), name="budget-guard")

    async def stop(self) -> None:
        if self._loop_task is not None:
            await stop_task(self._loop_task)
        # hand back idle headroom so other replicas may use it at once (best effort)
        if self.bus.connected:
            for lease in list(self.leases.values()):
                keep = lease.consumed + lease.inflight
                if lease.granted > keep and time.monotonic() < lease.expires:
                    with contextlib.suppress(AigwError):
                        await self._request(lease, target=keep, need=0)
        for t in list(self._tasks):
            t.cancel()

    # ------------------------------------------------------------ admission (hot path: memory only)

    def admit(self, identity: Identity | None, provider_name: str, model: str, info: RequestInfo) -> Admission:
        adm, _short = self._admit(identity, model, info)
        return adm

    async def acquire(self, identity: Identity | None, provider_name: str, model: str, info: RequestInfo) -> Admission:
        """``admit``, but a lease that is short while the budget may have room is refilled first (bounded wait)."""
        adm, short = self._admit(identity, model, info)
        if adm.allowed or not short:
            return adm
        deadline = time.monotonic() + self.wait
        r = self._reservation(model, info)
        while True:
            for lease in short:
                lease.waiting += r
                lease.waiters[r] += 1
                lease.changed.clear()
                self._refill(lease)
            try:
                waits = [asyncio.ensure_future(lease.changed.wait()) for lease in short]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    for w in waits:
                        w.cancel()
                    break
                _done, pending = await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                for w in pending:
                    w.cancel()
            finally:
                for lease in short:
                    lease.waiting -= r
                    lease.waiters[r] -= 1
                    if lease.waiters[r] <= 0:
                        del lease.waiters[r]
            adm, short = self._admit(identity, model, info)
            if adm.allowed or not short:
                return adm
            await asyncio.sleep(0.02)  # a failing budget service must not turn this into a busy loop
        return adm

    def _reservation(self, model: str, info: RequestInfo) -> int:
        return reservation_micros(self.prices.lookup(model or info.model), info.input_bytes, info.max_output_tokens)

    def _admit(self, identity: Identity | None, model: str, info: RequestInfo) -> tuple[Admission, list[_Lease]]:
        """The decision, plus the leases worth waiting for when refused (empty: refusal is final)."""
        if identity is None:
            return Admission(True, lease_holder=self.id), []
        keys: list[Key] = [("user", identity.user_id), *(("group", g) for g in identity.group_ids)]
        budgets = [b for k in keys if (b := self.budgets.get(k)) is not None]
        if not budgets:
            self.decisions.labels("no_budget").inc()
            return Admission(True, lease_holder=self.id), []
        r = self._reservation(model, info)
        now, wall = time.monotonic(), time.time()
        leases: list[_Lease] = []
        short: list[_Lease] = []
        final: _Budget | None = None
        for b in budgets:
            lease = self._lease(b, wall)
            leases.append(lease)
            if b.spent >= b.limit:
                final = final or b
            elif r > 0 and lease.available(now) < r:
                if now - lease.exhausted_at < 1.0 and now < lease.expires:
                    final = final or b
                else:
                    short.append(lease)
                    self._refill(lease, need=r)
        if final is not None:
            self.decisions.labels("refused").inc()
            return self._refusal(final, r, wall, exhausted=True), []
        if short:
            b = self.budgets[short[0].key]
            self.decisions.labels("short").inc()
            return self._refusal(b, r, wall, exhausted=False), short
        for lease in leases:
            lease.inflight += r
            lease.last_used = now
            if lease.available(now) < self._low_water(lease):
                self._refill(lease)
        self.decisions.labels("admitted").inc()
        return Admission(True, reservation_micros=r, token=_Ticket(leases, r), lease_holder=self.id), []

    def _refusal(self, b: _Budget, r: int, wall: float, *, exhausted: bool) -> Admission:
        resets = datetime.fromtimestamp(b.period_end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        period = datetime.fromtimestamp(b.period_start or wall, UTC).strftime("%Y-%m")
        if exhausted:
            held = "" if b.spent >= b.limit else ", the rest reserved by requests in flight"
            msg = (f"{b.label()} budget of {_usd(b.limit)} for {period} is exhausted "
                   f"(spent {_usd(b.spent)}{held}; this request may cost up to {_usd(r)}); resets {resets}")
            return Admission(False, message=msg, retry_after=max(1.0, b.period_end - wall))
        msg = (f"{b.label()} budget of {_usd(b.limit)} for {period} has no room for this request right now "
               f"(it may cost up to {_usd(r)}); the budget resets {resets}")
        return Admission(False, message=msg, retry_after=2.0)

    def settle(self, admission: Admission, model: str, tokens: TokenCounts | None) -> None:
        """Replace the reservation by the real cost (0 when the request failed before any usage)."""
        ticket = admission.token
        if not isinstance(ticket, _Ticket) or ticket.settled:
            return
        ticket.settled = True
        cost = cost_micros(tokens, self.prices.lookup(model)) if tokens is not None else 0
        for lease in ticket.leases:
            lease.inflight -= ticket.reservation
            lease.consumed += cost
            if lease.waiting:
                lease.changed.set()

    # ------------------------------------------------------------ leases

    def _lease(self, b: _Budget, wall: float) -> _Lease:
        key = (b.scope, b.subject_id)
        lease = self.leases.get(key)
        if lease is None or lease.period_start != b.period_start:
            lease = self.leases[key] = _Lease(key, b.period_start)
        return lease

    def _low_water(self, lease: _Lease) -> int:
        b = self.budgets.get(lease.key)
        return max(1, (b.limit // 40) if b else 1)

    def _want(self, lease: _Lease) -> int:
        b = self.budgets.get(lease.key)
        return max(1, (b.limit // 10) if b else 1)

    def _refill(self, lease: _Lease, need: int = 0) -> None:
        """Ask for more headroom in the background (one request per lease at a time)."""
        lease.flight.refill(self._spawn, lambda n: self._refill_round(lease, n), need)

    async def _refill_round(self, lease: _Lease, need: int) -> Outcome:
        want_need = max(need, lease.waiting)
        target = lease.consumed + lease.inflight + want_need + self._want(lease)
        try:
            await self._request(lease, target=target, need=want_need)
        except AigwError as e:
            self.lease_requests.labels("error").inc()
            log.warning("budget lease request failed", extra={"budget": f"{lease.key[0]}:{lease.key[1]}",
                                                              "error": e.message})
            lease.changed.set()
            return "stop"
        if lease.retry_at is not None and lease.waiting > 0:
            spare = lease.available(time.monotonic())
            if 0 < spare < min(lease.waiters, default=0):
                # a fragment too small for anyone waiting here: pool it at the service, where it can
                # be combined with other replicas' fragments (whoever asks next gets the sum)
                await self._request(lease, target=lease.consumed + lease.inflight, need=0)
            await asyncio.sleep(max(0.0, lease.retry_at - time.monotonic()) if lease.retry_at else 0.0)
            return "retry"
        return "done"

    async def _request(self, lease: _Lease, *, target: int, need: int) -> None:
        lease.seq += 1
        seq = lease.seq
        if target < lease.granted:
            lease.granted = target  # stop using what is handed back before saying so
        item = LeaseItem(scope=lease.key[0], subject_id=lease.key[1], period_start=lease.period_start,
                         seq=seq, consumed_micros=lease.consumed, inflight_micros=lease.inflight,
                         target_micros=target, need_micros=need)
        sent = time.monotonic()
        reply = await self.bus.request(self.bus.subjects.budget("lease"),
                                       BudgetLeaseRequest(gateway_id=self.id, items=[item]), BudgetLeaseReply,
                                       timeout=self.request_timeout)
        if reply.error:
            raise AigwError(f"budget service: {reply.error}", retryable=True)
        for g in reply.grants:
            self._apply_grant(lease, g, seq, sent)
        self.lease_requests.labels("ok").inc()

    def _apply_grant(self, lease: _Lease, g: LeaseGrant, seq: int, sent: float) -> None:
        key = (g.scope, g.subject_id)
        if not g.found:
            self.budgets.pop(key, None)
            self.leases.pop(key, None)
        elif g.seq == seq and self.leases.get(key) is lease:
            b = self.budgets.get(key)
            if b is not None:
                b.limit, b.spent, b.name = g.limit_micros, g.spent_micros, g.name or b.name
                b.period_start, b.period_end = g.period_start, g.period_end
            if abs(g.period_start - lease.period_start) > 1:
                # a new month: start a fresh lease (requests running on the old one settle on it)
                fresh = self.leases[key] = _Lease(key, g.period_start, retry_at=time.monotonic())
                lease.changed.set()
                self._refill(fresh)
                return
            lease.granted = g.granted_micros
            lease.expires = sent + g.expires_in
            lease.exhausted_at = time.monotonic() if g.exhausted else -1e9
            lease.retry_at = sent + g.retry_in if g.retry_in is not None else None
        lease.changed.set()

    # ------------------------------------------------------------ bus

    async def _on_state(self, st: BudgetState, _m: Msg | None) -> None:
        self._apply_state(st)

    def _apply_state(self, st: BudgetState) -> None:
        key = (st.scope, st.subject_id)
        if st.deleted:
            self.budgets.pop(key, None)
            self.leases.pop(key, None)
            return
        b = self.budgets.get(key)
        if b is None:
            self.budgets[key] = _Budget(st.scope, st.subject_id, st.name, st.limit_micros, st.spent_micros,
                                        st.period_start, st.period_end)
            return
        b.name, b.limit, b.spent, b.period_start, b.period_end = (
            st.name or b.name, st.limit_micros, st.spent_micros, st.period_start, st.period_end)
        if (lease := self.leases.get(key)) is not None and lease.waiting:
            lease.changed.set()

    async def _on_prices(self, msg: BudgetPrices, _m: Msg | None) -> None:
        self.prices = PriceTable(msg.prices)

    async def _on_reclaim(self, msg: BudgetReclaim, _m: Msg | None) -> None:
        """Another replica waits for this budget: hand back headroom nobody here is using or waiting for.

        Report even when there is nothing to hand back, so the service stops counting stale idle headroom.
        """
        if msg.requester == self.id:
            return
        lease = self.leases.get((msg.scope, msg.subject_id))
        if lease is None or time.monotonic() >= lease.expires or not lease.flight.claim():
            return
        keep = lease.consumed + lease.inflight + lease.waiting
        await lease.flight.holding(self._release(lease, min(lease.granted, keep) if lease.granted > keep else lease.granted))

    async def sync(self) -> bool:
        """Fetch every budget and the price table; False when the budget service did not answer."""
        try:
            snap = await self.bus.request(self.bus.subjects.budget_snapshot, BudgetSnapshotRequest(), BudgetSnapshot,
                                          timeout=self.request_timeout)
        except AigwError as e:
            log.warning("budget snapshot unavailable", extra={"error": e.message})
            return False
        if snap.prices is None:
            return False
        self.prices = PriceTable(snap.prices)
        self.lease_ttl = snap.lease_ttl
        seen = set()
        for st in snap.states:
            self._apply_state(st)
            seen.add((st.scope, st.subject_id))
        for key in set(self.budgets) - seen:
            self.budgets.pop(key, None)
            self.leases.pop(key, None)
        self.synced.set()
        return True

    async def _maintain(self) -> None:
        """Snapshot on connect and periodically; renew leases before they expire or run low."""
        next_sync = 0.0
        while True:
            now = time.monotonic()
            if now >= next_sync and self.bus.connected:
                ok = await self.sync()
                next_sync = now + (self.snapshot_interval if ok else 1.0)
            now, wall = time.monotonic(), time.time()
            prefetch = len(self.budgets) <= PREFETCH_MAX_BUDGETS
            if prefetch:
                for b in list(self.budgets.values()):
                    if (b.scope, b.subject_id) not in self.leases:
                        self._lease(b, wall)
            for lease in list(self.leases.values()):
                if lease.flight.busy or lease.key not in self.budgets:
                    continue
                if not lease.expires:
                    if prefetch and self.bus.connected:
                        self._refill(lease)  # headroom before the first request needs it
                    continue
                if lease.expires - now < self.lease_ttl / 2:
                    keep = lease.consumed + lease.inflight
                    if now - lease.last_used > IDLE_RELEASE and lease.inflight == 0:
                        if lease.granted > keep and lease.flight.claim():
                            self._spawn(lease.flight.holding(self._release(lease, keep)))  # idle: let others have it
                    elif lease.granted or keep:
                        self._refill(lease)  # renew (and report) before expiry
                elif lease.available(now) < self._low_water(lease) and now - lease.exhausted_at > 1.0 \
                        and now - lease.last_used < IDLE_RELEASE:
                    self._refill(lease)
            await asyncio.sleep(1.0)

    async def _release(self, lease: _Lease, keep: int) -> None:
        """Hand back all but ``keep`` (run under ``lease.flight``)."""
        try:
            await self._request(lease, target=keep, need=0)
        except AigwError as e:
            log.warning("budget headroom release failed", extra={"error": e.message})

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)


def _usd(micros: int) -> str:
    return f"${micros / 1_000_000:,.2f}"
