"""Interrupting a turn, joining a turn mid-stream, and per-chat summaries (real Postgres and NATS)."""

from __future__ import annotations

import itertools
import time
import uuid

import asyncpg
from aiohttp import web

SIMPLE = "openai/chatcompletions/simple"


async def _turn_status(world, turn_id: str) -> str:  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(world.settings.database_url)
    try:
        return await conn.fetchval("SELECT status FROM chatd.turns WHERE id = $1", uuid.UUID(turn_id))
    finally:
        await conn.close()


async def _interrupt_mid_turn(world, replica_for_interrupt=None):  # type: ignore[no-untyped-def]
    member, chat_id = await world.setup_chat()
    world.mock.play(SIMPLE, event_delay=0.15)  # a slow stream: the turn is still running when we interrupt
    api = world.api(member)
    sse = await world.sse(member, chat_id)
    await sse.next()
    posted = await api.ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "tell me"}, status=202)
    early = await sse.until(lambda e, d: e == "message_delta" and d["offset"] > 0)
    t0 = time.monotonic()
    ack = await world.api(member, replica_for_interrupt).ok("POST", f"/api/experimental/chats/{chat_id}/interrupt",
                                                            status=202)
    assert ack["turn_id"] == posted["turn_id"]
    late = await sse.until(world.turn_done)
    stopped_in = time.monotonic() - t0
    await world.eventually(lambda: world.mock.disconnects >= 1, 5.0)  # the upstream call was cancelled
    await sse.close()
    events = early + late
    final = next(d for e, d in events if e == "message" and d["role"] == "assistant")
    deltas = "".join(d["text"] for e, d in events if e == "message_delta")
    full = world.fixture_text(SIMPLE)
    assert final["interrupted"] is True and final["content"] == deltas and full.startswith(deltas)
    assert 0 < len(final["content"]) < len(full)
    chat = await api.ok("GET", f"/api/experimental/chats/{chat_id}")
    assert chat["status"] == "idle" and chat["last_error"] is None and chat["partial"] is None
    assert chat["messages"][-1] == final
    assert await _turn_status(world, posted["turn_id"]) == "interrupted"
    print(f"\ninterrupt → chat idle in {stopped_in * 1000:.0f} ms")
    return member, chat_id


async def test_interrupt_keeps_the_partial_reply_and_goes_idle(world) -> None:  # type: ignore[no-untyped-def]
    await world.start()
    member, chat_id = await _interrupt_mid_turn(world)
    # no summary for an interrupted turn
    assert not [r for r in world.mock.requests if not r.json().get("stream")]
    # nothing running now: 202 with no turn, and the chat takes the next message normally
    api = world.api(member)
    assert (await api.ok("POST", f"/api/experimental/chats/{chat_id}/interrupt", status=202)) == {"turn_id": None}
    world.mock.play(SIMPLE)
    events = await world.turn(member, chat_id, "again")
    final = next(d for e, d in events if e == "message" and d["role"] == "assistant")
    assert final["content"] == world.fixture_text(SIMPLE) and "interrupted" not in final
    other = world.registry.add_user(roles=["member"])
    assert (await world.api(other).call("POST", f"/api/experimental/chats/{chat_id}/interrupt"))[0] == 404


async def test_interrupt_reaches_the_replica_running_the_turn(world) -> None:  # type: ignore[no-untyped-def]
    await world.start()
    b = await world.start()
    await _interrupt_mid_turn(world, replica_for_interrupt=b)


async def test_joining_mid_turn_gets_the_partial_then_the_rest(world) -> None:  # type: ignore[no-untyped-def]
    await world.start()
    member, chat_id = await world.setup_chat()
    world.mock.play(SIMPLE, event_delay=0.1)
    api = world.api(member)
    first = await world.sse(member, chat_id)
    await first.next()
    await api.ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "go"}, status=202)
    await first.until(lambda e, d: e == "message_delta" and d["offset"] > 0)
    late = await world.sse(member, chat_id)  # joins while the turn runs
    ev, snap = await late.next()
    assert ev == "snapshot" and snap["status"] == "running" and snap["partial"]["text"]
    rest = await late.until(world.turn_done)
    await late.close()
    await first.close()
    final = next(d for e, d in rest if e == "message" and d["role"] == "assistant")
    tail = "".join(d["text"] for e, d in rest if e == "message_delta")
    assert snap["partial"]["message_id"] == final["id"]
    assert snap["partial"]["text"] + tail == final["content"] == world.fixture_text(SIMPLE)


async def test_summaries_replace_turn_off_and_use_the_small_model(world) -> None:  # type: ignore[no-untyped-def]
    await world.start()
    member, chat_id = await world.setup_chat()
    api = world.api(member)

    async def summary() -> str | None:
        return (await api.ok("GET", f"/api/experimental/chats/{chat_id}"))["last_turn_summary"]

    await world.turn(member, chat_id, "first")
    first = await world.eventually(summary)
    assert first
    # the next turn succeeds but its summary call fails: the old summary does not linger
    async def no_summaries(request: web.Request, body: bytes) -> web.StreamResponse | None:
        if b'"stream":false' in body.replace(b" ", b""):
            return web.json_response({"error": {"message": "down", "type": "server_error"}}, status=500)
        return None
    world.mock.handler = no_summaries
    await world.turn(member, chat_id, "second")
    await world.eventually(lambda: sum(1 for r in world.mock.requests if not r.json().get("stream")) >= 2)
    assert await summary() is None
    world.mock.handler = None
    # summaries off for this chat: none is asked for
    body = await api.ok("PATCH", f"/api/experimental/chats/{chat_id}", {"summarize": False})
    assert body["summarize"] is False
    n = len(world.mock.requests)
    await world.turn(member, chat_id, "third")
    assert [r.json().get("stream") for r in world.mock.requests[n:]] == [True]
    assert await summary() is None


async def test_summary_defaults_to_the_providers_small_model(world) -> None:  # type: ignore[no-untyped-def]
    world.registry.put_provider("openai", "openai", world.mock.url + "/v1",
                                settings={"small_fast_model": "gpt-4.1-nano"})
    await world.start()
    member, chat_id = await world.setup_chat()
    await world.turn(member, chat_id, "hello")
    await world.eventually(lambda: any(not r.json().get("stream") for r in world.mock.requests))
    summary_req = next(r.json() for r in world.mock.requests if not r.json().get("stream"))
    assert summary_req["model"] == "gpt-4.1-nano"


async def test_joining_mid_turn_on_another_replica_gets_contiguous_text(world) -> None:  # type: ignore[no-untyped-def]
    """The snapshot comes from the runner's saved copy (it lags); the stream fills what it missed, in order."""
    a = await world.start()
    b = await world.start()
    member, chat_id = await world.setup_chat(replica=a)
    world.mock.play(SIMPLE, event_delay=0.08)
    first = await world.sse(member, chat_id, replica=a)
    await first.next()
    await world.api(member, a).ok("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "go"},
                                  status=202)
    await first.until(lambda e, d: e == "message_delta" and d["offset"] > 20)
    late = await world.sse(member, chat_id, replica=b)  # the turn runs on A
    ev, snap = await late.next()
    assert ev == "snapshot" and snap["status"] == "running"
    rest = await late.until(world.turn_done)
    await late.close()
    await first.close()
    final = next(d for e, d in rest if e == "message" and d["role"] == "assistant")
    have = (snap["partial"] or {}).get("text", "")
    offsets = [(d["offset"], len(d["text"])) for e, d in rest if e == "message_delta"]
    assert offsets and offsets[0][0] == len(have)
    assert all(o == prev_o + prev_n for (prev_o, prev_n), (o, _) in itertools.pairwise(offsets))  # contiguous
    assert have + "".join(d["text"] for e, d in rest if e == "message_delta") == final["content"]
