"""How fast the usage pipeline goes: JetStream publish (acked) and one budget consumer applying events.

    python -m bench.usage_pipeline                        # 2000 requests, one nats-server (R1)
    python -m bench.usage_pipeline --replicas 3           # on a local 3-node JetStream cluster (R3)
    python -m bench.usage_pipeline --interceptions 5000 --replicas 3

It publishes what gateways publish per request (one ``usage.record`` message holding the started, prompt,
tokens and ended events of one interception, with its ``Nats-Msg-Id``) to ``AIGW_USAGE`` under a private
prefix, waiting for every ack, and reports acked messages/s. Then it starts the real budget service (its ``UsageConsumer`` and ``Recorder``, in this
process) against a fresh database and reports how fast that one consumer applies the backlog: events/s and
interceptions/s, until ``budget.usage_claims`` holds every event id. docs/scaling.md uses these figures.
NATS is the ``nats-server`` binary ``aigw dev`` ships (standalone for R1, three nodes for R3); Postgres is the
machine's at 127.0.0.1:5432 when reachable, else the embedded one ``aigw dev`` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from aigw_common.bus import Bus, Subjects, encode
from aigw_common.crypto import generate_key
from aigw_common.embedded import EmbeddedNats
from aigw_common.schemas import (
    InterceptionEnded,
    InterceptionStarted,
    PromptRecorded,
    TokenCounts,
    TokenUsage,
)
from aigw_common.settings import Settings
from aigw_common.usage_wire import record_payload
from aigw_testing.buskeys import BusKeys
from aigw_testing.harness import AppHarness
from aigw_testing.infra import Infra
from aigw_testing.natscluster import NatsCluster


def record_of(i: int) -> tuple[str, bytes, str]:
    """(kind, payload, dedup id) of one request as a gateway publishes it: its events in one usage.record."""
    evs = events_of(i)
    record_id = "rec." + evs[0][2]
    return "record", record_payload(record_id, [data for _, data, _ in evs]), record_id


def events_of(i: int) -> list[tuple[str, bytes, str]]:
    """(kind, payload, event id) of one interception's events."""
    iid = uuid.uuid4().hex
    at = time.time()
    evs = [
        ("started", InterceptionStarted(event_id=uuid.uuid4().hex, interception_id=iid, at=at,
                                        user_id=f"u{i % 200}", group_ids=[f"g{i % 10}"], token_id=f"t{i % 200}",
                                        provider_id="p1", provider_name="openai", provider_type="openai",
                                        endpoint="chat_completions", model="gpt-4.1")),
        ("prompt", PromptRecorded(event_id=uuid.uuid4().hex, interception_id=iid, at=at,
                                  prompt="how many angels can dance on the head of a pin? " * 4)),
        ("tokens", TokenUsage(event_id=uuid.uuid4().hex, interception_id=iid, at=at, model="gpt-4.1",
                              tokens=TokenCounts(input_tokens=19, output_tokens=200))),
        ("ended", InterceptionEnded(event_id=uuid.uuid4().hex, interception_id=iid, at=at, status="ok",
                                    status_code=200, duration_ms=120)),
    ]
    return [(k, encode(e), e.event_id) for k, e in evs]


async def publish(bus: Bus, n: int, window: int) -> float:
    """Publish ``n`` requests' records with at most ``window`` acks outstanding; return acked messages/s."""
    js = bus.js
    sem = asyncio.Semaphore(window)
    subj = bus.subjects

    async def one(kind: str, data: bytes, eid: str) -> None:
        async with sem:
            await js.publish(subj.usage(kind), data, headers={"Nats-Msg-Id": eid}, timeout=10)

    t0 = time.monotonic()
    await asyncio.gather(*(one(*record_of(i)) for i in range(n)))
    return n / (time.monotonic() - t0)


async def consume(settings: Settings, db_url: str, total: int) -> tuple[float, float]:
    """Start the budget service; return (events/s, seconds) until it applied ``total`` events."""
    from aigw_budget.app import create_app

    apps = AppHarness()
    app = create_app(settings)
    await apps.start(app)  # migrations done and the consumer subscribed: the clock starts now
    t0 = time.monotonic()
    try:
        conn = await asyncpg.connect(db_url)
        try:
            while True:
                done = await conn.fetchval("SELECT coalesce(sum(cardinality(event_ids)), 0) FROM budget.usage_claims")
                if done >= total:
                    break
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
        took = time.monotonic() - t0
    finally:
        await apps.stop_all()
    return total / took, took


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interceptions", type=int, default=2000)
    ap.add_argument("--replicas", type=int, choices=(1, 3), default=1,
                    help="3: run a local three-node JetStream cluster and use R3 streams")
    ap.add_argument("--window", type=int, default=256, help="publishes awaiting their ack at once")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    infra = Infra()
    cluster: NatsCluster | None = None
    single: EmbeddedNats | None = None
    admin = infra.pg_admin_url()
    db = f"aigw_bench_{uuid.uuid4().hex[:8]}"
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    db_url = admin.rsplit("/", 1)[0] + "/" + db
    try:
        if args.replicas == 3:
            cluster = await NatsCluster.start(Path(tempfile.mkdtemp(prefix="aigw-bench-nats-")))
            nats_url = cluster.url
        else:  # the same nats-server binary as the cluster, standalone: the two rows compare replication only
            single = EmbeddedNats(tempfile.mkdtemp(prefix="aigw-bench-nats-"))
            nats_url = await single.start()
        env = {"AIGW_DATABASE_URL": db_url, "AIGW_NATS_URL": nats_url, "AIGW_BUS_PREFIX": prefix,
               "AIGW_JS_REPLICAS": str(args.replicas), "AIGW_ENCRYPTION_KEYS": generate_key(),
               "AIGW_DATA_DIR": tempfile.mkdtemp(prefix="aigw-bench-"), "AIGW_LOG_LEVEL": "WARNING",
               **BusKeys.generate().env()}  # the budget service signs what it publishes
        settings = Settings.from_env(env)
        bus = Bus(servers=tuple(nats_url.split(",")), name="bench", subjects=Subjects(prefix),
                  js_replicas=args.replicas)
        await bus.start(wait=10)
        try:
            await bus.ensure_usage_stream()
            total = 4 * args.interceptions
            pub = await publish(bus, args.interceptions, args.window)
            per_s, took = await consume(settings, db_url, total)
        finally:
            await bus.close()
        print(f"usage pipeline, R{args.replicas}, {args.interceptions} requests ({total} events, one usage.record"
              f" message each)")
        print(f"  JetStream publish, acked, {args.window} in flight:  {pub:8.0f} messages (requests)/s")
        print(f"  one budget consumer (its defaults):             {per_s / 4:8.0f} requests/s"
              f"  = {per_s:6.0f} events/s  ({took:.1f} s for the backlog)")
    finally:
        if cluster is not None:
            await cluster.close()
        if single is not None:
            await single.stop()
            shutil.rmtree(single.dir, ignore_errors=True)
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()
        infra.stop()


if __name__ == "__main__":
    asyncio.run(main())
