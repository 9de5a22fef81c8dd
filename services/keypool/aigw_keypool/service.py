"""keypool: turns gateways' key marks and reports into the fleet-wide key state.

Inputs: ``KeyMarked`` on the marks stream (durable pull consumer, acked after
the bucket write, so a restart loses no mark), ``KeyReport`` on core NATS
(per-key attempt counts and rate-limit budgets, every second per gateway) and
the registry snapshot. Output: the key-state bucket (the only writer),
``KeysExhausted`` when a provider has no usable key, and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
import msgspec
from nats.aio.msg import Msg
from nats.js.errors import InvalidKeyError
from prometheus_client import CollectorRegistry, Counter, Gauge

from aigw_common import netguard
from aigw_common.aio import stop_task
from aigw_common.bus import Bus, decode
from aigw_common.consumer import PullConsumer
from aigw_common.crypto import Sealer
from aigw_common.errors import AigwError, BusError, CryptoError
from aigw_common.keystate import (
    TRANSIENT,
    KeyStateWatch,
    effective,
    ensure_marks_stream,
    kv_key,
    split_kv_key,
    wait_event,
)
from aigw_common.schemas import KeyMarked, KeyReport, KeysExhausted, KeyState, RegistrySnapshot

from .logic import (
    BUDGET_EXHAUSTED,
    Backoff,
    Stats,
    budget_exhausted_until,
    changed_keys,
    claim_recheck,
    cool,
    expire,
    merge_mark,
    recovered,
    reset,
    snapshot_keys,
)
from .probe import probe, probe_request
from .registry import RegistryView
from .store import KeyStore, Rule

log = logging.getLogger(__name__)

MARKS_RETRY_MAX = 1.0  # the key-marks consumer re-subscribes at least this often while it fails

STATES = ("valid", "cooling", "revoked")
FETCH_BATCH = 64
TICK = 1.0  # the expiry loop wakes at least this often


def _decode_mark(data: bytes) -> KeyMarked:
    return decode(data, KeyMarked)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.keys = Gauge("aigw_keypool_keys", "Keys by state per provider", ["provider", "state"], registry=registry)
        self.transitions = Counter("aigw_keypool_transitions_total", "Key state changes written",
                                   ["provider", "from_state", "to_state"], registry=registry)
        self.exhaustions = Counter("aigw_keypool_exhaustions_total", "Times a provider ran out of usable keys",
                                   ["provider"], registry=registry)
        self.marks = Counter("aigw_keypool_marks_total", "Key marks consumed", ["state"], registry=registry)
        self.mark_outcomes = Counter("aigw_keypool_mark_outcomes_total", "Key marks settled, by outcome",
                                     ["outcome"], registry=registry)
        self.reports = Counter("aigw_keypool_reports_total", "Gateway key reports received", registry=registry)
        self.rechecks = Counter("aigw_keypool_rechecks_total", "Re-checks of revoked keys with the provider",
                                ["provider", "outcome"], registry=registry)


class KeyPoolService:
    def __init__(self, bus: Bus, registry: CollectorRegistry, *, resync_interval: float = 30.0,
                 backoff: Backoff | None = None, sealer: Sealer | None = None, probe_timeout: float = 10.0,
                 allowed_upstreams: frozenset[str] = frozenset()) -> None:
        self.bus = bus
        self.metrics = Metrics(registry)
        self.backoff = backoff or Backoff()
        self.sealer = sealer  # opens the snapshot's sealed keys for re-checks; None: no re-checks
        self.probe_timeout = probe_timeout
        self.allowed_upstreams = allowed_upstreams  # re-checks send pool keys: address-checked like the gateway
        self._session: aiohttp.ClientSession | None = None
        self._checking: set[str] = set()
        self.mirror = KeyStateWatch(bus, self._on_state, resync_interval=resync_interval)
        self.store = KeyStore(self.mirror)
        self.registry = RegistryView(bus, self._on_snapshot, interval=resync_interval)
        self.stats = Stats()
        self.exhausted: dict[str, float | None] = {}  # provider id -> soonest return
        self._wake = asyncio.Event()
        s = bus.subjects
        self.marks = PullConsumer(
            bus, stream=s.keys_marked_stream, subject=s.keys_marked, durable=s.durable("keypool"),
            decode=_decode_mark, outcomes=self.metrics.mark_outcomes, ensure_stream=lambda: ensure_marks_stream(bus),
            handler=self._handle_mark, batch=FETCH_BATCH, ack_wait=30.0, max_ack_pending=1000,
            # at most a second: after a NATS node or stream leader comes back, marks must flow again within the
            # second the fleet promises (a consumer-create call a second is cheap)
            min_delay=1.0, max_delay=1.0, resubscribe_max=MARKS_RETRY_MAX, name="key marks", logger=log)
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.sealer is not None:
            self._session = aiohttp.ClientSession(connector=netguard.upstream_connector(self.allowed_upstreams))
        else:
            log.warning("AIGW_ENCRYPTION_KEYS not set: revoked keys are not re-checked (reset them through the API)")
        await self.bus.subscribe(self.bus.subjects.keys_report, KeyReport, self._on_report)
        self.mirror.start()
        await self.registry.start()
        self.marks.start()
        self._tasks = [asyncio.create_task(self._expiry_loop(), name="keypool-expiry")]

    async def stop(self) -> None:
        await self.marks.stop()
        for t in self._tasks:
            await stop_task(t)
        await self.registry.stop()
        await self.mirror.stop()
        for t in list(self._spawned):
            t.cancel()
        if self._session is not None:
            await self._session.close()

    def not_ready(self) -> str | None:
        if not self.bus.connected:
            return "not connected to NATS"
        if not self.mirror.loaded.is_set():
            return "key-state bucket not loaded"
        if not self.marks.consuming:
            return "key-marks consumer not running"
        return None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.create_task(coro)
        self._spawned.add(t)
        t.add_done_callback(self._spawned.discard)

    # ------------------------------------------------------------ writes

    async def _write(self, provider_id: str, key_id: str, rule: Rule) -> KeyState | None:
        res = await self.store.change(provider_id, key_id, rule)
        if res is None:
            return None
        before, after = res
        was = before.state if before is not None else "valid"
        if was != after.state:
            self.metrics.transitions.labels(self._label(provider_id), was, after.state).inc()
            log.info("key state changed", extra={"provider_id": provider_id, "key_id": key_id,
                                                 "from": was, "to": after.state, "until": after.until})
        return after

    async def apply_mark(self, mark: KeyMarked) -> KeyState | None:
        """Merge one mark (and the rate-limit budget it carries) into the bucket."""
        now = time.time()
        self.stats.mark(mark)

        def rule(cur: KeyState | None) -> KeyState | None:
            merged = merge_mark(cur, mark, now, self.backoff)
            rl_until = budget_exhausted_until(mark.ratelimit, now)
            if rl_until is None:
                return merged
            cooled = cool(merged or cur, mark.provider_id, mark.key_id, rl_until, mark.status_code, now,
                          BUDGET_EXHAUSTED)
            return cooled or merged

        return await self._write(mark.provider_id, mark.key_id, rule)

    # ------------------------------------------------------------ marks consumer

    async def _handle_mark(self, mark: KeyMarked, _m: Msg) -> str:
        """One mark, settled by :class:`PullConsumer`'s rules: acked once the bucket holds it; a NATS error
        redelivers it; anything unforeseen waits for a long redelivery while the marks after it flow."""
        self.metrics.marks.labels(mark.state).inc()
        try:
            await self.apply_mark(mark)
        except InvalidKeyError as e:  # a NATS error, but no retry can make these ids a bucket key: poison
            raise AigwError(f"key mark ids cannot name a key: {mark.provider_id}/{mark.key_id}",
                            retryable=False) from e
        except TRANSIENT as e:
            raise BusError(f"key mark not applied: {e}") from e
        return "applied"

    # ------------------------------------------------------------ reports

    async def _on_report(self, report: KeyReport, _m: Msg) -> None:
        self.metrics.reports.inc()
        now = time.time()
        for stat in report.keys:
            self.stats.report(report.at, stat)
            until = budget_exhausted_until(stat.ratelimit, now)
            if until is None:
                continue
            try:
                await self._cool(stat.provider_id, stat.key_id, until, stat.last_status, now)
            except TRANSIENT as e:  # the next report (a second later) carries the budget again
                log.warning("proactive cooling not written", extra={"error": str(e)})

    async def _cool(self, provider_id: str, key_id: str, until: float, status: int, now: float) -> None:
        await self._write(provider_id, key_id,
                          lambda cur: cool(cur, provider_id, key_id, until, status, now, BUDGET_EXHAUSTED))

    # ------------------------------------------------------------ reset and re-check

    @property
    def rechecks_enabled(self) -> bool:
        return self.sealer is not None

    async def reset_key(self, provider_id: str, key_id: str) -> tuple[KeyState | None, KeyState]:
        """An admin's reset: the key is valid again on every gateway (they watch the bucket)."""
        before = self.state_of(provider_id, key_id)
        after = await self._write(provider_id, key_id, lambda cur: reset(cur, provider_id, key_id, time.time()))
        assert after is not None  # reset() always writes
        return before, after

    async def _recheck(self, provider_id: str, key_id: str) -> None:
        """Ask the provider whether it accepts a revoked key again (one replica wins the claim and asks)."""
        key = kv_key(provider_id, key_id)
        try:
            p = self.registry.by_id.get(provider_id)
            k = next((k for k in p.keys if k.id == key_id), None) if p is not None else None
            if p is None or k is None or self.sealer is None or self._session is None:
                return
            settings = msgspec.json.decode(self.sealer.open_bytes(p.settings_sealed)) if p.settings_sealed else {}
            req = probe_request(p.type, p.base_url, settings, self.sealer.open(k.sealed))
            claimed = await self._write(provider_id, key_id, lambda cur: claim_recheck(cur, time.time(), self.backoff))
            if claimed is None or req is None:
                return  # another replica asks, the state changed, or the type has no model list to ask
            status = await probe(self._session, req[0], req[1], self.probe_timeout)
            self.metrics.rechecks.labels(self._label(provider_id), "accepted" if 200 <= status < 300 else "refused").inc()
            if 200 <= status < 300:
                await self._write(provider_id, key_id, lambda cur: recovered(cur, time.time(), status))
                log.info("revoked key accepted again by the provider", extra={"provider_id": provider_id,
                                                                              "key_id": key_id, "status": status})
            else:
                log.info("revoked key still refused", extra={"provider_id": provider_id, "key_id": key_id,
                                                             "status": status, "next_check_at": claimed.next_check_at})
        except (CryptoError, msgspec.DecodeError) as e:
            log.error("cannot open a key to re-check it; check AIGW_ENCRYPTION_KEYS",
                      extra={"provider_id": provider_id, "key_id": key_id, "error": str(e)})
        except TRANSIENT as e:
            log.warning("key re-check not written; retrying later", extra={"error": str(e)})
        finally:
            self._checking.discard(key)

    # ------------------------------------------------------------ expiry

    async def _expiry_loop(self) -> None:
        while True:
            self._wake.clear()
            now = time.time()
            soonest = now + TICK
            for key, (st, _rev) in list(self.mirror.states.items()):
                if st.state == "revoked" and self._session is not None:
                    due = st.next_check_at or 0.0
                    if due > now:
                        soonest = min(soonest, due)
                    elif key not in self._checking:
                        self._checking.add(key)
                        self._spawn(self._recheck(*split_kv_key(key)))
                    continue
                if st.state != "cooling":
                    continue
                until = st.until or 0.0
                if until > now:
                    soonest = min(soonest, until)
                    continue
                pid, kid = split_kv_key(key)
                try:
                    await self._write(pid, kid, lambda cur: expire(cur, time.time()))
                except TRANSIENT as e:
                    log.warning("cooling expiry not written; retrying", extra={"error": str(e)})
            for pid, back in list(self.exhausted.items()):
                if back is not None and back <= now:
                    self._check_provider(pid)
            await wait_event(self._wake, max(0.0, soonest - time.time()) + 0.01)

    # ------------------------------------------------------------ state → metrics and exhaustion

    def _label(self, provider_id: str) -> str:
        p = self.registry.by_id.get(provider_id)
        return p.name if p is not None else provider_id

    def state_of(self, provider_id: str, key_id: str) -> KeyState | None:
        e = self.mirror.states.get(kv_key(provider_id, key_id))
        return e[0] if e is not None else None

    def _on_state(self, provider_id: str, _key_id: str, _state: KeyState | None) -> None:
        self._wake.set()
        self._check_provider(provider_id)

    def _check_provider(self, provider_id: str) -> None:
        """Refresh the provider's gauges; announce when it has no usable key left."""
        p = self.registry.by_id.get(provider_id)
        if p is None or not p.keys:
            self.exhausted.pop(provider_id, None)
            return
        now = time.time()
        counts = dict.fromkeys(STATES, 0)
        soonest: float | None = None
        for k in p.keys:
            st, until = effective(self.state_of(p.id, k.id), now)
            counts[st] += 1
            if until is not None:
                soonest = until if soonest is None else min(soonest, until)
        for state, n in counts.items():
            self.metrics.keys.labels(p.name, state).set(n)
        if counts["valid"]:
            self.exhausted.pop(provider_id, None)
            return
        if provider_id in self.exhausted and self.exhausted[provider_id] == soonest:
            return
        if provider_id not in self.exhausted:
            self.metrics.exhaustions.labels(p.name).inc()
            log.warning("provider has no usable key", extra={"provider": p.name, "soonest": soonest})
        self.exhausted[provider_id] = soonest
        self._spawn(self._publish_exhausted(KeysExhausted(provider_id=provider_id, soonest=soonest)))

    async def _publish_exhausted(self, msg: KeysExhausted) -> None:
        try:
            await self.bus.publish(self.bus.subjects.keys_exhausted, msg)
        except TRANSIENT as e:
            log.warning("could not publish keys.exhausted", extra={"error": str(e)})

    async def _on_snapshot(self, old: RegistrySnapshot | None, new: RegistrySnapshot) -> None:
        """Clear replaced / re-enabled keys and keys the registry no longer has (a signed valid state, never
        a delete), refresh gauges."""
        current = snapshot_keys(new)
        if not await wait_event(self.mirror.loaded, 5.0):
            raise TimeoutError("key-state bucket not loaded yet")  # the registry view retries
        reset = changed_keys(old, new) | {k for k in self.mirror.states if k not in current}
        for key in reset:
            if key in self.mirror.states and self.mirror.states[key][0].state != "valid":
                pid, kid = split_kv_key(key)
                log.info("clearing key state", extra={"provider_id": pid, "key_id": kid,
                                                      "why": "removed" if key not in current else "changed"})
                await self.store.clear(pid, kid)
        self.stats.forget(set(current))
        self.metrics.keys.clear()
        for p in new.providers:
            self._check_provider(p.id)
        for pid in [pid for pid in self.exhausted if pid not in self.registry.by_id]:
            del self.exhausted[pid]
