"""GET /v1/models without a provider: what the caller may use across providers (real openai SDK)."""

from __future__ import annotations

import openai
import pytest
from aiohttp import web

from aigw_gateway.catalog import parse_models
from aigw_testing.upstream import credential_of

LISTS = {
    "sk-test-key-1": {"object": "list", "data": [
        {"id": "gpt-4.1", "object": "model", "created": 1700000000, "owned_by": "openai"},
        {"id": "gpt-4.1-mini", "object": "model", "created": 1700000001, "owned_by": "openai"}]},
    "sk-ant-test-key-1": {"data": [{"id": "claude-sonnet-4-0", "type": "model", "display_name": "Claude Sonnet 4",
                                    "created_at": "2025-05-14T00:00:00Z"}], "has_more": False},
    "sk-user-own-key-42": {"object": "list", "data": [{"id": "own-model", "object": "model", "created": 5}]},
}


@pytest.fixture
def lists(gw):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request, _body: bytes) -> web.StreamResponse | None:
        if not request.path.endswith("/models"):
            return None
        key = credential_of(request.headers)
        if key in LISTS:
            return web.json_response(LISTS[key])
        return web.json_response({"error": {"message": "bad key", "type": "invalid_request_error"}}, status=401)

    gw.upstream.handler = handler
    return gw


def _client(gw, token: str) -> openai.AsyncOpenAI:  # type: ignore[no-untyped-def]
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=token, max_retries=0)


async def test_root_models_merge_providers(lists) -> None:  # type: ignore[no-untyped-def]
    gw = lists
    reg = gw.registry
    reg.put_provider("dead", "openai", "http://127.0.0.1:9/v1", ["sk-dead-key-1"])  # refuses connections
    reg.put_provider("gh", "copilot", gw.upstream.url, [])  # user's own token only; this user has none
    reg.put_provider("mine", "openai", gw.upstream.url + "/v1", [])  # no pool: only with a stored key
    me = reg.add_user(roles=["member"], provider_keys={"mine": "sk-user-own-key-42"})
    await reg.publish_changed()
    await gw.wait_revision()

    async with _client(gw, me.token) as c:
        got = await c.models.list()
    ids = sorted(m.id for m in got.data)
    assert ids == ["anthropic/claude-sonnet-4-0", "mine/own-model", "openai/gpt-4.1", "openai/gpt-4.1-mini"]
    by = {m.id: m for m in got.data}
    assert by["openai/gpt-4.1"].owned_by == "openai" and by["openai/gpt-4.1"].created == 1700000000
    assert by["anthropic/claude-sonnet-4-0"].created == 1747180800
    assert not any(r.path.startswith("/models") or r.key is None for r in gw.upstream.requests)

    # cached: a second listing asks nobody
    n = len(gw.upstream.requests)
    async with _client(gw, me.token) as c:
        assert len((await c.models.list()).data) == 4
    assert len(gw.upstream.requests) == n

    # another user without a stored key sees the shared providers only
    other = reg.add_user(roles=["member"])
    async with _client(gw, other.token) as c:
        assert sorted(m.id for m in (await c.models.list()).data) == [
            "anthropic/claude-sonnet-4-0", "openai/gpt-4.1", "openai/gpt-4.1-mini"]

    # the gateway's own prefixes work too, and a bad token is the usual 401
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/api/v2/ai-gateway/v1", api_key=me.token, max_retries=0) as c:
        assert len((await c.models.list()).data) == 4
    async with _client(gw, "aigw_not-a-token") as c:
        with pytest.raises(openai.AuthenticationError):
            await c.models.list()


async def test_a_provider_failing_leaves_the_rest(lists) -> None:  # type: ignore[no-untyped-def]
    gw = lists
    gw.registry.put_provider("openai", "openai", gw.upstream.url + "/v1", ["sk-revoked-key-9"])  # answers 401
    await gw.registry.publish_changed()
    await gw.wait_revision()
    async with _client(gw, gw.user.token) as c:
        assert [m.id for m in (await c.models.list()).data] == ["anthropic/claude-sonnet-4-0"]
    # per-provider routes are unchanged
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/anthropic/v1", api_key=gw.user.token, max_retries=0) as c:
        assert (await c.models.list()).data[0].id == "claude-sonnet-4-0"


def test_parse_models_is_strict_about_shape() -> None:
    assert [m.id for m in parse_models(b'{"data":[{"id":"a"},{"id":""},{"id":7},{"nope":1},{"id":"b","created":true}]}')] == ["a", "b"]
    assert parse_models(b'{"data":[]}') == []
    with pytest.raises(Exception):  # noqa: B017 - any decode error
        parse_models(b'{"data":"x"}')
