"""Key pools: each provider's ordered keys with their health, merged with the fleet's view.

Health lives in ``KeyPools`` keyed by (provider id, key id), not in the
provider objects, so it survives provider-set swaps: a key that was cooling
before a config change is still cooling after it. Local marks apply at once
(the very next request skips the key) and are published on
``aigw.keys.marked`` so the keypool service can tell every other replica.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from aigw_common.keystate import DEFAULT_COOLDOWN, cooled_until
from aigw_common.llm import error_body
from aigw_common.retry_after import retry_after
from aigw_common.schemas import KeyMarked, KeyStateName

log = logging.getLogger(__name__)

VALID: KeyStateName = "valid"
COOLING: KeyStateName = "cooling"
REVOKED: KeyStateName = "revoked"
MAX_COOLDOWN = 3600.0


@dataclass(slots=True)
class KeyHealth:
    state: KeyStateName = VALID
    until: float = 0.0  # epoch seconds, for cooling
    last_status: int = 0

    def usable(self, now: float) -> bool:
        if self.state == VALID:
            return True
        return self.state == COOLING and self.until <= now


@dataclass(slots=True)
class PoolKey:
    id: str
    position: int
    hint: str
    secret: str
    health: KeyHealth

    def __repr__(self) -> str:  # the secret never reaches a log line
        return f"PoolKey(id={self.id!r}, position={self.position}, hint={self.hint!r}, state={self.health.state!r})"


@dataclass(slots=True)
class KeyPool:
    provider_id: str
    keys: list[PoolKey]

    def usable(self, now: float | None = None) -> Iterator[PoolKey]:
        now = time.time() if now is None else now
        for k in self.keys:
            if k.health.usable(now):
                yield k

    def soonest_back(self, now: float | None = None) -> float | None:
        """Seconds until the first cooling key is usable again; None when every key is revoked (or none exist)."""
        now = time.time() if now is None else now
        untils = [k.health.until for k in self.keys if k.health.state == COOLING]
        if not untils:
            return None
        return max(0.0, min(untils) - now)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float:
    """How long a 429 cools its key: the server's Retry-After (capped at 1 h), else the default of 60 s."""
    v = retry_after(headers, now=now)
    return DEFAULT_COOLDOWN if v is None else min(v, MAX_COOLDOWN)


# A 403 whose body says the refusal is about the model or the caller's region, not the key: the request
# fails, the key stays. OpenAI error codes; Anthropic's permission_error when its message names a model.
_NOT_THE_KEY_CODES = frozenset({"model_not_found", "unsupported_country", "unsupported_country_region_territory"})
_NAMES_A_MODEL = re.compile(r"\bmodels?\b", re.IGNORECASE)


def forbidden_for_other_reason(body: bytes | None) -> bool:
    """True when a 403 body blames the model or the region rather than the credential."""
    e = error_body.parse(body)
    match e.shape:
        case "openai" | "anthropic":
            return e.code in _NOT_THE_KEY_CODES or (e.type == "permission_error" and bool(_NAMES_A_MODEL.search(e.message)))
        case "aws" | "flat":
            # Bedrock: {"message": "You don't have access to the model with the specified model ID."}
            # (signature and unknown-key refusals never name a model)
            return bool(_NAMES_A_MODEL.search(e.message))
        case _:
            return False


MarkSink = Callable[[KeyMarked], None]
Observer = Callable[[str, str, int, Mapping[str, str]], None]


@dataclass(slots=True)
class KeyPools:
    gateway_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    sink: MarkSink | None = None  # publishes marks; set by the app
    observers: list[Observer] = field(default_factory=list)  # e.g. the keypool reporter
    _health: dict[tuple[str, str], KeyHealth] = field(default_factory=dict)

    def health(self, provider_id: str, key_id: str) -> KeyHealth:
        h = self._health.get((provider_id, key_id))
        if h is None:
            h = self._health[(provider_id, key_id)] = KeyHealth()
        return h

    def retain(self, live: set[tuple[str, str]]) -> None:
        """Forget keys that no longer exist (after a provider-set swap)."""
        for k in [k for k in self._health if k not in live]:
            del self._health[k]

    def apply_state(self, provider_id: str, key_id: str, state: KeyStateName, until: float | None) -> None:
        """Merge the fleet's view (from keypool): it is authoritative, except that a longer local cooldown stands."""
        h = self.health(provider_id, key_id)
        if state == COOLING:
            if (u := cooled_until(h.state, h.until, until or 0.0)) is not None:
                h.state, h.until = COOLING, u
        elif state == REVOKED:
            h.state = REVOKED
        elif state == VALID:
            h.state, h.until = VALID, 0.0

    def observe(self, provider_id: str, key_id: str, status: int, headers: Mapping[str, str],
                body: bytes | None = None) -> str | None:
        """Account for one upstream answer; returns the new state when the key was marked.

        ``body`` is the error body of a 403, read so a refusal about the model or region does not revoke.
        """
        h = self.health(provider_id, key_id)
        h.last_status = status
        marked: KeyStateName | None = None
        until: float | None = None
        if status == 429:
            until = time.time() + retry_after_seconds(headers)
            if (u := cooled_until(h.state, h.until, until)) is not None:
                h.state, h.until = COOLING, u
            marked = COOLING
        elif status == 401 or (status == 403 and not forbidden_for_other_reason(body)):
            h.state = REVOKED
            marked = REVOKED
        for obs in self.observers:
            obs(provider_id, key_id, status, headers)
        if marked and self.sink is not None:
            self.sink(KeyMarked(event_id=uuid.uuid4().hex, provider_id=provider_id, key_id=key_id, state=marked,
                                until=until, status_code=status, gateway_id=self.gateway_id, at=time.time()))
        return marked
