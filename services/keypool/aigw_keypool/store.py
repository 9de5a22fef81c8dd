"""Writes to the key-state bucket with revision compare-and-set.

Several keypool replicas (and a mark racing a timer inside one) may change the
same key at once. Every write names the revision it was computed from; on a
conflict the entry is re-read and the rule applied again, so the merge rules
(longest cooldown wins, revoke is absorbing) hold across writers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from aigw_common.errors import BusError
from aigw_common.keystate import KeyStateWatch, entry_subject, kv_key
from aigw_common.schemas import KeyState

log = logging.getLogger(__name__)

Rule = Callable[[KeyState | None], KeyState | None]
MAX_ATTEMPTS = 20


class KeyStore:
    def __init__(self, mirror: KeyStateWatch) -> None:
        self.mirror = mirror

    @property
    def _kv(self) -> KeyValue:
        if self.mirror.kv is None:
            raise BusError("key-state bucket not open yet")
        return self.mirror.kv

    async def _read(self, key: str) -> tuple[KeyState | None, int]:
        try:
            e = await self._kv.get(key)
        except KeyNotFoundError:
            return None, 0
        bus = self.mirror.bus
        # A value that fails the signature check counts as no state: the next write replaces it.
        return bus.auth.open_entry(entry_subject(bus, key), e.value or b"", KeyState), e.revision or 0  # both set when stored

    async def change(self, provider_id: str, key_id: str, rule: Rule) -> tuple[KeyState | None, KeyState] | None:
        """Apply ``rule`` to the current state; returns (before, after) when it wrote, None when nothing changed."""
        key = kv_key(provider_id, key_id)
        bus = self.mirror.bus
        cached = self.mirror.states.get(key)
        cur, rev = cached if cached is not None else (None, 0)
        for _ in range(MAX_ATTEMPTS):
            new = rule(cur)
            if new is None:
                return None
            try:
                value = bus.auth.seal_entry(entry_subject(bus, key), new)
                if rev:
                    await self._kv.update(key, value, last=rev)
                else:
                    await self._kv.create(key, value)  # also re-creates over a delete marker
            except KeyWrongLastSequenceError:
                cur, rev = await self._read(key)
                continue
            return cur, new
        raise BusError(f"key state {key}: too many concurrent writers")

    async def clear(self, provider_id: str, key_id: str) -> None:
        """Make a key valid again. A signed ``valid`` state, not a purge: readers ignore unsigned
        delete markers, so a neighbour on the bus cannot revive a revoked key by deleting its entry."""

        def rule(cur: KeyState | None) -> KeyState | None:
            if cur is None or cur.state == "valid":
                return None
            return KeyState(provider_id=provider_id, key_id=key_id, state="valid", updated_at=max(time.time(),
                            cur.updated_at + 1e-6))

        await self.change(provider_id, key_id, rule)
