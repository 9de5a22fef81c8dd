"""The gateway's limit guard on its own (real NATS, no budget service): memory-only admission while a grant has
room, and the documented fallback when the budget service cannot be asked — each whole limit, locally."""

from __future__ import annotations

import time

from aigw_common.bus import Bus
from aigw_common.metrics import new_registry
from aigw_common.schemas import Identity, LimitsState, TokenCounts
from aigw_gateway.limits import LimitGuard, window_of

USER = Identity(user_id="u1", username="u1", roles=["member"], group_ids=["g1"], token_id="t1")


def _lease_requests(guard: LimitGuard) -> float:
    return sum(s.value for m in guard.lease_requests.collect() for s in m.samples if s.name.endswith("_total"))


async def test_without_a_budget_service_each_whole_limit_holds_locally(bus: Bus) -> None:
    guard = LimitGuard(bus, new_registry(), wait=0.5, request_timeout=0.3)
    guard._apply_state(LimitsState(scope="group", subject_id="g1", requests_per_minute=3, concurrent_requests=2))
    first = await guard.acquire(USER)  # asks, gets no answer, then enforces the whole limit here
    assert first.allowed
    second = await guard.acquire(USER)
    assert second.allowed
    third = await guard.acquire(USER)  # two running: the concurrency limit
    assert not third.allowed and third.retry_after == 1.0 and "concurrent" in third.message
    guard.settle(first, TokenCounts(input_tokens=5))
    assert (await guard.acquire(USER)).allowed  # third request of the minute
    fourth = await guard.acquire(USER)
    assert not fourth.allowed and "3 requests per minute" in fourth.message and 1 <= fourth.retry_after <= 60


async def test_no_limit_no_work(bus: Bus) -> None:
    guard = LimitGuard(bus, new_registry())
    guard._apply_state(LimitsState(scope="user", subject_id="someone-else", requests_per_minute=1))
    for _ in range(100):
        d = guard.admit(USER)
        assert d.allowed and d.ticket is None
    assert _lease_requests(guard) == 0


async def test_a_grant_with_room_admits_without_asking(bus: Bus) -> None:
    guard = LimitGuard(bus, new_registry())
    guard._apply_state(LimitsState(scope="user", subject_id="u1", requests_per_minute=1000))
    s = guard.subjects[("user", "u1")]


    s.roll(window_of(time.time()))
    s.req_granted = 500  # as if granted by the service
    s.flight.busy = True  # any refill would be queued, not sent: admission itself must not need one
    for _ in range(400):
        assert guard.admit(USER).allowed
    assert s.req_used == 400 and _lease_requests(guard) == 0
