"""Bedrock request transform, signing against the mock Bedrock (botocore-verified), and response translation."""

from __future__ import annotations

import copy
import dataclasses

import aiohttp
import msgspec
import pytest

from aigw_gateway import bedrock
from aigw_gateway.eventstream import BedrockSSE
from aigw_testing.txtar import load
from aigw_testing.upstream import split_events

SONNET_45 = "anthropic.claude-sonnet-4-5-20250929-v1:0"
HAIKU_45 = "anthropic.claude-haiku-4-5-20251001-v1:0"


def cfg(model: str = SONNET_45, small: str = HAIKU_45, base: str = "https://bedrock-runtime.us-east-1.amazonaws.com",
        **settings: str) -> bedrock.BedrockConfig:
    s = {"region": "us-east-1", "access_key": "AKIDTEST", "access_key_secret": "secret", "model": model,
         "small_fast_model": small, **settings}
    return bedrock.BedrockConfig.from_provider(base, s, {})


def test_simple_bedrock_fixture_transform() -> None:
    """What simple_bedrock.txtar documents: unsupported fields gone, adaptive → enabled with a budget."""
    body = load("anthropic/simple_bedrock").request_json()
    t = bedrock.transform_body(copy.deepcopy(body), [], cfg())
    assert t.model == SONNET_45 and t.stream is True and t.betas == []
    assert t.body == {
        "max_tokens": 32000,
        "messages": body["messages"],
        "thinking": {"type": "enabled", "budget_tokens": 16000},  # 32000 * medium 0.5
        "anthropic_version": "bedrock-2023-05-31",
    }


@pytest.mark.parametrize(("effort", "max_tokens", "expected"), [
    ("low", 10000, 2000), ("medium", 10000, 5000), ("high", 10000, 8000), (None, 10000, 8000),
    ("max", 10000, 9500), ("low", 5000, None), ("medium", 2047, None), ("medium", 2048, 1024),
])
def test_adaptive_to_budget(effort: str | None, max_tokens: int, expected: int | None) -> None:
    body: dict = {"model": "claude-x", "max_tokens": max_tokens, "messages": [], "thinking": {"type": "adaptive"}}
    if effort:
        body["output_config"] = {"effort": effort}
    t = bedrock.transform_body(body, [], cfg())
    if expected is None:
        assert "thinking" not in t.body
    else:
        assert t.body["thinking"] == {"type": "enabled", "budget_tokens": expected}
    assert "output_config" not in t.body  # effort beta absent (and not an Opus 4.5 model)


def test_adaptive_kept_for_adaptive_models_and_effort_kept() -> None:
    body = {"model": "claude-opus-4-6", "max_tokens": 8000, "thinking": {"type": "adaptive"},
            "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": {}}}}
    t = bedrock.transform_body(body, [], cfg(model="us.anthropic.claude-opus-4-6-v1"))
    assert t.body["thinking"] == {"type": "adaptive"}
    assert t.body["output_config"] == {"effort": "low"}


def test_enabled_to_adaptive_for_adaptive_only_models() -> None:
    body = {"model": "claude-opus-4-7", "max_tokens": 8000, "thinking": {"type": "enabled", "budget_tokens": 4000},
            "output_config": {"effort": "high", "format": {"type": "json_schema"}}}
    t = bedrock.transform_body(body, [], cfg(model="anthropic.claude-opus-4-7-v1"))
    assert t.body["thinking"] == {"type": "adaptive"}
    assert t.body["output_config"] == {"effort": "high"}
    # a provider can pin the mode when the model id does not tell
    t = bedrock.transform_body({"model": "x", "max_tokens": 8000, "thinking": {"type": "enabled", "budget_tokens": 2000},
                                "output_config": {"format": {}}}, [], cfg(model="my-profile", thinking_mode="adaptive-only"))
    assert t.body["thinking"] == {"type": "adaptive"} and "output_config" not in t.body


@pytest.mark.parametrize(("model", "mode"), [
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", "budget"), ("anthropic.claude-sonnet-4-20250514-v1:0", "budget"),
    ("anthropic.claude-3-7-sonnet-20250219-v1:0", "budget"), ("us.anthropic.claude-opus-4-6-v1", "adaptive"),
    ("global.anthropic.claude-sonnet-4-6", "adaptive"), ("anthropic.claude-opus-4-7", "adaptive-only"),
    ("arn:aws:bedrock:us-east-1:1:application-inference-profile/abc", "budget"),
])
def test_thinking_mode_from_model_id(model: str, mode: str) -> None:
    assert bedrock.thinking_mode(model) == mode


def test_haiku_goes_to_small_fast_model_and_betas_filtered() -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "stream": False, "messages": [],
            "context_management": {"edits": []}, "output_config": {"effort": "low"}}
    betas = ["interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
             " context-management-2025-06-27 ", "effort-2025-11-24", "interleaved-thinking-2025-05-14"]
    t = bedrock.transform_body(body, betas, cfg())
    assert t.model == HAIKU_45 and t.stream is False
    # effort is Opus 4.5 only; context management is supported on Haiku 4.5
    assert t.betas == ["interleaved-thinking-2025-05-14", "context-management-2025-06-27"]
    assert t.body["anthropic_beta"] == t.betas
    assert t.body["context_management"] == {"edits": []}
    assert "output_config" not in t.body and "model" not in t.body and "stream" not in t.body


def test_no_configured_model_passes_requested_through() -> None:
    t = bedrock.transform_body({"model": "anthropic.claude-custom-v1:0"}, [], cfg(model="", small=""))
    assert t.model == "anthropic.claude-custom-v1:0"


def test_config_validation() -> None:
    with pytest.raises(bedrock.BedrockConfigError, match="together"):
        bedrock.BedrockConfig.from_provider("", {"region": "eu-west-1", "access_key": "AK"}, {})
    with pytest.raises(bedrock.BedrockConfigError, match="region"):
        bedrock.BedrockConfig.from_provider("http://127.0.0.1:9", {}, {})
    c = bedrock.BedrockConfig.from_provider("https://bedrock-runtime.eu-central-1.amazonaws.com", {}, {})
    assert c.region == "eu-central-1"
    no_creds = bedrock.BedrockConfig.from_provider("", {"region": "x"}, {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"})
    with pytest.raises(bedrock.sigv4.CredentialsError):
        no_creds.credentials.get()


def test_build_request_url_and_signed_headers() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5"
    r = bedrock.build_request(cfg(model=arn), b'{"model":"claude-sonnet-4-5","max_tokens":5,"stream":true}', [])
    assert str(r.url) == ("https://bedrock-runtime.us-east-1.amazonaws.com/model/"
                          "arn:aws:bedrock:us-east-1:123456789012:inference-profile%2Fus.anthropic.claude-sonnet-4-5"
                          "/invoke-with-response-stream")
    assert r.headers["host"] == "bedrock-runtime.us-east-1.amazonaws.com"
    assert "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date," in r.headers["authorization"]
    assert msgspec.json.decode(r.body) == {"max_tokens": 5, "anthropic_version": "bedrock-2023-05-31"}
    with pytest.raises(ValueError):
        bedrock.build_request(cfg(), b"[1]", [])


def test_error_body_translation() -> None:
    out = bedrock.anthropic_error_body(
        429, {"x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"},
        b'{"message":"Too many requests, please wait before trying again."}')
    assert msgspec.json.decode(out) == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "Too many requests, please wait before trying again."}}
    out = bedrock.anthropic_error_body(400, {}, b'{"Message":"bad"}')
    assert msgspec.json.decode(out)["error"] == {"type": "invalid_request_error", "message": "bad"}


# ---------------------------------------------------------------- against the mock Bedrock


def mock_cfg(mock, **kw: str) -> bedrock.BedrockConfig:  # type: ignore[no-untyped-def]
    s = {"region": mock.region, "access_key": mock.access_key, "access_key_secret": mock.secret_key,
         "model": SONNET_45, "small_fast_model": HAIKU_45, **kw}
    return bedrock.BedrockConfig.from_provider(mock.url, s, {})


async def send(r: bedrock.BedrockRequest) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.request(r.method, r.url, data=r.body or None, headers=r.headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_streaming_replay_through_mock_is_anthropic_sse(mock_bedrock) -> None:  # type: ignore[no-untyped-def]
    fx = mock_bedrock.play("anthropic/simple_bedrock")
    r = bedrock.build_request(mock_cfg(mock_bedrock), fx.request or b"", ["context-management-2025-06-27"])
    status, headers, raw = await send(r)
    assert status == 200, raw
    assert headers["Content-Type"] == "application/vnd.amazon.eventstream"
    t = BedrockSSE()
    out = t.feed(raw) + t.finish()
    assert out == b"".join(split_events(fx.response("streaming").body))
    seen = mock_bedrock.requests[-1]
    assert seen.model == SONNET_45 and seen.streaming
    assert seen.json()["context_management"]  # its beta survived (Sonnet 4.5 supports it)
    assert seen.json()["anthropic_beta"] == ["context-management-2025-06-27"]


async def test_blocking_replay_and_haiku(mock_bedrock) -> None:  # type: ignore[no-untyped-def]
    fx = mock_bedrock.play("anthropic/haiku_simple")
    body = fx.request_json()
    body["stream"] = False
    r = bedrock.build_request(mock_cfg(mock_bedrock), msgspec.json.encode(body), [])
    status, _, raw = await send(r)
    assert status == 200, raw
    assert raw.strip() == fx.response("non-streaming").body.strip()
    assert mock_bedrock.requests[-1].model == HAIKU_45 and not mock_bedrock.requests[-1].streaming


async def test_session_token_is_sent_and_signed(mock_bedrock) -> None:  # type: ignore[no-untyped-def]
    mock_bedrock.session_token = "FwoGZXIvYXdzEBoaDOKEN"
    mock_bedrock.play("anthropic/simple_bedrock")
    r = bedrock.build_request(mock_cfg(mock_bedrock, session_token="FwoGZXIvYXdzEBoaDOKEN"),
                              b'{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[]}', [])
    assert (await send(r))[0] == 200
    assert "x-amz-security-token" in mock_bedrock.requests[-1].signed_headers


@pytest.mark.parametrize(("override", "code"), [
    ({"access_key_secret": "wrong"}, "InvalidSignatureException"),
    ({"access_key": "AKIDOTHER"}, "UnrecognizedClientException"),
    ({"region": "eu-west-1"}, "InvalidSignatureException"),
])
async def test_mock_rejects_bad_signatures_with_bedrock_error_shape(mock_bedrock, override, code) -> None:  # type: ignore[no-untyped-def]
    mock_bedrock.play("anthropic/simple_bedrock")
    r = bedrock.build_request(mock_cfg(mock_bedrock, **override), b'{"model":"m","max_tokens":10,"messages":[]}', [])
    status, headers, raw = await send(r)
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith(code)
    assert "message" in msgspec.json.decode(raw)


async def test_mock_rejects_tampered_body_and_untransformed_fields(mock_bedrock) -> None:  # type: ignore[no-untyped-def]
    mock_bedrock.play("anthropic/simple_bedrock")
    r = bedrock.build_request(mock_cfg(mock_bedrock), b'{"model":"m","max_tokens":10,"messages":[]}', [])
    status, _, _ = await send(dataclasses.replace(r, body=r.body.replace(b"10", b"11")))
    assert status == 400  # x-amz-content-sha256 mismatch
    # a body that skipped the transform is what real Bedrock refuses
    raw = load("anthropic/simple_bedrock").request or b""
    headers = {k: v for k, v in r.headers.items() if k not in ("authorization", "x-amz-content-sha256")}
    async with aiohttp.ClientSession() as s, s.post(r.url, data=raw, headers=headers) as resp:
        assert resp.status == 403  # unsigned
    assert mock_bedrock.rejections[-1][1] == "IncompleteSignatureException"


async def test_stream_exception_mid_stream(mock_bedrock) -> None:  # type: ignore[no-untyped-def]
    mock_bedrock.play("anthropic/simple_bedrock")
    mock_bedrock.stream_exception = ("throttlingException", "Too many tokens, please wait before trying again.", 2)
    r = bedrock.build_request(mock_cfg(mock_bedrock), b'{"model":"m","max_tokens":10,"messages":[],"stream":true}', [])
    _, _, raw = await send(r)
    t = BedrockSSE()
    events = split_events(t.feed(raw) + t.finish())
    assert len(events) == 3 and events[-1].startswith(b"event: error\n")
    assert b'"rate_limit_error"' in events[-1]


async def test_mock_accepts_the_anthropic_bedrock_sdk_async(mock_bedrock) -> None:  # type: ignore[no-untyped-def]
    """The mock itself is right: the official AsyncAnthropicBedrock client (botocore signing) passes it."""
    from anthropic import AsyncAnthropicBedrock

    mock_bedrock.play("anthropic/simple_bedrock")
    client = AsyncAnthropicBedrock(aws_access_key=mock_bedrock.access_key, aws_secret_key=mock_bedrock.secret_key,
                                   aws_region=mock_bedrock.region, base_url=mock_bedrock.url)
    msg = await client.messages.create(model=SONNET_45, max_tokens=100, messages=[{"role": "user", "content": "Hello."}])
    assert msg.content[0].text == "Good morning! How can I help?"  # type: ignore[union-attr]
    async with client.messages.stream(model=SONNET_45, max_tokens=100,
                                      messages=[{"role": "user", "content": "Hello."}]) as s:
        text = "".join([t async for t in s.text_stream])
    assert text == "Good morning! What are we working on today?"
    assert mock_bedrock.rejections == []
    assert all(r.json()["anthropic_version"] for r in mock_bedrock.requests)


async def test_gateway_transform_sends_the_bedrock_anthropic_version(mock_bedrock) -> None:  # type: ignore[no-untyped-def]
    mock_bedrock.play("anthropic/simple_bedrock")
    r = bedrock.build_request(mock_cfg(mock_bedrock), b'{"model":"m","max_tokens":10,"messages":[]}', [])
    assert (await send(r))[0] == 200
    assert mock_bedrock.requests[-1].json()["anthropic_version"] == "bedrock-2023-05-31"


async def test_count_tokens_and_models_through_mock(mock_bedrock) -> None:  # type: ignore[no-untyped-def]
    c = mock_cfg(mock_bedrock)
    r = bedrock.plan(c, "POST", "/v1/messages/count_tokens",
                     b'{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}],"metadata":{}}', [])
    assert r is not None and r.kind == "count_tokens"
    status, headers, raw = await send(r)
    assert status == 200, raw
    f = bedrock.response_filter(r.kind, r.stream, status, headers)
    assert f is not None and f.feed(raw) == b"" and msgspec.json.decode(f.finish()) == {"input_tokens": 17}
    assert mock_bedrock.requests[-1].invoke_body["max_tokens"] == 1  # filled in for the InvokeModel schema

    r = bedrock.plan(c, "GET", "/v1/models", b"", [])
    assert r is not None
    status, headers, raw = await send(r)
    f = bedrock.response_filter(r.kind, r.stream, status, headers)
    assert f is not None
    f.feed(raw)
    listed = msgspec.json.decode(f.finish())
    assert [m["id"] for m in listed["data"]] == [SONNET_45, HAIKU_45]
    assert listed["first_id"] == SONNET_45 and listed["has_more"] is False

    r = bedrock.plan(c, "GET", "/v1/models/" + HAIKU_45, b"", [])
    assert r is not None
    status, headers, raw = await send(r)
    f = bedrock.response_filter(r.kind, r.stream, status, headers)
    f.feed(raw)  # type: ignore[union-attr]
    assert msgspec.json.decode(f.finish())["display_name"] == "Claude Haiku 4.5"  # type: ignore[union-attr]

    r = bedrock.plan(c, "GET", "/v1/models/nope", b"", [])
    status, headers, raw = await send(r)  # type: ignore[arg-type]
    f = bedrock.response_filter("model", False, status, headers)
    f.feed(raw)  # type: ignore[union-attr]
    assert status == 404 and msgspec.json.decode(f.finish())["error"]["type"] == "not_found_error"  # type: ignore[union-attr]
    assert bedrock.plan(c, "POST", "/v1/messages/batches", b"{}", []) is None


def test_control_plane_url() -> None:
    assert bedrock.control_base_url(cfg()) == "https://bedrock.us-east-1.amazonaws.com"
    assert bedrock.control_base_url(cfg(base="https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com")) == \
        "https://bedrock-fips.us-gov-west-1.amazonaws.com"
    assert bedrock.control_base_url(cfg(base="http://127.0.0.1:9")) == "http://127.0.0.1:9"


async def test_bedrock_api_key_as_bearer(mock_bedrock) -> None:  # type: ignore[no-untyped-def]
    mock_bedrock.play("anthropic/simple_bedrock")
    mock_bedrock.api_keys.add("ABSKbedrockapikey")
    body = b'{"model":"m","max_tokens":10,"messages":[]}'
    r = bedrock.build_request(mock_cfg(mock_bedrock), body, [], bearer="ABSKbedrockapikey")
    assert r.credential_source == "bearer" and "x-amz-date" not in r.headers
    assert (await send(r))[0] == 200
    assert (await send(bedrock.build_request(mock_cfg(mock_bedrock), body, [], bearer="wrong")))[0] == 403
