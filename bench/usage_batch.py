"""What applying usage costs Postgres and the budget process, per request, by batch size.

    python -m bench.usage_batch                      # batches of 1, 16 and 256 requests
    python -m bench.usage_batch --sizes 1,64 --requests 4000 --leases

``BatchRecorder.apply_batch`` (the budget consumer's handler, without NATS) applies requests as gateways
record them (started, prompt, tokens, ended; a user and a group each) on a fresh database at the machine's
Postgres (127.0.0.1:5432). Postgres's share is the CPU time of the one backend doing the work, read from
``/proc/<pid>/schedstat`` (so the machine's other load does not count); the budget's is this process's CPU
time. A batch of 1 is the low-rate case (one request per transaction), 256 the consumer's largest batch.
``--leases``: every user holds a budget lease of the gateway, so each batch credits leases too.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import asyncpg

from aigw_budget.app import MIGRATIONS
from aigw_budget.batch import BatchRecorder
from aigw_budget.periods import month_of
from aigw_budget.recorder import PriceBook, Recorder
from aigw_common.db import create_pool, migrate
from aigw_common.schemas import (
    AnyUsageEvent,
    InterceptionEnded,
    InterceptionStarted,
    PromptRecorded,
    TokenCounts,
    TokenUsage,
)
from aigw_testing.infra import Infra


def backend_cpu(pid: int) -> float:
    """Seconds of CPU the Postgres backend ``pid`` has used."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def request(i: int) -> list[AnyUsageEvent]:
    iid = uuid.uuid4().hex
    at = time.time()
    return [
        InterceptionStarted(event_id=f"{iid}.1", interception_id=iid, at=at, user_id=f"u{i % 200}",
                            group_ids=[f"g{i % 10}"], token_id=f"t{i % 200}", provider_id="p1",
                            provider_name="openai", provider_type="openai", endpoint="chat_completions",
                            model="gpt-4.1", gateway_id="gw1"),
        PromptRecorded(event_id=f"{iid}.2", interception_id=iid, at=at, prompt="how many angels? " * 8),
        TokenUsage(event_id=f"{iid}.3", interception_id=iid, at=at, model="gpt-4.1",
                   tokens=TokenCounts(input_tokens=19, output_tokens=200)),
        InterceptionEnded(event_id=f"{iid}.4", interception_id=iid, at=at, status="ok", status_code=200,
                          duration_ms=120),
    ]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,16,256", help="requests per batch, comma list")
    ap.add_argument("--requests", type=int, default=2000, help="requests applied per batch size")
    ap.add_argument("--leases", action="store_true", help="every user holds a lease of the gateway")
    args = ap.parse_args()

    infra = Infra()
    admin = infra.pg_admin_url()
    db = f"aigw_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    try:
        # one connection, so one backend does all the work
        pool = await create_pool(admin.rsplit("/", 1)[0] + "/" + db, min_size=1, max_size=1,
                                 server_settings={"search_path": "budget"})
        try:
            async with pool.acquire() as c:
                await migrate(c, *MIGRATIONS)
                if args.leases:
                    period = month_of(time.time()).start
                    await c.executemany(
                        "INSERT INTO leases (scope, subject_id, period_start, gateway_id, expires_at)"
                        " VALUES ('user', $1, $2, 'gw1', now() + interval '1 day')",
                        [(f"u{i}", period) for i in range(200)])
            recorder = Recorder(pool, PriceBook())
            await recorder.prices.load(pool)
            batches = BatchRecorder(recorder)
            for i in range(200):  # warm: statements prepared, caches filled
                await batches.apply_batch(request(i))
            print(f"usage batches ({args.requests} requests per size{', leases' if args.leases else ''}):"
                  " CPU ms per request")
            for n in (int(x) for x in args.sizes.split(",")):
                todo = [[ev for k in range(n) for ev in request(j * n + k)] for j in range(max(1, args.requests // n))]
                async with pool.acquire() as c:
                    pid = await c.fetchval("SELECT pg_backend_pid()")
                pg0, py0 = backend_cpu(pid), time.process_time()
                for evs in todo:
                    await batches.apply_batch(evs)
                reqs = len(todo) * n
                async with pool.acquire() as c:
                    if await c.fetchval("SELECT pg_backend_pid()") != pid:  # asyncpg's max_queries
                        raise SystemExit("the pool replaced its connection mid-measurement: use fewer --requests")
                print(f"  batch {n:4d}:  postgres {1000 * (backend_cpu(pid) - pg0) / reqs:6.3f}"
                      f"   budget {1000 * (time.process_time() - py0) / reqs:6.3f}")
        finally:
            await pool.close()
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()
        infra.stop()


if __name__ == "__main__":
    asyncio.run(main())
