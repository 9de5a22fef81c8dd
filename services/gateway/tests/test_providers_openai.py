"""Copilot, OpenAI-compatible and Azure providers replaying the OpenAI fixtures through the openai SDK."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from aiohttp import web

from aigw_testing.txtar import load

FIXTURES = [
    ("openai/chatcompletions/simple", "chat_completions"),
    ("openai/chatcompletions/single_builtin_tool", "chat_completions"),
    ("openai/responses/streaming/simple", "responses"),
    ("openai/responses/blocking/simple", "responses"),
]


def cases():  # type: ignore[no-untyped-def]
    for name, endpoint in FIXTURES:
        fx = load(name)
        for section in ("streaming", "non-streaming"):
            if fx.has(section):
                yield pytest.param(name, endpoint, section, id=f"{name}:{section}")


async def replay(client: openai.AsyncOpenAI, name: str, endpoint: str, streaming: bool) -> None:
    req = load(name).request_json()
    req.pop("stream", None)
    if endpoint == "chat_completions":
        create = client.chat.completions.create
        core = {k: req.pop(k) for k in ("model", "messages")}
    else:
        create = client.responses.create
        core = {k: req.pop(k) for k in ("model", "input") if k in req}
    if streaming:
        stream = await create(**core, stream=True, extra_body=req)
        chunks = [c async for c in stream]
        assert chunks
    else:
        result = await create(**core, extra_body=req)
        assert result.id


async def expect_usage(g, n: int = 1) -> None:  # type: ignore[no-untyped-def]
    ended = await g.usage.wait_ended(n)
    assert ended[-1].status == "ok", ended[-1].error
    tok = g.usage.tokens()[-1]
    assert tok.tokens.output_tokens > 0 and tok.tokens.input_tokens + tok.tokens.cache_read_tokens > 0


async def add(g, name: str, ptype: str, base: str, keys: list[str], **kw) -> None:  # type: ignore[no-untyped-def]
    g.registry.put_provider(name, ptype, base, keys, **kw)
    await g.registry.publish_changed()
    await g.wait_revision()


# ---------------------------------------------------------------- Copilot


COPILOT_HEADERS = {"Editor-Version": "vscode/1.99.3", "Editor-Plugin-Version": "copilot-chat/0.26.7",
                   "Copilot-Integration-Id": "vscode-chat"}


def copilot_client(g, token: str = "ghu_users_copilot_token") -> openai.AsyncOpenAI:  # type: ignore[no-untyped-def]
    return openai.AsyncOpenAI(base_url=f"{g.url}/copilot", api_key=token, max_retries=0,
                              default_headers={"X-AIGW-Token": g.user.token, **COPILOT_HEADERS})


@pytest.mark.parametrize(("name", "endpoint", "section"), list(cases()))
async def test_copilot_replays(gw, name: str, endpoint: str, section: str) -> None:  # type: ignore[no-untyped-def]
    await add(gw, "copilot", "copilot", gw.upstream.url, [])
    gw.upstream.play(name, section=section)
    await replay(copilot_client(gw), name, endpoint, section == "streaming")
    seen = gw.upstream.requests[-1]
    assert seen.path == ("/chat/completions" if endpoint == "chat_completions" else "/responses")  # no /v1
    assert seen.key == "ghu_users_copilot_token"
    for k, v in COPILOT_HEADERS.items():
        assert seen.headers[k] == v
    assert "X-AIGW-Token" not in seen.headers and gw.user.token not in str(dict(seen.headers))
    await expect_usage(gw)
    assert gw.usage.started()[-1].credential_kind == "byok"


async def test_copilot_is_always_byok_and_has_no_v1_routes(gw) -> None:  # type: ignore[no-untyped-def]
    await add(gw, "copilot", "copilot", gw.upstream.url, [])
    gw.upstream.play("openai/chatcompletions/simple")
    plain = openai.AsyncOpenAI(base_url=f"{gw.url}/copilot", api_key=gw.user.token, max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="no provider credential"):
        await plain.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    v1 = openai.AsyncOpenAI(base_url=f"{gw.url}/copilot/v1", api_key="ghu_x", max_retries=0,
                            default_headers={"X-AIGW-Token": gw.user.token})
    with pytest.raises(openai.NotFoundError):
        await v1.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    assert gw.upstream.requests == []


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/models", True), ("GET", "/models/gpt-4.1", True), ("POST", "/models", False),
    ("GET", "/agents", True), ("POST", "/agents/github/invoke", True), ("POST", "/mcp/readonly", True),
    ("GET", "/.well-known/oauth-authorization-server", True), ("GET", "/v1/models", False),
    ("DELETE", "/.well-known/x", False), ("GET", "/user", False),
])
async def test_copilot_passthrough_allowlist(gw, method: str, path: str, allowed: bool) -> None:  # type: ignore[no-untyped-def]
    await add(gw, "copilot", "copilot", gw.upstream.url, [])

    async def handler(request: web.Request, _body: bytes) -> web.Response:
        return web.json_response({"path": request.path, "editor": request.headers.get("Editor-Version")})

    gw.upstream.handler = handler
    headers = {"X-AIGW-Token": gw.user.token, "Authorization": "Bearer ghu_tok", **COPILOT_HEADERS}
    async with aiohttp.ClientSession() as s, s.request(method, f"{gw.url}/copilot{path}", headers=headers) as r:
        body = await r.json()
    if allowed:
        assert r.status == 200 and body == {"path": path, "editor": "vscode/1.99.3"}
        assert gw.upstream.requests[-1].key == "ghu_tok"
    else:
        assert r.status == 404 and "error" in body
        assert gw.upstream.requests == []


# ---------------------------------------------------------------- OpenAI-compatible


@pytest.mark.parametrize(("name", "endpoint", "section"), list(cases()))
async def test_openai_compat_replays(gw, name: str, endpoint: str, section: str) -> None:  # type: ignore[no-untyped-def]
    await add(gw, "vllm-local", "openai-compat", gw.upstream.url + "/api/v1", ["sk-compat-1"])
    gw.upstream.play(name, section=section)
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/vllm-local/v1", api_key=gw.user.token, max_retries=0)
    await replay(client, name, endpoint, section == "streaming")
    seen = gw.upstream.requests[-1]
    assert seen.path == "/api/v1/" + ("chat/completions" if endpoint == "chat_completions" else "responses")
    assert seen.key == "sk-compat-1"
    await expect_usage(gw)


async def test_openai_compat_without_keys_sends_no_credential(gw) -> None:  # type: ignore[no-untyped-def]
    await add(gw, "ollama", "openai-compat", gw.upstream.url + "/v1", [])
    gw.upstream.play("openai/chatcompletions/simple", section="non-streaming")
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/ollama/v1", api_key=gw.user.token, max_retries=0)
    await client.chat.completions.create(model="llama3", messages=[{"role": "user", "content": "hi"}])
    seen = gw.upstream.requests[-1]
    assert seen.key is None and "Authorization" not in seen.headers
    # the plain openai type still insists on a key
    await add(gw, "openai", "openai", gw.upstream.url + "/v1", [])
    with pytest.raises(openai.InternalServerError):
        await openai.AsyncOpenAI(base_url=f"{gw.url}/openai/v1", api_key=gw.user.token, max_retries=0
                                 ).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------- Azure


@pytest.mark.parametrize(("name", "endpoint", "section"), list(cases()))
async def test_azure_replays(gw, name: str, endpoint: str, section: str) -> None:  # type: ignore[no-untyped-def]
    await add(gw, "azure", "azure", gw.upstream.url + "/openai/v1", ["azure-key-1"],
              settings={"api_version": "2025-04-01-preview"})
    gw.upstream.play(name, section=section)
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/azure/v1", api_key=gw.user.token, max_retries=0)
    await replay(client, name, endpoint, section == "streaming")
    seen = gw.upstream.requests[-1]
    assert seen.path.startswith("/openai/v1/")
    assert seen.query == "api-version=2025-04-01-preview"
    assert seen.headers["api-key"] == "azure-key-1" and "Authorization" not in seen.headers
    await expect_usage(gw)


async def test_azure_failover_and_byok(gw) -> None:  # type: ignore[no-untyped-def]
    await add(gw, "azure", "azure", gw.upstream.url + "/openai/deployments/gpt4o", ["az-1", "az-2"],
              settings={"api_version": "2024-10-21"})
    gw.upstream.play("openai/chatcompletions/simple", section="non-streaming")
    gw.upstream.on_key("az-1", 429, {"Retry-After": "30"})
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/azure/v1", api_key=gw.user.token, max_retries=0)
    await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                         extra_query={"api-version": "2025-01-01"})
    assert [r.key for r in gw.upstream.requests] == ["az-1", "az-2"]
    assert gw.upstream.requests[-1].path == "/openai/deployments/gpt4o/chat/completions"
    assert gw.upstream.requests[-1].query == "api-version=2025-01-01"  # the client's own version wins
    # BYOK: a plain key (sent the OpenAI SDK way, as a bearer) goes out as api-key; an Entra token stays a bearer
    byok = openai.AsyncOpenAI(base_url=f"{gw.url}/azure/v1", api_key="users-azure-key", max_retries=0,
                              default_headers={"X-AIGW-Token": gw.user.token})
    await byok.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert gw.upstream.requests[-1].headers["api-key"] == "users-azure-key"
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    entra = openai.AsyncOpenAI(base_url=f"{gw.url}/azure/v1", api_key=jwt, max_retries=0,
                               default_headers={"X-AIGW-Token": gw.user.token})
    await entra.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    seen = gw.upstream.requests[-1]
    assert seen.headers["Authorization"] == f"Bearer {jwt}" and "api-key" not in seen.headers
