"""Recording logic against real Postgres, without a broker: idempotence, out-of-order events, attribution."""

from __future__ import annotations

import time

import asyncpg
import pytest

from aigw_budget.errors import RecordError
from aigw_budget.periods import month_of
from aigw_budget.recorder import PriceBook, Recorder
from aigw_common.db import create_pool
from aigw_common.errors import DatabaseUnavailable
from aigw_common.schemas import ModelPrice, PromptRecorded, ToolUsage
from aigw_testing.faultproxy import FaultProxy

PRICE = ModelPrice(model="m1", input_per_mtok_micros=1_000_000, output_per_mtok_micros=4_000_000,
                   cache_read_per_mtok_micros=100_000, cache_write_per_mtok_micros=1_250_000)


@pytest.fixture
def recorder(pool: asyncpg.Pool) -> Recorder:
    return Recorder(pool, PriceBook([PRICE]))


async def spend(pool: asyncpg.Pool, scope: str, sid: str) -> int:
    return await pool.fetchval(
        "SELECT coalesce(sum(spent_micros), 0) FROM spend WHERE scope = $1 AND subject_id = $2", scope, sid) or 0


async def test_costs_tokens_and_attributes_spend_once(recorder: Recorder, pool: asyncpg.Pool, ev) -> None:  # type: ignore[no-untyped-def]
    at = time.time()
    events = [
        ev.started("i1", "u1", ["g1", "g2"], model="m1", at=at),
        ev.tokens("i1", 0, model="m1", input_tokens=1000, output_tokens=500, cache_read_tokens=10_000,
                  cache_write_tokens=2000, reasoning_tokens=100),
        ev.ended("i1"),
    ]
    for e in events:
        assert not (await recorder.apply(e)).duplicate
    for e in events:  # a replay of everything changes nothing
        assert (await recorder.apply(e)).duplicate
    row = await pool.fetchrow("SELECT * FROM interceptions WHERE id = 'i1'")
    # 1000*1 + 500*4 + 10000*0.1 + 2000*1.25 = 1000 + 2000 + 1000 + 2500 = 6500 micro-USD
    assert row["cost_micros"] == 6500 and row["attributed_micros"] == 6500
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"],
            row["reasoning_tokens"]) == (1000, 500, 10_000, 2000, 100)
    assert row["status"] == "ok" and row["user_id"] == "u1" and row["group_ids"] == ["g1", "g2"]
    for scope, sid in (("user", "u1"), ("group", "g1"), ("group", "g2")):
        assert await spend(pool, scope, sid) == 6500
    period = await pool.fetchval("SELECT period_start FROM spend WHERE subject_id = 'u1'")
    assert period == month_of(at).start


async def test_tokens_before_started_are_attributed_when_started_arrives(recorder: Recorder, pool: asyncpg.Pool, ev) -> None:  # type: ignore[no-untyped-def]
    at = time.time()
    await recorder.apply(ev.ended("i2", at=at + 2))
    res = await recorder.apply(ev.tokens("i2", 0, model="m1-2025-01-01", output_tokens=1000, at=at + 1))
    assert res.budgets == []  # whose it is, is not known yet
    assert await spend(pool, "user", "u9") == 0
    await recorder.apply(ev.tokens("i2", 1, model="m1", output_tokens=1000, at=at + 1))
    res = await recorder.apply(ev.started("i2", "u9", ["g9"], model="m1", at=at))
    assert sorted(res.budgets) == [("group", "g9"), ("user", "u9")]
    assert await spend(pool, "user", "u9") == 8000 and await spend(pool, "group", "g9") == 8000
    row = await pool.fetchrow("SELECT model, status, started_at, occurred_at FROM interceptions WHERE id = 'i2'")
    assert row["model"] == "m1" and row["status"] == "ok" and row["occurred_at"] == row["started_at"]
    # a late token event after started adds only its own delta
    await recorder.apply(ev.tokens("i2", 2, model="m1", input_tokens=500, at=at + 3))
    assert await spend(pool, "user", "u9") == 8500


async def test_prompt_last_wins_and_tools_recorded(recorder: Recorder, pool: asyncpg.Pool, ev) -> None:  # type: ignore[no-untyped-def]
    at = time.time()
    await recorder.apply(PromptRecorded(event_id="p2", interception_id="i3", at=at + 1, prompt="second"))
    await recorder.apply(PromptRecorded(event_id="p1", interception_id="i3", at=at, prompt="first"))
    await recorder.apply(ToolUsage(event_id="t1", interception_id="i3", at=at, name="get_weather", call_id="c1",
                                   arguments='{"city":"Paris"}', injected=True, error="boom"))
    assert await pool.fetchval("SELECT prompt FROM interceptions WHERE id = 'i3'") == "second"
    tool = await pool.fetchrow("SELECT * FROM tool_usages WHERE interception_id = 'i3'")
    assert (tool["name"], tool["call_id"], tool["arguments"], tool["injected"], tool["error"]) == (
        "get_weather", "c1", '{"city":"Paris"}', True, "boom")


async def test_truncation_flags_are_stored_with_prompt_and_tool(recorder: Recorder, pool: asyncpg.Pool) -> None:
    at = time.time()
    await recorder.apply(PromptRecorded(event_id="pt", interception_id="i9", at=at, prompt="cut he", truncated=True))
    await recorder.apply(ToolUsage(event_id="tt", interception_id="i9", at=at, name="write", arguments='{"a": "b',
                                   truncated=True))
    await recorder.apply(ToolUsage(event_id="tu", interception_id="i9", at=at, name="read", arguments="{}"))
    assert await pool.fetchval("SELECT prompt_truncated FROM interceptions WHERE id = 'i9'") is True
    assert await pool.fetchval("SELECT truncated FROM prompts WHERE event_id = 'pt'") is True
    rows = await pool.fetch("SELECT name, truncated FROM tool_usages WHERE interception_id = 'i9' ORDER BY name")
    assert [(r["name"], r["truncated"]) for r in rows] == [("read", False), ("write", True)]


async def test_unknown_model_costs_zero_and_is_flagged(recorder: Recorder, pool: asyncpg.Pool, ev) -> None:  # type: ignore[no-untyped-def]
    await recorder.apply(ev.started("i4", model="mystery-1"))
    res = await recorder.apply(ev.tokens("i4", 0, model="mystery-1", input_tokens=10))
    assert res.unpriced
    row = await pool.fetchrow("SELECT cost_micros, unpriced FROM interceptions WHERE id = 'i4'")
    assert row["cost_micros"] == 0 and row["unpriced"]


async def test_lease_credited_with_recorded_cost(recorder: Recorder, pool: asyncpg.Pool, ev) -> None:  # type: ignore[no-untyped-def]
    at = time.time()
    period = month_of(at).start
    await pool.execute("INSERT INTO leases (scope, subject_id, period_start, gateway_id, expires_at)"
                       " VALUES ('group', 'g1', $1, 'gwA', now())", period)
    await recorder.apply(ev.started("i5", "u1", ["g1"], model="m1", gateway_id="gwA", at=at))
    await recorder.apply(ev.tokens("i5", 0, model="m1", output_tokens=250))
    assert await pool.fetchval("SELECT recorded_micros FROM leases WHERE gateway_id = 'gwA'") == 1000


async def test_rejected_data_is_not_retryable(recorder: Recorder) -> None:
    with pytest.raises(RecordError) as ei:
        await recorder.apply(PromptRecorded(event_id="bad", interception_id="i6", at=time.time(), prompt="nul\x00byte"))
    assert not ei.value.retryable


async def test_database_down_is_retryable(database_url: str, pool: asyncpg.Pool, ev) -> None:  # type: ignore[no-untyped-def]
    host, port = database_url.split("@")[1].split("/")[0].split(":")
    async with FaultProxy(host, int(port)) as proxy:
        ppool = await create_pool(proxy.rewrite(database_url), max_size=2, server_settings={"search_path": "budget"})
        rec = Recorder(ppool, PriceBook([PRICE]), acquire_timeout=2)
        await rec.apply(ev.started("i7"))
        await proxy.down()
        with pytest.raises(DatabaseUnavailable) as ei:
            await rec.apply(ev.tokens("i7", 0, input_tokens=1))
        assert ei.value.retryable
        await proxy.up()
        assert not (await rec.apply(ev.tokens("i7", 0, input_tokens=1))).duplicate
        ppool.terminate()


@pytest.mark.parametrize("event", [
    PromptRecorded(event_id="x1", interception_id="i8", at=1e300, prompt="p"),
    PromptRecorded(event_id="x2", interception_id="i8", at=-5.0, prompt="p"),
    PromptRecorded(event_id="", interception_id="i8", at=1.0, prompt="p"),
])
async def test_out_of_range_values_are_rejected_not_retried(recorder: Recorder, event) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecordError):
        await recorder.apply(event)


async def test_out_of_range_counts_are_rejected(recorder: Recorder, ev) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecordError):
        await recorder.apply(ev.tokens("i9", 0, input_tokens=2**63))
    with pytest.raises(RecordError):
        await recorder.apply(ev.tokens("i9", 1, output_tokens=-5))
