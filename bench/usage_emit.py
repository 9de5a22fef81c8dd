"""CPU the gateway pays per request to record usage, in this process, against a real NATS.

    python -m bench.usage_emit                     # nats://127.0.0.1:4222, 20,000 requests, 3 runs
    python -m bench.usage_emit --requests 50000 --runs 5 --nats nats://host:4222

Two figures, in CPU time (``time.process_time``), so a busy shared machine inflates them less than wall time:

- ``emit_group``: what the request path pays (policy, sizing, encoding, queueing) for a finished chat
  request's four events (started, prompt, tokens, ended), best of the runs; nothing is published.
- ``recorded``: emit_group plus the publisher (joining, publishing, the JetStream acks): 64 requests end every
  2 ms until all are acknowledged; median of the runs.

The stream lives under a private prefix and is deleted afterwards. Tracing is set up off, as ``aigw`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import uvloop

from aigw_common import tracing
from aigw_common.bus import Bus, Subjects
from aigw_common.schemas import (
    InterceptionEnded,
    InterceptionStarted,
    PromptRecorded,
    TokenCounts,
    TokenUsage,
    UsageEvent,
)
from aigw_gateway.recorder import Recorder
from aigw_gateway.spool import Spool
from aigw_testing.plugin import cleanup_jetstream

BURST = 64


def request_events() -> list[UsageEvent]:
    iid = uuid.uuid4().hex
    now = time.time()
    return [
        InterceptionStarted(event_id=f"{iid}.1", interception_id=iid, at=now, user_id="u-123456", group_ids=["g1"],
                            token_id="t-1", provider_id="p-1", provider_name="openai", provider_type="openai",
                            endpoint="chat_completions", model="gpt-4o-mini", client="curl",
                            credential_hint="sk-...abcd", reservation_micros=1200, gateway_id="gw-1"),
        PromptRecorded(event_id=f"{iid}.2", interception_id=iid, at=now, prompt="hello there, how are you? " * 4),
        TokenUsage(event_id=f"{iid}.3", interception_id=iid, at=now, model="gpt-4o-mini",
                   tokens=TokenCounts(input_tokens=12, output_tokens=30)),
        InterceptionEnded(event_id=f"{iid}.4", interception_id=iid, at=now, status="ok", status_code=200,
                          duration_ms=12),
    ]


async def emit_only(bus: Bus, groups: list[list[UsageEvent]], tmp: Path) -> float:
    rec = Recorder(bus, Spool(tmp / "emit-spool", 1 << 20), queue_size=len(groups) + 1)
    t = time.process_time()
    for g in groups:
        rec.emit_group(g)
    cpu = time.process_time() - t
    rec.spool.close()
    return cpu / len(groups)


async def recorded(bus: Bus, groups: list[list[UsageEvent]], tmp: Path) -> float:
    rec = Recorder(bus, Spool(tmp / f"spool-{uuid.uuid4().hex}", 1 << 26))
    await rec.start()
    await asyncio.sleep(0.2)
    t, deadline = time.process_time(), time.monotonic() + 120
    for k in range(0, len(groups), BURST):
        for g in groups[k:k + BURST]:
            rec.emit_group(g)
        await asyncio.sleep(0.002)
    while (not rec._queue.empty() or rec.in_flight) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    cpu = time.process_time() - t
    if rec.spooled:
        raise SystemExit(f"{rec.spooled} messages spooled: NATS did not keep up, the figure would be wrong")
    await rec.stop()
    return cpu / len(groups)


async def main(args: argparse.Namespace) -> None:
    tracing.setup_tracing("bench", {})
    prefix = f"bench{uuid.uuid4().hex[:10]}"
    bus = Bus(servers=(args.nats,), name="bench-usage-emit", subjects=Subjects(prefix))
    await bus.start(wait=5)
    if not bus.connected:
        raise SystemExit(f"cannot connect to NATS at {args.nats}")
    try:
        await bus.ensure_usage_stream()
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            emit, full = [], []
            for _ in range(args.runs):
                groups = [request_events() for _ in range(args.requests)]
                emit.append(await emit_only(bus, groups, tmp))
                full.append(await recorded(bus, [request_events() for _ in range(args.requests)], tmp))
        print(f"emit_group  {min(emit) * 1e6:6.2f} µs per request (best of {args.runs})")
        print(f"recorded    {statistics.median(full) * 1e6:6.2f} µs per request (median of {args.runs}: "
              f"{', '.join(f'{x * 1e6:.1f}' for x in full)})")
    finally:
        await bus.close()
        await cleanup_jetstream(args.nats, prefix)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=3)
    uvloop.run(main(p.parse_args()))
