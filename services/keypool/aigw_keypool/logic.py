"""Key-state rules, free of any transport so they are tested on their own.

- A revoke wins over every mark. It ends when the registry replaces the key, when an admin resets it,
  or when keypool's re-check (a cheap authenticated call, on a doubling backoff) is accepted.
- Cooling marks race across gateways: the longest cooldown wins.
- A cooling mark whose ``until`` already passed changes nothing.
- A ``valid`` mark changes nothing: cooling ends by time.
- A rate-limit budget at zero cools the key until its reset, before the 429.

Every state says why (``reason``) so the health API can show it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from aigw_common.keystate import DEFAULT_COOLDOWN, cooled_until, kv_key
from aigw_common.schemas import KeyMarked, KeyStat, KeyState, RateLimitInfo, RegistrySnapshot

UNKNOWN_RESET = 1.0  # budget at zero but no reset header: cool briefly, the next report corrects it

# reasons
AUTH_REJECTED, RATE_LIMITED, BUDGET_EXHAUSTED = "auth_rejected", "rate_limited", "budget_exhausted"
COOLDOWN_OVER, RESET, RECOVERED = "cooldown_over", "reset", "recovered"


@dataclass(frozen=True, slots=True)
class Backoff:
    """When a revoked key is re-checked: ``first`` after the revoke, then doubling up to ``cap``."""

    first: float = 60.0
    cap: float = 3600.0

    def delay(self, refused: int) -> float:
        return min(self.first * (2 ** min(refused, 32)), self.cap)


def merge_mark(cur: KeyState | None, mark: KeyMarked, now: float, backoff: Backoff | None = None) -> KeyState | None:
    """The state after ``mark``, or None when it changes nothing."""
    backoff = backoff or Backoff()
    if mark.state == "revoked":
        if cur is not None and cur.state == "revoked":
            return None
        return KeyState(provider_id=mark.provider_id, key_id=mark.key_id, state="revoked",
                        status_code=mark.status_code, updated_at=now, reason=AUTH_REJECTED,
                        next_check_at=now + backoff.delay(0), checks=0)
    if mark.state == "cooling":
        until = mark.until if mark.until is not None else (mark.at or now) + DEFAULT_COOLDOWN
        return cool(cur, mark.provider_id, mark.key_id, until, mark.status_code, now)
    return None


def reset(cur: KeyState | None, provider_id: str, key_id: str, now: float) -> KeyState:
    """An admin's reset: valid at once, whatever the state (always written, so every gateway hears it)."""
    return KeyState(provider_id=provider_id, key_id=key_id, state="valid",
                    status_code=cur.status_code if cur is not None else 0, updated_at=now, reason=RESET)


def recheck_due(cur: KeyState | None, now: float) -> bool:
    return cur is not None and cur.state == "revoked" and (cur.next_check_at or 0.0) <= now


def claim_recheck(cur: KeyState | None, now: float, backoff: Backoff) -> KeyState | None:
    """Move a due re-check's time forward before probing (compare-and-set: one keypool replica probes);
    if the probe is refused — or keypool dies meanwhile — that is already the next attempt's time."""
    if cur is None or not recheck_due(cur, now):
        return None
    return KeyState(provider_id=cur.provider_id, key_id=cur.key_id, state="revoked", status_code=cur.status_code,
                    updated_at=cur.updated_at, reason=cur.reason, next_check_at=now + backoff.delay(cur.checks + 1),
                    checks=cur.checks + 1)


def recovered(cur: KeyState | None, now: float, status: int) -> KeyState | None:
    """The provider accepted the key again: valid, unless someone changed the state meanwhile."""
    if cur is None or cur.state != "revoked":
        return None
    return KeyState(provider_id=cur.provider_id, key_id=cur.key_id, state="valid", status_code=status,
                    updated_at=now, reason=RECOVERED)


def cool(cur: KeyState | None, provider_id: str, key_id: str, until: float, status_code: int,
         now: float, reason: str = RATE_LIMITED) -> KeyState | None:
    """Cooling until ``until`` unless revoked or already cooling at least that long."""
    if until <= now:
        return None
    if cur is not None and cooled_until(cur.state, cur.until, until) is None:
        return None
    return KeyState(provider_id=provider_id, key_id=key_id, state="cooling", until=until,
                    status_code=status_code, updated_at=now, reason=reason)


def expire(cur: KeyState | None, now: float) -> KeyState | None:
    """Cooling whose time is up becomes valid."""
    if cur is None or cur.state != "cooling" or (cur.until or 0.0) > now:
        return None
    return KeyState(provider_id=cur.provider_id, key_id=cur.key_id, state="valid",
                    status_code=cur.status_code, updated_at=now, reason=COOLDOWN_OVER)


def budget_exhausted_until(rl: RateLimitInfo | None, now: float) -> float | None:
    """When a key whose remaining request or token budget is zero gets it back; None if it has budget."""
    if rl is None:
        return None
    until: float | None = None
    for remaining, reset_at in ((rl.remaining_requests, rl.reset_requests_at),
                                (rl.remaining_tokens, rl.reset_tokens_at)):
        if remaining is not None and remaining <= 0:
            at = reset_at if reset_at is not None else now + UNKNOWN_RESET
            if at > now:
                until = at if until is None else max(until, at)
    return until


# --------------------------------------------------------------------- stats


WINDOW = 60


@dataclass(slots=True)
class KeyStats:
    """Per-second success/failure counts over the last minute, and the latest status and budget seen."""

    buckets: deque[list[int]] = field(default_factory=deque)  # [second, successes, failures]
    last_status: int | None = None
    last_at: float = 0.0
    ratelimit: RateLimitInfo | None = None

    def add(self, at: float, successes: int, failures: int) -> None:
        sec = int(at)
        if self.buckets and self.buckets[-1][0] == sec:
            self.buckets[-1][1] += successes
            self.buckets[-1][2] += failures
        elif not self.buckets or self.buckets[-1][0] < sec:
            self.buckets.append([sec, successes, failures])
        else:  # a late report: find its second (rare, the deque is at most a minute long)
            for b in self.buckets:
                if b[0] == sec:
                    b[1] += successes
                    b[2] += failures
                    break
            else:
                self.buckets.append([sec, successes, failures])
                self.buckets = deque(sorted(self.buckets))
        self._prune(time.time())

    def seen(self, at: float, status: int, ratelimit: RateLimitInfo | None) -> None:
        if at >= self.last_at:
            self.last_at = at
            self.last_status = status
            if ratelimit is not None:
                self.ratelimit = ratelimit

    def _prune(self, now: float) -> None:
        floor = int(now) - WINDOW
        while self.buckets and self.buckets[0][0] <= floor:
            self.buckets.popleft()

    def last_minute(self, now: float) -> tuple[int, int]:
        self._prune(now)
        return sum(b[1] for b in self.buckets), sum(b[2] for b in self.buckets)


class Stats:
    """Stats of every key, fed by gateway reports (every attempt) and marks (last status only)."""

    def __init__(self) -> None:
        self.keys: dict[str, KeyStats] = {}

    def get(self, provider_id: str, key_id: str) -> KeyStats | None:
        return self.keys.get(kv_key(provider_id, key_id))

    def _of(self, provider_id: str, key_id: str) -> KeyStats:
        k = kv_key(provider_id, key_id)
        s = self.keys.get(k)
        if s is None:
            s = self.keys[k] = KeyStats()
        return s

    def report(self, at: float, stat: KeyStat) -> None:
        s = self._of(stat.provider_id, stat.key_id)
        s.add(at, stat.successes, stat.failures)
        s.seen(at, stat.last_status, stat.ratelimit)

    def mark(self, mark: KeyMarked) -> None:
        self._of(mark.provider_id, mark.key_id).seen(mark.at or time.time(), mark.status_code, mark.ratelimit)

    def forget(self, keep: set[str]) -> None:
        for k in [k for k in self.keys if k not in keep]:
            del self.keys[k]


# --------------------------------------------------------------------- registry


def snapshot_keys(snap: RegistrySnapshot) -> dict[str, tuple[str, str, str]]:
    """kv key → (provider type, base url, key hint): what identifies a key's credential and target."""
    return {kv_key(p.id, k.id): (p.type, p.base_url, k.hint) for p in snap.providers for k in p.keys}


def changed_keys(old: RegistrySnapshot | None, new: RegistrySnapshot) -> set[str]:
    """Keys whose state the registry reset: new keys, re-enabled providers, changed key or provider target.

    Key values are write-only and resealed per snapshot, so a replaced value shows
    as a new key id or a new hint.
    """
    if old is None:
        return set()
    before = snapshot_keys(old)
    return {k for k, ident in snapshot_keys(new).items() if before.get(k) != ident}
