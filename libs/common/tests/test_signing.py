"""Proof of sender on the bus: the signature primitives, and the bus refusing forgeries on a real NATS
server that enforces nothing (the shared test server has no authorization)."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from aigw_common.auth import IdentityCache
from aigw_common.bus import Bus, BusAuth, encode
from aigw_common.crypto import hash_token
from aigw_common.errors import BusError, ConfigError
from aigw_common.keystate import KeyStateWatch, entry_subject, keys_bucket
from aigw_common.schemas import (
    AuthVerifyReply,
    AuthVerifyRequest,
    BudgetState,
    Identity,
    KeyState,
    RegistrySnapshot,
    SnapshotRequest,
)
from aigw_common.settings import Settings
from aigw_common.signing import HEADER, Rejected, Signer, Verifier, generate_keypair
from aigw_testing.buskeys import BusKeys
from aigw_testing.wait import eventually


def _pair(name: str) -> tuple[Signer, Verifier]:
    priv, pub = generate_keypair()
    return Signer.from_b64(name, priv), Verifier.from_pairs([(name, pub)])


def test_signature_covers_signer_subject_context_time_and_payload() -> None:
    s, v = _pair("registry")
    ts, sig = s.sign("aigw.auth.verify", "ctx", b'{"a":1}')
    v.check("registry", "aigw.auth.verify", "ctx", b'{"a":1}', "registry", ts, sig)
    for subject, ctx, payload, signer, t in [
        ("aigw.budget.state", "ctx", b'{"a":1}', "registry", ts),  # replayed to another subject
        ("aigw.auth.verify", "other", b'{"a":1}', "registry", ts),  # to another request
        ("aigw.auth.verify", "ctx", b'{"a":2}', "registry", ts),  # payload changed
        ("aigw.auth.verify", "ctx", b'{"a":1}', "registry", ts + 1),  # timestamp changed
    ]:
        with pytest.raises(Rejected) as e:
            v.check("registry", subject, ctx, payload, signer, t, sig)
        assert e.value.reason == "bad_signature"
    with pytest.raises(Rejected, match="wrong_signer"):
        v.check("budget", "aigw.auth.verify", "ctx", b'{"a":1}', "registry", ts, sig)


def test_old_or_future_messages_are_refused_but_stored_values_do_not_expire() -> None:
    s, v = _pair("budget")
    old = int((time.time() - 3600) * 1000)
    _, sig = s.sign("x", "", b"p", ts_ms=old)
    with pytest.raises(Rejected, match="expired"):
        v.check("budget", "x", "", b"p", "budget", old, sig)
    v.check("budget", "x", "", b"p", "budget", old, sig, max_age=0)
    future = int((time.time() + 3600) * 1000)
    _, sig = s.sign("x", "", b"p", ts_ms=future)
    with pytest.raises(Rejected, match="expired"):
        v.check("budget", "x", "", b"p", "budget", future, sig)


def test_a_key_of_another_producer_cannot_sign_for_it() -> None:
    keys = BusKeys.generate()
    v = Verifier.from_pairs(keys.public.items())
    forger = Signer.from_b64("registry", keys.private["budget"])  # budget's key, claiming to be registry
    h = forger.header("s", "", b"p")
    with pytest.raises(Rejected, match="bad_signature"):
        v.check_header("registry", h, "s", "", b"p")
    for bad in (None, "", "registry", "registry x sig", "registry 1 2 3"):
        with pytest.raises(Rejected):
            v.check_header("registry", bad, "s", "", b"p")


def test_rotation_accepts_either_key_of_a_producer() -> None:
    (p1, k1), (p2, k2) = generate_keypair(), generate_keypair()
    v = Verifier.from_pairs([("keypool", k1), ("keypool", k2)])
    for priv in (p1, p2):
        v.check_header("keypool", Signer.from_b64("keypool", priv).header("s", "", b"p"), "s", "", b"p")


def test_services_refuse_to_start_without_their_keys() -> None:
    keys = BusKeys.generate()
    full = keys.env()
    BusAuth.from_settings(Settings.from_env(full), "registry")
    BusAuth.from_settings(Settings.from_env({"AIGW_BUS_VERIFY_KEYS": keys.verify_keys()}), "gateway")
    with pytest.raises(ConfigError, match="AIGW_REGISTRY_SIGNING_KEY is required"):
        BusAuth.from_settings(Settings.from_env({"AIGW_BUS_VERIFY_KEYS": keys.verify_keys()}), "registry")
    with pytest.raises(ConfigError, match="AIGW_BUS_VERIFY_KEYS has no public key for budget"):
        env = {**full, "AIGW_BUS_VERIFY_KEYS": f"registry:{keys.public['registry']},keypool:{keys.public['keypool']}"}
        BusAuth.from_settings(Settings.from_env(env), "gateway")
    other = BusKeys.generate()
    with pytest.raises(ConfigError, match="does not match"):
        BusAuth.from_settings(Settings.from_env({**full, "AIGW_BUDGET_SIGNING_KEY": other.private["budget"]}), "budget")
    with pytest.raises(ConfigError, match="AIGW_BUS_VERIFY_KEYS"):
        Settings.from_env({"AIGW_BUS_VERIFY_KEYS": "gateway:" + keys.public["registry"]})
    with pytest.raises(ConfigError, match="AIGW_KEYPOOL_SIGNING_KEY"):
        Settings.from_env({"AIGW_KEYPOOL_SIGNING_KEY": "c2hvcnQ="})
    assert keys.private["registry"] not in repr(Settings.from_env(full))


def test_a_gateway_cannot_sign_as_a_producer() -> None:
    keys = BusKeys.generate()
    gw = BusAuth.from_settings(Settings.from_env({"AIGW_BUS_VERIFY_KEYS": keys.verify_keys()}), "gateway")
    with pytest.raises(BusError, match="only registry may sign"):
        gw.sign(AuthVerifyReply, "s", "", b"{}", None)
    assert gw.sign(AuthVerifyRequest, "s", "", b"{}", None) is None  # unsigned kinds pass untouched


# ---------------------------------------------------------------- against a real, open NATS server


def _rejected(auth: BusAuth, kind: str) -> float:
    return sum(s.value for m in auth.rejected.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels["kind"] == kind)


OWNER = Identity(user_id="u-evil", username="evil", roles=["owner"], token_id="t-evil")


@pytest.fixture
async def gateway_bus(nats_url: str, bus: Bus, bus_keys: BusKeys):  # type: ignore[no-untyped-def]
    """A consumer's bus: verifies with the producers' public keys, holds no private key."""
    b = Bus(servers=(nats_url,), name="gw", subjects=bus.subjects, auth=bus_keys.auth(signers=()),
            inbox_prefix="_INBOX.gateway")
    await b.start(wait=5)
    yield b
    await b.close()


async def _rogue(nats_url: str):  # type: ignore[no-untyped-def]
    return await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=1)


async def test_a_rogue_auth_verify_responder_is_refused(gateway_bus: Bus, bus: Bus, nats_url: str) -> None:
    s = gateway_bus.subjects
    rogue = await _rogue(nats_url)
    own_signer, _ = _pair("registry")  # a well-formed signature, by a key nobody trusts
    answered = 0

    async def answer(m) -> None:  # type: ignore[no-untyped-def]
        nonlocal answered
        answered += 1
        data = encode(AuthVerifyReply(identity=OWNER))
        await m.respond(data)  # unsigned
        await rogue.publish(m.reply, data, headers={HEADER: own_signer.header(m.reply, m.subject, data)})

    await rogue.subscribe(s.auth_verify, cb=answer)
    await rogue.flush()
    cache = IdentityCache(gateway_bus, timeout=1.0)
    with pytest.raises(BusError, match="timed out"):
        await cache.verify("aigw_made-up-token-of-the-attacker")
    assert answered >= 1  # the cache may ask more than once (attempts)
    assert _rejected(gateway_bus.auth, "AuthVerifyReply") == 2 * answered  # every forged reply dropped

    # with the real registry also answering, its (signed) answer is the one taken, whoever is first
    async def registry(req: AuthVerifyRequest, _m) -> AuthVerifyReply:  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.05)  # let the rogue answer first
        return AuthVerifyReply(identity=None if req.token_hash != hash_token("aigw_real") else
                               Identity(user_id="u1", username="alice", roles=["member"], token_id="t1"))

    await bus.subscribe(s.auth_verify, AuthVerifyRequest, registry)
    await bus.flush()
    assert await cache.verify("aigw_made-up-token-of-the-attacker") is None
    ident = await cache.verify("aigw_real")
    assert ident is not None and ident.roles == ["member"]
    await rogue.close()


async def test_a_reply_cannot_be_replayed_to_another_request(gateway_bus: Bus, bus: Bus, nats_url: str) -> None:
    """A captured, validly signed reply re-sent to a later request's inbox is refused (signed over the inbox)."""
    s = gateway_bus.subjects
    rogue = await _rogue(nats_url)
    captured: list[tuple[bytes, dict[str, str]]] = []
    later_inboxes: list[str] = []

    async def registry(_req: SnapshotRequest, m) -> RegistrySnapshot | None:  # type: ignore[no-untyped-def]
        if not captured:
            return RegistrySnapshot(revision=7)
        later_inboxes.append(m.reply)
        return None  # stays silent the second time

    async def spy(m) -> None:  # type: ignore[no-untyped-def]
        if m.subject.startswith("_INBOX.gateway.") and m.headers:
            captured.append((m.data, dict(m.headers)))

    await bus.subscribe(s.registry_snapshot, SnapshotRequest, registry)
    await rogue.subscribe("_INBOX.gateway.>", cb=spy)  # an open server lets anyone read every inbox
    await bus.flush()
    await rogue.flush()
    snap = await gateway_bus.request(s.registry_snapshot, SnapshotRequest(), RegistrySnapshot, timeout=2)
    assert snap.revision == 7
    await eventually(lambda: captured, 3, "reply seen by the spy")

    async def replay() -> None:
        await eventually(lambda: later_inboxes, 3, "second request seen")
        data, headers = captured[0]
        await rogue.publish(later_inboxes[0], data, headers=headers)

    t = asyncio.create_task(replay())
    with pytest.raises(BusError, match="timed out"):
        await gateway_bus.request(s.registry_snapshot, SnapshotRequest(), RegistrySnapshot, timeout=1.5)
    await t
    assert _rejected(gateway_bus.auth, "RegistrySnapshot") == 1
    await rogue.close()


async def test_a_forged_budget_state_broadcast_is_dropped(gateway_bus: Bus, bus: Bus, nats_url: str,
                                                          bus_keys: BusKeys) -> None:
    s = gateway_bus.subjects
    got: list[BudgetState] = []

    async def on_state(msg: BudgetState, _m) -> None:  # type: ignore[no-untyped-def]
        got.append(msg)

    await gateway_bus.subscribe(s.budget_state, BudgetState, on_state)
    await gateway_bus.flush()
    forged = BudgetState(scope="user", subject_id="victim", blocked=True, spent_micros=1, limit_micros=1,
                         period_end=time.time() + 60)
    rogue = await _rogue(nats_url)
    data = encode(forged)
    await rogue.publish(s.budget_state, data)  # unsigned
    wrong = Signer.from_b64("budget", bus_keys.private["registry"])  # a real key, of the wrong producer
    await rogue.publish(s.budget_state, data, headers={HEADER: wrong.header(s.budget_state, "", data)})
    # a genuine one, captured and re-sent with changed content
    legit = Signer.from_b64("budget", bus_keys.private["budget"])
    header = legit.header(s.budget_state, "", data)
    await rogue.publish(s.budget_state, encode(BudgetState(scope="user", subject_id="victim", blocked=False,
                        spent_micros=0, limit_micros=1, period_end=time.time() + 60)), headers={HEADER: header})
    await rogue.flush()
    await bus.publish(s.budget_state, BudgetState(scope="user", subject_id="real", blocked=False, spent_micros=0,
                                                  limit_micros=5, period_end=time.time() + 60))
    await eventually(lambda: got, 3, "the genuine state arrives")
    await asyncio.sleep(0.2)
    assert [m.subject_id for m in got] == ["real"]
    assert _rejected(gateway_bus.auth, "BudgetState") == 3
    await rogue.close()


async def test_forged_key_state_writes_are_ignored(gateway_bus: Bus, bus: Bus, nats_url: str) -> None:
    changes: list[tuple[str, str, KeyState | None]] = []
    w = KeyStateWatch(gateway_bus, lambda p, k, st: changes.append((p, k, st)), resync_interval=1.0)
    kv = await keys_bucket(bus)
    revoked = KeyState(provider_id="p", key_id="k1", state="revoked", updated_at=time.time())
    await kv.put("p.k1", bus.auth.seal_entry(entry_subject(bus, "p.k1"), revoked))
    w.start()
    try:
        await eventually(lambda: w.loaded.is_set() and ("p.k1" in w.states), 5, "genuine state loaded")
        # an open server lets anyone write the bucket: an unsigned value, a value signed by another key,
        # a genuine value moved to another key, and a delete of the revoked key's entry
        rogue_kv = await keys_bucket(bus)
        await rogue_kv.put("p.k2", encode(KeyState(provider_id="p", key_id="k2", state="revoked")))
        fake, _ = _pair("keypool")
        valid = KeyState(provider_id="p", key_id="k1", state="valid", updated_at=time.time() + 10)
        ts, sig = fake.sign(entry_subject(bus, "p.k1"), "", encode(valid))
        import msgspec

        from aigw_common.schemas import SignedEntry

        await rogue_kv.put("p.k1", encode(SignedEntry(signer="keypool", ts=ts, sig=sig, payload=msgspec.Raw(encode(valid)))))
        genuine_k1 = (await rogue_kv.get("p.k1")).value
        await rogue_kv.put("p.k3", bus.auth.seal_entry(entry_subject(bus, "p.k1"), revoked))  # k1's value under k3
        await rogue_kv.purge("p.k1")
        del genuine_k1
        await asyncio.sleep(2.5)  # two resyncs
        assert w.states["p.k1"][0].state == "revoked"
        assert "p.k2" not in w.states and "p.k3" not in w.states
        assert [c for c in changes if c[2] is None or c[2].state != "revoked"] == []
        assert _rejected(gateway_bus.auth, "KeyState") >= 4
        # a genuine write still goes through
        ok = KeyState(provider_id="p", key_id="k1", state="valid", updated_at=time.time() + 20)
        await kv.put("p.k1", bus.auth.seal_entry(entry_subject(bus, "p.k1"), ok))
        await eventually(lambda: w.states["p.k1"][0].state == "valid", 5, "genuine reset applied")
    finally:
        await w.stop()
