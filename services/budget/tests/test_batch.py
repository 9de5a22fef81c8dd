"""The batch path against its oracle: applying events one by one with ``Recorder.apply``.

The same random history — interceptions with started/tokens/prompt/tool/ended
events, out of order, replayed, with a poison event among them — is applied
twice in one database under two id prefixes: one event at a time (path ``a``),
and in random batches with ``BatchRecorder`` (path ``b``). Every table must
end up the same once the prefixes are taken off.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from aigw_budget.app import MIGRATIONS
from aigw_budget.batch import BatchRecorder
from aigw_budget.periods import month_of
from aigw_budget.recorder import Applied, PriceBook, Recorder
from aigw_common.db import MigrationSet, create_pool, migrate
from aigw_common.errors import AigwError
from aigw_common.schemas import (
    AnyUsageEvent,
    InterceptionEnded,
    InterceptionStarted,
    ModelPrice,
    PromptRecorded,
    TokenCounts,
    TokenUsage,
    ToolUsage,
)

PRICES = [ModelPrice(model="m1", input_per_mtok_micros=1_000_000, output_per_mtok_micros=4_000_000,
                     cache_read_per_mtok_micros=100_000, cache_write_per_mtok_micros=1_250_000),
          ModelPrice(model="m2", input_per_mtok_micros=3_000_000, output_per_mtok_micros=15_000_000,
                     cache_read_per_mtok_micros=300_000, cache_write_per_mtok_micros=3_750_000)]


def history(rng: random.Random, p: str, at0: float) -> list[AnyUsageEvent]:
    """A shuffled, partly replayed history of 25 interceptions, every id prefixed with ``p``."""
    out: list[AnyUsageEvent] = []
    for n in range(25):
        iid = f"{p}i{n}"
        evs: list[AnyUsageEvent] = []
        ids = iter([f"{iid}e{k}" for k in range(1, 64)])

        has_started = rng.random() < 0.85
        if has_started:
            groups = [f"{p}g{rng.randrange(3)}" for _ in range(rng.randrange(3))]
            evs.append(InterceptionStarted(
                event_id=next(ids), interception_id=iid, at=at0 + n, user_id=f"{p}u{rng.randrange(4)}" if rng.random() < 0.9
                else None, group_ids=groups, provider_id="p1", provider_name="openai", provider_type="openai",
                endpoint="chat_completions", model=rng.choice(["m1", "m2", "mystery", ""]), gateway_id=f"{p}gw",
                metadata={"k": str(n)}, reservation_micros=rng.randrange(1000),
                key_id=rng.choice([f"k{n % 3}", None])))
        for _ in range(rng.randrange(4)):
            model = rng.choice(["m1", "m2", "mystery"] + (["", ""] if has_started else []))
            counts = TokenCounts(input_tokens=rng.randrange(5000), output_tokens=rng.randrange(2000),
                                 cache_read_tokens=rng.randrange(3000), cache_write_tokens=rng.randrange(100),
                                 reasoning_tokens=rng.randrange(50))
            evs.append(TokenUsage(event_id=next(ids), interception_id=iid, at=at0 + n + rng.random(), model=model,
                                  tokens=counts))
        for _ in range(rng.randrange(3)):
            evs.append(PromptRecorded(event_id=next(ids), interception_id=iid, at=at0 + n + rng.choice([0.0, 0.5, 0.5]),
                                      prompt=f"prompt {rng.randrange(100)}", truncated=rng.random() < 0.3))
        for _ in range(rng.randrange(3)):
            evs.append(ToolUsage(event_id=next(ids), interception_id=iid, at=at0 + n + 0.2, name=f"tool{rng.randrange(3)}",
                                 call_id=f"c{rng.randrange(10**6)}", arguments='{"x": 1}', injected=rng.random() < 0.3,
                                 error=rng.choice([None, "boom"]), truncated=rng.random() < 0.3))
        if rng.random() < 0.9:
            key = rng.choice([f"k{n % 3}", f"k{(n + 1) % 3}", None])  # the key that answered (failover may change it)
            evs.append(InterceptionEnded(event_id=next(ids), interception_id=iid, at=at0 + n + 1,
                                         status=rng.choice(["ok", "error", "cancelled", "interrupted"]), status_code=200,
                                         duration_ms=rng.randrange(5000), key_id=key,
                                         key_hint=f"sk-…{key}" if key else ""))
        out.extend(evs)
    # out of order, but a token event that names no model keeps coming after its started event
    # (by design the batch path prices such usage by the batch's started model; one-by-one cannot know it yet)
    rng.shuffle(out)
    order = {id(e): i for i, e in enumerate(out)}
    started_at = {e.interception_id: order[id(e)] for e in out if isinstance(e, InterceptionStarted)}
    out.sort(key=lambda e: (max(order[id(e)], started_at[e.interception_id] + 0.5)
                            if isinstance(e, TokenUsage) and not e.model else order[id(e)]))
    out += rng.sample(out, 30)  # replays
    out.insert(rng.randrange(len(out)), PromptRecorded(event_id=f"{p}poison", interception_id=f"{p}i0",
                                                         at=at0, prompt="nul\x00byte"))
    return out


async def snapshot(pool: asyncpg.Pool, p: str) -> dict[str, Any]:
    """Every table's rows of prefix ``p``, with the prefix taken off."""
    tables = {
        "interceptions": "SELECT * FROM interceptions WHERE id LIKE $1 ORDER BY id",
        "processed": "SELECT e AS event_id, interception_id FROM usage_claims, unnest(event_ids) AS e"
                     " WHERE e LIKE $1 ORDER BY e",
        "tokens": "SELECT * FROM token_usages WHERE event_id LIKE $1 ORDER BY event_id",
        "prompts": "SELECT * FROM prompts WHERE event_id LIKE $1 ORDER BY event_id",
        "tools": "SELECT * FROM tool_usages WHERE event_id LIKE $1 ORDER BY event_id",
        "spend": "SELECT * FROM spend WHERE subject_id LIKE $1 ORDER BY scope, subject_id",
        "leases": "SELECT scope, subject_id, gateway_id, recorded_micros FROM leases WHERE gateway_id LIKE $1"
                  " ORDER BY scope, subject_id",
    }
    out = {}
    for name, sql in tables.items():
        rows = [dict(r) for r in await pool.fetch(sql, p + "%")]
        text = msgspec.json.encode(rows, enc_hook=str).decode()
        out[name] = msgspec.json.decode(text.replace(f'"{p}', '"'))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_batches_end_where_one_by_one_ends(pool: asyncpg.Pool, seed: int) -> None:
    at0 = time.time() - 3600
    period = month_of(at0).start
    recorder = Recorder(pool, PriceBook(PRICES))
    batches = BatchRecorder(recorder)
    for p in ("x-a-", "x-b-"):
        for scope, sid in [("user", f"{p}u{i}") for i in range(4)] + [("group", f"{p}g{i}") for i in range(3)]:
            await pool.execute("INSERT INTO leases (scope, subject_id, period_start, gateway_id, expires_at)"
                               " VALUES ($1, $2, $3, $4, now())", scope, sid, period, f"{p}gw")

    one: list[str] = []
    for ev in history(random.Random(seed), "x-a-", at0):
        try:
            one.append("dup" if (await recorder.apply(ev)).duplicate else "new")
        except AigwError:
            one.append("refused")

    rng = random.Random(seed + 100)
    events = history(random.Random(seed), "x-b-", at0)
    many: list[str] = []
    i = 0
    while i < len(events):
        n = rng.choice([1, 3, 17, 64, 200])
        res = await batches.apply_batch(events[i : i + n])
        for o in res.outcomes:
            many.append("refused" if isinstance(o, AigwError) else "dup" if isinstance(o, Applied) and o.duplicate
                        else "new")
        i += n

    assert many == one
    assert one.count("refused") == 1 and one.count("new") > 100
    a, b = await snapshot(pool, "x-a-"), await snapshot(pool, "x-b-")
    for table in a:
        for ra, rb in zip(a[table], b[table], strict=True):
            assert rb == ra, (table, {k: (ra[k], rb.get(k)) for k in ra if ra[k] != rb.get(k)})
    assert a["spend"] and any(r["recorded_micros"] for r in a["leases"])


def _request(p: str, n: int, at: float, *, user: str | None, groups: list[str]) -> list[AnyUsageEvent]:
    """One request's events as a gateway records them (started, prompt, tokens, ended), ids prefixed ``p``."""
    iid = f"{p}i{n}"
    return [
        InterceptionStarted(event_id=f"{iid}s", interception_id=iid, at=at, user_id=user, group_ids=groups,
                            provider_id="p1", provider_name="openai", provider_type="openai",
                            endpoint="chat_completions", model="m1", gateway_id=f"{p}gw", key_id="k1"),
        PromptRecorded(event_id=f"{iid}p", interception_id=iid, at=at, prompt="hello"),
        TokenUsage(event_id=f"{iid}t", interception_id=iid, at=at, model="m1",
                   tokens=TokenCounts(input_tokens=1000, output_tokens=500)),
        InterceptionEnded(event_id=f"{iid}e", interception_id=iid, at=at + 1, status="ok", status_code=200,
                          duration_ms=1000, key_id="k2", key_hint="sk-…k2"),
    ]


async def test_a_new_interception_is_written_once(pool: asyncpg.Pool) -> None:
    """A batch holding a new interception's events inserts its row complete: no second row version (an UPDATE
    here fails the batch, and the per-event fallback too)."""
    at = time.time() - 60
    period = month_of(at).start
    await pool.execute("INSERT INTO leases (scope, subject_id, period_start, gateway_id, expires_at)"
                       " VALUES ('user', 'n-u', $1, 'n-gw', now()), ('group', 'n-g', $1, 'n-gw', now())", period)
    await pool.execute("CREATE FUNCTION no_update() RETURNS trigger LANGUAGE plpgsql AS"
                       " $$BEGIN RAISE EXCEPTION 'interception updated'; END$$;"
                       " CREATE TRIGGER no_update BEFORE UPDATE ON interceptions"
                       " FOR EACH ROW EXECUTE FUNCTION no_update()")
    batches = BatchRecorder(Recorder(pool, PriceBook(PRICES)))
    events = _request("n-", 1, at, user="n-u", groups=["n-g"]) + _request("n-", 2, at, user=None, groups=[])
    res = await batches.apply_batch(events)
    assert res.outcomes == [Applied(duplicate=False, budgets=[]) for _ in events]
    rows = await pool.fetch("SELECT * FROM interceptions ORDER BY id")
    cost = 1000 * 1 + 500 * 4  # m1: 1 and 4 µ$ per token
    assert [(r["cost_micros"], r["attributed_micros"], r["key_id"], r["credential_hint"], r["prompt"], r["status"])
            for r in rows] == [(cost, cost, "k2", "sk-…k2", "hello", "ok"), (cost, 0, "k2", "sk-…k2", "hello", "ok")]
    assert sorted(tuple(r) for r in await pool.fetch("SELECT scope, subject_id, spent_micros FROM spend")) == \
        [("group", "n-g", cost), ("user", "n-u", cost)]
    assert sorted(tuple(r) for r in await pool.fetch("SELECT scope, recorded_micros FROM leases")) == \
        [("group", cost), ("user", cost)]
    res = await batches.apply_batch(events)  # a replay changes nothing
    assert res.outcomes == [Applied(duplicate=True, budgets=[]) for _ in events]
    assert await pool.fetchval("SELECT sum(spent_micros) FROM spend") == 2 * cost


async def test_cost_without_a_budget_stays_unattributed_as_one_by_one(pool: asyncpg.Pool) -> None:
    """A started event naming no user and no group leaves the cost unattributed on both paths, whether the
    interception is new to the batch or was created by an earlier one."""
    at = time.time() - 60
    recorder = Recorder(pool, PriceBook(PRICES))
    batches = BatchRecorder(recorder)
    for ev in _request("u-a-", 1, at, user=None, groups=[""]) + _request("u-a-", 2, at, user=None, groups=[]):
        await recorder.apply(ev)
    first = _request("u-b-", 1, at, user=None, groups=[""])
    later = _request("u-b-", 2, at, user=None, groups=[])
    await batches.apply_batch(first + later[2:])
    await batches.apply_batch(later[:2])
    a, b = await snapshot(pool, "u-a-"), await snapshot(pool, "u-b-")
    assert a == b
    assert [r["attributed_micros"] for r in b["interceptions"]] == [0, 0]


# what the previous release's budget replicas run to claim an event (they may run beside this one in a rolling
# upgrade, and wrote every event applied before it)
_OLD_CLAIM = ("INSERT INTO processed_events (event_id, interception_id, kind) VALUES ($1, $2, 'usage')"
              " ON CONFLICT (event_id) DO NOTHING RETURNING true")


async def test_previous_release_replicas_and_this_one_claim_each_event_once(pool: asyncpg.Pool) -> None:
    at = time.time() - 60
    batches = BatchRecorder(Recorder(pool, PriceBook(PRICES)))
    events = _request("o-", 1, at, user="o-u", groups=[])
    await batches.apply_batch(events[:2])
    async with pool.acquire() as conn, conn.transaction():  # an old replica gets the started event again
        assert await conn.fetchval(_OLD_CLAIM, events[0].event_id, events[0].interception_id) is None
    async with pool.acquire() as conn, conn.transaction():  # … and the token event first: it claims it
        assert await conn.fetchval(_OLD_CLAIM, events[2].event_id, events[2].interception_id) is True
    res = await batches.apply_batch(events)
    assert res.outcomes == [Applied(duplicate=d, budgets=[]) for d in (True, True, True, False)]
    assert await pool.fetchval("SELECT event_ids FROM usage_claims") == [ev.event_id for ev in events]


async def test_events_applied_before_the_upgrade_stay_applied(database_url: str, tmp_path: Path) -> None:
    """The claims migration takes over every event id the previous schema recorded in processed_events."""
    for f in MIGRATIONS[0].files():
        if f.name < "0006":
            (tmp_path / f.name).write_text(f.read_text())
    pool = await create_pool(database_url, max_size=2, server_settings={"search_path": "budget"})
    try:
        async with pool.acquire() as conn:
            await migrate(conn, MigrationSet("budget", tmp_path))
            at = time.time() - 60
            events = _request("m-", 1, at, user="m-u", groups=[]) + _request("m-", 2, at, user="m-u", groups=[])
            async with conn.transaction():  # the previous release applied m-i1 whole and m-i2's start
                for ev in events[:5]:
                    await conn.execute("INSERT INTO interceptions (id, occurred_at) VALUES ($1, now())"
                                       " ON CONFLICT DO NOTHING", ev.interception_id)
                    assert await conn.fetchval(_OLD_CLAIM, ev.event_id, ev.interception_id)
            await migrate(conn, *MIGRATIONS)
        res = await BatchRecorder(Recorder(pool, PriceBook(PRICES))).apply_batch(events)
        assert [isinstance(o, Applied) and o.duplicate for o in res.outcomes] == [True] * 5 + [False] * 3
    finally:
        await pool.close()
