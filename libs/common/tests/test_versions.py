"""The message version policy (docs/bus.md, "Message versions"): same ``v`` with fields this code does not
know is read; a newer ``v`` is refused — counted, logged once, never taken for poison."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.aio.msg import Msg

from aigw_common.bus import Bus, decode
from aigw_common.errors import DecodeError, UnsupportedVersion
from aigw_common.schemas import (
    AnyUsageMessage,
    AuthVerifyReply,
    AuthVerifyRequest,
    BusErrorReply,
    KeyReport,
    ProvidersChanged,
)


def test_same_version_with_unknown_fields_is_read() -> None:
    m = decode(b'{"kind":"providers.changed","v":1,"revision":3,"added_later":{"x":1}}', ProvidersChanged)
    assert m.revision == 3


def test_a_newer_version_is_refused_whether_or_not_its_fields_fit() -> None:
    with pytest.raises(UnsupportedVersion) as e:
        decode(b'{"kind":"providers.changed","v":2,"revision":3}', ProvidersChanged)
    assert e.value.retryable and e.value.kind == "providers.changed" and e.value.v == 2
    with pytest.raises(UnsupportedVersion):  # v2 renamed a field: still a version problem, not poison
        decode(b'{"kind":"providers.changed","v":2,"rev":3}', ProvidersChanged)
    with pytest.raises(UnsupportedVersion):  # one member of a union
        decode(b'{"kind":"usage.record","v":2,"record":{}}', AnyUsageMessage)


def test_garbage_is_still_poison() -> None:
    for data in (b"not json", b'{"kind":"providers.changed","v":1,"revision":"x"}', b'{"kind":"nope","v":9}'):
        with pytest.raises(DecodeError) as e:
            decode(data, ProvidersChanged)
        assert not isinstance(e.value, UnsupportedVersion) and not e.value.retryable


def _v2(msg: msgspec.Struct) -> bytes:
    d = msgspec.to_builtins(msg)
    d["v"] = 2
    return msgspec.json.encode(d)


async def test_a_subscriber_drops_and_counts_a_newer_version(bus: Bus) -> None:
    got: asyncio.Queue[KeyReport] = asyncio.Queue()

    async def on_report(r: KeyReport, _m: Msg) -> None:
        await got.put(r)

    await bus.subscribe(bus.subjects.keys_report, KeyReport, on_report)
    await bus.flush()
    assert bus.nc is not None
    await bus.nc.publish(bus.subjects.keys_report, _v2(KeyReport(gateway_id="new", at=1.0)))
    await bus.publish(bus.subjects.keys_report, KeyReport(gateway_id="old", at=2.0))
    r = await asyncio.wait_for(got.get(), 5)
    assert r.gateway_id == "old" and got.empty()
    assert bus.auth.unsupported.labels("keys.report", "2")._value.get() == 1


async def test_a_request_of_a_newer_version_is_answered_retryable(bus: Bus) -> None:
    """An old responder tells a newer caller at once; retryable, since an upgraded replica can answer."""
    async def responder(_req: AuthVerifyRequest, _m: Msg) -> AuthVerifyReply:
        raise AssertionError("never called")

    await bus.subscribe(bus.subjects.auth_verify, AuthVerifyRequest, responder, queue="registry")
    await bus.flush()
    assert bus.nc is not None
    reply = await bus.nc.request(bus.subjects.auth_verify, _v2(AuthVerifyRequest(token_hash="a" * 64)), timeout=5)
    err = decode(reply.data, BusErrorReply)
    assert err.code == "bad_request" and err.retryable and "newer" in err.message
