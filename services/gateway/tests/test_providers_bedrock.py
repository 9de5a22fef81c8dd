"""Bedrock through the whole gateway: the anthropic SDK on one side, the SigV4-checking mock Bedrock on the other."""

from __future__ import annotations

import aiohttp
import anthropic
import msgspec
import pytest

from aigw_testing.txtar import load
from aigw_testing.upstream import split_events

SONNET_45 = "anthropic.claude-sonnet-4-5-20250929-v1:0"
HAIKU_45 = "anthropic.claude-haiku-4-5-20251001-v1:0"


@pytest.fixture
async def bgw(gw, mock_bedrock):  # type: ignore[no-untyped-def]
    """The gateway with a bedrock provider pointed at the mock (static AWS credentials in its settings)."""
    gw.registry.put_provider("bedrock", "bedrock", mock_bedrock.url, [], settings={
        "region": mock_bedrock.region, "access_key": mock_bedrock.access_key,
        "access_key_secret": mock_bedrock.secret_key, "model": SONNET_45, "small_fast_model": HAIKU_45})
    await gw.registry.publish_changed()
    await gw.wait_revision()
    gw.bedrock = mock_bedrock
    return gw


def client(g, **kw) -> anthropic.AsyncAnthropic:  # type: ignore[no-untyped-def]
    return anthropic.AsyncAnthropic(base_url=f"{g.url}/bedrock", api_key=g.user.token, max_retries=0, **kw)


def split_request(fx_name: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    req = load(fx_name).request_json()
    core = {k: req.pop(k) for k in ("model", "max_tokens", "messages")}
    req.pop("stream", None)
    return core, req


async def test_simple_bedrock_streaming_through_gateway(bgw) -> None:  # type: ignore[no-untyped-def]
    fx = bgw.bedrock.play("anthropic/simple_bedrock")
    core, extra = split_request("anthropic/simple_bedrock")
    async with client(bgw).messages.stream(**core, extra_body=extra) as s:
        events = [ev.type async for ev in s]
        final = await s.get_final_message()
    assert final.content[0].text == "Good morning! What are we working on today?"  # type: ignore[union-attr]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    seen = bgw.bedrock.requests[-1]
    assert seen.operation == "invoke-with-response-stream" and seen.model == SONNET_45
    assert "x-amz-content-sha256" in seen.signed_headers
    assert bgw.user.token not in str(dict(seen.headers))
    assert seen.json() == {
        "max_tokens": 32000, "messages": fx.request_json()["messages"],
        "thinking": {"type": "enabled", "budget_tokens": 16000}, "anthropic_version": "bedrock-2023-05-31"}
    # usage comes from the decoded Bedrock events, fed to the Messages extractor
    [ended] = await bgw.usage.wait_ended(1)
    assert ended.status == "ok", ended.error
    [tok] = bgw.usage.tokens()
    assert (tok.tokens.input_tokens, tok.tokens.output_tokens) == (12, 13)
    assert tok.model == "claude-sonnet-4-5-20250929"


async def test_sse_bytes_are_what_anthropic_would_send(bgw) -> None:  # type: ignore[no-untyped-def]
    fx = bgw.bedrock.play("anthropic/simple_bedrock")
    headers = {"Authorization": f"Bearer {bgw.user.token}", "anthropic-version": "2023-06-01",
               "anthropic-beta": "interleaved-thinking-2025-05-14,prompt-caching-2024-07-31"}
    async with aiohttp.ClientSession() as s, s.post(f"{bgw.url}/bedrock/v1/messages", data=fx.request,
                                                    headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        got = await r.read()
    assert got == b"".join(split_events(fx.response("streaming").body))
    seen = bgw.bedrock.requests[-1]
    assert seen.json()["anthropic_beta"] == ["interleaved-thinking-2025-05-14"]
    assert "anthropic-beta" not in seen.headers and "anthropic-version" not in seen.headers


@pytest.mark.parametrize("fixture", ["anthropic/haiku_simple", "anthropic/simple", "anthropic/single_builtin_tool",
                                     "anthropic/multi_thinking_builtin_tool"])
@pytest.mark.parametrize("streaming", [True, False])
async def test_anthropic_fixtures_replay_through_bedrock(bgw, fixture: str, streaming: bool) -> None:  # type: ignore[no-untyped-def]
    fx = bgw.bedrock.play(fixture)
    core, extra = split_request(fixture)
    c = client(bgw)
    if streaming:
        async with c.messages.stream(**core, extra_body=extra) as s:
            async for _ in s:
                pass
            msg = await s.get_final_message()
        want = fx.response("streaming").body
    else:
        msg = await c.messages.create(**core, extra_body=extra)
        want = fx.response("non-streaming").body
    assert msg.id in want.decode()
    seen = bgw.bedrock.requests[-1]
    assert seen.streaming is streaming
    assert seen.model == (HAIKU_45 if "haiku" in core["model"] else SONNET_45)
    [ended] = await bgw.usage.wait_ended(1)
    assert ended.status == "ok", ended.error
    [tok] = bgw.usage.tokens()
    assert tok.tokens.output_tokens > 0


async def test_bedrock_errors_reach_the_sdk_as_anthropic_errors(bgw) -> None:  # type: ignore[no-untyped-def]
    bgw.bedrock.play("anthropic/simple_bedrock")
    bgw.bedrock.fail = (429, "ThrottlingException", "Too many requests, please wait before trying again.")
    with pytest.raises(anthropic.RateLimitError) as e:
        await client(bgw).messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                          messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["message"].startswith("Too many requests")  # type: ignore[index]
    bgw.bedrock.fail = None
    bgw.bedrock.stream_exception = ("modelStreamErrorException", "model stream broke", 3)
    with pytest.raises(anthropic.APIStatusError, match="model stream broke"):
        async with client(bgw).messages.stream(model="claude-sonnet-4-5", max_tokens=10,
                                               messages=[{"role": "user", "content": "hi"}]) as s:
            async for _ in s:
                pass
    ended = await bgw.usage.wait_ended(2)
    assert [e.status for e in ended] == ["error", "error"]
    assert ended[1].error == "model stream broke"


async def test_wrong_secret_is_refused_by_bedrock(bgw) -> None:  # type: ignore[no-untyped-def]
    bgw.registry.put_provider("bedrock", "bedrock", bgw.bedrock.url, [], settings={
        "region": bgw.bedrock.region, "access_key": bgw.bedrock.access_key, "access_key_secret": "not-the-secret",
        "model": SONNET_45})
    await bgw.registry.publish_changed()
    await bgw.wait_revision()
    bgw.bedrock.play("anthropic/simple_bedrock")
    with pytest.raises(anthropic.PermissionDeniedError, match="signature we calculated does not match"):
        await client(bgw).messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                          messages=[{"role": "user", "content": "hi"}])
    assert bgw.bedrock.rejections[-1][1] == "InvalidSignatureException"


async def test_count_tokens_and_models_pass_through(bgw) -> None:  # type: ignore[no-untyped-def]
    c = client(bgw)
    counted = await c.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens == bgw.bedrock.input_tokens
    assert bgw.bedrock.requests[-1].operation == "count-tokens"
    models = await c.models.list()
    assert [m.id for m in models.data] == [SONNET_45, HAIKU_45]
    one = await c.models.retrieve(HAIKU_45)
    assert one.display_name == "Claude Haiku 4.5"


async def test_aws_credential_chain_from_environment(gw, mock_bedrock, apps, make_settings) -> None:  # type: ignore[no-untyped-def]
    """No keys in the provider's settings: the gateway signs with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."""
    from aigw_gateway.app import create_app

    gw.registry.put_provider("bedrock", "bedrock", mock_bedrock.url, [], settings={
        "region": mock_bedrock.region, "model": SONNET_45})
    settings = make_settings(AWS_ACCESS_KEY_ID=mock_bedrock.access_key, AWS_SECRET_ACCESS_KEY=mock_bedrock.secret_key)
    url = await apps.start(create_app(settings))
    await gw.registry.publish_changed()
    mock_bedrock.play("anthropic/simple_bedrock")
    c = anthropic.AsyncAnthropic(base_url=f"{url}/bedrock", api_key=gw.user.token, max_retries=0)
    for _ in range(100):  # the new gateway loads the provider set on start
        try:
            msg = await c.messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                          messages=[{"role": "user", "content": "hi"}])
            break
        except anthropic.NotFoundError:
            import asyncio

            await asyncio.sleep(0.05)
    assert msg.content[0].text == "Good morning! How can I help?"  # type: ignore[union-attr]
    assert mock_bedrock.rejections == []


async def test_byok_bedrock_api_key(bgw) -> None:  # type: ignore[no-untyped-def]
    bgw.bedrock.play("anthropic/simple_bedrock")
    bgw.bedrock.api_keys.add("ABSK-users-own-bedrock-key")
    c = anthropic.AsyncAnthropic(base_url=f"{bgw.url}/bedrock", api_key="ABSK-users-own-bedrock-key", max_retries=0,
                                 default_headers={"X-AIGW-Token": bgw.user.token})
    msg = await c.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Good morning! How can I help?"  # type: ignore[union-attr]
    seen = bgw.bedrock.requests[-1]
    assert seen.headers["Authorization"] == "Bearer ABSK-users-own-bedrock-key" and "X-Api-Key" not in seen.headers
    await bgw.usage.wait_ended(1)
    [started] = bgw.usage.started()
    assert started.credential_kind == "byok"


async def test_invalid_body_is_a_400_in_anthropic_format(bgw) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as s, s.post(f"{bgw.url}/bedrock/v1/messages/count_tokens", data=b"[1,2]",
                                                    headers={"Authorization": f"Bearer {bgw.user.token}"}) as r:
        assert r.status == 400
        body = msgspec.json.decode(await r.read())
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"


async def test_inference_profile_arn_as_model(bgw) -> None:  # type: ignore[no-untyped-def]
    """An ARN's '/' travels percent-encoded and the signature still matches what Bedrock recomputes."""
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3"
    bgw.registry.put_provider("bedrock", "bedrock", bgw.bedrock.url, [], settings={
        "region": bgw.bedrock.region, "access_key": bgw.bedrock.access_key,
        "access_key_secret": bgw.bedrock.secret_key, "model": arn})
    await bgw.registry.publish_changed()
    await bgw.wait_revision()
    bgw.bedrock.play("anthropic/simple_bedrock")
    msg = await client(bgw).messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                            messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Good morning! How can I help?"  # type: ignore[union-attr]
    assert bgw.bedrock.requests[-1].model == arn and bgw.bedrock.rejections == []


async def test_a_pool_of_bedrock_credentials_fails_over(bgw) -> None:  # type: ignore[no-untyped-def]
    """Bedrock pool keys — access-key pairs (AKID:SECRET) or Bedrock API keys — fail over like any pool."""
    m = bgw.bedrock
    m.api_keys.add("ABSKgood-bedrock-api-key-0003")
    bad_pair = f"{m.access_key}:not-the-secret-0001"
    good_pair = f"{m.access_key}:{m.secret_key}"
    bgw.registry.put_provider("bedrock", "bedrock", m.url, [bad_pair, "ABSKunknown-api-key-0002", good_pair], settings={
        "region": m.region, "model": SONNET_45})
    await bgw.registry.publish_changed()
    await bgw.wait_revision()
    m.play("anthropic/simple_bedrock")
    got = await client(bgw).messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                            messages=[{"role": "user", "content": "hi"}])
    assert got.content
    assert [r[1] for r in m.rejections[-2:]] == ["InvalidSignatureException", "UnrecognizedClientException"]
    seen = m.requests[-1]
    assert "x-amz-content-sha256" in seen.signed_headers  # the pair signed it (SigV4), not a bearer
    [ended] = await bgw.usage.wait_ended(1)
    assert ended.status == "ok" and ended.key_id == "bedrock-k3" and "secret" not in ended.key_hint
    # the two refused keys are revoked: the next request goes straight to the good pair
    n = len(m.rejections)
    await client(bgw).messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                      messages=[{"role": "user", "content": "hi"}])
    assert len(m.rejections) == n

    # a pool of API keys works the same way
    bgw.registry.put_provider("bedrock", "bedrock", m.url, ["ABSKunknown-api-key-0004", "ABSKgood-bedrock-api-key-0003"],
                              settings={"region": m.region, "model": SONNET_45}, key_ids=["api-k1", "api-k2"])
    await bgw.registry.publish_changed()
    await bgw.wait_revision()
    await client(bgw).messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                      messages=[{"role": "user", "content": "hi"}])
    assert m.requests[-1].headers["Authorization"] == "Bearer ABSKgood-bedrock-api-key-0003"
