"""The bus against the real NATS server."""

import asyncio

import pytest
from nats.aio.msg import Msg

from aigw_common.bus import Bus, Subjects
from aigw_common.errors import BusError
from aigw_common.schemas import (
    AuthVerifyReply,
    AuthVerifyRequest,
    InterceptionEnded,
    ProvidersChanged,
)


async def test_publish_subscribe_typed(bus: Bus):
    got: asyncio.Queue[ProvidersChanged] = asyncio.Queue()

    async def handler(msg, _m):
        await got.put(msg)

    await bus.subscribe(bus.subjects.providers_changed, ProvidersChanged, handler)
    await bus.nc.flush()
    await bus.publish(bus.subjects.providers_changed, ProvidersChanged(revision=7, provider_ids=["p1"]))
    msg = await asyncio.wait_for(got.get(), 2)
    assert msg.revision == 7 and msg.provider_ids == ["p1"]


async def test_request_reply(bus: Bus):
    async def responder(req: AuthVerifyRequest, _m):
        assert req.token_hash == "abc"
        return AuthVerifyReply(identity=None)

    await bus.subscribe(bus.subjects.auth_verify, AuthVerifyRequest, responder, queue="registry")
    await bus.nc.flush()
    reply = await bus.request(bus.subjects.auth_verify, AuthVerifyRequest(token_hash="abc"), AuthVerifyReply)
    assert reply.identity is None


async def test_no_responder_is_bus_error(bus: Bus):
    with pytest.raises(BusError):
        await bus.request(bus.subjects.registry_snapshot, AuthVerifyRequest(token_hash="x"), AuthVerifyReply, timeout=0.5)


async def test_jetstream_dedup(bus: Bus):
    s = bus.subjects
    await bus.ensure_stream(s.usage_stream, [s.usage_all])
    await bus.ensure_stream(s.usage_stream, [s.usage_all])  # idempotent
    ev = InterceptionEnded(event_id="e1", interception_id="i1", at=1.0, status="ok")
    await bus.js_publish(s.usage("ended"), ev, msg_id=ev.event_id)
    await bus.js_publish(s.usage("ended"), ev, msg_id=ev.event_id)
    info = await bus.js.stream_info(s.usage_stream)
    assert info.state.messages == 1


async def test_starts_without_nats_and_connects_later():
    b = Bus(servers=("nats://127.0.0.1:1",), name="t", subjects=Subjects("tdown"))
    await b.start(wait=0.3)
    assert not b.connected
    with pytest.raises(BusError):
        await b.publish("x", ProvidersChanged(revision=1))
    await b.close()


async def test_no_propagator_runs_while_tracing_is_off(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every publish asked OpenTelemetry's propagators for a context that tracing off never has (~1 µs each);
    the headers a caller passes still go out, and signing still adds to a copy of them."""
    from aigw_common import tracing

    assert not tracing.enabled()

    def explode(*a: object, **k: object) -> None:
        raise AssertionError("a propagator ran while tracing is off")

    monkeypatch.setattr(tracing.propagate, "inject", explode)
    got: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    async def seen(m: Msg) -> None:
        got.put_nowait(dict(m.headers or {}))

    assert bus.nc is not None
    sub = await bus.nc.subscribe(f"{bus.subjects.prefix}.hdr", cb=seen)
    mine = {"X-Test": "1"}
    await bus.publish_raw(f"{bus.subjects.prefix}.hdr", b"x", headers=mine)
    await bus.publish_raw(f"{bus.subjects.prefix}.hdr", b"y")
    assert await asyncio.wait_for(got.get(), 5) == {"X-Test": "1"}
    assert await asyncio.wait_for(got.get(), 5) == {}
    assert mine == {"X-Test": "1"}
    await sub.unsubscribe()
