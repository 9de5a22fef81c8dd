"""Turns end to end on real Postgres and NATS, with the mock upstream standing in for the gateway."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
from aiohttp import web

from aigw_common.crypto import hash_token
from aigw_common.schemas import AuthRevoked

SIMPLE = "openai/chatcompletions/simple"


async def test_full_turn_streamed(world):
    await world.start()
    member, chat_id = await world.setup_chat()
    api = world.api(member)
    sse = await world.sse(member, chat_id)
    ev, snap = await sse.next()
    assert ev == "snapshot" and snap["id"] == chat_id and snap["status"] == "idle" and snap["messages"] == []

    posted = await api.ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "how many angels?"},
                          status=202)
    events = await sse.until(world.turn_done)
    names = [e for e, _ in events]
    assert names[0] == "message" and events[0][1]["role"] == "user" and events[0][1]["id"] == posted["message_id"]
    assert "status" in names and names.count("message_delta") > 10
    final = next(d for e, d in events if e == "message" and d["role"] == "assistant")
    deltas = "".join(d["text"] for e, d in events if e == "message_delta" and d["message_id"] == final["id"])
    expected = world.fixture_text(SIMPLE)
    assert deltas == final["content"] == expected
    await sse.close()

    chat = await api.ok("GET", f"/api/experimental/chats/{chat_id}")
    assert chat["status"] == "idle" and chat["last_error"] is None
    assert [(m["role"], m["content"]) for m in chat["messages"]] == [("user", "how many angels?"),
                                                                     ("assistant", expected)]

    # the call went to the gateway with the user's own token, the chat as its session, and chatd's identity
    req = world.mock.requests[0]
    assert req.path == "/openai/v1/chat/completions"
    assert req.headers["Authorization"] == f"Bearer {member.token}"
    assert req.headers["X-AIGW-Chat-Id"] == chat_id
    assert "aigw-chatd" in req.headers["User-Agent"]
    assert "X-AIGW-Token" not in req.headers
    body = req.json()
    assert body["stream"] is True and body["model"] == "gpt-4.1"
    assert body["messages"] == [{"role": "user", "content": "how many angels?"}]

    # which token started the turn is recorded (id + hash), never in clear; the sealed copy is gone once done
    conn = await asyncpg.connect(world.settings.database_url)
    try:
        t = await conn.fetchrow("SELECT * FROM chatd.turns WHERE id = $1", uuid.UUID(posted["turn_id"]))
        dump = " ".join(str(r) for r in await conn.fetch("SELECT t::text FROM chatd.turns t"))
    finally:
        await conn.close()
    assert t["token_id"] == member.token_id and t["token_hash"] == hash_token(member.token)
    assert t["token_sealed"] is None and t["status"] == "succeeded" and t["attempts"] == 1
    assert member.token not in dump

    # the turn summary comes from a (small) model through the same route and shows in the chat list
    listed = await world.eventually(lambda: _summary(api))
    assert listed and "\n" not in listed and len(listed) <= 200
    summary_req = world.mock.requests[1]
    assert summary_req.json()["stream"] is False
    assert summary_req.headers["X-AIGW-Chat-Id"] == chat_id


async def _summary(api):
    chats = (await api.ok("GET", "/api/experimental/chats"))["chats"]
    return chats[0]["last_turn_summary"]


async def test_summary_model_setting_and_history(world):
    await world.start(AIGW_CHATD_SUMMARY_MODEL="gpt-4.1-mini")
    member, chat_id = await world.setup_chat()
    api = world.api(member)
    sse = await world.sse(member, chat_id)
    await sse.next()
    await api.ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "first"}, status=202)
    await sse.until(world.turn_done)
    await world.eventually(lambda: _summary(api))
    await api.ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "second"}, status=202)
    await sse.until(world.turn_done)
    await sse.close()
    turns = [r.json() for r in world.mock.requests if r.json().get("stream")]
    summaries = [r.json() for r in world.mock.requests if not r.json().get("stream")]
    assert summaries[0]["model"] == "gpt-4.1-mini"
    # the second turn carries the whole history
    assert [m["role"] for m in turns[1]["messages"]] == ["user", "assistant", "user"]
    assert turns[1]["messages"][-1]["content"] == "second"


async def test_two_replicas_client_on_the_other(world):
    a = await world.start()
    b = await world.start()
    member, chat_id = await world.setup_chat(replica=a)
    sse = await world.sse(member, chat_id, replica=b)
    assert (await sse.next())[0] == "snapshot"
    await world.api(member, a).ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "hi"},
                                  status=202)
    events = await sse.until(world.turn_done)
    await sse.close()
    finals = [d for e, d in events if e == "message" and d["role"] == "assistant"]
    assert finals, [(e, d) for e, d in events if e != "message_delta"]
    assert finals[0]["content"] == world.fixture_text(SIMPLE)
    assert sum(1 for e, _ in events if e == "message_delta") > 10
    # B only relayed: the turn ran on A (the replica that took the message)
    assert a.deps.hub.listeners(chat_id) == 0


async def test_rate_limited_then_retried(world):
    await world.start()
    member, chat_id = await world.setup_chat()
    world.mock.on_key(member.token, 429, headers={"Retry-After": "0"},
                      body={"error": {"message": "all keys cooling", "type": "rate_limit_error"}}, times=1)
    events = await world.turn(member, chat_id, "hi")
    retries = [d for e, d in events if e == "status" and "retry" in d]
    assert len(retries) == 1 and retries[0]["retry"]["error"]["kind"] == "rate_limit"
    assert retries[0]["retry"]["error"]["retryable"] is True
    chat = await world.api(member).ok("GET", f"/api/experimental/chats/{chat_id}")
    assert chat["status"] == "idle" and chat["last_error"] is None
    assert chat["messages"][-1]["content"] == world.fixture_text(SIMPLE)
    streamed = [r for r in world.mock.requests if r.json().get("stream")]
    assert len(streamed) == 2


async def _cut_stream(request: web.Request, _body: bytes) -> web.StreamResponse:
    """A provider that starts answering and then closes the stream before its final event."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hal"}}]}\n\n')
    await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"f an answ"}}]}\n\n')
    await resp.write_eof()
    return resp


async def test_mid_stream_close_is_a_retryable_error(world):
    await world.start()
    member, chat_id = await world.setup_chat()
    world.mock.handler = _cut_stream
    events = await world.turn(member, chat_id, "hi")
    errors = [d for e, d in events if e == "error"]
    assert len(errors) == 1 and errors[0]["kind"] == "stream_closed" and errors[0]["retryable"] is True
    assert len([d for e, d in events if e == "status" and "retry" in d]) == 2  # 3 attempts in all
    chat = await world.api(member).ok("GET", f"/api/experimental/chats/{chat_id}")
    assert chat["status"] == "error"
    err = chat["last_error"]
    assert err["kind"] == "stream_closed" and err["retryable"] is True and err["provider"] == "openai"
    assert set(err) == {"message", "kind", "provider", "retryable", "status_code", "detail"}
    # a half-streamed reply is not a success: nothing was persisted as the assistant's
    assert [m["role"] for m in chat["messages"]] == ["user"]
    assert chat["last_turn_summary"] is None
    assert len(world.mock.requests) == 3
    async with world.http.get(world.replicas[0].url + "/metrics") as r:
        metrics = await r.text()
    assert 'aigw_chatd_turn_retries_total{kind="stream_closed"} 2.0' in metrics
    assert 'aigw_chatd_turns_total{kind="stream_closed",outcome="error"} 1.0' in metrics


async def test_budget_exhausted_is_not_retried(world):
    await world.start()
    member, chat_id = await world.setup_chat()

    async def budget(_request, _body):
        return web.json_response({"error": {"message": "budget 'engineering' exhausted for this month",
                                             "type": "budget_exceeded", "code": "budget_exceeded"}}, status=429)

    world.mock.handler = budget
    await world.turn(member, chat_id, "hi")
    chat = await world.api(member).ok("GET", f"/api/experimental/chats/{chat_id}")
    err = chat["last_error"]
    assert err["kind"] == "budget" and err["retryable"] is False and err["status_code"] == 429
    assert "engineering" in err["message"]
    assert len(world.mock.requests) == 1


async def test_context_length_and_auth_errors(world):
    await world.start()
    member, chat_id = await world.setup_chat(fixture="openai/chatcompletions/non_stream_error")
    api = world.api(member)
    sse = await world.sse(member, chat_id)
    await sse.next()
    await api.ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "x"}, status=202)
    await sse.until(world.turn_done)
    err = (await api.ok("GET", f"/api/experimental/chats/{chat_id}"))["last_error"]
    assert err["kind"] == "context_length" and err["retryable"] is False and err["status_code"] == 400

    world.mock.play(SIMPLE)
    world.mock.on_key(member.token, 401, body={"error": {"message": "bad token", "type": "authentication_error"}})
    await api.ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "y"}, status=202)
    await sse.until(world.turn_done)
    await sse.close()
    err = (await api.ok("GET", f"/api/experimental/chats/{chat_id}"))["last_error"]
    assert err["kind"] == "auth" and err["retryable"] is False


async def test_byok_forwarded_and_never_logged(world, caplog):
    caplog.set_level(logging.DEBUG)
    await world.start()
    world.registry.put_provider("openai", "openai", world.mock.url + "/v1")
    own_key = "sk-user-own-key-0123456789abcdef"
    member = world.registry.add_user(provider_keys={"openai": own_key})
    _, chat_id = await world.setup_chat(user=member)
    await world.turn(member, chat_id, "hi")
    req = world.mock.requests[0]
    assert req.headers["X-AIGW-Token"] == member.token
    assert req.headers["Authorization"] == f"Bearer {own_key}"
    assert req.headers["X-AIGW-Chat-Id"] == chat_id
    text = caplog.text + " ".join(repr(r.__dict__) for r in caplog.records)
    assert own_key not in text and member.token not in text


async def test_anthropic_messages_route_and_skill_instructions(world):
    await world.start()
    member, chat_id = await world.setup_chat(provider="claude", ptype="anthropic", model="claude-sonnet-4-0",
                                             fixture="anthropic/simple")
    api = world.api(member)
    await api.ok("POST", "/api/experimental/users/me/skills",
                 {"name": "reviewer", "description": "code review", "content": "You are a strict code reviewer."},
                 status=201)
    status, body = await api.call("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "/nosuch hi"})
    assert status == 400 and "nosuch" in body["message"] and body["validations"][0]["field"] == "content"

    sse = await world.sse(member, chat_id)
    await sse.next()
    await api.ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "/reviewer look at this"},
                 status=202)
    events = await sse.until(world.turn_done)
    await sse.close()
    final = next(d for e, d in events if e == "message" and d["role"] == "assistant")
    assert final["content"] == world.fixture_text("anthropic/simple")
    req = world.mock.requests[0]
    assert req.path == "/claude/v1/messages"
    assert req.headers["Authorization"] == f"Bearer {member.token}"
    assert req.headers["anthropic-version"]
    body = req.json()
    assert body["system"] == "You are a strict code reviewer."
    assert body["messages"] == [{"role": "user", "content": "look at this"}]
    assert body["stream"] is True and body["max_tokens"] > 0
    chat = await api.ok("GET", f"/api/experimental/chats/{chat_id}")
    assert chat["messages"][0]["content"] == "/reviewer look at this"


async def test_queue_waits_and_revoked_token_fails_closed(world):
    from aigw_chatd.config import ChatdConfig

    await world.start(config=ChatdConfig(summary=False, backoff_base=0.05, sweep_interval=0.5, heartbeat=1.0))
    member, chat_id = await world.setup_chat()
    gate = asyncio.Event()

    async def slow(request, _body):
        await gate.wait()
        return await world.mock.replay(request, world.mock.fixture.response("streaming"))

    world.mock.handler = slow
    api = world.api(member)
    sse = await world.sse(member, chat_id)
    await sse.next()
    first = await api.ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "one"}, status=202)
    await world.eventually(lambda: len(world.mock.requests) == 1)
    second = await api.ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "two"}, status=202)
    chat = await api.ok("GET", f"/api/experimental/chats/{chat_id}")
    assert chat["status"] == "running"
    assert [m["id"] for m in chat["messages"]] == [first["message_id"]]
    assert [q["id"] for q in chat["queue"]] == [second["message_id"]]

    # the token is revoked while the second message waits: its turn must not run
    world.registry.users.pop(hash_token(member.token))
    await world.registry.bus.publish(world.registry.bus.subjects.auth_revoked, AuthRevoked(token_ids=[member.token_id]))
    await asyncio.sleep(0.2)
    gate.set()
    events = await sse.until(lambda e, d: e == "error")
    await sse.close()
    assert events[-1][1]["kind"] == "auth" and events[-1][1]["turn_id"] == second["turn_id"]
    assert len(world.mock.requests) == 1
    conn = await asyncpg.connect(world.settings.database_url)
    try:
        rows = await conn.fetch("SELECT status, token_sealed FROM chatd.turns ORDER BY seq")
    finally:
        await conn.close()
    assert [r["status"] for r in rows] == ["succeeded", "failed"] and all(r["token_sealed"] is None for r in rows)
