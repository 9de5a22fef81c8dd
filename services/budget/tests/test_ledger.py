"""Lease arithmetic: the pure decision, then grants in Postgres with several gateways and recorded costs."""

from __future__ import annotations

import time

import asyncpg
import pytest

from aigw_budget.ledger import Ledger, decide
from aigw_budget.names import Directory
from aigw_budget.periods import month_of
from aigw_budget.recorder import PriceBook, Recorder
from aigw_common.bus import Bus
from aigw_common.schemas import LeaseItem, ModelPrice

NOW = time.time()
PERIOD = month_of(NOW).start.timestamp()


def item(seq: int = 1, consumed: int = 0, inflight: int = 0, target: int = 0, need: int = 0,
         scope: str = "group", sid: str = "g1", period: float = PERIOD) -> LeaseItem:
    return LeaseItem(scope=scope, subject_id=sid, period_start=period, seq=seq, consumed_micros=consumed,  # type: ignore[arg-type]
                     inflight_micros=inflight, target_micros=target, need_micros=need)


def base(**kw):  # type: ignore[no-untyped-def]
    d = dict(limit=1000, spent=0, others_held=0, others_idle=0, others_active=0, own_granted=0, own_active=True,
             own_recorded=0)
    d.update(kw)
    return d


def test_need_first_then_a_share_of_the_rest() -> None:
    d = decide(**base(others_active=2), item=item(target=500, need=100))
    # need 100 granted, then a third... of the remaining 900 split with the 2 others and a spare: 900 // 4 = 225
    assert d.granted == 325 and not d.exhausted and not d.reclaim


def test_never_beyond_free_room() -> None:
    d = decide(**base(spent=600, others_held=300), item=item(target=500, need=200))
    assert d.granted == 100 and d.exhausted  # 1000 - 600 - 300


def test_idle_headroom_elsewhere_means_reclaim_not_refusal() -> None:
    d = decide(**base(spent=600, others_held=400, others_idle=250), item=item(target=300, need=200))
    assert d.granted == 0 and d.reclaim and not d.exhausted
    # even when the idle headroom would not cover the whole need
    d = decide(**base(spent=600, others_held=300, others_idle=50), item=item(target=300, need=200))
    assert d.granted == 100 and d.reclaim and not d.exhausted


def test_release_and_floor() -> None:
    d = decide(**base(own_granted=400), item=item(consumed=100, inflight=50, target=150))
    assert d.granted == 150
    # never below what is already used, even when the budget has been overspent
    d = decide(**base(spent=2000, own_granted=400), item=item(consumed=300, inflight=100, target=1000, need=0))
    assert d.granted == 400


def test_recorded_cost_of_own_lease_is_not_counted_twice() -> None:
    # 300 of this lease's grant is already recorded in spent: the lease may grow to the whole limit
    d = decide(**base(spent=300, own_granted=300, own_recorded=300), item=item(consumed=300, target=1000, need=700))
    assert d.granted == 1000 and not d.exhausted


def test_expired_lease_restarts_from_what_was_used() -> None:
    d = decide(**base(own_granted=900, own_active=False), item=item(consumed=100, inflight=0, target=100))
    assert d.granted == 100


@pytest.fixture
async def ledger(pool: asyncpg.Pool, bus: Bus) -> Ledger:
    await pool.execute("INSERT INTO group_ai_budgets (group_id, spend_limit_micros) VALUES ('g1', 1000000)")
    return Ledger(pool, Directory(bus), ttl=30, grace=60)  # no registry on this bus: names are ids


async def test_two_gateways_never_hold_more_than_the_limit(ledger: Ledger) -> None:
    a, _ = await ledger.grant("gwA", item(seq=1, target=900_000, need=600_000), now=NOW)
    b, _ = await ledger.grant("gwB", item(seq=1, target=900_000, need=600_000), now=NOW)
    assert a.granted_micros >= 600_000 and a.granted_micros + b.granted_micros <= 1_000_000
    assert b.exhausted or b.retry_in is not None
    assert a.name == "g1" and a.limit_micros == 1_000_000 and a.period_start == PERIOD
    # a releases what it does not use; b then gets its need
    await ledger.grant("gwA", item(seq=2, consumed=0, inflight=100_000, target=100_000), now=NOW)
    b2, _ = await ledger.grant("gwB", item(seq=2, target=700_000, need=600_000), now=NOW)
    assert b2.granted_micros >= 600_000 and not b2.exhausted


async def test_stale_sequence_changes_nothing(ledger: Ledger) -> None:
    g1, _ = await ledger.grant("gwA", item(seq=5, target=100_000, need=100_000), now=NOW)
    g2, _ = await ledger.grant("gwA", item(seq=4, target=900_000, need=900_000), now=NOW)
    assert g2.granted_micros == g1.granted_micros == 100_000 and g2.retry_in == 0.0


async def test_expired_lease_counts_during_grace_then_frees(ledger: Ledger) -> None:
    await ledger.grant("gwA", item(seq=1, target=1_000_000, need=1_000_000), now=NOW)
    # gwA is gone: during the grace period its lease still holds the money
    b, _ = await ledger.grant("gwB", item(seq=1, target=500_000, need=500_000), now=NOW + 45)
    assert b.granted_micros == 0 and b.exhausted
    b, _ = await ledger.grant("gwB", item(seq=2, target=500_000, need=500_000), now=NOW + 30 + 60 + 1)
    assert b.granted_micros == 500_000


async def test_recorded_cost_moves_from_held_to_spent(ledger: Ledger, pool: asyncpg.Pool, ev) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder(pool, PriceBook([ModelPrice(model="m1", input_per_mtok_micros=0, output_per_mtok_micros=1_000_000,
                                               cache_read_per_mtok_micros=0, cache_write_per_mtok_micros=0)]))
    await ledger.grant("gwA", item(seq=1, target=400_000, need=400_000), now=NOW)
    await rec.apply(ev.started("i1", "u1", ["g1"], model="m1", gateway_id="gwA", at=NOW))
    await rec.apply(ev.tokens("i1", 0, model="m1", output_tokens=300_000, at=NOW))
    st = (await ledger.states([("group", "g1")], now=NOW))[0]
    assert st.spent_micros == 300_000 and st.reserved_micros == 100_000  # held = granted - recorded
    b, _ = await ledger.grant("gwB", item(seq=1, target=600_000, need=600_000), now=NOW)
    assert b.granted_micros == 600_000  # 1_000_000 - 300_000 spent - 100_000 still held by gwA


async def test_unknown_budget_and_states(ledger: Ledger) -> None:
    g, _ = await ledger.grant("gwA", item(scope="user", sid="nobody", target=10), now=NOW)
    assert not g.found
    states = await ledger.states([("group", "g1"), ("user", "nobody")], now=NOW, include_deleted=True)
    by = {(s.scope, s.subject_id): s for s in states}
    assert not by[("group", "g1")].deleted and by[("user", "nobody")].deleted
