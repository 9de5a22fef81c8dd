"""Headers across the gateway: an allowlist upstream (per provider type, plus the provider's
forward_headers), Connection-named and never-forwarded headers dropped, Set-Cookie/Server stripped from
answers, and no Server banner of our own."""

from __future__ import annotations

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict

from aigw_gateway import headers as hdr
from aigw_testing import rawhttp

HOSTILE = [
    ("Cookie", "session=abc"), ("Cookie2", "x=1"), ("Metadata-Flavor", "Google"), ("Metadata", "true"),
    ("X-Forwarded-For", "169.254.169.254"), ("X-Forwarded-Host", "evil"), ("X-Forwarded-Proto", "http"),
    ("Forwarded", "for=1.2.3.4"), ("X-Real-Ip", "1.2.3.4"), ("Via", "1.1 evil"), ("Proxy-Connection", "keep-alive"),
    ("X-AIGW-Chat-Id", "chat-1"), ("X-Random-Internal", "1"), ("X-Amz-Security-Token", "tok"),
    ("X-Hop-Secret", "named-in-connection"), ("Anthropic-Beta", "named-in-connection"),
]
ALLOWED = [
    ("OpenAI-Beta", "assistants=v2"), ("OpenAI-Organization", "org-1"), ("X-Stainless-Lang", "python"),
    ("Idempotency-Key", "idem-1"), ("User-Agent", "OpenAI/Python 1.0"), ("Accept", "application/json"),
    ("X-Client-Request-Id", "req-1"),
]


async def _echo(request: web.Request, _body: bytes) -> web.Response:
    resp = web.json_response({"object": "list", "data": []})
    resp.headers.add("Set-Cookie", "upstream=1; Path=/")
    resp.headers.add("Set-Cookie", "other=2")
    resp.headers["Server"] = "nginx/1.25"
    resp.headers["Alt-Svc"] = 'h3=":443"'
    resp.headers["X-Request-Id"] = "req-upstream-1"
    resp.headers["X-Ratelimit-Remaining-Requests"] = "99"
    return resp


async def test_request_headers_are_an_allowlist(gw) -> None:  # type: ignore[no-untyped-def]
    gw.upstream.handler = _echo
    headers = [("Authorization", f"Bearer {gw.user.token}"), *ALLOWED, *HOSTILE,
               ("Connection", "close, X-Hop-Secret, Anthropic-Beta")]
    r = await rawhttp.request(gw.url, "GET", "/openai/v1/models", headers)
    assert r.status == 200, r.body
    seen = gw.upstream.requests[-1].headers
    for k, v in ALLOWED:
        assert seen.get(k) == v, k
    for k, _ in HOSTILE:
        assert k not in seen, k
    assert seen["Authorization"] == "Bearer sk-test-key-1" and gw.user.token not in str(dict(seen))
    # what came back: the upstream's answer headers, minus its cookies and its banner, and no banner of ours
    assert r.headers["X-Request-Id"] == "req-upstream-1" and r.headers["X-Ratelimit-Remaining-Requests"] == "99"
    for k in ("Set-Cookie", "Server", "Alt-Svc"):
        assert k not in r.headers, k


async def test_anthropic_headers_and_connection_named(gw) -> None:  # type: ignore[no-untyped-def]
    gw.upstream.handler = _echo
    headers = [("X-Api-Key", gw.user.token), ("anthropic-version", "2023-06-01"), ("anthropic-beta", "x-2025"),
               ("OpenAI-Beta", "not-for-anthropic"), ("X-Stainless-Os", "Linux"), ("Metadata-Flavor", "Google"),
               ("Connection", "close, anthropic-beta")]
    r = await rawhttp.request(gw.url, "GET", "/anthropic/v1/models", headers)
    assert r.status == 200
    seen = gw.upstream.requests[-1].headers
    assert seen["anthropic-version"] == "2023-06-01" and seen["X-Stainless-Os"] == "Linux"
    assert "anthropic-beta" not in seen and "OpenAI-Beta" not in seen and "Metadata-Flavor" not in seen
    assert seen["X-Api-Key"] == "sk-ant-test-key-1"


async def test_provider_settings_add_headers(gw) -> None:  # type: ignore[no-untyped-def]
    gw.upstream.handler = _echo
    gw.registry.put_provider("openai", "openai", gw.upstream.url + "/v1", ["sk-test-key-1"],
                             settings={"forward_headers": "X-Tenant, Cookie, X-Forwarded-For"})
    await gw.registry.publish_changed()
    await gw.wait_revision()
    headers = {"Authorization": f"Bearer {gw.user.token}", "X-Tenant": "t-1", "X-Other": "o",
               "Cookie": "c=1", "X-Forwarded-For": "1.2.3.4"}
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/openai/v1/models", headers=headers) as r:
        assert r.status == 200
    seen = gw.upstream.requests[-1].headers
    assert seen["X-Tenant"] == "t-1"
    assert "X-Other" not in seen and "Cookie" not in seen and "X-Forwarded-For" not in seen  # never, whatever settings say


async def test_no_server_banner(gw) -> None:  # type: ignore[no-untyped-def]
    for target in ("/healthz", "/metrics", "/nosuch/v1/models", "/openai/v1/files", "/openai/v1/models/..%2F"):
        r = await rawhttp.request(gw.url, "GET", target, {"Authorization": f"Bearer {gw.user.token}"})
        assert "Server" not in r.headers, (target, r.headers)
    r = await rawhttp.request(gw.url, "GET", "/openai/v1/mo\x01dels", {})  # refused by aiohttp's own parser
    assert r.status == 400 and not r.headers.get("Server"), r.headers
    gw.upstream.play("openai/chatcompletions/simple")
    body = msgspec.json.encode({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    r = await rawhttp.request(gw.url, "POST", "/openai/v1/chat/completions",
                              {"Authorization": f"Bearer {gw.user.token}", "Content-Type": "application/json"}, body)
    assert r.status == 200 and "Server" not in r.headers


def test_downstream_drops_connection_named() -> None:
    up = CIMultiDict([("Connection", "X-Internal"), ("X-Internal", "1"), ("X-Request-Id", "a"), ("Server", "x"),
                      ("Set-Cookie", "a=b"), ("Keep-Alive", "timeout=5")])
    assert list(hdr.downstream(up).items()) == [("X-Request-Id", "a")]  # type: ignore[arg-type]


def test_allowlist_memory_is_bounded() -> None:
    allow = hdr.Allowlist({"x-app"}, ("anthropic-",))
    for i in range(5000):
        assert not allow.allows(f"X-Invented-{i}")
    assert allow.allows("X-App") and allow.allows("anthropic-beta")
    assert not allow.allows("Metadata-Flavor") and not allow.allows("Cookie")
    assert len(allow._seen) <= allow.MAX_REMEMBERED
