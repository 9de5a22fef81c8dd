"""Fleet-wide key health on JetStream: the key-marks stream, the key-state KV bucket, and a watcher.

keypool is the only writer of the bucket; gateways (and keypool itself) mirror
it with :class:`KeyStateWatch`. Both sides create the stream and the bucket
idempotently with the same configuration, so whichever starts first wins and
neither depends on the other being up. Bucket keys are
``<provider_id>.<key_id>``; values are :class:`~aigw_common.schemas.KeyState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import nats.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, BucketNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from .aio import wait_event
from .bus import Bus, decode
from .errors import BusError, DecodeError
from .schemas import KeyState, KeyStateName

log = logging.getLogger(__name__)

MARKS_MAX_AGE = 86400.0  # marks only need to live until keypool has applied them
DEFAULT_COOLDOWN = 60.0  # contract: a 429 without Retry-After cools the key for 60 s

# Errors a JetStream call raises when NATS is away or restarting: retry later.
TRANSIENT = (nats.errors.Error, TimeoutError, BusError, OSError)


def is_failure(status: int) -> bool:
    """An attempt that says something bad about the key itself: auth, rate limit, server error, no response.

    Other 4xx are the client's fault: the key worked.
    """
    return status == 0 or status in (401, 403, 429) or status >= 500


def kv_key(provider_id: str, key_id: str) -> str:
    return f"{provider_id}.{key_id}"


def split_kv_key(key: str) -> tuple[str, str]:
    provider_id, _, key_id = key.partition(".")
    return provider_id, key_id


def effective(state: KeyState | None, now: float | None = None) -> tuple[KeyStateName, float | None]:
    """State as a reader should act on it: no entry, or cooling whose ``until`` has passed, is valid."""
    if state is None or state.state == "valid":
        return "valid", None
    if state.state == "cooling":
        until = state.until or 0.0
        if until <= (time.time() if now is None else now):
            return "valid", None
        return "cooling", until
    return "revoked", None


async def ensure_marks_stream(bus: Bus) -> None:
    s = bus.subjects
    await bus.ensure_stream(s.keys_marked_stream, [s.keys_marked], max_age=MARKS_MAX_AGE)


async def keys_bucket(bus: Bus) -> KeyValue:
    """The key-state bucket, created (file storage, one revision per key) when missing."""
    js = bus.js
    name = bus.subjects.keys_bucket
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE))
    except BadRequestError:  # another process created it between our calls
        return await js.key_value(name)


OnChange = Callable[[str, str, KeyState | None], None]


class KeyStateWatch:
    """Mirror of the bucket in memory; ``on_change(provider_id, key_id, state | None)`` per change.

    A full resync (a fresh watch, which delivers the latest value of every key)
    runs after every NATS reconnect and every ``resync_interval`` seconds; keys
    that disappeared meanwhile are reported as ``None``. ``loaded`` is set once
    the first full pass is done, so a reader knows the fleet state before it serves.
    """

    def __init__(self, bus: Bus, on_change: OnChange, *, resync_interval: float = 30.0) -> None:
        self.bus = bus
        self.on_change = on_change
        self.resync_interval = resync_interval
        self.states: dict[str, tuple[KeyState, int]] = {}  # kv key -> (state, revision)
        self.loaded = asyncio.Event()
        self.kv: KeyValue | None = None
        self.resyncs = 0
        self._resync = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self.bus.on_reconnect(self._on_reconnect)
            self._task = asyncio.create_task(self._run(), name="keystate-watch")

    async def _on_reconnect(self) -> None:
        self._resync.set()

    def resync(self) -> None:
        """Ask for a fresh full pass (e.g. after a suspected gap)."""
        self._resync.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = 0.2
        while True:
            await self.bus.wait_connected()
            self._resync.clear()
            watcher = None
            try:
                self.kv = await keys_bucket(self.bus)
                watcher = await self.kv.watchall()
                delay = 0.2
                consume = asyncio.create_task(self._consume(watcher))
                resync = asyncio.create_task(self._resync.wait())
                try:
                    done, _ = await asyncio.wait({consume, resync}, timeout=self.resync_interval,
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (consume, resync):
                        t.cancel()
                    await asyncio.gather(consume, resync, return_exceptions=True)
                if consume in done:
                    consume.result()  # re-raises what ended the watch
                self.resyncs += 1
            except TRANSIENT as e:
                log.warning("key-state watch failed; retrying", extra={"error": str(e), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if watcher is not None:
                    with contextlib.suppress(*TRANSIENT):
                        await watcher.stop()

    async def _consume(self, watcher: KeyValue.KeyWatcher) -> None:
        seen: set[str] | None = set()
        async for entry in watcher:
            if entry is None:  # end of the initial values
                if seen is not None:
                    for gone in [k for k in self.states if k not in seen]:
                        self._set(gone, None, 0)
                    seen = None
                    self.loaded.set()
                continue
            if seen is not None:
                seen.add(entry.key)
            if entry.operation in (KV_DEL, KV_PURGE):
                self._set(entry.key, None, entry.revision)
                continue
            try:
                state = decode(entry.value, KeyState)
            except DecodeError as e:
                log.warning("undecodable key state", extra={"key": entry.key, "error": str(e)})
                continue
            self._set(entry.key, state, entry.revision)

    def _set(self, key: str, state: KeyState | None, revision: int) -> None:
        old = self.states.get(key)
        if state is None:
            if old is None:
                return
            del self.states[key]
        else:
            self.states[key] = (state, revision)
            if old is not None and old[0] == state:
                return  # a resync redelivering what we have
        provider_id, key_id = split_kv_key(key)
        try:
            self.on_change(provider_id, key_id, state)
        except Exception:
            log.exception("key-state change handler failed", extra={"key": key})


__all__ = [
    "DEFAULT_COOLDOWN",
    "TRANSIENT",
    "KeyStateWatch",
    "effective",
    "ensure_marks_stream",
    "is_failure",
    "keys_bucket",
    "kv_key",
    "split_kv_key",
    "wait_event",
]
