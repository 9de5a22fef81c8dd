"""SnapshotFollower against the real NATS server: a bad reply or a failed apply never ends the following."""

import asyncio
from collections.abc import Callable

from nats.aio.msg import Msg

from aigw_common.bus import Bus, encode
from aigw_common.errors import DatabaseUnavailable
from aigw_common.schemas import ProviderConfig, ProvidersChanged, RegistrySnapshot, SnapshotRequest
from aigw_common.snapshots import SnapshotFollower


class Registry:
    """A registry stand-in on raw NATS: answers each snapshot request with what ``script`` says."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.revision = 1
        self.asked = 0
        self.junk: list[bytes] = []  # replies to send (unsigned, raw) before the real ones

    def snapshot(self) -> RegistrySnapshot:
        p = ProviderConfig(id="p1", name="openai", type="openai", display_name="OpenAI", base_url="http://x")
        return RegistrySnapshot(revision=self.revision, providers=[p])

    async def start(self) -> None:
        async def cb(m: Msg) -> None:
            self.asked += 1
            if self.junk:
                await self.bus.nc.publish(m.reply, self.junk.pop(0))
                return
            data = encode(self.snapshot())
            h = self.bus.auth.sign(RegistrySnapshot, m.reply, m.subject, data, None)
            await self.bus.nc.publish(m.reply, data, headers=h)

        await self.bus.nc.subscribe(self.bus.subjects.registry_snapshot, cb=cb)
        await self.bus.nc.flush()


async def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_garbled_replies_do_not_stop_the_refresh(bus: Bus):
    reg = Registry(bus)
    reg.junk = [b"\x00not json", b'{"type":"registry.snapshot","revision":"x"}', b"{}"]
    await reg.start()
    applied: list[int] = []

    async def apply(_old: RegistrySnapshot | None, new: RegistrySnapshot) -> None:
        applied.append(new.revision)

    f = SnapshotFollower(bus, apply, interval=60.0, timeout=0.3)
    await f.start()
    try:
        await eventually(lambda: f.revision == 1)
        assert applied == [1] and f.last_error is None
        # a later change is still followed: the loop is alive
        reg.revision = 2
        await bus.publish(bus.subjects.providers_changed, ProvidersChanged(revision=2, provider_ids=["p1"]))
        await eventually(lambda: f.revision == 2)
        assert applied == [1, 2]
    finally:
        await f.stop()


async def test_garbled_reply_after_loading_is_healed_on_the_next_interval(bus: Bus):
    reg = Registry(bus)
    await reg.start()
    applied: list[int] = []

    async def apply(_old: RegistrySnapshot | None, new: RegistrySnapshot) -> None:
        applied.append(new.revision)

    f = SnapshotFollower(bus, apply, interval=0.5, timeout=0.3)
    await f.start()
    try:
        await eventually(lambda: f.revision == 1)
        # the change event is missed and the next answer is junk: the periodic refresh must carry on
        reg.junk = [b"garbage"]
        reg.revision = 2
        await eventually(lambda: f.revision == 2)
        assert applied == [1, 2]
    finally:
        await f.stop()


async def test_a_snapshot_that_fails_to_apply_is_retried_without_an_event(bus: Bus):
    reg = Registry(bus)
    reg.revision = 5
    await reg.start()
    calls: list[tuple[int | None, int]] = []

    async def apply(old: RegistrySnapshot | None, new: RegistrySnapshot) -> None:
        calls.append((old.revision if old else None, new.revision))
        if len(calls) == 1:
            raise AttributeError("'list' object has no attribute 'get'")  # a bug in applying: still not fatal

    f = SnapshotFollower(bus, apply, interval=60.0, timeout=0.5)
    await f.start()
    try:
        await eventually(lambda: f.revision == 5)
        assert calls == [(None, 5), (None, 5)]  # retried with the same old snapshot: nothing half-applied
        assert f.last_error is None
    finally:
        await f.stop()


async def test_revision_is_monotonic(bus: Bus):
    reg = Registry(bus)
    reg.revision = 3
    await reg.start()
    applied: list[int] = []

    async def apply(_old: RegistrySnapshot | None, new: RegistrySnapshot) -> None:
        applied.append(new.revision)

    f = SnapshotFollower(bus, apply, interval=60.0, timeout=0.5)
    await f.start()
    try:
        await eventually(lambda: f.revision == 3)
        reg.revision = 2  # an older replica's answer
        assert await f.refresh() is True
        assert f.revision == 3 and applied == [3]
        reg.revision = 4
        assert await f.refresh() is True
        assert f.revision == 4 and applied == [3, 4]
    finally:
        await f.stop()


async def test_no_registry_keeps_what_we_have_and_says_why(bus: Bus):
    async def apply(_old: RegistrySnapshot | None, _new: RegistrySnapshot) -> None:
        raise AssertionError("nothing to apply")

    f = SnapshotFollower(bus, apply, interval=60.0, timeout=0.2)
    assert await f.refresh() is False
    assert f.revision is None and f.last_error and "no responder" in f.last_error


async def test_a_registry_error_reply_is_kept_as_the_reason_and_the_following_goes_on(bus: Bus):
    """A registry that cannot read its database answers with an error (not silence): the follower says why at
    once, keeps retrying, and loads the snapshot when the registry can answer again."""
    failing = [True]

    async def registry(_req: SnapshotRequest, _m: Msg) -> RegistrySnapshot:
        if failing[0]:
            raise DatabaseUnavailable("registry database unavailable")
        return RegistrySnapshot(revision=7)

    await bus.subscribe(bus.subjects.registry_snapshot, SnapshotRequest, registry, queue="registry")
    await bus.flush()
    applied: list[int] = []

    async def apply(_old: RegistrySnapshot | None, new: RegistrySnapshot) -> None:
        applied.append(new.revision)

    f = SnapshotFollower(bus, apply, interval=60.0, timeout=30.0)
    assert await f.refresh() is False  # at once, not after the 30 s timeout
    assert f.last_error and "registry database unavailable" in f.last_error
    await f.start()
    try:
        failing[0] = False
        await eventually(lambda: f.revision == 7)
        assert applied == [7] and f.last_error is None
    finally:
        await f.stop()
