"""Runner edges: direct routing, in-stream provider errors, stale summaries, orphaned and expired turns."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from aigw_chatd.config import ChatdConfig
from aigw_chatd.runner import token_aad
from aigw_common.crypto import PURPOSE_AT_REST, Sealer, hash_token


async def test_direct_route_uses_the_users_key(world):
    await world.start(AIGW_CHATD_ROUTE="direct")
    world.registry.put_provider("openai", "openai", world.mock.url + "/v1")
    own = "sk-direct-user-key-abcdef0123456789"
    member = world.registry.add_user(provider_keys={"openai": own})
    _, chat_id = await world.setup_chat(user=member)
    await world.turn(member, chat_id, "hi")
    req = world.mock.requests[0]
    assert req.path == "/v1/chat/completions"
    assert req.headers["Authorization"] == f"Bearer {own}"
    assert not any(h.lower().startswith("x-aigw") for h in req.headers)

    # without a key of their own, a direct turn fails closed (central keys never leave the gateway)
    other, chat2 = await world.setup_chat()
    events = await world.turn(other, chat2, "hi")
    err = next(d for e, d in events if e == "error")
    assert err["kind"] == "auth" and "own key" in err["message"]
    assert len([r for r in world.mock.requests if r.json().get("stream")]) == 1


async def test_provider_error_mid_stream_is_retried_then_persisted(world):
    await world.start()
    member, chat_id = await world.setup_chat(provider="claude", ptype="anthropic", model="claude-sonnet-4-0",
                                             fixture="anthropic/stream_error")
    events = await world.turn(member, chat_id, "yo")
    err = next(d for e, d in events if e == "error")
    assert err["kind"] == "overloaded" and err["retryable"] is True and err["provider"] == "claude"
    assert len(world.mock.requests) == 3


async def _db(world):
    return await asyncpg.connect(world.settings.database_url)


async def test_stale_summary_never_overwrites_a_newer_turn(world):
    chatd = await world.start(config=ChatdConfig(summary=False))
    _, chat_id = await world.setup_chat()
    store = chatd.deps.store
    cid = uuid.UUID(chat_id)
    conn = await _db(world)
    try:
        await conn.execute("UPDATE chatd.chats SET last_turn_seq = 7 WHERE id = $1", cid)
        assert await store.set_summary(cid, 6, "old turn") is False
        assert await store.set_summary(cid, 7, "newest turn") is True
        await conn.execute("UPDATE chatd.chats SET last_turn_seq = 8, last_turn_summary = NULL, "
                           "last_error = '{\"kind\":\"generic\"}' WHERE id = $1", cid)
        assert await store.set_summary(cid, 7, "late summary of 7") is False
        assert await conn.fetchval("SELECT last_turn_summary FROM chatd.chats WHERE id = $1", cid) is None
    finally:
        await conn.close()


async def test_orphaned_and_expired_turns_are_picked_up(world):
    """A turn queued by a replica that died, and one whose runner stopped heartbeating, both get run."""
    chatd = await world.start()
    member, chat_id = await world.setup_chat()
    cid = uuid.UUID(chat_id)
    sealer = Sealer.from_keys(world.settings.encryption_keys, PURPOSE_AT_REST)
    sse = await world.sse(member, chat_id)
    await sse.next()
    conn = await _db(world)
    try:
        # a turn left running by a dead replica (lease expired) ...
        t1, m1 = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            "INSERT INTO chatd.turns (id, chat_id, user_message_id, content, user_id, token_id, token_hash, "
            "token_sealed, status, runner, lease_until, attempts) VALUES ($1,$2,$3,'from a dead replica',$4,$5,$6,$7,"
            "'running','dead-replica', now() - interval '1 minute', 1)",
            t1, cid, m1, member.user_id, member.token_id, hash_token(member.token),
            sealer.seal(member.token, aad=token_aad(t1)))
        await conn.execute("UPDATE chatd.chats SET status = 'running' WHERE id = $1", cid)
        # ... and one queued behind it
        t2, m2 = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            "INSERT INTO chatd.turns (id, chat_id, user_message_id, content, user_id, token_id, token_hash, "
            "token_sealed, created_at) VALUES ($1,$2,$3,'queued behind',$4,$5,$6,$7, now() - interval '5 seconds')",
            t2, cid, m2, member.user_id, member.token_id, hash_token(member.token),
            sealer.seal(member.token, aad=token_aad(t2)))
        await sse.until(lambda e, d: e == "status" and d["status"] == "idle" and not d["queue"], within=20)
        rows = await conn.fetch("SELECT id, status, attempts, runner FROM chatd.turns ORDER BY seq")
    finally:
        await conn.close()
        await sse.close()
    assert [(r["id"], r["status"]) for r in rows] == [(t1, "succeeded"), (t2, "succeeded")]
    assert rows[0]["attempts"] == 2 and rows[0]["runner"] == chatd.deps.replica_id
    chat = await world.api(member).ok("GET", f"/api/experimental/chats/{chat_id}")
    assert [m["content"] for m in chat["messages"] if m["role"] == "user"] == ["from a dead replica", "queued behind"]


async def test_shutdown_hands_the_running_turn_back(world):
    """A replica stopping mid-turn (past its grace period) requeues it; another replica runs it to the end."""
    a = await world.start(config=ChatdConfig(summary=False, sweep_interval=60, heartbeat=1, lease=5),
                          AIGW_SHUTDOWN_GRACE="0.3s")
    member, chat_id = await world.setup_chat(replica=a)
    gate = asyncio.Event()
    fixture = world.mock.fixture

    async def first_hangs(request, _body):
        if len(world.mock.requests) == 1:
            await gate.wait()
        return await world.mock.replay(request, fixture.response("streaming"))

    world.mock.handler = first_hangs
    await world.api(member, a).ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "hi"}, status=202)
    await world.eventually(lambda: len(world.mock.requests) == 1)
    await world.apps.stop(a.app)
    world.replicas.remove(a)
    gate.set()
    conn = await _db(world)
    try:
        row = await conn.fetchrow("SELECT status, runner, token_sealed FROM chatd.turns")
    finally:
        await conn.close()
    assert row["status"] == "queued" and row["runner"] is None and row["token_sealed"]
    b = await world.start(config=ChatdConfig(summary=False, sweep_interval=0.3))
    chat = await world.eventually(lambda: _chat_idle(world, member, b, chat_id), within=20)
    assert chat["messages"][-1]["role"] == "assistant"


async def _chat_idle(world, member, replica, chat_id):
    chat = await world.api(member, replica).ok("GET", f"/api/experimental/chats/{chat_id}")
    return chat if chat["status"] == "idle" and len(chat["messages"]) == 2 else None
