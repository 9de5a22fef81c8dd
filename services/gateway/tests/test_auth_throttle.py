"""Token guessing costs no registry round trip per try: negative cache, shared look-ups, per-address throttle.

The registry stand-in counts the ``aigw.auth.verify`` requests it answers on real NATS, which is what a
Postgres query per try would cost with the real registry.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from aigw_common.auth import AuthThrottled, FailureThrottle, IdentityCache, client_key
from aigw_common.bus import Bus
from aigw_common.crypto import new_token
from aigw_testing.registry_stub import RegistryStub

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


async def _post(s: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientResponse:
    async with s.post(url + "/openai/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"}) as r:
        await r.read()
        return r


async def test_a_token_guessing_loop_is_throttled_without_asking_the_registry(gw) -> None:  # type: ignore[no-untyped-def]
    gw.upstream.play("openai/chatcompletions/simple")
    async with aiohttp.ClientSession() as s:
        r = await _post(s, gw.url, gw.user.token)  # a real user, cached from now on
        assert r.status == 200
        before = gw.registry.verify_requests
        statuses = []
        for _ in range(200):
            r = await _post(s, gw.url, new_token())  # a fresh guess every time
            statuses.append(r.status)
            if r.status == 429:
                throttled = r
        asked = gw.registry.verify_requests - before
        # the allowance (30 a minute by default, refilled at that rate while the loop runs), then nothing
        assert 30 <= asked <= 45, asked
        assert statuses[:30] == [401] * 30 and statuses.count(429) >= 150
        assert throttled.headers.get("Retry-After") and int(throttled.headers["Retry-After"]) >= 1
        async with s.post(gw.url + "/openai/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {new_token()}"}) as r:
            body = await r.json()
            assert r.status == 429 and "failed authentications" in body["error"]["message"]  # OpenAI error format
        # the same address's known token still works (cached: no look-up to refuse)
        assert (await _post(s, gw.url, gw.user.token)).status == 200


async def test_the_same_unknown_token_is_asked_once(gw) -> None:  # type: ignore[no-untyped-def]
    bad = new_token()
    before = gw.registry.verify_requests
    async with aiohttp.ClientSession() as s:
        statuses = await asyncio.gather(*(_post(s, gw.url, bad) for _ in range(10)))
        statuses += [await _post(s, gw.url, bad) for _ in range(10)]
    assert {r.status for r in statuses} <= {401, 429} and statuses[0].status == 401
    assert gw.registry.verify_requests - before == 1  # concurrent misses shared; later ones from the negative cache


async def test_negative_entries_cannot_push_out_real_identities(bus: Bus, registry: RegistryStub) -> None:
    user = registry.add_user()
    cache = IdentityCache(bus, max_negative=50, failures=FailureThrottle(0))
    assert (await cache.verify(user.token)) is not None
    for _ in range(200):
        assert await cache.verify(new_token(), client="10.0.0.1") is None
    asked = registry.verify_requests
    assert (await cache.verify(user.token)) is not None and registry.verify_requests == asked
    assert len(cache._negative) == 50


async def test_a_throttled_address_is_refused_before_any_request(bus: Bus, registry: RegistryStub) -> None:
    cache = IdentityCache(bus, failures=FailureThrottle(3))
    for _ in range(3):
        assert await cache.verify(new_token(), client="192.0.2.7") is None
    asked = registry.verify_requests
    with pytest.raises(AuthThrottled) as ei:
        await cache.verify(new_token(), client="192.0.2.7")
    assert 0 < ei.value.retry_after <= 20 and registry.verify_requests == asked
    assert await cache.verify(new_token(), client="192.0.2.8") is None  # another address is not affected


async def test_a_known_token_is_reverified_even_from_a_throttled_address(bus: Bus, registry: RegistryStub) -> None:
    """Behind a proxy every client has its address: guessing there must not lock out users already known."""
    user = registry.add_user()
    cache = IdentityCache(bus, ttl=0.05, failures=FailureThrottle(2))
    assert await cache.verify(user.token, client="198.51.100.1") is not None
    for _ in range(2):
        assert await cache.verify(new_token(), client="198.51.100.1") is None
    with pytest.raises(AuthThrottled):
        await cache.verify(new_token(), client="198.51.100.1")
    await asyncio.sleep(0.1)  # the known user's entry expires: it is asked again, not refused
    asked = registry.verify_requests
    assert await cache.verify(user.token, client="198.51.100.1") is not None
    assert registry.verify_requests == asked + 1


def test_the_throttle_is_bounded_and_keys_ipv6_by_prefix() -> None:
    t = FailureThrottle(5, max_clients=1000)
    for i in range(50_000):
        t.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(t._b) == 1000
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") == "192.0.2.1"
