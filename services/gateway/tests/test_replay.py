"""Every recorded fixture replays through the gateway with the real SDKs; the recorded usage equals the fixture's."""

from __future__ import annotations

import aiohttp
import anthropic
import msgspec
import openai
import pytest

from aigw_testing.txtar import all_corpora
from aigw_testing.upstream import split_events

FIXTURES = all_corpora()  # ours, plus the external conformance set (ids prefixed ext:) when present


def _expected_tokens(endpoint: str, section: bytes, streaming: bool) -> dict[str, int]:
    """Independent reading of the fixture's own usage numbers."""
    if streaming:
        objs = []
        for line in section.decode().splitlines():
            if line.startswith("data:"):
                payload = line[5:].strip()
                if payload and payload != "[DONE]":
                    objs.append(msgspec.json.decode(payload))
    else:
        objs = [msgspec.json.decode(section)]
    t = {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0}
    for o in objs:
        if endpoint == "chat_completions" and o.get("usage"):
            u = o["usage"]
            cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            t["input_tokens"] = u["prompt_tokens"] - cached
            t["cache_read_tokens"] = cached
            t["output_tokens"] = u["completion_tokens"]
            t["reasoning_tokens"] = (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        elif endpoint == "responses":
            r = o.get("response", o) if o.get("type", "").startswith("response.") or "output" in o else None
            u = (r or {}).get("usage")
            if u:
                cached = (u.get("input_tokens_details") or {}).get("cached_tokens") or 0
                t["input_tokens"] = u["input_tokens"] - cached
                t["cache_read_tokens"] = cached
                t["output_tokens"] = u["output_tokens"]
                t["reasoning_tokens"] = (u.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
        elif endpoint == "messages":
            u = (o.get("message") or {}).get("usage") if o.get("type") == "message_start" else o.get("usage")
            if u:
                for src, dst in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                                 ("cache_read_input_tokens", "cache_read_tokens"),
                                 ("cache_creation_input_tokens", "cache_write_tokens")):
                    if u.get(src) is not None:
                        t[dst] = u[src]
    return t


def _cases():
    for name, fx in sorted(FIXTURES.items()):
        if any(s in fx.name for s in ("fallthrough", "bedrock", "wrong_response_format", "count_tokens")):
            continue  # pass-through / Bedrock / count_tokens have their own tests; a malformed body is checked byte-wise below
        endpoint = ("messages" if fx.name.startswith("anthropic/") else
                    "chat_completions" if "chatcompletions" in name else "responses")
        for section in ("streaming", "non-streaming"):
            if fx.has(section):
                yield pytest.param(name, endpoint, section, id=f"{name}:{section}")


def _request(fx, streaming: bool) -> dict:
    req = fx.request_json()
    req["stream"] = streaming
    return req


@pytest.mark.parametrize(("name", "endpoint", "section"), list(_cases()))
async def test_fixture_replays(gw, name, endpoint, section):
    fx = FIXTURES[name]
    streaming = section == "streaming"
    gw.upstream.play(fx, section=section)
    rec = fx.response(section)
    req = _request(fx, streaming)
    byok = rec.status in (401, 403, 429)  # a centralised key answering 401 is revoked (→ 502); BYOK relays it as is
    token = gw.user.token
    headers = {}
    if byok:
        headers = {"X-AIGW-Token": gw.user.token}
        token = "sk-users-own-key"
    error: Exception | None = None
    if endpoint == "messages":
        client = anthropic.AsyncAnthropic(base_url=f"{gw.url}/anthropic", api_key=token, max_retries=0, default_headers=headers)
        core = {k: req.pop(k) for k in ("model", "max_tokens", "messages")}
        req.pop("stream")
        try:
            if streaming:
                async with client.messages.stream(**core, extra_body=req) as s:
                    async for _ev in s:
                        pass
                    await s.get_final_message()
            else:
                await client.messages.create(**core, extra_body=req)
        except anthropic.APIError as e:
            error = e
    else:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/openai/v1", api_key=token, max_retries=0, default_headers=headers)
        if endpoint == "chat_completions":
            create = client.chat.completions.create
            core = {k: req.pop(k) for k in ("model", "messages")}
        else:
            create = client.responses.create
            core = {k: req.pop(k) for k in ("model", "input") if k in req}
        req.pop("stream")
        try:
            if streaming:
                stream = await create(**core, stream=True, extra_body=req)
                async for _chunk in stream:
                    pass
            else:
                await create(**core, extra_body=req)
        except openai.APIError as e:
            error = e
    if rec.status >= 400:
        assert error is not None and getattr(error, "status_code", None) == rec.status
    elif error is not None:
        # in-band errors (event: error, response.failed) surface as SDK errors on a 200 stream
        assert streaming, f"unexpected error {error!r}"
    # the upstream saw the fixture's request, with our key and none of the client's token
    seen = gw.upstream.requests[-1]
    assert gw.user.token not in str(dict(seen.headers))
    assert seen.key in (("sk-users-own-key",) if byok else ("sk-test-key-1", "sk-ant-test-key-1"))
    assert seen.json()["model"] == fx.request_json()["model"]
    [ended] = await gw.usage.wait_ended(1)
    if rec.status >= 400:
        assert ended.status == "error" and ended.status_code == rec.status
        return
    [tok] = gw.usage.tokens()
    assert msgspec.structs.asdict(tok.tokens) == _expected_tokens(endpoint, rec.body, streaming)


def _raw_cases():
    for name, fx in sorted(FIXTURES.items()):
        if any(s in fx.name for s in ("fallthrough", "bedrock", "count_tokens")):
            continue
        endpoint = ("messages" if fx.name.startswith("anthropic/") else
                    "chat_completions" if "chatcompletions" in name else "responses")
        for section in fx.sections:
            if section != "request":
                yield pytest.param(name, endpoint, section, id=f"{name}:{section}")


@pytest.mark.parametrize(("name", "endpoint", "section"), list(_raw_cases()))
async def test_response_bytes_forwarded_unchanged(gw, name, endpoint, section):
    """What upstream sent reaches the client byte for byte, whatever it is (even malformed)."""
    fx = FIXTURES[name]
    gw.upstream.play(fx, section=section)
    rec = fx.response(section)
    path = {"messages": "/anthropic/v1/messages", "chat_completions": "/openai/v1/chat/completions",
            "responses": "/openai/v1/responses"}[endpoint]
    body = fx.request or b"{}"
    headers = {"Authorization": f"Bearer {gw.user.token}", "Content-Type": "application/json"}
    if rec.status in (401, 403, 429):
        headers = {"X-AIGW-Token": gw.user.token, "Authorization": "Bearer sk-own", "X-Api-Key": "sk-own"}
    async with aiohttp.ClientSession() as s, s.post(gw.url + path, data=body, headers=headers) as r:
        got = await r.read()
        assert r.status == rec.status
    sent = rec.body if rec.is_whole or not section.startswith("streaming") else b"".join(split_events(rec.body))
    req = fx.request_json() if fx.request else {}
    if (endpoint == "chat_completions" and req.get("stream") and rec.status == 200
            and not (req.get("stream_options") or {}).get("include_usage")):
        # the usage-only chunk the gateway asked for on the client's behalf is metered, not relayed (docs/api.md)
        sent = b"".join(e for e in split_events(rec.body)
                        if not (b'"choices":[]' in e and b'"usage":{' in e))
    assert got == sent
    if not (endpoint == "chat_completions" and req.get("stream")):
        # bodies go upstream exactly as the client sent them (only a streamed chat gets include_usage added)
        assert gw.upstream.requests[-1].body == body
    else:
        assert gw.upstream.requests[-1].json()["stream_options"] == {"include_usage": True}
