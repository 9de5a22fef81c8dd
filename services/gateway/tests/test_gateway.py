"""Gateway behaviour against the fixture mock upstream, with the real SDKs as clients."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import anthropic
import msgspec
import openai
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from aigw_common.schemas import KeyMarked

CHAT = "openai/chatcompletions/simple"
MSGS = "anthropic/simple"


_clients: list = []


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    while _clients:
        await _clients.pop().close()


def oai(gw, **kw) -> openai.AsyncOpenAI:
    c = openai.AsyncOpenAI(base_url=f"{gw.url}/openai/v1", api_key=kw.pop("api_key", gw.user.token), max_retries=0, **kw)
    _clients.append(c)
    return c


def ant(gw, **kw) -> anthropic.AsyncAnthropic:
    c = anthropic.AsyncAnthropic(base_url=f"{gw.url}/anthropic", api_key=kw.pop("api_key", gw.user.token), max_retries=0, **kw)
    _clients.append(c)
    return c


async def chat(client: openai.AsyncOpenAI, model: str = "gpt-4.1"):
    return await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


async def marks(gw, bus, n: int, timeout: float = 3.0) -> list[KeyMarked]:
    """Read the marks this gateway published to JetStream."""
    js = bus.js
    deadline = time.monotonic() + timeout
    while True:
        try:
            sub = await js.pull_subscribe(bus.subjects.keys_marked, durable=None, stream=bus.subjects.keys_marked_stream,
                                          config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
            msgs = await sub.fetch(n, timeout=1)
            out = [msgspec.json.decode(m.data, type=KeyMarked) for m in msgs]
            await sub.unsubscribe()
            if len(out) >= n:
                return out
        except (TimeoutError, Exception):
            pass
        assert time.monotonic() < deadline, "marks not published"
        await asyncio.sleep(0.1)


async def test_three_key_pool_fails_over_and_publishes_marks(gw, bus):
    gw.registry.put_provider("openai", "openai", gw.upstream.url + "/v1", ["sk-pool-key-1", "sk-pool-key-2", "sk-pool-key-3"])
    await gw.registry.publish_changed()
    await gw.wait_revision()
    gw.upstream.play(CHAT)
    gw.upstream.on_key("sk-pool-key-1", 429, {"Retry-After": "30"})
    gw.upstream.on_key("sk-pool-key-2", 401)
    r = await chat(oai(gw))
    assert r.choices[0].message.content
    assert gw.upstream.count_by_key["sk-pool-key-1"] == 1
    assert gw.upstream.count_by_key["sk-pool-key-2"] == 1
    assert gw.upstream.count_by_key["sk-pool-key-3"] == 1
    # the next request goes straight to key 3: key 1 cools, key 2 is revoked
    await chat(oai(gw))
    assert gw.upstream.count_by_key["sk-pool-key-1"] == 1 and gw.upstream.count_by_key["sk-pool-key-3"] == 2
    got = {m.key_id: m for m in await marks(gw, bus, 2)}
    assert got["openai-k1"].state == "cooling" and got["openai-k1"].status_code == 429
    assert got["openai-k1"].until == pytest.approx(time.time() + 30, abs=5)
    assert got["openai-k2"].state == "revoked" and got["openai-k2"].status_code == 401
    assert "sk-pool" not in str(got)


async def test_all_keys_cooling_gives_429_with_soonest_retry_after(gw):
    gw.registry.put_provider("anthropic", "anthropic", gw.upstream.url, ["sk-ant-a", "sk-ant-b"])
    await gw.registry.publish_changed()
    await gw.wait_revision()
    gw.upstream.play(MSGS)
    gw.upstream.on_key("sk-ant-a", 429, {"retry-after-ms": "40000"})
    gw.upstream.on_key("sk-ant-b", 429, {"Retry-After": "7"})
    with pytest.raises(anthropic.RateLimitError) as ei:
        await ant(gw).messages.create(model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert 6 <= int(ei.value.response.headers["Retry-After"]) <= 8
    assert ei.value.body["error"]["type"] == "rate_limit_error" and "rate limited" in ei.value.body["error"]["message"]
    # nothing reaches the upstream while every key cools
    before = len(gw.upstream.requests)
    with pytest.raises(anthropic.RateLimitError):
        await ant(gw).messages.create(model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert len(gw.upstream.requests) == before


async def test_every_key_revoked_is_502(gw):
    gw.upstream.play(CHAT)
    gw.upstream.on_key("sk-test-key-1", 403)
    with pytest.raises(openai.InternalServerError) as ei:
        await chat(oai(gw))
    assert ei.value.status_code == 502 and "revoked" in ei.value.message


@pytest.fixture
def gateway_env():
    return {"AIGW_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "2", "AIGW_CIRCUIT_BREAKER_TIMEOUT": "1s",
            "AIGW_CIRCUIT_BREAKER_MAX_REQUESTS": "1"}


async def test_breaker_opens_and_recovers(gw):
    gw.upstream.play(CHAT)
    gw.upstream.on_key("sk-test-key-1", 529, times=2)
    client = oai(gw)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as ei:
            await chat(client)
        assert ei.value.status_code == 529
    seen = len(gw.upstream.requests)
    with pytest.raises(openai.APIStatusError) as ei:
        await chat(client)
    assert ei.value.status_code == 503 and "circuit open" in ei.value.message
    assert int(ei.value.response.headers["Retry-After"]) >= 1
    assert len(gw.upstream.requests) == seen  # rejected without an upstream call
    # another model has its own breaker
    await chat(client, model="gpt-4.1-mini")
    await asyncio.sleep(1.1)
    await chat(client)  # half-open probe succeeds → closed
    await chat(client)
    metrics = await (await aiohttp.ClientSession().get(gw.url + "/metrics")).text()
    assert 'aigw_gateway_circuit_trips_total{endpoint="chat_completions",model="gpt-4.1",provider="openai"} 1.0' in metrics


async def test_byok_forwarded_and_aigw_headers_stripped(gw):
    gw.upstream.play(MSGS)
    client = ant(gw, api_key="sk-ant-users-own", default_headers={"X-AIGW-Token": gw.user.token, "Cookie": "session=1",
                                                                  "X-AIGW-Chat-Id": "c1"})
    await client.messages.create(model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    seen = gw.upstream.requests[-1]
    assert seen.key == "sk-ant-users-own"  # forwarded in the header the SDK chose
    for h in seen.headers:
        assert not h.lower().startswith("x-aigw-") and h.lower() != "cookie"
    assert gw.user.token not in str(list(seen.headers.items()))
    [started] = [e for e in (await _started(gw))]
    assert started.credential_kind == "byok" and started.credential_hint.endswith("own")
    assert "users-own" not in started.credential_hint
    # a BYOK credential is tried once, with no failover: the provider's 401 reaches the client
    gw.upstream.on_key("sk-ant-users-own", 401)
    with pytest.raises(anthropic.AuthenticationError):
        await client.messages.create(model="claude-sonnet-4-0", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert gw.upstream.count_by_key["sk-ant-test-key-1"] == 0


async def _started(gw):
    await gw.usage.wait_ended(1)
    return gw.usage.started()


async def test_byok_uses_stored_user_key(gw):
    gw.upstream.play(CHAT)
    u = gw.registry.add_user(provider_keys={"openai": "sk-stored-user-key"})
    async with aiohttp.ClientSession() as s, s.post(
        gw.url + "/openai/v1/chat/completions", headers={"X-AIGW-Token": u.token},
        json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
    ) as r:
        assert r.status == 200
    assert gw.upstream.requests[-1].key == "sk-stored-user-key"


async def test_byok_disabled_for_provider_is_403(gw):
    gw.registry.put_provider("openai", "openai", gw.upstream.url + "/v1", ["sk-test-key-1"], allow_byok=False)
    await gw.registry.publish_changed()
    await gw.wait_revision()
    client = oai(gw, api_key="sk-mine", default_headers={"X-AIGW-Token": gw.user.token})
    with pytest.raises(openai.PermissionDeniedError) as ei:
        await chat(client)
    assert "BYOK is not enabled" in ei.value.message


class TestBadInput:
    async def test_bad_token_401_in_each_format(self, gw):
        with pytest.raises(openai.AuthenticationError) as e1:
            await chat(oai(gw, api_key="aigw_not_a_real_token"))
        assert e1.value.body["type"] == "authentication_error"
        with pytest.raises(anthropic.AuthenticationError) as e2:
            await ant(gw, api_key="nope").messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
        assert e2.value.body["type"] == "error" and e2.value.body["error"]["type"] == "authentication_error"

    async def test_unknown_provider_404(self, gw):
        c = openai.AsyncOpenAI(base_url=f"{gw.url}/nosuch/v1", api_key=gw.user.token, max_retries=0)
        with pytest.raises(openai.NotFoundError) as ei:
            await chat(c)
        assert "unknown provider 'nosuch'" in ei.value.message

    async def test_malformed_json_400(self, gw):
        async with aiohttp.ClientSession() as s:
            for body in (b"{not json", b"[1,2]", b'{"model": 5, "messages": []}'):
                async with s.post(gw.url + "/anthropic/v1/messages", data=body,
                                  headers={"X-Api-Key": gw.user.token, "Content-Type": "application/json"}) as r:
                    assert r.status == 400
                    j = await r.json()
                    assert j["type"] == "error" and j["error"]["type"] == "invalid_request_error"
        assert gw.upstream.requests == []

    async def test_oversized_body_413(self, gw, apps, make_settings):
        from aigw_gateway.app import create_app

        app = create_app(make_settings(AIGW_MAX_BODY_BYTES="1KiB"))
        url = await apps.start(app)
        await asyncio.sleep(0.3)
        big = b'{"model":"gpt-4.1","messages":[{"role":"user","content":"' + b"x" * 5000 + b'"}]}'
        async with aiohttp.ClientSession() as s, s.post(url + "/openai/v1/chat/completions", data=big,
                                                        headers={"Authorization": f"Bearer {gw.user.token}"}) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"

    async def test_unknown_route_404_in_provider_format(self, gw):
        async with aiohttp.ClientSession() as s, s.post(gw.url + "/anthropic/v1/complete",
                                                        headers={"X-Api-Key": gw.user.token}) as r:
            assert r.status == 404 and (await r.json())["type"] == "error"


async def test_count_tokens_passes_through(gw):
    """POST /v1/messages/count_tokens (the recorded fixture) through the real SDK: the body goes upstream as
    sent, with a pool key, and the answer comes back unchanged."""
    from aigw_testing.txtar import load

    fx = gw.upstream.play("anthropic/count_tokens")
    req = fx.request_json()
    client = anthropic.AsyncAnthropic(base_url=f"{gw.url}/anthropic", api_key=gw.user.token, max_retries=0)
    got = await client.messages.count_tokens(model=req["model"], messages=req["messages"], system=req["system"],
                                             tools=req["tools"])
    assert got.input_tokens == msgspec.json.decode(load("anthropic/count_tokens").sections["non-streaming"])[
        "input_tokens"] == 611
    seen = gw.upstream.requests[-1]
    assert seen.path == "/v1/messages/count_tokens" and seen.key == "sk-ant-test-key-1"
    assert seen.json() == req and gw.user.token not in str(dict(seen.headers))


async def test_prefixes_and_passthrough(gw):
    gw.upstream.play("anthropic/fallthrough")
    for prefix in ("", "/api/v2/aibridge", "/api/v2/ai-gateway"):
        models = await anthropic.AsyncAnthropic(base_url=f"{gw.url}{prefix}/anthropic", api_key=gw.user.token,
                                                max_retries=0).models.list()
        assert models.data[0].id == "claude-sonnet-4-5-20250929"
    assert gw.upstream.requests[-1].path == "/v1/models"
    gw.upstream.play("openai/chatcompletions/fallthrough")
    got = await oai(gw).models.list()
    assert len(got.data) > 0
    assert gw.upstream.requests[-1].path == "/v1/models"
    assert gw.upstream.requests[-1].key == "sk-test-key-1"


async def test_passthrough_fails_over(gw):
    gw.registry.put_provider("openai", "openai", gw.upstream.url + "/v1", ["sk-pt-1", "sk-pt-2"])
    await gw.registry.publish_changed()
    await gw.wait_revision()
    gw.upstream.play("openai/chatcompletions/fallthrough")
    gw.upstream.on_key("sk-pt-1", 429)
    await oai(gw).models.list()
    assert gw.upstream.count_by_key["sk-pt-2"] == 1


async def test_client_disconnect_cancels_upstream(gw):
    gw.upstream.play(CHAT, event_delay=0.05)
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/openai/v1/chat/completions", headers={"Authorization": f"Bearer {gw.user.token}"},
                          json={"model": "gpt-4.1", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
            await r.content.readany()
    # the gateway notices, cancels the upstream read, and records a cancelled interception
    [ended] = await gw.usage.wait_ended(1)
    assert ended.status == "interrupted"
    for _ in range(50):
        if gw.upstream.disconnects:
            break
        await asyncio.sleep(0.05)
    assert gw.upstream.disconnects == 1


async def test_stream_relayed_event_by_event(gw):
    gw.upstream.play(MSGS, event_delay=0.2)
    t0 = time.monotonic()
    first = None
    async with ant(gw).messages.stream(model="claude-sonnet-4-0", max_tokens=10,
                                       messages=[{"role": "user", "content": "x"}]) as s:
        async for _ev in s:
            first = first or time.monotonic() - t0
    total = time.monotonic() - t0
    assert first is not None and first < total / 3  # the first event arrived long before the last


async def test_recording_events(gw):
    gw.upstream.play("openai/chatcompletions/single_builtin_tool")
    fx_req = gw.upstream.fixture.request_json()
    async with aiohttp.ClientSession() as s, s.post(
        gw.url + "/openai/v1/chat/completions", json=fx_req,
        headers={"Authorization": f"Bearer {gw.user.token}", "User-Agent": "claude-cli/1.0.0",
                 "X-Claude-Code-Session-Id": "sess-42"},
    ) as r:
        assert r.status == 200
    await gw.usage.wait_ended(1)
    [started] = gw.usage.started()
    assert started.user_id == gw.user.user_id and started.group_ids == ["g-eng"]
    assert started.client == "claude-code" and started.session_id == "sess-42"
    assert started.provider_name == "openai" and started.credential_kind == "centralised"
    assert started.model == fx_req["model"]
    [tool] = gw.usage.tools()
    assert tool.name == "read_file" and tool.call_id
    prompts = [e for e in gw.usage.events if type(e).__name__ == "PromptRecorded"]
    assert prompts and prompts[0].prompt
    ids = {e.event_id for e in gw.usage.events}
    assert len(ids) == len(gw.usage.events)  # unique dedup ids


async def test_dumps_mask_credentials(gw, apps, make_settings, tmp_path):
    from aigw_gateway.app import create_app

    app = create_app(make_settings(AIGW_DUMP_DIR=str(tmp_path / "dumps")))
    url = await apps.start(app)
    await asyncio.sleep(0.3)
    gw.upstream.play(CHAT)
    r = await chat(openai.AsyncOpenAI(base_url=f"{url}/openai/v1", api_key=gw.user.token, max_retries=0))
    assert r.choices
    await asyncio.sleep(0.3)
    files = sorted((tmp_path / "dumps" / "openai").iterdir())
    assert len(files) == 2
    text = "".join(f.read_text() for f in files)
    assert "sk-test-key-1" not in text and gw.user.token not in text
    assert "Authorization: Bearer ***" in text, text[:1200]
    assert "retrogradation" in text  # the recorded answer (the dump holds the response body too)


async def test_ready_with_zero_providers_and_nats_down(apps, make_settings):
    from aigw_gateway.app import create_app

    app = create_app(make_settings(AIGW_NATS_URL="nats://127.0.0.1:1"))
    url = await apps.start(app)
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/readyz") as r:
            assert r.status == 200
        async with s.post(url + "/openai/v1/chat/completions", json={}, headers={"Authorization": "Bearer x"}) as r:
            assert r.status == 404  # no provider known yet
        async with s.get(url + "/metrics") as r:
            assert "aigw_gateway_provider_set_revision" in await r.text()


@pytest.mark.parametrize("body", [
    {"error": {"message": "The model `gpt-9` does not exist or you do not have access to it.", "type": "invalid_request_error",
               "code": "model_not_found"}},
    {"error": {"message": "Country, region, or territory not supported", "type": "request_forbidden",
               "code": "unsupported_country_region_territory"}},
    {"error": {"message": "Country not supported", "type": "invalid_request_error", "code": "unsupported_country"}},
    {"type": "error", "error": {"type": "permission_error", "message": "Your API key does not have permission to use the specified model."}},
])
async def test_403_about_the_model_or_region_keeps_the_key(gw, body):
    gw.registry.put_provider("openai", "openai", gw.upstream.url + "/v1", ["sk-m403-1", "sk-m403-2"])
    await gw.registry.publish_changed()
    await gw.wait_revision()
    gw.upstream.play(CHAT)
    gw.upstream.on_key("sk-m403-1", 403, body=body, times=1)
    with pytest.raises(openai.PermissionDeniedError) as ei:
        await chat(oai(gw))
    # the request fails with the provider's own answer (relayed as is), no failover, and the key stays
    assert ei.value.status_code == 403 and ei.value.response.json() == body
    assert gw.upstream.count_by_key["sk-m403-1"] == 1 and gw.upstream.count_by_key.get("sk-m403-2", 0) == 0
    r = await chat(oai(gw))
    assert r.choices[0].message.content and gw.upstream.count_by_key["sk-m403-1"] == 2


async def test_403_about_the_key_still_revokes(gw):
    gw.registry.put_provider("openai", "openai", gw.upstream.url + "/v1", ["sk-k403-1", "sk-k403-2"])
    await gw.registry.publish_changed()
    await gw.wait_revision()
    gw.upstream.play(CHAT)
    gw.upstream.on_key("sk-k403-1", 403, body={"type": "error", "error": {"type": "permission_error",
                                                                          "message": "This API key is disabled."}})
    await chat(oai(gw))
    await chat(oai(gw))
    assert gw.upstream.count_by_key["sk-k403-1"] == 1 and gw.upstream.count_by_key["sk-k403-2"] == 2


async def test_key_that_answered_is_recorded(gw):
    gw.registry.put_provider("openai", "openai", gw.upstream.url + "/v1", ["sk-rec-key-0001", "sk-rec-key-0002"])
    await gw.registry.publish_changed()
    await gw.wait_revision()
    gw.upstream.play(CHAT)
    gw.upstream.on_key("sk-rec-key-0001", 429, {"Retry-After": "30"})
    await chat(oai(gw))
    [ended] = await gw.usage.wait_ended(1)
    [started] = [s for s in gw.usage.started() if s.interception_id == ended.interception_id]
    # the key after failover, on both events (the start may be sent before any key answered)
    assert ended.key_id == "openai-k2" and ended.key_hint == "sk-…0002"
    assert started.key_id == "openai-k2" and started.credential_hint == "sk-…0002"
    assert "sk-rec-key" not in str(ended) + str(started)
    # upstream attempts and failovers are labelled by key id
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        text = await r.text()
    assert 'aigw_gateway_upstream_attempts_total{key="openai-k1",provider="openai",status="429"} 1.0' in text
    assert 'aigw_gateway_upstream_attempts_total{key="openai-k2",provider="openai",status="200"} 1.0' in text
    assert 'aigw_gateway_keypool_failovers_total{key="openai-k1",provider="openai",reason="cooling"} 1.0' in text
