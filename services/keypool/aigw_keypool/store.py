"""Writes to the key-state bucket with revision compare-and-set.

Several keypool replicas (and a mark racing a timer inside one) may change the
same key at once. Every write names the revision it was computed from; on a
conflict the entry is re-read and the rule applied again, so the merge rules
(longest cooldown wins, revoke is absorbing) hold across writers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from aigw_common.bus import decode, encode
from aigw_common.errors import BusError
from aigw_common.keystate import KeyStateWatch, kv_key
from aigw_common.schemas import KeyState

log = logging.getLogger(__name__)

Rule = Callable[[KeyState | None], KeyState | None]
MAX_ATTEMPTS = 20


class KeyStore:
    def __init__(self, mirror: KeyStateWatch) -> None:
        self.mirror = mirror

    @property
    def _kv(self):  # type: ignore[no-untyped-def]
        if self.mirror.kv is None:
            raise BusError("key-state bucket not open yet")
        return self.mirror.kv

    async def _read(self, key: str) -> tuple[KeyState | None, int]:
        try:
            e = await self._kv.get(key)
        except KeyNotFoundError:
            return None, 0
        return decode(e.value, KeyState), e.revision

    async def change(self, provider_id: str, key_id: str, rule: Rule) -> tuple[KeyState | None, KeyState] | None:
        """Apply ``rule`` to the current state; returns (before, after) when it wrote, None when nothing changed."""
        key = kv_key(provider_id, key_id)
        cached = self.mirror.states.get(key)
        cur, rev = cached if cached is not None else (None, 0)
        for _ in range(MAX_ATTEMPTS):
            new = rule(cur)
            if new is None:
                return None
            try:
                if rev:
                    await self._kv.update(key, encode(new), last=rev)
                else:
                    await self._kv.create(key, encode(new))  # also re-creates over a delete marker
            except KeyWrongLastSequenceError:
                cur, rev = await self._read(key)
                continue
            return cur, new
        raise BusError(f"key state {key}: too many concurrent writers")

    async def clear(self, provider_id: str, key_id: str) -> None:
        """Forget a key's state (readers treat a missing entry as valid)."""
        await self._kv.purge(kv_key(provider_id, key_id))
