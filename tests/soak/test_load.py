"""Soak: the gateway at a fixed rate for 10 minutes (streamed and not), against the real stack.

The gateway runs as its own process so its resident memory can be watched; registry, keypool and budget
run in this process, the LLM is the fixture mock. Fails on any failed request, on a p99 latency over
``P99_BOUND``, on RSS growth after warm-up over ``RSS_GROWTH_BOUND``, or if any usage event did not reach
the budget tables exactly once. Prints RSS over time.

    make soak                                   # 10 minutes, rewrites docs/reliability.md
    make soak SOAK_ARGS=--soak-seconds=60       # a short run
    SOAK_SECONDS=60 .venv/bin/pytest -m soak tests/soak -p no:xdist -s
"""

from __future__ import annotations

import asyncio
import os
import time

import openai
import pytest

from aigw_testing.system import ServiceProcess, System, Traffic

RATE = 20.0  # requests per second, every other one streamed
P99_BOUND = 1.0  # seconds, to the end of the answer (the mock answers at once: this is the gateway's doing)
RSS_GROWTH_BOUND = 16 * 1024 * 1024  # bytes, from the end of warm-up to the end
SAMPLE_EVERY = 5.0


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    opt = request.config.getoption("--soak-seconds")
    return float(opt if opt is not None else os.environ.get("SOAK_SECONDS", "600"))


@pytest.mark.soak
@pytest.mark.timeout(0)
async def test_gateway_soak_at_fixed_rate(start_system, tmp_path, soak_seconds: float, reliability) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=("registry", "keypool", "budget"))
    gw = await ServiceProcess("gateway", s.env, tmp_path / "gateway.log").start()
    try:
        m = await s.member("soak")
        client = openai.AsyncOpenAI(base_url=gw.url + "/openai/v1", api_key=m.token, max_retries=0, timeout=30)
        warmup = min(60.0, soak_seconds * 0.2)
        traffic = Traffic(client, RATE).start()
        t0 = time.monotonic()
        samples: list[tuple[float, int]] = []
        while (elapsed := time.monotonic() - t0) < soak_seconds:
            samples.append((elapsed, gw.rss()))
            done = len(traffic.outcomes)
            print(f"t={elapsed:6.0f}s  gateway RSS {samples[-1][1] / 2**20:7.1f} MiB  requests {done:6d}  "
                  f"failed {len(traffic.failures())}", flush=True)
            await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, soak_seconds - elapsed)))
        outcomes = await traffic.stop()
        samples.append((time.monotonic() - t0, gw.rss()))
        failed = traffic.failures()
        p50, p99 = traffic.p(0.50), traffic.p(0.99)
        after_warmup = [rss for t, rss in samples if t >= warmup]
        base = after_warmup[0] if after_warmup else samples[0][1]
        growth = samples[-1][1] - base
        peak = max(rss for _, rss in samples)
        print(f"requests {len(outcomes)} ({len(outcomes) / soak_seconds:.1f}/s), failed {len(failed)}, "
              f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, RSS after warm-up {base / 2**20:.1f} MiB, "
              f"at the end {samples[-1][1] / 2**20:.1f} MiB (growth {growth / 2**20:+.1f} MiB), peak {peak / 2**20:.1f} MiB")
        ledger = await s.ledger(expect=len(outcomes), timeout=120)
        assert not failed, f"{len(failed)} of {len(outcomes)} requests failed, e.g. {failed[:3]}"
        assert p99 <= P99_BOUND, f"p99 {p99:.3f} s over the bound of {P99_BOUND} s"
        assert growth <= RSS_GROWTH_BOUND, f"gateway RSS grew {growth / 2**20:.1f} MiB after warm-up " \
                                           f"(bound {RSS_GROWTH_BOUND / 2**20:.0f} MiB)"
        assert ledger.by_status() == {"ok": len(outcomes)}, ledger.by_status()
        reliability.record(
            f"Load: {RATE:g} req/s, half streamed (gateway process)",
            client=f"{soak_seconds / 60:g} min, {len(outcomes)} requests, {len(failed)} failed; p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
                   f"(bound {P99_BOUND * 1000:.0f} ms)",
            usage=f"{ledger.events} events of {len(outcomes)} interceptions, each applied once",
            measured=f"gateway RSS {base / 2**20:.0f} MiB after {warmup:.0f} s warm-up → {samples[-1][1] / 2**20:.0f} "
                     f"MiB at the end ({growth / 2**20:+.1f} MiB; bound +{RSS_GROWTH_BOUND / 2**20:.0f} MiB), "
                     f"peak {peak / 2**20:.0f} MiB")
    finally:
        await gw.stop()
