"""The transport-free parts of talking to the model: classification, parsing, credentials' string forms."""

from __future__ import annotations

import logging

import msgspec
import pytest

from aigw_chatd.runner import prompt_of, skill_invocation
from aigw_chatd.upstream import (
    ChatMessage,
    Secret,
    StreamResult,
    TurnError,
    backoff,
    build_body,
    classify_http,
    direct_route,
    gateway_route,
    parse_anthropic_event,
    parse_openai_event,
)
from aigw_common.logging import JsonFormatter


def _j(obj) -> bytes:
    return msgspec.json.encode(obj)


@pytest.mark.parametrize(
    ("status", "body", "kind", "retryable"),
    [
        (429, {"error": {"message": "all keys cooling", "type": "rate_limit_error"}}, "rate_limit", True),
        (429, {"error": {"message": "Budget 'team-a' exhausted", "type": "rate_limit_error"}}, "budget", False),
        (429, {"type": "error", "error": {"type": "rate_limit_error", "message": "monthly budget exhausted"}}, "budget", False),
        (401, {"error": {"message": "bad token", "type": "invalid_api_key"}}, "auth", False),
        (403, {"type": "error", "error": {"type": "permission_error", "message": "BYOK is not enabled"}}, "auth", False),
        (400, {"error": {"message": "too long", "code": "context_length_exceeded"}}, "context_length", False),
        (400, {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 300000 tokens"}},
         "context_length", False),
        (400, {"error": {"message": "bad model"}}, "generic", False),
        (503, {"error": {"message": "circuit open"}}, "overloaded", True),
        (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "overloaded", True),
        (504, b"gateway timeout", "timeout", True),
        (502, {"error": {"message": "upstream unreachable"}}, "generic", True),
    ],
)
def test_classify_http(status, body, kind, retryable):
    e = classify_http(status, body if isinstance(body, bytes) else _j(body), "openai")
    assert (e.kind, e.retryable, e.status_code, e.provider) == (kind, retryable, status, "openai")
    assert set(e.as_dict()) == {"message", "kind", "provider", "retryable", "status_code", "detail"}


def test_budget_exhausted_is_final_but_no_room_right_now_is_retried():
    body = _j({"error": {"message": "user 'carol' budget of $1.00 for 2026-11 is exhausted", "type": "rate_limit_error"}})
    assert classify_http(429, body, "p", {"Retry-After": "864000"}).retryable is False
    assert classify_http(429, body, "p", {"Retry-After": "2"}).retryable is True
    assert classify_http(429, body, "p").kind == "budget"


def test_retry_after_headers():
    assert classify_http(429, b"{}", "p", {"retry-after-ms": "1500"}).retry_after == 1.5
    assert classify_http(429, b"{}", "p", {"Retry-After": "3"}).retry_after == 3.0
    for bad in ("nan", "inf", "-5", "1e400"):  # aigw_common.retry_after refuses them: the backoff's default applies
        assert classify_http(429, b"{}", "p", {"Retry-After": bad}).retry_after is None
    assert backoff(1, base=0.5, cap=8, retry_after=30, retry_after_cap=2) < 2.5
    assert backoff(3, base=0.5, cap=8, retry_after=None, retry_after_cap=2) >= 2.0


def test_error_messages_are_redacted():
    e = classify_http(401, _j({"error": {"message": "Incorrect API key provided: sk-proj-abcdefghijklmnop1234"}}), "o")
    assert "abcdefghijklmnop1234" not in e.message and "abcdefghijklmnop1234" not in repr(e)


def test_stream_parsers():
    r = StreamResult()
    assert parse_openai_event('{"choices":[{"delta":{"content":"Hi"}}]}', r, "p") == "Hi"
    assert not r.finished
    assert parse_openai_event("[DONE]", r, "p") is None and r.finished
    with pytest.raises(TurnError) as ei:
        parse_openai_event('{"error":{"message":"The server had an error","type":"server_error"}}', StreamResult(), "p")
    assert ei.value.kind == "generic" and ei.value.retryable

    r = StreamResult()
    assert parse_anthropic_event("content_block_delta",
                                 '{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Yo"}}  ',
                                 r, "p") == "Yo"
    assert parse_anthropic_event("content_block_delta",
                                 '{"type":"content_block_delta","delta":{"type":"thinking_delta","thinking":"hm"}}',
                                 r, "p") is None
    parse_anthropic_event("message_stop", '{"type":"message_stop"}', r, "p")
    assert r.finished
    with pytest.raises(TurnError) as ei:
        parse_anthropic_event("error", '{"type":"error","error":{"type":"api_error","message":"Overloaded"}}',
                              StreamResult(), "p")
    assert ei.value.kind == "overloaded" and ei.value.retryable


def test_bodies():
    hist = [ChatMessage("user", "a"), ChatMessage("assistant", "b"), ChatMessage("user", "c")]
    o = build_body("openai", "m", hist, instructions="be brief", stream=True, max_tokens=10)
    assert o["messages"][0] == {"role": "system", "content": "be brief"} and len(o["messages"]) == 4
    assert o["stream_options"] == {"include_usage": True}
    a = build_body("anthropic", "m", hist, instructions="be brief", stream=True, max_tokens=10)
    assert a["system"] == "be brief" and a["messages"][0]["role"] == "user" and a["max_tokens"] == 10


def test_skill_invocation():
    assert skill_invocation("/review please") == "review"
    assert skill_invocation("/review") == "review"
    assert skill_invocation("/code-review_2\nx") == "code-review_2"
    assert skill_invocation("/usr/bin is a dir") is None
    assert skill_invocation("hello /review") is None
    assert prompt_of("/review please look", "review") == "please look"
    assert prompt_of("/review", "review") == "/review"


def test_credentials_never_in_string_forms(caplog):
    # the fake key is built at run time, so no key-shaped literal is committed
    key, token = Secret("sk-ant-" + "very-secret-key-12345678"), Secret("aigw_tok_very_secret_value_1234")
    routes = [
        gateway_route("http://gw", "claude", "anthropic", token=token, provider_key=key, chat_id="c1"),
        gateway_route("http://gw", "openai", "openai", token=token, provider_key=None, chat_id="c1"),
        direct_route("https://api.openai.com/v1", "openai", "openai", provider_key=key),
    ]
    for r in routes:
        for form in (repr(r), str(r), f"{r}", repr([r]), repr(r.token), str(r.provider_key)):
            assert key.reveal() not in form and token.reveal() not in form
    # the headers carry them, as each API wants them
    h = routes[0].headers()
    assert h["X-AIGW-Token"] == token.reveal() and h["X-Api-Key"] == key.reveal() and "Authorization" not in h
    assert routes[1].headers()["Authorization"] == f"Bearer {token.reveal()}"
    d = routes[2].headers()
    assert d["Authorization"] == f"Bearer {key.reveal()}" and not any(k.startswith("X-AIGW") for k in d)
    assert routes[2].url == "https://api.openai.com/v1/chat/completions"
    # and a careless log line of the headers is scrubbed by the formatter
    rec = logging.makeLogRecord({"msg": "sending %s", "args": (h,), "headers": h})
    out = JsonFormatter("chatd").format(rec)
    assert key.reveal() not in out and token.reveal() not in out


def test_direct_route_needs_a_users_key():
    with pytest.raises(TurnError) as ei:
        direct_route("https://api.openai.com/v1", "openai", "openai", provider_key=None)
    assert ei.value.kind == "auth" and not ei.value.retryable
    with pytest.raises(TurnError, match="SigV4"):
        direct_route("https://bedrock", "bedrock", "bedrock", provider_key=Secret("k"))
    with pytest.raises(TurnError, match="api_version"):  # Azure needs api-key and api-version: not a bearer call
        direct_route("https://r.openai.azure.com/openai/v1", "az", "azure", provider_key=Secret("k"))
    assert direct_route("https://api.anthropic.com", "a", "anthropic", provider_key=Secret("k")).url == \
        "https://api.anthropic.com/v1/messages"


@pytest.mark.parametrize(("ptype", "api", "path"), [
    ("openai", "openai", "/v1/chat/completions"), ("azure", "openai", "/v1/chat/completions"),
    ("openai-compat", "openai", "/v1/chat/completions"), ("openrouter", "openai", "/v1/chat/completions"),
    ("copilot", "openai", "/chat/completions"),  # the gateway serves Copilot's routes without /v1
    ("anthropic", "anthropic", "/v1/messages"), ("bedrock", "anthropic", "/v1/messages"),
])
def test_gateway_route_is_the_types_chat_route(ptype, api, path):
    r = gateway_route("http://gw/", "p", ptype, token=Secret("t"), provider_key=None, chat_id="c")
    assert (r.api, r.url) == (api, "http://gw/p" + path)
