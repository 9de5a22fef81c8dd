"""flight.Flight: one lease request per holder at a time; refills asked for meanwhile become one more round."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from aigw_gateway.flight import Flight, Outcome


class Rounds:
    """Refill rounds that block until released, recording the need each was run with."""

    def __init__(self, outcomes: list[Outcome] | None = None) -> None:
        self.needs: list[int] = []
        self.gate = asyncio.Event()
        self.outcomes = outcomes or []
        self.tasks: list[asyncio.Task[None]] = []

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    async def round(self, need: int) -> Outcome:
        self.needs.append(need)
        await self.gate.wait()
        return self.outcomes.pop(0) if self.outcomes else "done"


async def test_refills_while_busy_are_one_more_round() -> None:
    f, r = Flight(), Rounds()
    f.refill(r.spawn, r.round, 5)
    await asyncio.sleep(0)
    assert f.busy and r.needs == [5]
    for need in (7, 8, 9):  # asked for while the first request is in flight
        f.refill(r.spawn, r.round, need)
    assert len(r.tasks) == 1
    r.gate.set()
    await asyncio.gather(*r.tasks)
    assert r.needs == [5, 0] and not f.busy  # one extra round, which only reports and tops up


async def test_retry_keeps_the_need_and_stop_ends_even_when_asked_again() -> None:
    f, r = Flight(), Rounds(["retry", "stop"])
    f.refill(r.spawn, r.round, 3)
    await asyncio.sleep(0)
    f.refill(r.spawn, r.round, 1)
    r.gate.set()
    await asyncio.gather(*r.tasks)
    assert r.needs == [3, 3] and not f.busy


async def test_an_error_in_a_round_frees_the_flight() -> None:
    f = Flight()
    tasks: list[asyncio.Task[None]] = []

    async def boom(need: int) -> Outcome:
        raise RuntimeError("x")

    f.refill(lambda c: tasks.append(asyncio.get_running_loop().create_task(c)), boom, 1)
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], RuntimeError) and not f.busy


async def test_claim_is_exclusive_with_refills_until_the_hand_back_ends() -> None:
    f, r = Flight(), Rounds()
    assert f.claim() and not f.claim()
    f.refill(r.spawn, r.round, 2)  # a hand-back is in flight: no refill is made (callers ask again)
    assert r.tasks == [] and f.busy
    released = asyncio.Event()

    async def hand_back() -> None:
        await released.wait()

    task = asyncio.get_running_loop().create_task(f.holding(hand_back()))
    await asyncio.sleep(0)
    assert f.busy
    released.set()
    await task
    assert not f.busy and r.tasks == [] and f.claim()
