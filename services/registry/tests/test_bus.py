"""The registry on the bus (real NATS): snapshot and auth.verify responders, the outbox, key rotation."""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
from nats.aio.msg import Msg

from aigw_common.auth import IdentityCache
from aigw_common.crypto import PURPOSE_BUS, Sealer, generate_key, hash_token, key_id
from aigw_common.errors import CryptoError
from aigw_common.schemas import (
    AuthRevoked,
    AuthVerifyReply,
    AuthVerifyRequest,
    ProvidersChanged,
    RegistrySnapshot,
    SnapshotRequest,
)
from aigw_common.service import METRICS
from aigw_common.snapshots import SnapshotFollower
from aigw_registry.core import SYSTEM
from aigw_registry.providers import insert_provider
from aigw_registry.responders import build_snapshot, verify_token

P = "/api/v2/ai/providers"
U = "/api/v2/users"


class Inbox:
    """Collects typed messages from one subject."""

    def __init__(self) -> None:
        self.items: list = []
        self.event = asyncio.Event()

    async def __call__(self, msg, _m: Msg) -> None:  # type: ignore[no-untyped-def]
        self.items.append(msg)
        self.event.set()

    async def wait_for(self, pred, limit: float = 5.0):  # type: ignore[no-untyped-def]
        async def loop():  # type: ignore[no-untyped-def]
            while True:
                for m in self.items:
                    if pred(m):
                        return m
                self.event.clear()
                await self.event.wait()

        return await asyncio.wait_for(loop(), limit)


async def _setup_data(client):  # type: ignore[no-untyped-def]
    await client.ok("POST", P, {"name": "oai", "type": "openai", "base_url": "http://127.0.0.1:7010/v1",
                                "keys": ["sk-first-key-0001", "sk-second-key-0002"]})
    await client.ok("POST", P, {"name": "bed", "type": "bedrock", "base_url": "https://bedrock-runtime.eu-west-1.amazonaws.com",
                                "settings": {"region": "eu-west-1", "access_key": "AKIABUSTEST00001",
                                             "access_key_secret": "bus/secret/000001", "model": "claude"}})
    await client.ok("POST", P, {"name": "off", "type": "openai", "base_url": "http://127.0.0.1:7011/v1", "enabled": False})
    await client.ok("POST", P, {"name": "gone", "type": "openai", "base_url": "http://127.0.0.1:7012/v1"})
    await client.ok("DELETE", f"{P}/gone")
    user, token = await client.new_user("gina", ["member"])
    g = await client.ok("POST", "/api/v2/groups", {"name": "eng"})
    await client.ok("PUT", "/api/v2/groups/eng/members/gina", status=204)
    await client.as_(token).ok("PUT", f"{U}/me/ai/provider-keys/oai", {"api_key": "sk-gina-own-key-0003"})
    return user, token, g


async def test_snapshot_and_verify_over_nats(registry, client, bus) -> None:  # type: ignore[no-untyped-def]
    user, token, g = await _setup_data(client)
    opener = Sealer.from_keys(registry.settings.bus_keys(), PURPOSE_BUS)  # what a gateway holds

    snap = await bus.request(bus.subjects.registry_snapshot, SnapshotRequest(), RegistrySnapshot, timeout=5)
    assert snap.revision == await registry.reg.pool.fetchval("SELECT revision FROM registry.state")
    by = {p.name: p for p in snap.providers}
    assert set(by) == {"oai", "bed"}  # disabled and deleted providers are not served
    oai = by["oai"]
    assert oai.base_url == "http://127.0.0.1:7010/v1" and oai.type == "openai" and oai.settings_sealed is None
    assert [(k.position, k.hint, opener.open(k.sealed)) for k in oai.keys] == [
        (0, "sk-…0001", "sk-first-key-0001"), (1, "sk-…0002", "sk-second-key-0002")]
    wire = msgspec.json.encode(snap)
    assert b"sk-first-key" not in wire and b"bus/secret" not in wire
    settings = msgspec.json.decode(opener.open(by["bed"].settings_sealed))
    assert settings == {"region": "eu-west-1", "access_key": "AKIABUSTEST00001",
                        "access_key_secret": "bus/secret/000001", "model": "claude"}
    # the at-rest key cannot open what goes on the bus and vice versa: separate masters
    # (AIGW_BUS_SEALING_KEYS), and even one master (legacy single-key installs) gives separate derived keys
    assert registry.reg.at_rest.current_key_id != opener.current_key_id
    for a, b in ((registry.reg.at_rest, oai.keys[0].sealed), (opener, registry.reg.at_rest.seal("x"))):
        try:
            a.open(b)
            raise AssertionError("a value opened with the other purpose's key")
        except CryptoError:
            pass
    one = Sealer.from_keys(registry.settings.encryption_keys, PURPOSE_BUS)
    with contextlib.suppress(CryptoError):
        registry.reg.at_rest.open(one.seal("x"))
        raise AssertionError("bus-sealed value opened with the at-rest key of the same master")

    reply = await bus.request(bus.subjects.auth_verify, AuthVerifyRequest(token_hash=hash_token(token)),
                              AuthVerifyReply, timeout=5)
    ident = reply.identity
    assert ident is not None and ident.user_id == user["id"] and ident.username == "gina"
    assert ident.roles == ["member"] and ident.group_ids == [g["id"]] and ident.scope == "admin"
    assert ident.expires_at is not None and 89 * 86400 < ident.expires_at - time.time() <= 90 * 86400
    assert [(k.provider_name, k.hint, opener.open(k.sealed)) for k in ident.provider_keys] == [
        ("oai", "sk-…0003", "sk-gina-own-key-0003")]
    for bad in (hash_token("aigw_nope"), "not-a-hash", ""):
        r = await bus.request(bus.subjects.auth_verify, AuthVerifyRequest(token_hash=bad), AuthVerifyReply, timeout=5)
        assert r.identity is None


async def test_changes_are_published_after_commit(registry, client, bus) -> None:  # type: ignore[no-untyped-def]
    changed, revoked = Inbox(), Inbox()
    await bus.subscribe(bus.subjects.providers_changed, ProvidersChanged, changed)
    await bus.subscribe(bus.subjects.auth_revoked, AuthRevoked, revoked)
    await bus.nc.flush()
    p = await client.ok("POST", P, {"name": "oai", "type": "openai", "base_url": "http://127.0.0.1:7010/v1"})
    m1 = await changed.wait_for(lambda m: p["id"] in m.provider_ids, 3)
    await client.ok("PATCH", f"{P}/oai", {"base_url": "http://127.0.0.1:7020/v1"})
    m2 = await changed.wait_for(lambda m: m.revision > m1.revision, 3)
    assert m2.provider_ids == [p["id"]]
    # a failed change (409) publishes nothing
    await client.ok("POST", P, {"name": "two", "type": "openai", "base_url": "http://127.0.0.1:7010/v1"})
    m3 = await changed.wait_for(lambda m: m.revision > m2.revision, 3)
    assert (await client.patch(f"{P}/two", {"name": "oai"})).status == 409
    await asyncio.sleep(0.5)
    assert max(m.revision for m in changed.items) == m3.revision

    user, token = await client.new_user("hank", ["member"])
    cache = IdentityCache(bus)
    await cache.start()
    await bus.nc.flush()
    assert (await cache.verify(token)).user_id == user["id"]
    tid = (await client.ok("GET", f"{U}/hank/tokens"))["tokens"][0]["id"]
    await client.ok("DELETE", f"{U}/hank/tokens/{tid}")
    await revoked.wait_for(lambda m: tid in m.token_ids, 3)
    await asyncio.sleep(0.1)
    assert cache.cached(token) is None and await cache.verify(token) is None
    # a deleted user is announced as deleted (services drop per-user data), a role change only evicts
    await client.ok("PATCH", f"{U}/hank", {"roles": ["admin"]})
    m = await revoked.wait_for(lambda m: user["id"] in m.user_ids, 3)
    assert m.deleted_user_ids == []
    await client.ok("DELETE", f"{U}/hank")
    m = await revoked.wait_for(lambda m: user["id"] in m.deleted_user_ids, 3)
    assert user["id"] in m.user_ids


async def test_outbox_survives_a_crash_between_commit_and_publish(registry, start_registry, apps, bus) -> None:  # type: ignore[no-untyped-def]
    # Stop the running registry (its relay is gone), then commit a change the way a handler would:
    # rows are in the outbox, nobody published them.
    reg = registry.reg
    await apps.stop(registry.app)
    from aigw_common.db import create_pool

    reg.pool = await create_pool(registry.settings.database_url)
    try:
        async with reg.transaction() as conn:
            out = await insert_provider(reg, conn, SYSTEM, name="late", ptype="openai", base_url="http://127.0.0.1:1/v1",
                                        display_name="", enabled=True, allow_byok=True, settings={}, keys=["sk-late-00000001"])
        pending = await reg.pool.fetchval("SELECT count(*) FROM registry.outbox WHERE sent_at IS NULL")
        assert pending >= 1
    finally:
        await reg.pool.close()

    changed = Inbox()
    await bus.subscribe(bus.subjects.providers_changed, ProvidersChanged, changed)
    await bus.nc.flush()
    r2 = await start_registry(registry.settings)
    m = await changed.wait_for(lambda m: out.id in m.provider_ids, 5)
    assert m.revision >= 1
    for _ in range(50):
        if await r2.reg.pool.fetchval("SELECT count(*) FROM registry.outbox WHERE sent_at IS NULL") == 0:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("outbox rows not marked sent")


async def test_queue_group_answers_once(start_registry, bus) -> None:  # type: ignore[no-untyped-def]
    a = await start_registry()
    b = await start_registry(a.settings)
    for _ in range(20):
        await bus.request(bus.subjects.registry_snapshot, SnapshotRequest(), RegistrySnapshot, timeout=5)

    def answered(r):  # type: ignore[no-untyped-def]
        from aigw_common.service import METRICS

        return r.app[METRICS].get_sample_value("aigw_registry_bus_requests_total",
                                               {"subject": "snapshot", "outcome": "ok"}) or 0

    assert answered(a) + answered(b) == 20


async def test_key_rotation(registry_settings, start_registry, apps) -> None:  # type: ignore[no-untyped-def]
    old = generate_key()
    r1 = await start_registry(AIGW_ENCRYPTION_KEYS=old)
    _, token, _ = await _setup_data(r1.client)
    await apps.stop(r1.app)

    new = generate_key()
    r2 = await start_registry(AIGW_ENCRYPTION_KEYS=f"{new},{old}")
    c = r2.client
    bed = await c.ok("GET", f"{P}/bed")  # settings decrypt with the old key
    assert bed["settings"]["region"] == "eu-west-1"
    k = await c.ok("POST", f"{P}/oai/keys", {"api_key": "sk-after-rotation-9"})
    kids = dict(await r2.reg.pool.fetch("SELECT id::text, key_id FROM registry.ai_provider_keys"))
    import base64

    assert kids.pop(k["id"]) == key_id(base64.b64decode(new))
    assert set(kids.values()) == {key_id(base64.b64decode(old))}
    snap = await build_snapshot(r2.reg)
    opener = Sealer.from_keys(r2.settings.bus_keys(), PURPOSE_BUS)
    oai = next(p for p in snap.providers if p.name == "oai")
    assert [opener.open(x.sealed) for x in oai.keys] == ["sk-first-key-0001", "sk-second-key-0002", "sk-after-rotation-9"]
    ident = await verify_token(r2.reg, hash_token(token))
    assert ident and opener.open(ident.provider_keys[0].sealed) == "sk-gina-own-key-0003"
    await c.ok("PATCH", f"{P}/bed", {"settings": {"model": "claude-2"}})
    assert await r2.reg.pool.fetchval("SELECT settings_key_id FROM registry.ai_providers WHERE name = 'bed'") == key_id(base64.b64decode(new))


async def test_misconfigured_rows_skipped_while_the_rest_load(registry, client, caplog) -> None:  # type: ignore[no-untyped-def]
    """An undecryptable secret or an unsupported stored type leaves that provider out, not the snapshot."""
    import logging

    from aigw_common.metrics import new_registry
    from aigw_registry.responders import Responders

    await _setup_data(client)
    await client.ok("POST", P, {"name": "gem", "type": "openai", "base_url": "http://127.0.0.1:7013/v1"})
    pool = registry.reg.pool
    # a value that does not open (sealed elsewhere, or damaged)
    await pool.execute("UPDATE registry.ai_providers SET settings_sealed = 'v1.deadbeef.garbage' WHERE name = 'bed'")
    await pool.execute("UPDATE registry.ai_providers SET type = 'gemini' WHERE name = 'gem'")
    skipped: list[str] = []
    snap = await build_snapshot(registry.reg, skipped)
    assert [p.name for p in snap.providers] == ["oai"] and sorted(skipped) == ["bed", "gem"]

    # a bad key makes its provider unservable too; when nothing loads, one error says so and a gauge shows it
    await pool.execute("UPDATE registry.ai_provider_keys SET api_key_sealed = 'v1.x.y'")
    caplog.set_level(logging.ERROR)
    resp = Responders(registry.reg, new_registry())
    snap = await resp.snapshot()
    assert snap.providers == []
    assert resp.skipped._value.get() == 3  # type: ignore[attr-defined]
    loud = [r for r in caplog.records if "no enabled provider can be loaded" in r.getMessage()]
    assert len(loud) == 1 and sorted(loud[0].__dict__["skipped"]) == ["bed", "gem", "oai"]
    await resp.snapshot()  # cached per revision: no second error for the same state
    assert len([r for r in caplog.records if "no enabled provider can be loaded" in r.getMessage()]) == 1


async def test_a_follower_that_is_current_gets_the_revision_only(registry, client, bus) -> None:  # type: ignore[no-untyped-def]
    """known_revision: a caller holding the registry's revision is answered ``unchanged`` — no providers, no
    sealed keys — and a SnapshotFollower keeps what it holds; a change still reaches it in full."""
    await _setup_data(client)
    metrics = registry.app[METRICS]

    def answered(outcome: str) -> float:
        return metrics.get_sample_value("aigw_registry_bus_requests_total",
                                        {"subject": "snapshot", "outcome": outcome}) or 0.0

    full = await bus.request(bus.subjects.registry_snapshot, SnapshotRequest(), RegistrySnapshot, timeout=5)
    assert full.providers and not full.unchanged
    same = await bus.request(bus.subjects.registry_snapshot, SnapshotRequest(known_revision=full.revision),
                             RegistrySnapshot, timeout=5)
    assert same.unchanged and same.revision == full.revision and same.providers == []
    assert len(msgspec.json.encode(same)) < 100 < len(msgspec.json.encode(full))
    older = await bus.request(bus.subjects.registry_snapshot, SnapshotRequest(known_revision=full.revision - 1),
                              RegistrySnapshot, timeout=5)
    assert not older.unchanged and older.providers == full.providers

    applied: list[int] = []

    async def apply(_old: RegistrySnapshot | None, new: RegistrySnapshot) -> None:
        applied.append(new.revision)

    f = SnapshotFollower(bus, apply, interval=60.0, timeout=5.0)
    await f.start()
    try:
        for _ in range(100):
            if f.revision is not None:
                break
            await asyncio.sleep(0.05)
        assert f.revision == full.revision and len(f.snapshot.providers) == 2  # type: ignore[union-attr]
        before = answered("unchanged")
        assert await f.refresh() is True
        assert answered("unchanged") == before + 1
        assert f.revision == full.revision and len(f.snapshot.providers) == 2 and applied == [full.revision]  # type: ignore[union-attr]
        await client.ok("POST", P, {"name": "new", "type": "openai", "base_url": "http://127.0.0.1:7012/v1",
                                    "keys": ["sk-third-key-0004"]})
        for _ in range(100):
            if f.revision != full.revision:
                break
            await asyncio.sleep(0.05)
        assert f.revision is not None and f.revision > full.revision
        assert {p.name for p in f.snapshot.providers} == {"oai", "bed", "new"}  # type: ignore[union-attr]
    finally:
        await f.stop()
