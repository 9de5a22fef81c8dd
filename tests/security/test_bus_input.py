"""Poison on the two JetStream consumers (budget's usage events, keypool's key marks).

A message a consumer cannot use must be terminated once, with an error log line naming why, and the
consumer must go on with the next message: not redelivered forever, not a dead consumer task. Each
case publishes poison and then a good message, waits for the good one to take effect, and checks the
durable consumer through JetStream's consumer info (nothing pending, nothing redelivered).
Hypothesis then throws arbitrary usage-event-shaped JSON at the budget consumer.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js.errors import KeyNotFoundError

from aigw_budget.api import SERVICE as BUDGET
from aigw_budget.app import create_app as budget_app
from aigw_common.bus import Bus
from aigw_common.keystate import ensure_marks_stream, keys_bucket, kv_key
from aigw_common.schemas import InterceptionEnded, KeyMarked
from aigw_keypool.app import create_app as keypool_app
from aigw_testing.registry_stub import RegistryStub
from aigw_testing.stack import wait_ready
from aigw_testing.wait import eventually

pytestmark = pytest.mark.reliability


async def _delivered_once(bus: Bus, stream: str, durable: str) -> None:
    """Every message of the stream was delivered to the consumer exactly once: a redelivery (a nak, or an ack
    that never came) makes the consumer's delivery sequence run ahead of the stream sequence."""
    info = await bus.js.consumer_info(stream, durable)
    assert info.delivered.consumer_seq == info.delivered.stream_seq, (
        f"{info.delivered.consumer_seq} deliveries for {info.delivered.stream_seq} messages: poison was redelivered")


def _event(**over: Any) -> dict[str, Any]:
    e = {"kind": "usage.ended", "v": 1, "event_id": uuid.uuid4().hex, "interception_id": uuid.uuid4().hex,
         "at": time.time(), "status": "ok", "status_code": 200, "duration_ms": 1}
    e.update(over)
    return e


def _tokens(**over: Any) -> dict[str, Any]:
    return _event(**{"kind": "usage.tokens", "model": "gpt-4o-mini", "tokens": {"input_tokens": 10}, **over})


def budget_poison() -> list[tuple[str, bytes]]:
    """Built when the test runs: the events carry the current time."""
    return [
        ("not JSON", b"\x00\xffnot json"),
        ("unknown kind", msgspec.json.encode(_event(kind="usage.exploded"))),
        ("wrong field type", msgspec.json.encode(_event(at="yesterday"))),
        ("NUL in a text column", msgspec.json.encode(_event(interception_id="a\x00b"))),
        ("time out of range", msgspec.json.encode(_event(at=1e300))),
        ("negative time", msgspec.json.encode(_event(at=-1e18))),
        ("token count over bigint", msgspec.json.encode(_tokens(tokens={"input_tokens": 2**63}))),
        ("negative token count", msgspec.json.encode(_tokens(tokens={"output_tokens": -5}))),
    ]


async def _budget(bus: Bus, make_settings, database_url: str, apps):  # type: ignore[no-untyped-def]
    await RegistryStub(bus, make_settings().bus_keys()).start()
    app = budget_app(make_settings(AIGW_DATABASE_URL=database_url))
    await apps.start(app)
    consumer = app[BUDGET].consumer
    await eventually(lambda: consumer.ready.is_set(), 10, "the usage consumer")
    return consumer


@pytest.fixture
async def budget_consumer(bus, make_settings, database_url, apps):  # type: ignore[no-untyped-def]
    """One budget service for the whole test (hypothesis runs every example against it)."""
    return await _budget(bus, make_settings, database_url, apps)


async def _budget_round(bus: Bus, consumer, poison: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    """Publish ``poison`` then one good event; the good one must be recorded and nothing left to redeliver."""
    recorded = consumer.outcomes.labels("recorded")._value.get()
    for data in poison:
        await bus.js.publish(bus.subjects.usage("ended"), data)
    good = InterceptionEnded(event_id=uuid.uuid4().hex, interception_id=uuid.uuid4().hex, at=time.time(), status="ok")
    await bus.js_publish(bus.subjects.usage("ended"), good, msg_id=good.event_id)
    await eventually(lambda: consumer.outcomes.labels("recorded")._value.get() > recorded, 10,
                     "the good event after the poison to be recorded (is the consumer still running?)")

    async def drained() -> bool:
        info = await bus.js.consumer_info(bus.subjects.usage_stream, consumer.durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(drained, 5, "nothing pending on the usage consumer")


async def test_budget_usage_consumer_terminates_poison(bus, make_settings, database_url, apps, logs,  # type: ignore[no-untyped-def]
                                                       reliability) -> None:
    consumer = await _budget(bus, make_settings, database_url, apps)
    poison = budget_poison()
    for name, data in poison:
        before = len(logs.errors("aigw_budget"))
        await _budget_round(bus, consumer, [data])
        assert len(logs.errors("aigw_budget")) > before, f"{name}: terminated without a log line"
    await _delivered_once(bus, bus.subjects.usage_stream, consumer.durable)
    terminated = {k: consumer.outcomes.labels(k)._value.get() for k in ("malformed", "rejected")}
    assert sum(terminated.values()) == len(poison), terminated
    reliability.record("Poison on the budget usage consumer",
                       client="—", usage=f"{len(poison)} kinds of poison each terminated after one delivery "
                                          "with an error log line; the next good event recorded",
                       measured=f"deliveries = messages (no redelivery); outcomes {terminated}")


# valid events of every kind with some fields replaced by arbitrary JSON (missing, wrong type, extreme)
_json = st.recursive(st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                     | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=6)
_VALID = {
    "usage.started": {"user_id": "u1", "group_ids": ["g1"], "provider_id": "p1", "provider_name": "openai",
                      "provider_type": "openai", "endpoint": "chat_completions", "model": "gpt-4o-mini",
                      "reservation_micros": 5, "metadata": {"a": "b"}, "credential_kind": "byok"},
    "usage.tokens": {"model": "gpt-4o-mini", "tokens": {"input_tokens": 3, "output_tokens": 4}},
    "usage.prompt": {"prompt": "hello"},
    "usage.tool": {"name": "get_weather", "call_id": "c1", "arguments": "{}", "error": None},
    "usage.ended": {"status": "ok", "status_code": 200, "duration_ms": 5},
}
_events = st.sampled_from(sorted(_VALID)).flatmap(lambda kind: st.builds(
    lambda changes, drop: {k: v for k, v in {"kind": kind, "v": 1, "event_id": uuid.uuid4().hex,
                                             "interception_id": uuid.uuid4().hex[:8], "at": time.time(),
                                             **_VALID[kind], **changes}.items() if k not in drop},
    st.dictionaries(st.sampled_from(["event_id", "interception_id", "at", *_VALID[kind]]),
                    _json | st.text(max_size=30) | st.integers(), max_size=3),
    st.sets(st.sampled_from(["v", "at", *_VALID[kind]]), max_size=1),
))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(_events, min_size=1, max_size=4))
async def test_budget_usage_consumer_survives_arbitrary_events(bus, budget_consumer, batch, reliability) -> None:  # type: ignore[no-untyped-def]
    await _budget_round(bus, budget_consumer, [msgspec.json.encode(e) for e in batch])
    outcomes = {k: int(budget_consumer.outcomes.labels(k)._value.get()) for k in ("recorded", "malformed", "rejected")}
    reliability.record("Arbitrary usage events on the budget consumer (hypothesis)", client="—",
                       usage="each batch of mutated events followed by a good one: the good one recorded, nothing "
                             "pending", measured=f"outcomes so far {outcomes}")


# ---------------------------------------------------------------------- keypool


async def _keypool(bus: Bus, make_settings, apps):  # type: ignore[no-untyped-def]
    registry = await RegistryStub(bus, make_settings().bus_keys()).start()
    p = registry.put_provider("openai", "openai", "http://up.example", ["zzkey-aaaa1111", "zzkey-bbbb2222"])
    await ensure_marks_stream(bus)
    admin = registry.add_user(roles=["admin"])
    app = keypool_app(make_settings())
    url = await apps.start(app)
    await wait_ready(url, 10)
    return p, url, admin.token


async def _until(kv, provider_id: str, key_id: str, until: float) -> bool:  # type: ignore[no-untyped-def]
    try:
        e = await kv.get(kv_key(provider_id, key_id))
    except KeyNotFoundError:
        return False
    stored = msgspec.json.decode(e.value)  # a signed envelope: the key state is its payload
    return bool(stored.get("payload", {}).get("until") == until)


async def _health(url: str, provider: str, token: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(
            f"{url}/api/v2/ai/providers/{provider}/keys/health", headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json(content_type=None)


def _mark(**over: Any) -> dict[str, Any]:
    m = {"kind": "keys.marked", "v": 1, "event_id": uuid.uuid4().hex, "provider_id": "prov-openai",
         "key_id": "ghost", "state": "cooling", "until": time.time() + 60, "status_code": 429}
    m.update(over)
    return m


def keypool_poison() -> list[tuple[str, bytes]]:
    """Built when the test runs: a cooling mark whose ``until`` has passed would be a no-op, not poison."""
    return [
        ("not JSON", b"{{{"),
        ("unknown state", msgspec.json.encode(_mark(state="melted"))),
        ("key id not a valid KV key", msgspec.json.encode(_mark(key_id="a b*c"))),
        ("empty provider id", msgspec.json.encode(_mark(provider_id=""))),
        ("wrong type", msgspec.json.encode(_mark(status_code="429"))),
    ]


async def test_keypool_marks_consumer_terminates_poison(bus, make_settings, apps, logs, reliability) -> None:  # type: ignore[no-untyped-def]
    p, url, token = await _keypool(bus, make_settings, apps)
    kv = await keys_bucket(bus)
    s = bus.subjects
    durable = s.durable("keypool")
    poison = keypool_poison()
    for i, (name, data) in enumerate(poison):
        before = len(logs.errors("aigw_keypool"))
        await bus.js.publish(s.keys_marked, data)
        good = KeyMarked(event_id=uuid.uuid4().hex, provider_id=p.id, key_id=p.keys[i % 2].id, state="cooling",
                         until=time.time() + 600 + i, status_code=429, at=time.time())
        await bus.js_publish(s.keys_marked, good, msg_id=good.event_id)

        await eventually(lambda good=good: _until(kv, good.provider_id, good.key_id, good.until), 10,
                         f"{name}: the good mark after the poison to be applied")

        async def drained() -> bool:
            info = await bus.js.consumer_info(s.keys_marked_stream, durable)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(drained, 5, f"{name}: nothing pending on the marks consumer")
        assert len(logs.errors("aigw_keypool")) > before, f"{name}: terminated without a log line"
    await _delivered_once(bus, s.keys_marked_stream, durable)
    # a mark far in the future on a real key is valid (the longest cooldown wins) and must not break the API
    await bus.js.publish(s.keys_marked, msgspec.json.encode(_mark(key_id=p.keys[0].id, until=1e308)))
    await eventually(lambda: _until(kv, p.id, p.keys[0].id, 1e308), 10, "the far mark applied")
    r = await _health(url, p.name, token)
    assert r[0] == 200 and r[1]["keys"][0]["state"] == "cooling", r
    reliability.record("Poison on the keypool marks consumer",
                       client="—", usage=f"{len(poison)} kinds of poison each terminated after one delivery "
                                          "with a log line; the next good mark applied",
                       measured="deliveries = messages (no redelivery)")
