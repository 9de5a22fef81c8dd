"""The outbox relay: publish committed events, then mark them sent.

Rows are claimed with ``FOR UPDATE SKIP LOCKED``, so several replicas relay
without publishing a row twice at once; a crash after publishing and before
marking re-publishes on the next run, which consumers tolerate (revisions are
compared, evictions are idempotent). The relay wakes right after a local
commit and otherwise polls, which also picks up rows another instance
committed but never published.
"""

from __future__ import annotations

import logging

import asyncpg
from nats.errors import ConnectionClosedError, FlushTimeoutError
from nats.errors import TimeoutError as NatsTimeout

from aigw_common.aio import wait_event
from aigw_common.bus import Bus, decode
from aigw_common.errors import BusError
from aigw_common.metrics import CollectorRegistry, Counter, Gauge

from .core import OutboxMessage, Registry

log = logging.getLogger(__name__)

BATCH = 100
KEEP_SENT = "1 day"


def _subject(bus: Bus, kind: str) -> str:
    if kind == "providers.changed":
        return bus.subjects.providers_changed
    if kind == "auth.revoked":
        return bus.subjects.auth_revoked
    if kind == "directory.changed":
        return bus.subjects.directory_changed
    raise ValueError(f"unknown outbox kind {kind!r}")


async def publish_pending(reg: Registry, bus: Bus) -> int:
    """Publish up to one batch of unsent events in order; returns how many were sent."""
    async with reg.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT id, kind, payload FROM registry.outbox WHERE sent_at IS NULL ORDER BY id"
            f" LIMIT {BATCH} FOR UPDATE SKIP LOCKED")
        if not rows:
            return 0
        for r in rows:
            msg = decode(r["payload"], OutboxMessage)
            await bus.publish(_subject(bus, r["kind"]), msg)
        nc = bus.nc
        if nc is None:
            raise BusError("not connected to NATS")
        try:
            await nc.flush(timeout=5)
        except (FlushTimeoutError, ConnectionClosedError, NatsTimeout, TimeoutError) as e:
            raise BusError(f"flush after publishing the outbox failed: {e}") from e
        await conn.execute("UPDATE registry.outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                           [r["id"] for r in rows])
    return len(rows)


async def prune(reg: Registry) -> None:
    await reg.pool.execute(f"DELETE FROM registry.outbox WHERE sent_at < now() - interval '{KEEP_SENT}'")


class Relay:
    def __init__(self, reg: Registry, bus: Bus, metrics_registry: CollectorRegistry, *, poll: float = 1.0) -> None:
        self.reg, self.bus, self.poll = reg, bus, poll
        self.sent = Counter("aigw_registry_outbox_published_total", "Outbox events published",
                            registry=metrics_registry)
        self.pending = Gauge("aigw_registry_outbox_pending", "Outbox events not yet published (last seen)",
                             registry=metrics_registry)

    async def run(self) -> None:
        delay = self.poll
        rounds = 0
        while True:
            await wait_event(self.reg.outbox_wake, delay)
            self.reg.outbox_wake.clear()
            if not self.bus.connected:
                delay = self.poll
                continue
            try:
                while (n := await publish_pending(self.reg, self.bus)) == BATCH:
                    self.sent.inc(n)
                self.sent.inc(n)
                self.pending.set(0)
                delay = self.poll
                rounds += 1
                if rounds % 3600 == 0:
                    await prune(self.reg)
            except (BusError, asyncpg.PostgresError, OSError) as e:
                self.pending.set(await self._count_pending())
                log.warning("outbox relay failed; will retry", extra={"error": str(e)})
                delay = min(delay * 2, 10.0)

    async def _count_pending(self) -> int:
        try:
            return int(await self.reg.pool.fetchval("SELECT count(*) FROM registry.outbox WHERE sent_at IS NULL"))
        except (asyncpg.PostgresError, OSError):
            return -1
