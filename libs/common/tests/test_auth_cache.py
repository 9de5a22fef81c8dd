"""The identity cache while the registry cannot be asked: a known token keeps serving (bounded), an unknown one
does not, and a revocation still evicts."""

from __future__ import annotations

import asyncio

import pytest

from aigw_common.auth import IdentityCache
from aigw_common.bus import Bus
from aigw_common.errors import BusError
from aigw_common.schemas import AuthVerifyReply, AuthVerifyRequest, Identity

ALICE = Identity(user_id="u1", username="alice", roles=["member"], token_id="t1")


async def test_known_token_served_past_expiry_only_while_the_registry_is_away(bus: Bus) -> None:
    asked: list[str] = []

    async def registry(req: AuthVerifyRequest, _m: object) -> AuthVerifyReply:
        asked.append(req.token_hash)
        return AuthVerifyReply(identity=ALICE)

    sub = await bus.subscribe(bus.subjects.auth_verify, AuthVerifyRequest, registry)
    await bus.flush()
    cache = IdentityCache(bus, ttl=0.05, timeout=0.2, stale_grace=1.0, stale_retry=0.1)
    assert await cache.verify("tok-alice") == ALICE
    await asyncio.sleep(0.1)  # expired: the next call asks again
    assert await cache.verify("tok-alice") == ALICE and len(asked) == 2

    await bus.unsubscribe(sub)  # the registry is away
    await bus.flush()
    await asyncio.sleep(0.1)
    assert await cache.verify("tok-alice") == ALICE  # the known identity, not an error
    with pytest.raises(BusError):
        await cache.verify("tok-bob")  # never verified: nothing to fall back on

    # a revocation heard meanwhile evicts it at once
    cache.evict(token_ids=["t1"])
    with pytest.raises(BusError):
        await cache.verify("tok-alice")

    # and the grace is bounded
    sub = await bus.subscribe(bus.subjects.auth_verify, AuthVerifyRequest, registry)
    await bus.flush()
    assert await cache.verify("tok-alice") == ALICE
    await bus.unsubscribe(sub)
    await bus.flush()
    await asyncio.sleep(1.2)
    with pytest.raises(BusError):
        await cache.verify("tok-alice")
