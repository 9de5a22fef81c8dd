"""Single-flight lease traffic: at most one request to the budget service per lease holder at a time.

A budget lease and a limit subject both refill in the background, renew, and hand back what they do not
use; two requests for one holder at once would race on its sequence number and its counters. A refill
asked for while a request runs is not dropped: it is remembered and made, once, when that request returns
(however many were asked for meanwhile).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

Outcome = Literal["done", "retry", "stop"]  # one refill round: finished / go again now / give up (an error)
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Flight:
    """The busy flag of one lease holder, and the loop that coalesces refills behind it."""

    __slots__ = ("_again", "busy")

    def __init__(self) -> None:
        self.busy = False  # a request is in flight
        self._again = False  # a refill was asked for meanwhile

    def refill(self, spawn: Spawn, round_: Callable[[int], Awaitable[Outcome]], need: int) -> None:
        """Run refill rounds in the background (``spawn``), starting with ``need``; if refill rounds are already
        running, one more round follows the current one instead. While a hand-back (:meth:`claim`) holds the
        flight nothing is made: the callers ask again (waiting admissions and the maintenance tick do)."""
        if self.busy:
            self._again = True
            return
        self.busy = True
        spawn(self._refill(round_, need))

    async def _refill(self, round_: Callable[[int], Awaitable[Outcome]], need: int) -> None:
        try:
            while True:
                self._again = False
                outcome = await round_(need)
                if outcome == "retry":
                    continue
                if outcome == "stop" or not self._again:
                    return
                need = 0  # what was needed is asked for; the extra round only reports and tops up
        finally:
            self.busy = False

    def claim(self) -> bool:
        """Take the flight for one other request (a hand-back); False when one is in flight already."""
        if self.busy:
            return False
        self.busy = True
        return True

    async def holding(self, request: Awaitable[None]) -> None:
        """Run the request :meth:`claim` was for, and free the flight after it."""
        try:
            await request
        finally:
            self.busy = False
