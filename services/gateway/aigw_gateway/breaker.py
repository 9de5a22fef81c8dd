"""Circuit breakers per provider + endpoint + model.

Only 503, 504 and 529 count as failures (429 is the key pool's business).
Closed: trips after ``failure_threshold`` consecutive failures (the count
resets every ``interval``). Open: rejects for ``timeout`` seconds. Half-open:
lets ``max_requests`` through; any failure re-opens, that many successes close.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from aigw_common.settings import BreakerSettings

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half_open"}
FAILURE_STATUSES = frozenset({503, 504, 529})


@dataclass(slots=True)
class Breaker:
    cfg: BreakerSettings
    state: int = CLOSED
    failures: int = 0
    window_start: float = 0.0
    opened_at: float = 0.0
    half_open_admitted: int = 0
    half_open_successes: int = 0

    def allow(self, now: float) -> bool:
        if self.state == OPEN:
            if now - self.opened_at < self.cfg.timeout:
                return False
            self.state, self.half_open_admitted, self.half_open_successes = HALF_OPEN, 0, 0
        if self.state == HALF_OPEN:
            if self.half_open_admitted >= self.cfg.max_requests:
                return False
            self.half_open_admitted += 1
        return True

    def release(self) -> None:
        """An admitted request ended without an outcome (client went away): give its half-open slot back."""
        if self.state == HALF_OPEN and self.half_open_admitted > 0:
            self.half_open_admitted -= 1

    def retry_after(self, now: float) -> float:
        if self.state == OPEN:
            return max(1.0, self.cfg.timeout - (now - self.opened_at))
        return 1.0

    def record(self, failed: bool, now: float) -> bool:
        """Returns True when this outcome tripped the breaker open."""
        if self.state == HALF_OPEN:
            if failed:
                self.state, self.opened_at = OPEN, now
                return True
            self.half_open_successes += 1
            if self.half_open_successes >= self.cfg.max_requests:
                self.state, self.failures, self.window_start = CLOSED, 0, now
            return False
        if self.state == OPEN:
            return False
        if self.cfg.interval > 0 and now - self.window_start >= self.cfg.interval:
            self.failures, self.window_start = 0, now
        if not failed:
            self.failures = 0
            return False
        self.failures += 1
        if self.failures >= self.cfg.failure_threshold:
            self.state, self.opened_at = OPEN, now
            return True
        return False


StateHook = Callable[[tuple[str, str, str], int], None]


MAX_BREAKERS = 2_048


@dataclass(slots=True)
class Breakers:
    """The breakers, least recently used first: model names come from clients, so the map is an LRU of at
    most ``max_entries`` (a flood of invented names evicts only breakers nobody uses; a model in use stays
    at the recent end with its state)."""

    cfg: BreakerSettings
    on_state: StateHook | None = None
    max_entries: int = MAX_BREAKERS
    _by_key: OrderedDict[tuple[str, str, str], Breaker] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, provider: str, endpoint: str, model: str) -> Breaker | None:
        if not self.cfg.enabled:
            return None
        key = (provider, endpoint, model)
        b = self._by_key.get(key)
        if b is None:
            b = self._by_key[key] = Breaker(self.cfg, window_start=time.monotonic())
            if len(self._by_key) > self.max_entries:
                self._by_key.popitem(last=False)
        else:
            self._by_key.move_to_end(key)
        return b

    def allow(self, b: Breaker | None, key: tuple[str, str, str]) -> bool:
        if b is None:
            return True
        before = b.state
        ok = b.allow(time.monotonic())
        if b.state != before and self.on_state:
            self.on_state(key, b.state)
        return ok

    def record(self, b: Breaker | None, key: tuple[str, str, str], status: int) -> bool:
        if b is None:
            return False
        before = b.state
        tripped = b.record(status in FAILURE_STATUSES, time.monotonic())
        if b.state != before and self.on_state:
            self.on_state(key, b.state)
        return tripped
