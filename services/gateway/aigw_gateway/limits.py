"""Rate and concurrency limits in the gateway: admitted in memory against grants held from the budget service.

A user or group may have requests per minute, tokens per minute and concurrent requests (budget API
``…/ai/limits``). Per limited subject this replica holds, for the current wall-clock minute (the *window*), a
cumulative grant of requests and of tokens, and a number of concurrency *slots* (a lease it renews while it
uses them). A request is admitted when every subject that applies (the user, each of the user's groups) has
room; the counts move in memory. When a grant runs low it is refilled in the background; when it is empty but
the subject may still have room elsewhere, :meth:`LimitGuard.acquire` asks and waits briefly (bounded). The
budget service never grants more of a window or more slots than the limit across all replicas — the overshoot
bound is in docs/limits.md. If the budget service cannot be asked, this replica enforces each whole limit on its
own until it can again (the fleet then admits at most replicas times the limit).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg

from aigw_common.aio import stop_task
from aigw_common.bus import Bus
from aigw_common.errors import AigwError
from aigw_common.metrics import CollectorRegistry, Counter
from aigw_common.schemas import (
    Identity,
    LimitGrant,
    LimitLeaseItem,
    LimitLeaseReply,
    LimitLeaseRequest,
    LimitReclaim,
    LimitsSnapshot,
    LimitsSnapshotRequest,
    LimitsState,
    SubjectKey,
    TokenCounts,
)

from .flight import Flight, Outcome

log = logging.getLogger(__name__)

Key = SubjectKey  # (scope, subject id)
LOCAL_FOR = 10.0  # after a failed lease request, enforce whole limits locally this long before asking again
IDLE_SLOTS = 5.0  # concurrency slots unused this long are handed back


def window_of(wall: float) -> int:
    return int(wall // 60)


@dataclass(slots=True)
class LimitDecision:
    allowed: bool
    message: str = ""
    retry_after: float | None = None
    ticket: _Ticket | None = None


@dataclass(slots=True, eq=False)
class _Subject:
    key: Key
    name: str
    rpm: int | None
    tpm: int | None
    conc: int | None
    window: int = 0
    req_granted: int = 0
    req_used: int = 0
    req_full: bool = False
    tok_granted: int = 0
    tok_used: int = 0
    tok_full: bool = False
    slots: int = 0
    slots_expires: float = 0.0  # monotonic
    slots_full_at: float = -1e9  # monotonic time the service last said no slot is free anywhere
    inflight: int = 0
    waiting: int = 0  # acquire() calls waiting for this subject
    retry_at: float | None = None  # monotonic: others were asked to hand back; ask again then
    local_until: float = 0.0  # monotonic: until then the service is not asked and whole limits apply here
    last_used: float = 0.0
    seq: int = 0
    stamp: float = 0.0  # monotonic time its limits were last set from a broadcast or a snapshot
    flight: Flight = field(default_factory=Flight)  # its lease requests, one at a time
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def label(self) -> str:
        return f"{self.key[0]} '{self.name or self.key[1]}'"

    def roll(self, window: int) -> None:
        if window != self.window:
            self.window = window
            self.req_granted = self.req_used = self.tok_granted = self.tok_used = 0
            self.req_full = self.tok_full = False

    def local(self, now: float) -> bool:
        return now < self.local_until

    def slots_now(self, now: float) -> int:
        return self.slots if now < self.slots_expires else 0


@dataclass(slots=True)
class _Ticket:
    subjects: list[_Subject]
    settled: bool = False


def _tokens(t: TokenCounts) -> int:
    """What counts against tokens per minute: everything the model read and wrote."""
    return t.input_tokens + t.output_tokens + t.cache_read_tokens + t.cache_write_tokens


class LimitGuard:
    def __init__(self, bus: Bus, registry: CollectorRegistry, *, holder_id: str | None = None, wait: float = 2.0,
                 request_timeout: float = 2.0, snapshot_interval: float = 30.0) -> None:
        self.bus = bus
        self.id = holder_id or f"gw-{uuid.uuid4().hex[:12]}"
        self.wait = wait
        self.request_timeout = request_timeout
        self.snapshot_interval = snapshot_interval
        self.subjects: dict[Key, _Subject] = {}
        self._deleted: dict[Key, float] = {}  # recently deleted (monotonic time): an older snapshot must not revive
        self.synced = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.decisions = Counter("aigw_gateway_limit_admissions_total", "Rate and concurrency limit decisions",
                                 ["outcome"], registry=registry)
        self.lease_requests = Counter("aigw_gateway_limit_lease_requests_total",
                                      "Limit lease requests to the budget service", ["result"], registry=registry)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.bus.subscribe(self.bus.subjects.budget("limits"), LimitsState, self._on_state)
        await self.bus.subscribe(self.bus.subjects.budget("limits.reclaim"), LimitReclaim, self._on_reclaim)
        self._loop_task = asyncio.create_task(self._maintain(), name="limit-guard")

    async def stop(self) -> None:
        if self._loop_task is not None:
            await stop_task(self._loop_task)
        if self.bus.connected:  # hand back slots so other replicas may use them at once (best effort)
            for s in list(self.subjects.values()):
                if s.conc is not None and s.slots > s.inflight and not s.local(time.monotonic()):
                    try:
                        await self._request(s, need=0, release=True)
                    except AigwError as e:
                        log.debug("limit slots not handed back", extra={"error": e.message})
        for t in list(self._tasks):
            t.cancel()

    # ------------------------------------------------------------ admission (hot path: memory only)

    def admit(self, identity: Identity | None) -> LimitDecision:
        d, _short = self._admit(identity)
        return d

    async def acquire(self, identity: Identity | None) -> LimitDecision:
        """``admit``, but a subject whose grant is empty while the limit may have room elsewhere is refilled
        first (one lease request, bounded wait)."""
        d, short = self._admit(identity)
        if d.allowed or not short:
            return d
        deadline = time.monotonic() + self.wait
        while True:
            for s in short:
                s.changed.clear()
                s.waiting += 1
                self._refill(s)
            try:
                waits = [asyncio.ensure_future(s.changed.wait()) for s in short]
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
            finally:
                for s in short:
                    s.waiting -= 1
            d, short = self._admit(identity)
            if d.allowed or not short:
                return d
            if time.monotonic() >= deadline:  # no room granted in time: refuse, retry soon
                return self._refusal(short[0], "", final=False)
            await asyncio.sleep(0.02)  # a failing service must not turn this into a busy loop

    def _admit(self, identity: Identity | None) -> tuple[LimitDecision, list[_Subject]]:
        if identity is None or not self.subjects:
            return LimitDecision(True), []
        keys: list[Key] = [("user", identity.user_id), *(("group", g) for g in identity.group_ids)]
        subs = [s for k in keys if (s := self.subjects.get(k)) is not None]
        if not subs:
            return LimitDecision(True), []
        now, window = time.monotonic(), window_of(time.time())
        short: list[_Subject] = []
        for s in subs:
            s.roll(window)
            local = s.local(now)
            if s.rpm is not None and s.req_used >= (s.rpm if local else s.req_granted):
                if local or s.req_full or s.req_used >= s.rpm:
                    return self._refusal(s, "requests", final=True), []
                short.append(s)
                continue
            if s.tpm is not None and s.tok_used >= (s.tpm if local else s.tok_granted):
                if local or s.tok_full or s.tok_used >= s.tpm:
                    return self._refusal(s, "tokens", final=True), []
                short.append(s)
                continue
            if s.conc is not None and s.inflight >= (s.conc if local else s.slots_now(now)):
                if local or s.inflight >= s.conc or now - s.slots_full_at < 1.0:
                    return self._refusal(s, "concurrent", final=True), []
                short.append(s)
        if short:
            self.decisions.labels("short").inc()
            return LimitDecision(False), short
        for s in subs:
            s.last_used = now
            if s.rpm is not None:
                s.req_used += 1
            if s.conc is not None:
                s.inflight += 1
            if not s.local(now) and self._low(s, now):
                self._refill(s)
        self.decisions.labels("admitted").inc()
        return LimitDecision(True, ticket=_Ticket(subs)), []

    def _low(self, s: _Subject, now: float) -> bool:
        """A grant is low when what is left is under half a refill: ask before a request has to wait."""
        if s.rpm is not None and not s.req_full and s.req_granted - s.req_used <= self._chunk(s.rpm) // 2:
            return True
        if s.tpm is not None and not s.tok_full and s.tok_granted - s.tok_used <= self._chunk(s.tpm) // 2:
            return True
        return s.conc is not None and s.slots_now(now) - s.inflight <= self._chunk(s.conc) // 2 \
            and now - s.slots_full_at >= 1.0

    @staticmethod
    def _chunk(limit: int) -> int:
        """Extra asked beyond the need: a tenth of the limit, so a busy subject asks about ten times a window."""
        return limit // 10

    def _refusal(self, s: _Subject, what: str, *, final: bool) -> LimitDecision:
        self.decisions.labels("refused" if final else "unanswered").inc()
        if not final:
            return LimitDecision(False, f"{s.label()} is at its rate or concurrency limit across the gateways; "
                                        "retry shortly", retry_after=1.0)
        if what == "concurrent":
            return LimitDecision(False, f"{s.label()} has {s.conc} concurrent requests running, its limit; "
                                        "retry when one ends", retry_after=1.0)
        left = max(1.0, 60.0 - time.time() % 60.0)
        if what == "requests":
            msg = f"{s.label()} reached its limit of {s.rpm} requests per minute"
        else:
            msg = f"{s.label()} reached its limit of {s.tpm} tokens per minute"
        return LimitDecision(False, f"{msg}; retry after {left:.0f}s", retry_after=left)

    def settle(self, decision: LimitDecision | None, tokens: TokenCounts | None) -> None:
        """The request ended: free its concurrency slot, count its tokens against the current window."""
        ticket = decision.ticket if decision is not None else None
        if ticket is None or ticket.settled:
            return
        ticket.settled = True
        window = window_of(time.time())
        n = _tokens(tokens) if tokens is not None else 0
        now = time.monotonic()
        for s in ticket.subjects:
            if s.conc is not None:
                s.inflight = max(0, s.inflight - 1)
            if s.tpm is not None and n:
                s.roll(window)
                s.tok_used += n
                if s.tok_used >= s.tok_granted and not s.local(now):
                    self._refill(s)  # overdrawn: report the usage now, so other replicas count it
            s.changed.set()

    # ------------------------------------------------------------ leases

    def _refill(self, s: _Subject, need: int = 1) -> None:
        """Ask for more in the background (one request per subject at a time)."""
        s.flight.refill(self._spawn, lambda n: self._refill_round(s, n), need)

    async def _refill_round(self, s: _Subject, need: int) -> Outcome:
        try:
            await self._request(s, need=max(need, s.waiting))
        except AigwError as e:
            self.lease_requests.labels("error").inc()
            s.local_until = time.monotonic() + LOCAL_FOR
            log.warning("limit lease request failed; enforcing whole limits locally for a while",
                        extra={"subject": f"{s.key[0]}:{s.key[1]}", "error": e.message})
            s.changed.set()
            return "stop"
        if s.retry_at is not None and s.waiting > 0:
            # other replicas were asked to hand back what they do not use: ask again shortly
            await asyncio.sleep(max(0.0, s.retry_at - time.monotonic()))
            return "retry"
        return "done"

    async def _request(self, s: _Subject, *, need: int, release: bool = False) -> None:
        s.seq += 1
        seq = s.seq
        window = window_of(time.time())
        s.roll(window)
        now = time.monotonic()
        if release:  # keep only what is used; stop using the rest before saying so
            req_want, tok_want, slots_want = s.req_used, s.tok_used, s.inflight
            s.req_granted, s.tok_granted = min(s.req_granted, req_want), min(s.tok_granted, max(tok_want, 0))
            s.slots = min(s.slots, slots_want)
        else:
            req_want = s.req_used + need + self._chunk(s.rpm) if s.rpm is not None else 0
            tok_want = s.tok_used + max(need, 1) + self._chunk(s.tpm) if s.tpm is not None else 0
            slots_want = s.inflight + need + self._chunk(s.conc) if s.conc is not None else 0
        item = LimitLeaseItem(
            scope=s.key[0], subject_id=s.key[1], window=window, seq=seq,
            requests_used=s.req_used, requests_want=req_want, tokens_used=s.tok_used, tokens_want=tok_want,
            inflight=s.inflight, slots_want=slots_want,
        )
        reply = await self.bus.request(self.bus.subjects.budget("limits.lease"),
                                       LimitLeaseRequest(gateway_id=self.id, items=[item]), LimitLeaseReply,
                                       timeout=self.request_timeout)
        if reply.error:
            raise AigwError(f"budget service: {reply.error}", retryable=True)
        for g in reply.grants:
            self._apply_grant(s, g, seq, now)
        self.lease_requests.labels("ok").inc()

    def _apply_grant(self, s: _Subject, g: LimitGrant, seq: int, sent: float) -> None:
        key = (g.scope, g.subject_id)
        if not g.found:
            if self.subjects.get(key) is s:
                del self.subjects[key]
        elif g.seq == seq and self.subjects.get(key) is s:
            if g.limits is not None:
                s.rpm, s.tpm, s.conc = (g.limits.requests_per_minute, g.limits.tokens_per_minute,
                                        g.limits.concurrent_requests)
            if g.window == s.window:
                s.req_granted, s.tok_granted = g.requests, g.tokens
                s.req_full, s.tok_full = g.requests_full, g.tokens_full
            s.slots, s.slots_expires = g.slots, sent + g.slots_ttl
            if g.slots_full:
                s.slots_full_at = time.monotonic()
            s.retry_at = sent + g.retry_in if g.retry_in is not None else None
            s.local_until = 0.0
        s.changed.set()

    # ------------------------------------------------------------ bus

    async def _on_reclaim(self, msg: LimitReclaim, _m: Msg | None) -> None:
        """Another replica waits for this subject: hand back grants and slots nobody here uses or waits for."""
        if msg.requester == self.id:
            return
        s = self.subjects.get((msg.scope, msg.subject_id))
        if s is None or s.flight.busy or s.waiting or s.local(time.monotonic()):
            return
        s.roll(window_of(time.time()))
        if (s.req_granted > s.req_used or s.tok_granted > s.tok_used or s.slots > s.inflight) and s.flight.claim():
            await s.flight.holding(self._release(s))

    async def _on_state(self, st: LimitsState, _m: Msg | None) -> None:
        self._apply_state(st)

    def _apply_state(self, st: LimitsState, *, asked_at: float | None = None) -> None:
        """Apply one subject's limits; from a snapshot asked at ``asked_at``, unless a broadcast since is newer."""
        key = (st.scope, st.subject_id)
        now = time.monotonic()
        s = self.subjects.get(key)
        if asked_at is not None and (self._deleted.get(key, -1.0) > asked_at or (s is not None and s.stamp > asked_at)):
            return
        if st.deleted:
            self.subjects.pop(key, None)
            self._deleted[key] = now
            if len(self._deleted) > 10_000:
                self._deleted = {k: t for k, t in self._deleted.items() if now - t < 60.0}
            return
        self._deleted.pop(key, None)
        if s is None:
            self.subjects[key] = _Subject(key, st.name, st.requests_per_minute, st.tokens_per_minute,
                                          st.concurrent_requests, stamp=now)
            return
        s.stamp = now
        s.name, s.rpm, s.tpm, s.conc = st.name or s.name, st.requests_per_minute, st.tokens_per_minute, \
            st.concurrent_requests
        s.req_full = s.tok_full = False  # a raised limit may have room now
        s.slots_full_at = -1e9
        s.changed.set()

    async def sync(self) -> bool:
        """Fetch every subject's limits; False when the budget service did not answer."""
        asked = time.monotonic()
        try:
            snap = await self.bus.request(self.bus.subjects.budget("limits.snapshot"), LimitsSnapshotRequest(),
                                          LimitsSnapshot, timeout=self.request_timeout)
        except AigwError as e:
            log.warning("limits snapshot unavailable", extra={"error": e.message})
            return False
        if snap.states is None:
            return False
        seen = set()
        for st in snap.states:
            self._apply_state(st, asked_at=asked)
            seen.add((st.scope, st.subject_id))
        for key in set(self.subjects) - seen:
            if self.subjects[key].stamp <= asked:  # set after the snapshot was taken: the broadcast is newer
                self.subjects.pop(key, None)
        self.synced.set()
        return True

    async def _maintain(self) -> None:
        """Snapshot on connect and periodically; renew slot leases in use, hand back idle ones."""
        next_sync = 0.0
        while True:
            now = time.monotonic()
            if now >= next_sync and self.bus.connected:
                ok = await self.sync()
                next_sync = now + (self.snapshot_interval if ok else 1.0)
            now = time.monotonic()
            for s in list(self.subjects.values()):
                if s.flight.busy or s.conc is None or not s.slots or s.local(now):
                    continue
                if s.slots > s.inflight and now - s.last_used > IDLE_SLOTS:
                    if s.flight.claim():
                        self._spawn(s.flight.holding(self._release(s)))
                elif s.slots_expires - now < 15.0:
                    self._refill(s)  # renew before expiry (and report what is in flight)
            await asyncio.sleep(1.0)

    async def _release(self, s: _Subject) -> None:
        """Hand back what is not used (run under ``s.flight``)."""
        try:
            await self._request(s, need=0, release=True)
        except AigwError as e:
            log.warning("limit slots release failed", extra={"error": e.message})

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
