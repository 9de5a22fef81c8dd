"""Fleet-wide key health on JetStream: the key-marks stream, the key-state KV bucket, and a watcher.

keypool is the only writer of the bucket; gateways (and keypool itself) mirror
it with :class:`KeyStateWatch`. Both sides create the stream and the bucket
idempotently with the same configuration, so whichever starts first wins and
neither depends on the other being up. Bucket keys are
``<provider_id>.<key_id>``; values are :class:`~aigw_common.schemas.KeyState` signed by keypool
(a :class:`~aigw_common.schemas.SignedEntry` over ``<bucket>.<key>``). A reader drops a value that
fails the check, and ignores delete/purge markers (a marker cannot be signed): keypool never
deletes, it writes a signed ``valid`` state instead, so a forged delete cannot revive a revoked key.
(A stored value does not expire, so on a NATS server without authorization a past genuine value of
the same key could be written back; the production permissions let only keypool write the bucket.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, BucketNotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from .aio import stop_task, wait_event
from .bus import Bus
from .errors import BusError, DecodeError
from .schemas import KeyState, KeyStateName
from .signing import Rejected

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


def entry_subject(bus: Bus, key: str) -> str:
    """What a key-state value is signed over: the bucket and the key, so it cannot move to another key."""
    return f"{bus.subjects.keys_bucket}.{key}"


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


def cooled_until(state: KeyStateName, until: float | None, new_until: float) -> float | None:
    """The cooldown a cooling mark ending at ``new_until`` gives a key now in ``state`` (until ``until``):
    the longer one wins (marks race across gateways), a revoked key stays revoked (only a re-check revives
    it). None: the mark changes nothing. The one rule for keypool's bucket and each gateway's local view."""
    if state == "revoked":
        return None
    current = (until or 0.0) if state == "cooling" else 0.0
    return None if current >= new_until else new_until


async def ensure_marks_stream(bus: Bus) -> None:
    s = bus.subjects
    await bus.ensure_stream(s.keys_marked_stream, [s.keys_marked], max_age=MARKS_MAX_AGE)


async def keys_bucket(bus: Bus, *, timeout: float = 5.0) -> KeyValue:
    """The key-state bucket, created (file storage, one revision per key, ``bus.js_replicas`` replicas) when
    missing; an existing bucket with another replica count is scaled in place (its stream updated).
    ``timeout`` bounds each JetStream API call (no leader answers during an election)."""
    js = bus.jetstream(timeout)
    name = bus.subjects.keys_bucket
    try:
        kv = await js.key_value(name)
    except BucketNotFoundError:
        try:
            return await js.create_key_value(KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE,
                                                            replicas=bus.js_replicas))
        except BadRequestError:  # another process created it between our calls
            kv = await js.key_value(name)
    stream = f"KV_{name}"
    cfg = (await js.stream_info(stream)).config
    if (cfg.num_replicas or 1) != bus.js_replicas:
        log.info("scaling the key-state bucket", extra={"bucket": name,
                                                        "replicas": f"{cfg.num_replicas}->{bus.js_replicas}"})
        await js.update_stream(dataclasses.replace(cfg, num_replicas=bus.js_replicas))
    return kv


OnChange = Callable[[str, str, KeyState | None], None]

# Idle heartbeat of the watch's consumer. The consumer lives on one JetStream node; when that node dies
# while this client stays connected to another one, nothing else tells the client. Two missed heartbeats
# make the ordered consumer recreate itself on a live node from the next revision (nats-py's KV watch
# uses 5 s, i.e. ten seconds of deafness after a node loss).
WATCH_HEARTBEAT = 0.5
# JetStream API calls of the watch (create the consumer, and recreate it after a loss) give up after this:
# while a stream elects a leader nobody answers, and a short timeout retries sooner once one is elected.
WATCH_API_TIMEOUT = 1.0


class _BucketWatch:
    """Latest value of every key, then every change, as ``KeyValue.Entry`` (``None`` once the initial values
    are through) — ``KeyValue.watchall`` with a short heartbeat, so a lost consumer is noticed in a second."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[KeyValue.Entry | None] = asyncio.Queue()
        self._sub: Any = None
        self._init_done = False

    @classmethod
    async def open(cls, bus: Bus) -> _BucketWatch:
        w = cls()
        bucket = bus.subjects.keys_bucket
        prefix = f"$KV.{bucket}."

        async def cb(m: Msg) -> None:
            meta = m.metadata
            op = (m.headers or {}).get(KV_OP)
            w._queue.put_nowait(KeyValue.Entry(bucket=bucket, key=m.subject[len(prefix):], value=m.data,
                                               revision=meta.sequence.stream, delta=meta.num_pending,
                                               created=None, operation=op))  # nobody reads created
            if meta.num_pending == 0 and not w._init_done:
                w._init_done = True
                w._queue.put_nowait(None)

        w._sub = await bus.jetstream(WATCH_API_TIMEOUT).subscribe(prefix + ">", stream=f"KV_{bucket}", cb=cb, ordered_consumer=True,
                                        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                                        idle_heartbeat=WATCH_HEARTBEAT, inactive_threshold=300.0)
        try:
            info = await w._sub.consumer_info()
        except BaseException:
            with contextlib.suppress(*TRANSIENT):
                await w._sub.unsubscribe()
            raise
        if info.num_pending == 0 and w._sub.delivered == 0 and not w._init_done:
            w._init_done = True  # an empty bucket: nothing will come to say the initial values are through
            w._queue.put_nowait(None)
        return w

    def __aiter__(self) -> _BucketWatch:
        return self

    async def __anext__(self) -> KeyValue.Entry | None:
        return await self._queue.get()

    async def consumer_info(self) -> Any:
        return await self._sub.consumer_info()

    async def stop(self) -> None:
        await self._sub.unsubscribe()


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
        self.current: _BucketWatch | None = None  # the open watch (where its consumer lives: tests ask)
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
            await stop_task(self._task, name="key-state-watch")
            self._task = None

    async def _run(self) -> None:
        delay = 0.2
        while True:
            await self.bus.wait_connected()
            self._resync.clear()
            watcher = None
            try:
                self.kv = await keys_bucket(self.bus, timeout=WATCH_API_TIMEOUT)
                watcher = self.current = await _BucketWatch.open(self.bus)
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
                # short cap: during a JetStream leader election the next try usually succeeds within seconds
                delay = min(delay * 2, 1.0)
            finally:
                if watcher is not None:
                    with contextlib.suppress(*TRANSIENT):
                        await watcher.stop()

    async def _consume(self, watcher: _BucketWatch) -> None:
        seen: set[str] | None = set()
        async for entry in watcher:
            if entry is None:  # end of the initial values
                if seen is not None:
                    # A key with no value any more was deleted or purged, which keypool never does (it
                    # writes a signed "valid"): the last verified state stands (the delete was counted
                    # when the watch saw it).
                    seen = None
                    self.loaded.set()
                continue
            if seen is not None:
                seen.add(entry.key)
            if entry.operation in (KV_DEL, KV_PURGE):
                if entry.key in self.states:
                    self.bus.auth.refused(KeyState, Rejected("unsigned_delete"), entry_subject(self.bus, entry.key))
                continue
            try:
                state = self.bus.auth.open_entry(entry_subject(self.bus, entry.key), entry.value or b"", KeyState)
            except DecodeError as e:
                log.warning("undecodable key state", extra={"key": entry.key, "error": str(e)})
                continue
            if state is None:
                continue
            if (state.provider_id, state.key_id) != split_kv_key(entry.key):
                self.bus.auth.refused(KeyState, Rejected("wrong_key", "keypool"), entry_subject(self.bus, entry.key))
                continue
            self._set(entry.key, state, entry.revision or 0)  # always set by the stream; typed optional

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
    "entry_subject",
    "is_failure",
    "keys_bucket",
    "kv_key",
    "split_kv_key",
    "wait_event",
]
