"""Hostile paths: the raw-path rules, the pass-through allowlists, and an escape corpus sent raw on a socket
against every provider type, none of which may reach the upstream."""

from __future__ import annotations

import msgspec
import pytest
from aiohttp import web
from yarl import URL

from aigw_gateway import adapters, paths
from aigw_testing import rawhttp

# ---------------------------------------------------------------- unit: the raw-path rules


@pytest.mark.parametrize("target", [
    "/openai/v1/models", "/openai/v1/models/gpt-4.1", "/openai/v1/models/ft:gpt-4o:org:x:abc",
    "/anthropic/v1/messages?beta=true", "/copilot/.well-known/oauth-authorization-server", "/",
    "/openai/v1/models/a%20b", "/openai/v1/models/gpt%2D4", "/openai/v1/models?after=..%2F..",
])
def test_ordinary_paths_pass(target: str) -> None:
    assert paths.refusal(target) is None


@pytest.mark.parametrize(("target", "why"), [
    ("/openai/v1/responses/x/../../files", "'..' segment"),
    ("/openai/./v1/models", "'.' segment"),
    ("/openai//v1/models", "empty segment"),
    ("/openai/v1/models/", "empty segment"),
    ("/openai/v1/models/x%2F..", "encoded '/'"),
    ("/openai/v1/models/x%2f..", "encoded '/'"),
    ("/openai/v1/models/%2e%2e", "encoded '.'"),
    ("/openai/v1/models/x%5Cy", "encoded '\\\\'"),
    ("/openai/v1/models/x%3By", "encoded ';'"),
    ("/openai/v1/models/x%252Fy", "encoded '%'"),
    ("/openai/v1/models/x\\y", "contains '\\\\'"),
    ("/openai/v1/models/..;", "contains ';'"),
    ("/openai/v1/models/x%0Ay", "control character"),
    ("/openai/v1/models/x%zz", "malformed"),
    ("/openai/v1/models/x%2", "malformed"),
    ("/openai/v1/models/%u002e", "malformed"),
    ("http://evil/v1/files", "starting with '/'"),
])
def test_hostile_paths_are_refused(target: str, why: str) -> None:
    reason = paths.refusal(target)
    assert reason is not None and why in reason, reason


def test_build_stays_under_the_base() -> None:
    base = URL("http://up.example/api/v1")
    assert str(paths.build(base, ["models", "ft:gpt-4o:x"], {"limit": "2"})) == \
        "http://up.example/api/v1/models/ft:gpt-4o:x?limit=2"
    for bad in (["..", "files"], ["models", ".."], ["a/b"]):
        with pytest.raises(paths.UnsafeUpstream):
            paths.build(base, bad)
    with pytest.raises(paths.UnsafeUpstream):
        paths.check_under(URL("http://up.example/api/files"), base)
    with pytest.raises(paths.UnsafeUpstream):
        paths.check_under(URL("http://up.example/api/v1/model/../invoke", encoded=True), base)
    with pytest.raises(paths.UnsafeUpstream):
        paths.check_under(URL("http://up.example/api/v1/model/%2E%2E/invoke", encoded=True), base)
    paths.check_under(URL("http://up.example/api/v1/model/a%2Fb/invoke", encoded=True), base)  # ARNs
    paths.check_under(URL("http://up.example/model/x/invoke"), URL("http://up.example"))


_OPENAI, _ANTHROPIC = adapters.Adapters().get("openai"), adapters.Adapters().get("anthropic")


@pytest.mark.parametrize(("adapter", "method", "path", "allowed"), [
    (_OPENAI, "GET", "/v1/models", True),
    (_OPENAI, "GET", "/v1/models/gpt-4o", True),
    (_OPENAI, "DELETE", "/v1/models/gpt-4o", False),
    (_OPENAI, "GET", "/v1/responses/resp_123", True),
    (_OPENAI, "DELETE", "/v1/responses/resp_123", True),
    (_OPENAI, "POST", "/v1/responses/resp_123", False),
    (_OPENAI, "GET", "/v1/responses/resp_123/input_items", True),
    (_OPENAI, "POST", "/v1/responses/resp_123/cancel", True),
    (_OPENAI, "GET", "/v1/responses/resp_123/cancel", False),
    (_OPENAI, "GET", "/v1/responses/x/y/z", False),
    (_OPENAI, "POST", "/v1/conversations", True),
    (_OPENAI, "GET", "/v1/conversations", False),
    (_OPENAI, "POST", "/v1/conversations/conv_1", True),
    (_OPENAI, "GET", "/v1/conversations/conv_1/items", True),
    (_OPENAI, "DELETE", "/v1/conversations/conv_1/items/msg_1", True),
    (_OPENAI, "PUT", "/v1/conversations/conv_1", False),
    (_OPENAI, "GET", "/v1/files", False),
    (_OPENAI, "GET", "/v1/models/..", False),
    (_OPENAI, "GET", "/v1/models/a b", False),
    (_OPENAI, "GET", "/v1/responses/..", False),
    (_ANTHROPIC, "GET", "/v1/models", True),
    (_ANTHROPIC, "GET", "/v1/models/claude-sonnet-4-5", True),
    (_ANTHROPIC, "POST", "/v1/messages/count_tokens", True),
    (_ANTHROPIC, "GET", "/v1/messages/count_tokens", False),
    (_ANTHROPIC, "GET", "/v1/files", False),
    (_ANTHROPIC, "POST", "/v1/messages/batches", False),
])
def test_passthrough_allowlists(adapter: adapters.Adapter, method: str, path: str, allowed: bool) -> None:
    assert adapter.passthrough(method, path) is allowed


# ---------------------------------------------------------------- the escape corpus, raw, per provider type

# (method, path after the provider's API prefix); "{P}" is the provider name, "{V}" its API prefix (/v1 or "").
CORPUS: list[tuple[str, str]] = [
    ("GET", "/{P}{V}/responses/x/../../files"),
    ("DELETE", "/{P}{V}/responses/x/../../files/file-123"),
    ("GET", "/{P}{V}/responses/x/../../organization/admin_api_keys"),
    ("POST", "/{P}{V}/responses/x/../../chat/completions"),
    ("POST", "/{P}{V}/models/../messages"),
    ("GET", "/{P}{V}/responses/x/..%2F..%2Ffiles"),
    ("GET", "/{P}{V}/responses/x%2F..%2F..%2Ffiles"),
    ("GET", "/{P}{V}/responses/x%2f..%2f..%2ffiles"),
    ("GET", "/{P}{V}/responses/%2e%2e/%2e%2e/files"),
    ("GET", "/{P}{V}/responses/.%2e/.%2e/files"),
    ("GET", "/{P}{V}/responses/%2E%2E/files"),
    ("GET", "/{P}{V}/models/x/%2e%2e/%2e%2e/files"),
    ("GET", "/{P}{V}/responses/x/..;/..;/files"),
    ("GET", "/{P}{V}/responses/..;/files"),
    ("GET", "/{P}{V}/models/x;y/../files"),
    ("GET", "/{P}{V}/models/x%3B/../files"),
    ("GET", "/{P}{V}/responses/x\\..\\..\\files"),
    ("GET", "/{P}{V}/responses/x%5C..%5C..%5Cfiles"),
    ("GET", "/{P}{V}/responses/x%5c..%5cfiles"),
    ("GET", "/{P}{V}//files"),
    ("GET", "/{P}{V}/models//../files"),
    ("GET", "/{P}{V}/./files"),
    ("GET", "/{P}/./v1/files"),
    ("GET", "/{P}{V}/models/."),
    ("GET", "/{P}{V}/models/.."),
    ("GET", "/{P}{V}/models/%2e"),
    ("GET", "/{P}{V}/models/x%252F..%252Ffiles"),
    ("GET", "/{P}{V}/models/%252e%252e"),
    ("GET", "/{P}{V}/models/"),
    ("GET", "/{P}{V}/models/x%2f"),
    ("GET", "/{P}{V}/models/%00"),
    ("GET", "/{P}{V}/models/x%0d%0aHost:%20evil"),
    ("GET", "/{P}{V}/models/%u002e%u002e/files"),
    ("GET", "/{P}{V}/conversations/c/items/../../../files"),
    ("GET", "/{P}%2F..%2Fv1/files"),
    ("GET", "/api/v2/aibridge/{P}{V}/responses/x/../../files"),
    ("GET", "/api/v2/aibridge/../../{P}{V}/files"),
    ("GET", "/api/v2/ai-gateway/{P}{V}/models/%2e%2e/files"),
    ("GET", "/{P}{V}/files"),
    ("DELETE", "/{P}{V}/files/file-123"),
    ("GET", "/{P}{V}/organization/admin_api_keys"),
    ("POST", "/{P}{V}/models"),
    ("DELETE", "/{P}{V}/models/gpt-4o"),
    ("PUT", "/{P}{V}/responses/resp_1"),
    ("GET", "/{P}{V}/messages/batches"),
    ("GET", "http://169.254.169.254/latest/meta-data/"),
]
assert len(CORPUS) >= 30

# provider type → (name, base URL path on the mock, API prefix of its client routes, settings, BYOK only)
TYPES = {
    "openai": ("p-openai", "/v1", "/v1", None),
    "anthropic": ("p-anthropic", "", "/v1", None),
    "bedrock": ("p-bedrock", "", "/v1", {"region": "us-east-1", "access_key": "AKIDEXAMPLE",
                                         "access_key_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                                         "model": "anthropic.claude-sonnet-4-5"}),
    "azure": ("p-azure", "/openai/v1", "/v1", {"api_version": "2025-04-01-preview"}),
    "openai-compat": ("p-compat", "/api/v1", "/v1", None),
    "copilot": ("p-copilot", "", "", None),
}


# where each type's GET /models lands on the mock
MODELS_PATH = {"openai": "/v1/models", "anthropic": "/v1/models", "bedrock": "/foundation-models",
               "azure": "/openai/v1/models", "openai-compat": "/api/v1/models", "copilot": "/models"}


async def _raw(url: str, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    r = await rawhttp.request(url, method, target, headers, body)
    return r.status, r.body


@pytest.mark.parametrize("ptype", list(TYPES))
async def test_escape_corpus_never_reaches_the_upstream(gw, ptype: str) -> None:  # type: ignore[no-untyped-def]
    name, base_path, v, settings = TYPES[ptype]
    gw.registry.put_provider(name, ptype, gw.upstream.url + base_path, ["sk-pool-secret-1"] if ptype != "bedrock" else [],
                             settings=settings)
    await gw.registry.publish_changed()
    await gw.wait_revision()

    async def answer(request: web.Request, _body: bytes) -> web.Response:
        return web.json_response({"object": "list", "data": [], "path": request.path})

    gw.upstream.handler = answer
    headers = {"Authorization": f"Bearer {gw.user.token}", "Content-Type": "application/json"}
    if ptype == "copilot":
        headers = {"X-AIGW-Token": gw.user.token, "Authorization": "Bearer ghu_usertoken",
                   "Content-Type": "application/json"}
    body = msgspec.json.encode({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": 5})
    results = []
    for method, tmpl in CORPUS:
        target = tmpl.replace("{P}", name).replace("{V}", v)
        status, rbody = await _raw(gw.url, method, target, headers, body if method in ("POST", "PUT") else b"")
        results.append((method, target, status))
        assert status in (400, 404), (method, target, status, rbody[:200])
        if status == 400 and rbody:  # our own refusal: in the provider's format
            doc = msgspec.json.decode(rbody)
            assert ("error" in doc and ("message" in doc["error"])), doc
    assert gw.upstream.requests == [], [(r.method, r.path) for r in gw.upstream.requests]
    # the control: an allowed pass-through route, sent the same way, does reach the upstream
    status, _ = await _raw(gw.url, "GET", f"/{name}{v}/models", headers)
    assert status == 200
    assert [r.path for r in gw.upstream.requests] == [MODELS_PATH[ptype]]


async def test_refusal_uses_the_provider_format(gw) -> None:  # type: ignore[no-untyped-def]
    status, body = await _raw(gw.url, "GET", "/anthropic/v1/models/..%2F..%2Fx", {})
    assert status == 400
    doc = msgspec.json.decode(body)
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    status, body = await _raw(gw.url, "GET", "/openai/v1/models/..%2F..%2Fx", {})
    assert status == 400 and msgspec.json.decode(body)["error"]["type"] == "invalid_request_error"


async def test_a_bedrock_model_cannot_walk_out_of_the_path(gw) -> None:  # type: ignore[no-untyped-def]
    name, _base, _v, settings = TYPES["bedrock"]
    settings = {k: v for k, v in (settings or {}).items() if k != "model"}  # the client's model goes in the path
    gw.registry.put_provider(name, "bedrock", gw.upstream.url, [], settings=settings)
    await gw.registry.publish_changed()
    await gw.wait_revision()
    for model in ("..", "."):
        body = msgspec.json.encode({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        status, rbody = await _raw(gw.url, "POST", f"/{name}/v1/messages",
                                   {"Authorization": f"Bearer {gw.user.token}", "Content-Type": "application/json"}, body)
        assert status == 400, rbody
    assert gw.upstream.requests == []
