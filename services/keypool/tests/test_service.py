"""keypool against real NATS: marks → bucket, expiry, restarts, registry changes, reports, the health API."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import msgspec
import pytest
from nats.js.errors import KeyNotFoundError

from aigw_common.bus import decode, encode
from aigw_common.keystate import entry_subject, kv_key
from aigw_common.schemas import (
    KeyMarked,
    KeyReport,
    KeysExhausted,
    KeyStat,
    KeyState,
    RateLimitInfo,
    SignedEntry,
)
from aigw_keypool.app import create_app


async def read(kv, provider_id: str, key_id: str) -> KeyState | None:
    try:
        e = await kv.get(kv_key(provider_id, key_id))
    except KeyNotFoundError:
        return None
    return decode(bytes(decode(e.value, SignedEntry).payload), KeyState)  # keypool signs every value


async def mark(bus, provider_id, key_id, state, until=None, status=429, **kw) -> KeyMarked:
    m = KeyMarked(event_id=uuid.uuid4().hex, provider_id=provider_id, key_id=key_id, state=state, until=until,
                  status_code=status, gateway_id="test", at=time.time(), **kw)
    await bus.js_publish(bus.subjects.keys_marked, m, msg_id=m.event_id)
    return m


@pytest.fixture
def start_keypool(apps, make_settings, eventually):  # type: ignore[no-untyped-def]
    async def start():  # type: ignore[no-untyped-def]
        app = create_app(make_settings())
        url = await apps.start(app)
        async with aiohttp.ClientSession() as s:
            async def ready() -> bool:
                async with s.get(url + "/readyz") as r:
                    return r.status == 200
            await eventually(ready, 10, "keypool ready")
        return app, url

    return start


async def test_marks_race_across_replicas_longest_cooldown_wins(bus, registry, kv, start_keypool, eventually):
    p = registry.put_provider("openai", "openai", "http://up", ["sk-aaaa1111", "sk-bbbb2222"])
    k1, k2 = p.keys[0].id, p.keys[1].id
    await start_keypool()
    await start_keypool()  # two replicas share the durable consumer and write with compare-and-set
    now = time.time()
    untils = [now + 20 + i for i in range(30)]
    await asyncio.gather(*(mark(bus, p.id, k1, "cooling", u) for u in reversed(untils)))

    async def longest() -> bool:
        st = await read(kv, p.id, k1)
        return st is not None and st.until == max(untils)
    await eventually(longest, 5, "longest cooldown")

    await mark(bus, p.id, k2, "revoked", status=401)
    await mark(bus, p.id, k2, "cooling", now + 100)

    async def revoked() -> bool:
        st = await read(kv, p.id, k2)
        return st is not None and st.state == "revoked" and st.status_code == 401
    await eventually(revoked, 5, "revoked")
    await asyncio.sleep(0.3)
    assert (await read(kv, p.id, k2)).state == "revoked"  # the later cooling mark did not demote it


async def test_restart_loses_no_mark_and_keeps_revoked(bus, registry, kv, apps, start_keypool, eventually):
    p = registry.put_provider("openai", "openai", "http://up", ["sk-aaaa1111", "sk-bbbb2222"])
    k1, k2 = p.keys[0].id, p.keys[1].id
    app, _ = await start_keypool()
    await mark(bus, p.id, k1, "revoked", status=401)

    async def state_is(kid, name):  # type: ignore[no-untyped-def]
        st = await read(kv, p.id, kid)
        return st is not None and st.state == name
    await eventually(lambda: state_is(k1, "revoked"), 5, "k1 revoked")
    await apps.stop(app)

    until = time.time() + 30
    await mark(bus, p.id, k2, "cooling", until)  # published while no keypool runs
    await asyncio.sleep(0.2)
    assert await read(kv, p.id, k2) is None

    await start_keypool()
    await eventually(lambda: state_is(k2, "cooling"), 5, "k2 cooling after restart")
    assert (await read(kv, p.id, k2)).until == until
    assert (await read(kv, p.id, k1)).state == "revoked"


async def test_cooling_flips_back_to_valid(bus, registry, kv, start_keypool, eventually):
    p = registry.put_provider("openai", "openai", "http://up", ["sk-aaaa1111"])
    await start_keypool()
    await mark(bus, p.id, p.keys[0].id, "cooling", time.time() + 1.0)

    async def state_is(name):  # type: ignore[no-untyped-def]
        st = await read(kv, p.id, p.keys[0].id)
        return st is not None and st.state == name
    await eventually(lambda: state_is("cooling"), 3, "cooling")
    await eventually(lambda: state_is("valid"), 4, "valid again")


async def test_registry_changes_clear_state_and_exhaustion_is_announced(bus, registry, kv, start_keypool, eventually):
    p = registry.put_provider("openai", "openai", "http://up", ["sk-aaaa1111", "sk-bbbb2222"])
    other = registry.put_provider("other", "openai", "http://up2", ["sk-cccc3333"])
    exhausted: asyncio.Queue[KeysExhausted] = asyncio.Queue()

    async def on_exhausted(msg, _m):  # type: ignore[no-untyped-def]
        await exhausted.put(msg)
    await bus.subscribe(bus.subjects.keys_exhausted, KeysExhausted, on_exhausted)
    _, url = await start_keypool()

    until = time.time() + 30
    await mark(bus, p.id, p.keys[0].id, "revoked", status=401)
    await mark(bus, p.id, p.keys[1].id, "cooling", until)
    msg = await asyncio.wait_for(exhausted.get(), 5)
    assert msg.provider_id == p.id and msg.soonest == until
    await mark(bus, p.id, p.keys[1].id, "revoked", status=403)
    msg = await asyncio.wait_for(exhausted.get(), 5)
    assert msg.soonest is None  # every key revoked
    await mark(bus, other.id, other.keys[0].id, "revoked", status=401)
    await asyncio.wait_for(exhausted.get(), 5)

    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    assert 'aigw_keypool_exhaustions_total{provider="openai"} 1.0' in text
    assert 'aigw_keypool_keys{provider="openai",state="revoked"} 2.0' in text
    assert 'aigw_keypool_transitions_total{from_state="valid",provider="openai",to_state="revoked"} 1.0' in text

    # key 1 replaced under a new id, key 2's value replaced under the same id (new hint): both cleared
    old_k1 = p.keys[0].id
    p = registry.put_provider("openai", "openai", "http://up", ["sk-dddd4444", "sk-eeee5555"],
                              key_ids=["fresh-k1", p.keys[1].id])
    await registry.publish_changed()

    async def cleared(pid, *kids) -> bool:  # type: ignore[no-untyped-def]
        # cleared = a signed "valid" state (never a delete, which readers would ignore as unsigned)
        return all([(st := await read(kv, pid, k)) is None or st.state == "valid" for k in kids])
    await eventually(lambda: cleared(p.id, old_k1, p.keys[1].id), 5, "replaced keys cleared")
    # a provider disabled (gone from the snapshot): its keys' state is cleared, so re-enabled it starts valid
    registry.put_provider("other", "openai", "http://up2", ["sk-cccc3333"], enabled=False)
    await registry.publish_changed()
    await eventually(lambda: cleared(other.id, other.keys[0].id), 5, "disabled provider's key state cleared")


async def test_reports_feed_health_and_cool_a_key_before_its_429(bus, registry, kv, start_keypool, eventually):
    p = registry.put_provider("openai", "openai", "http://up", ["sk-aaaa1111", "sk-bbbb2222", "sk-cccc3333"])
    k1, k2, k3 = (k.id for k in p.keys)
    admin = registry.add_user(roles=["admin"]).token
    member = registry.add_user(roles=["member"]).token
    _, url = await start_keypool()
    now = time.time()
    reset = now + 20
    await bus.publish(bus.subjects.keys_report, KeyReport(gateway_id="g1", at=now, keys=[
        KeyStat(provider_id=p.id, key_id=k1, successes=7, failures=2, last_status=200),
        KeyStat(provider_id=p.id, key_id=k2, successes=1, last_status=200,
                ratelimit=RateLimitInfo(remaining_requests=0, reset_requests_at=reset, remaining_tokens=500)),
    ]))
    await bus.publish(bus.subjects.keys_report, KeyReport(gateway_id="g2", at=now, keys=[
        KeyStat(provider_id=p.id, key_id=k1, successes=3, failures=0, last_status=200)]))

    async def k2_cooling() -> bool:
        st = await read(kv, p.id, k2)
        return st is not None and st.state == "cooling" and st.until == reset
    await eventually(k2_cooling, 5, "proactive cooling")
    await mark(bus, p.id, k3, "revoked", status=401)

    async with aiohttp.ClientSession() as s:
        async def get(ref, token):  # type: ignore[no-untyped-def]
            h = {"Authorization": f"Bearer {token}"} if token else {}
            async with s.get(f"{url}/api/v2/ai/providers/{ref}/keys/health", headers=h) as r:
                return r.status, await r.json()

        assert (await get("openai", None))[0] == 401
        assert (await get("openai", "nope"))[0] == 401
        assert (await get("openai", member))[0] == 403
        status, body = await get("nope", admin)
        assert status == 404 and body["message"]

        async def revoked_shown() -> bool:
            return (await get(p.id, admin))[1]["keys"][2]["state"] == "revoked"
        await eventually(revoked_shown, 5, "health shows the revoke")
        status, body = await get("openai", admin)
    assert status == 200 and body["provider"] == "openai"
    keys = body["keys"]
    assert [k["id"] for k in keys] == [k1, k2, k3] and [k["position"] for k in keys] == [0, 1, 2]
    assert keys[0] == {"id": k1, "hint": "sk-…1111", "position": 0, "state": "valid", "until": None,
                       "last_status": 200, "failures_1m": 2, "successes_1m": 10, "reason": None, "why": None,
                       "since": None, "next_check_at": None, "checks": 0}
    assert keys[1]["state"] == "cooling" and keys[1]["until"].endswith("Z") and keys[1]["successes_1m"] == 1
    assert keys[1]["reason"] == "budget_exhausted" and keys[1]["since"].endswith("Z")
    assert keys[2]["state"] == "revoked" and keys[2]["last_status"] == 401 and keys[2]["until"] is None
    assert keys[2]["reason"] == "auth_rejected" and "re-checks" in keys[2]["why"] and keys[2]["next_check_at"].endswith("Z")
    for k in keys:
        assert "sk-aaaa1111" not in str(k)


@pytest.fixture
def start_keypool_with(apps, make_settings, eventually):  # type: ignore[no-untyped-def]
    async def start(**env: str):  # type: ignore[no-untyped-def]
        app = create_app(make_settings(**env))
        url = await apps.start(app)
        async with aiohttp.ClientSession() as s:
            async def ready() -> bool:
                async with s.get(url + "/readyz") as r:
                    return r.status == 200
            await eventually(ready, 10, "keypool ready")
        return app, url

    return start


async def test_revoked_key_is_rechecked_on_a_backoff_and_returns(bus, registry, kv, mock_upstream,  # type: ignore[no-untyped-def]
                                                                 start_keypool_with, eventually):
    """A revoked key is re-checked with the provider's model list, backing off while refused, and is valid
    again once the provider accepts it."""
    mock_upstream.play("openai/chatcompletions/simple")
    p = registry.put_provider("oai", "openai", mock_upstream.url + "/v1", ["sk-recheck-0001", "sk-recheck-0002"])
    a = registry.put_provider("ant", "anthropic", mock_upstream.url, ["sk-ant-recheck-0003"])
    k1, ka = p.keys[0].id, a.keys[0].id
    admin = registry.add_user(roles=["admin"]).token
    mock_upstream.on_key("sk-recheck-0001", 401)
    _, url = await start_keypool_with(AIGW_KEY_RECHECK_MIN="300ms", AIGW_KEY_RECHECK_MAX="1s")
    await mark(bus, p.id, k1, "revoked", status=401)
    await mark(bus, a.id, ka, "revoked", status=403)

    async def checks(pid: str, kid: str, n: int) -> bool:
        st = await read(kv, pid, kid)
        return st is not None and st.state == "revoked" and st.checks >= n
    await eventually(lambda: checks(p.id, k1, 3), 10, "three refused re-checks")
    st = await read(kv, p.id, k1)
    assert st.reason == "auth_rejected" and st.next_check_at is not None
    assert st.next_check_at - time.time() <= 1.0 + 0.5  # the backoff is capped
    probes = [r for r in mock_upstream.requests if r.key == "sk-recheck-0001"]
    assert {(r.method, r.path) for r in probes} == {("GET", "/v1/models")}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/api/v2/ai/providers/oai/keys/health", headers={"Authorization": f"Bearer {admin}"}) as r:
            body = await r.json()
    k = body["keys"][0]
    assert k["state"] == "revoked" and k["reason"] == "auth_rejected" and k["checks"] >= 3 and k["next_check_at"]

    # the provider takes the key again: valid, with the reason
    mock_upstream.clear_key("sk-recheck-0001")

    async def back() -> bool:
        st = await read(kv, p.id, k1)
        return st is not None and st.state == "valid" and st.reason == "recovered"
    await eventually(back, 5, "key accepted again")
    # anthropic keys are checked with their own auth header and path
    async def ant_back() -> bool:
        st = await read(kv, a.id, ka)
        return st is not None and st.state == "valid"
    await eventually(ant_back, 5, "anthropic key re-checked")
    ant_probe = next(r for r in mock_upstream.requests if r.key == "sk-ant-recheck-0003")
    assert ant_probe.path == "/v1/models" and ant_probe.headers.get("anthropic-version")
    # the other key was never revoked, so never probed
    assert mock_upstream.count_by_key.get("sk-recheck-0002", 0) == 0


async def test_reset_route(bus, registry, kv, start_keypool_with, eventually):  # type: ignore[no-untyped-def]
    p = registry.put_provider("openai", "openai", "http://127.0.0.1:9/v1", ["sk-reset-0001", "sk-reset-0002"])
    k1, k2 = p.keys[0].id, p.keys[1].id
    admin = registry.add_user(roles=["admin"]).token
    member = registry.add_user(roles=["member"]).token
    _, url = await start_keypool_with()
    await mark(bus, p.id, k1, "revoked", status=401)

    async def revoked() -> bool:
        st = await read(kv, p.id, k1)
        return st is not None and st.state == "revoked"
    await eventually(revoked, 5, "revoked")
    async with aiohttp.ClientSession() as s:
        async def post(path: str, token: str | None):  # type: ignore[no-untyped-def]
            h = {"Authorization": f"Bearer {token}"} if token else {}
            async with s.post(f"{url}/api/v2/ai/providers/{path}/reset", headers=h) as r:
                return r.status, await r.json()

        assert (await post(f"openai/keys/{k1}", None))[0] == 401
        assert (await post(f"openai/keys/{k1}", member))[0] == 403
        assert (await post(f"nope/keys/{k1}", admin))[0] == 404
        assert (await post("openai/keys/not-a-key", admin))[0] == 404
        status, body = await post(f"openai/keys/{k1}", admin)
        assert status == 200, body
        assert body["id"] == k1 and body["state"] == "valid" and body["reason"] == "reset" and body["hint"] == "sk-…0001"
        st = await read(kv, p.id, k1)
        assert st.state == "valid" and st.reason == "reset"
        # a valid key may be reset too (idempotent), and by provider id
        status, body = await post(f"{p.id}/keys/{k2}", admin)
        assert status == 200 and body["state"] == "valid"


async def test_revoked_bedrock_api_key_is_rechecked(bus, registry, kv, mock_bedrock,  # type: ignore[no-untyped-def]
                                                    start_keypool_with, eventually):
    """A Bedrock API key in a pool is re-checked on the control plane's model list; an access-key pair is not
    probed (it would need SigV4) and stays revoked until reset."""
    p = registry.put_provider("bed", "bedrock", mock_bedrock.url, ["ABSKrecheck-api-key-0001", "AKIDPAIRKEY00001:s"],
                              settings={"region": mock_bedrock.region})
    k1, k2 = p.keys[0].id, p.keys[1].id
    await start_keypool_with(AIGW_KEY_RECHECK_MIN="300ms", AIGW_KEY_RECHECK_MAX="600ms")
    await mark(bus, p.id, k1, "revoked", status=403)
    await mark(bus, p.id, k2, "revoked", status=403)

    async def refused_once() -> bool:
        st = await read(kv, p.id, k1)
        return st is not None and st.checks >= 1
    await eventually(refused_once, 10, "a refused re-check of the unknown API key")
    mock_bedrock.api_keys.add("ABSKrecheck-api-key-0001")

    async def back() -> bool:
        st = await read(kv, p.id, k1)
        return st is not None and st.state == "valid" and st.reason == "recovered"
    await eventually(back, 10, "the API key accepted again")
    st2 = await read(kv, p.id, k2)
    assert st2.state == "revoked"


async def test_a_mark_that_fails_unexpectedly_does_not_end_the_marks_consumer(bus, registry, kv, start_keypool,
                                                                              eventually):
    """A stored state keypool cannot decode (a newer keypool's shape, signed) makes applying a mark for that key
    fail with an error no one foresaw: that mark waits for redelivery, and the marks after it still flow. (The
    consumer used to end for good on any non-NATS error, while its /readyz kept saying it consumed.)"""
    p = registry.put_provider("openai", "openai", "http://up", ["sk-aaaa1111", "sk-bbbb2222"])
    k1, k2 = p.keys[0].id, p.keys[1].id
    key = kv_key(p.id, k1)
    # signed like keypool signs, but not a KeyState this version can read
    payload = b'{"kind":"keys.state","v":1,"provider_id":"' + p.id.encode() + b'","key_id":"' + k1.encode() + \
        b'","state":"frozen"}'
    ts, sig = bus.auth.signers["keypool"].sign(entry_subject(bus, key), "", payload)
    await kv.put(key, encode(SignedEntry(signer="keypool", ts=ts, sig=sig, payload=msgspec.Raw(payload))))
    await start_keypool()
    await mark(bus, p.id, k1, "cooling", time.time() + 60)
    await asyncio.sleep(0.5)  # the first mark is tried (and fails) before the next one arrives
    await mark(bus, p.id, k2, "cooling", time.time() + 60)

    async def k2_cooling() -> bool:
        st = await read(kv, p.id, k2)
        return st is not None and st.state == "cooling"
    await eventually(k2_cooling, 10, "a later mark applied")
