"""chatd → gateway → mock upstream, with the real registry, keypool and budget, on real Postgres and NATS.

The cases that need the real chain: the interception the gateway records carries the chat as its
session (and chatd as the client), BYOK keys stored in the registry are forwarded, an exhausted
budget becomes a ``budget`` error on the chat, and a skill reaches the upstream as instructions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
from typing import Any

import aiohttp
import msgspec
import pytest

STACK = ("registry", "keypool", "budget", "gateway", "chatd")
OWNER_TOKEN = "aigw_" + "o" * 40
CENTRAL_KEY = "sk-central-pool-key-000001"


def _importable(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


pytestmark = pytest.mark.skipif(not all(_importable(f"aigw_{s}.app") for s in STACK),
                                reason="needs every service installed")


class Http:
    def __init__(self, session: aiohttp.ClientSession, token: str) -> None:
        self.session, self.token = session, token

    async def call(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, url, data=None if body is None else msgspec.json.encode(body),
                                        headers={"Authorization": f"Bearer {self.token}",
                                                 "Content-Type": "application/json"}) as r:
            raw = await r.read()
            return r.status, (msgspec.json.decode(raw) if raw else None)

    async def ok(self, method: str, url: str, body: Any = None, status: int = 200) -> Any:
        got, out = await self.call(method, url, body)
        assert got == status, (method, url, got, out)
        return out


async def _sse_until_done(session: aiohttp.ClientSession, url: str, token: str, started: asyncio.Event,
                          ) -> list[tuple[str, Any]]:
    """Read a chat's stream until it goes quiet after a turn (idle or error, nothing queued)."""
    events: list[tuple[str, Any]] = []
    async with session.get(url, headers={"Authorization": f"Bearer {token}"},
                           timeout=aiohttp.ClientTimeout(total=30)) as r:
        assert r.status == 200
        event, data = "", []
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:
                ev = (event, msgspec.json.decode("\n".join(data)))
                events.append(ev)
                event, data = "", []
                if ev[0] == "snapshot":
                    started.set()
                elif ev[0] == "status" and ev[1].get("status") in ("idle", "error") and not ev[1].get("queue") \
                        and "retry" not in ev[1] and len(events) > 1:
                    return events
    return events


@dataclasses.dataclass
class Stack:
    urls: dict[str, str]
    http: aiohttp.ClientSession
    owner: Http
    mock: Any

    def api(self, token: str) -> Http:
        return Http(self.http, token)

    async def member(self, name: str) -> tuple[str, str]:
        user = await self.owner.ok("POST", self.urls["registry"] + "/api/v2/users",
                                   {"username": name, "roles": ["member"]}, status=201)
        tok = await self.owner.ok("POST", self.urls["registry"] + f"/api/v2/users/{user['id']}/tokens",
                                  {"scope": "admin"}, status=201)
        return user["id"], tok["token"]

    async def chat(self, token: str, model_config_id: str) -> str:
        return (await self.api(token).ok("POST", self.urls["chatd"] + "/api/experimental/chats",
                                         {"model_config_id": model_config_id}, status=201))["id"]

    async def turn(self, token: str, chat_id: str, content: str) -> list[tuple[str, Any]]:
        started = asyncio.Event()
        reader = asyncio.create_task(_sse_until_done(
            self.http, f"{self.urls['chatd']}/api/experimental/chats/{chat_id}/stream", token, started))
        await asyncio.wait_for(started.wait(), 10)
        await self.api(token).ok("POST", f"{self.urls['chatd']}/api/experimental/chats/{chat_id}/messages",
                                 {"content": content}, status=202)
        return await asyncio.wait_for(reader, 30)

    async def interceptions(self, chat_id: str, n: int) -> list[dict[str, Any]]:
        """The budget service's record of the chat's calls (usage arrives asynchronously over JetStream)."""
        url = self.urls["budget"] + f"/api/v2/ai/interceptions?session={chat_id}"
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            got = (await self.owner.ok("GET", url))["interceptions"]
            if len(got) >= n and all(i["status"] != "running" and i["ended_at"] for i in got):
                return got
            assert asyncio.get_running_loop().time() < deadline, got
            await asyncio.sleep(0.1)


@pytest.fixture
async def stack(database_url, mock_upstream, make_settings, apps):  # type: ignore[no-untyped-def]
    from aigw_testing.stack import start_stack

    mock_upstream.play("openai/chatcompletions/simple")
    settings = make_settings(AIGW_DATABASE_URL=database_url, AIGW_BOOTSTRAP_TOKEN=OWNER_TOKEN,
                             AIGW_OPENAI_BASE_URL=mock_upstream.url + "/v1", AIGW_OPENAI_KEY=CENTRAL_KEY)

    def settings_for(svc: str, urls: dict[str, str]):  # type: ignore[no-untyped-def]
        return dataclasses.replace(settings, gateway_url=urls["gateway"]) if svc == "chatd" else settings

    urls = await start_stack(apps, settings_for, STACK)
    async with aiohttp.ClientSession() as http:
        yield Stack(urls, http, Http(http, OWNER_TOKEN), mock_upstream)


async def _model_config(s: Stack) -> str:
    mc = await s.owner.ok("POST", s.urls["chatd"] + "/api/experimental/chats/model-configs",
                          {"display_name": "GPT-4.1", "provider": "openai", "model": "gpt-4.1"}, status=201)
    assert mc["enabled"] is True
    return mc["id"]


async def test_turn_through_the_gateway_is_recorded_with_the_chat_as_session(stack: Stack) -> None:
    s = stack
    mc = await _model_config(s)
    carol_id, carol = await s.member("carol")
    chat_id = await s.chat(carol, mc)
    await s.api(carol).ok("POST", s.urls["chatd"] + "/api/experimental/users/me/skills",
                          {"name": "terse", "description": "short answers", "content": "Answer in one sentence."},
                          status=201)

    events = await s.turn(carol, chat_id, "/terse how many angels?")
    final = [d for e, d in events if e == "message" and d["role"] == "assistant"]
    assert final and final[0]["content"].startswith("Staling is mostly"), [e for e, _ in events]
    deltas = "".join(d["text"] for e, d in events if e == "message_delta")
    assert deltas == final[0]["content"]

    # the gateway swapped carol's token for a pool key; the skill arrived as instructions
    turn_req = next(r for r in s.mock.requests if r.json().get("stream"))
    assert turn_req.path == "/v1/chat/completions"
    assert turn_req.headers["Authorization"] == f"Bearer {CENTRAL_KEY}"
    assert carol not in str(dict(turn_req.headers))
    assert not any(h.lower().startswith("x-aigw") for h in turn_req.headers)
    body = turn_req.json()
    assert body["messages"][0] == {"role": "system", "content": "Answer in one sentence."}
    assert body["messages"][-1] == {"role": "user", "content": "how many angels?"}

    # the interception carries the chat as its session and chatd as the client (the turn, then its summary)
    recorded = await s.interceptions(chat_id, 2)
    assert {i["session_id"] for i in recorded} == {chat_id}
    assert {i["client"] for i in recorded} == {"aigw-chatd"}
    assert {i["user_id"] for i in recorded} == {carol_id}
    assert {i["credential_kind"] for i in recorded} == {"centralised"}
    assert any(i["prompt"] and "how many angels?" in i["prompt"] for i in recorded)

    chat = await s.api(carol).ok("GET", f"{s.urls['chatd']}/api/experimental/chats/{chat_id}")
    assert chat["status"] == "idle" and [m["role"] for m in chat["messages"]] == ["user", "assistant"]


async def test_stored_byok_key_is_forwarded(stack: Stack) -> None:
    s = stack
    mc = await _model_config(s)
    dave_id, dave = await s.member("dave")
    own = "sk-dave-own-openai-key-123456789"
    await s.api(dave).ok("PUT", s.urls["registry"] + "/api/v2/users/me/ai/provider-keys/openai", {"api_key": own})
    chat_id = await s.chat(dave, mc)
    events = await s.turn(dave, chat_id, "hello")
    assert any(e == "message" and d["role"] == "assistant" for e, d in events)
    turn_req = next(r for r in s.mock.requests if r.json().get("stream"))
    assert turn_req.headers["Authorization"] == f"Bearer {own}"
    recorded = await s.interceptions(chat_id, 1)
    assert recorded[0]["credential_kind"] == "byok" and recorded[0]["user_id"] == dave_id


async def test_exhausted_budget_is_a_budget_error_on_the_chat(stack: Stack) -> None:
    import openai

    s = stack
    mc = await _model_config(s)
    erin_id, erin = await s.member("erin")
    chat_id = await s.chat(erin, mc)
    await s.owner.ok("PUT", s.urls["budget"] + f"/api/v2/users/{erin_id}/ai/budget",
                     {"spend_limit_micros": 0, "period": "month"})
    # wait until the gateway knows the budget (it learns it over the bus)
    client = openai.AsyncOpenAI(base_url=s.urls["gateway"] + "/openai/v1", api_key=erin, max_retries=0)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            await client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "probe"}])
        except openai.RateLimitError:
            break
        if asyncio.get_running_loop().time() > deadline:
            async with s.http.get(s.urls["gateway"] + "/metrics") as r:
                print([ln for ln in (await r.text()).splitlines() if "budget" in ln and not ln.startswith("#")])
            async with s.http.get(s.urls["budget"] + f"/api/v2/users/{erin_id}/ai/budget", headers={"Authorization": f"Bearer {OWNER_TOKEN}"}) as r:
                print(await r.text())
        assert asyncio.get_running_loop().time() < deadline, "the gateway never applied the budget"
        await asyncio.sleep(0.2)
    before = len(s.mock.requests)

    events = await s.turn(erin, chat_id, "hello")
    err = next(d for e, d in events if e == "error")
    assert err["kind"] == "budget" and err["retryable"] is False and err["status_code"] == 429
    assert "budget" in err["message"]
    chat = await s.api(erin).ok("GET", f"{s.urls['chatd']}/api/experimental/chats/{chat_id}")
    assert chat["status"] == "error" and chat["last_error"]["kind"] == "budget"
    assert len(s.mock.requests) == before  # refused at the gateway, never reached the provider


async def test_deleting_a_user_drops_their_skills(stack: Stack) -> None:
    s = stack
    frank_id, frank = await s.member("frank")
    await s.api(frank).ok("POST", s.urls["chatd"] + "/api/experimental/users/me/skills",
                          {"name": "mine", "content": "x"}, status=201)
    await s.owner.ok("DELETE", s.urls["registry"] + f"/api/v2/users/{frank_id}", status=204)
    deadline = asyncio.get_running_loop().time() + 4
    while (await s.owner.ok("GET", s.urls["chatd"] + f"/api/experimental/users/{frank_id}/skills"))["skills"]:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)


async def test_a_message_at_chatd_size_limit_is_answered_and_recorded_and_recording_goes_on(stack: Stack) -> None:
    """chatd accepts 1 MiB messages, more than NATS' default max_payload: the chat fan-out and the gateway's usage
    events must cope (the fan-out skips the event it cannot carry; the recorded prompt is cut and flagged)."""
    _uid, token = await stack.member("bigtalker")
    chat_id = await stack.chat(token, await _model_config(stack))
    api = stack.api(token)
    url = f"{stack.urls['chatd']}/api/experimental/chats/{chat_id}"
    big = "ß" * (1024 * 1024 // 2)  # exactly 1 MiB of UTF-8
    for n, content in enumerate((big, "and a small one"), start=1):
        await api.ok("POST", url + "/messages", {"content": content}, status=202)
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # polled, not streamed: an SSE line of 1 MiB is more than the test client reads in one line
            chat = await api.ok("GET", url)
            if chat["status"] != "running" and len([m for m in chat["messages"] if m["role"] == "assistant"]) == n:
                break
            assert asyncio.get_running_loop().time() < deadline, chat["status"]
            await asyncio.sleep(0.1)
        assert chat["status"] == "idle" and chat["last_error"] is None
    got = await stack.interceptions(chat_id, 2)  # the two turns (and chatd's summary calls, also recorded)
    assert all(i["status"] == "ok" for i in got)
    [cut] = [i for i in got if i["prompt"] and big.startswith(i["prompt"])]
    assert cut["prompt_truncated"] and len(cut["prompt"].encode()) <= 65536
    [small] = [i for i in got if i["prompt"] == "and a small one"]
    assert not small["prompt_truncated"]


async def test_interrupt_stops_the_turn_and_the_gateway_records_it_interrupted(stack: Stack) -> None:
    """POST …/interrupt: the upstream call through the real gateway is cancelled at once, the partial reply is
    kept and marked, the chat goes idle, no summary is made, and the interception ends ``interrupted``."""
    s = stack
    s.mock.play("openai/chatcompletions/simple", event_delay=0.2)
    mc = await _model_config(s)
    _, dana = await s.member("dana")
    chat_id = await s.chat(dana, mc)
    base = f"{s.urls['chatd']}/api/experimental/chats/{chat_id}"
    events: list[tuple[str, Any]] = []
    got_delta = asyncio.Event()

    async def read() -> None:
        async with s.http.get(base + "/stream", headers={"Authorization": f"Bearer {dana}"},
                              timeout=aiohttp.ClientTimeout(total=30)) as r:
            event, data = "", []
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif not line and data:
                    events.append((event, msgspec.json.decode("\n".join(data))))
                    event, data = "", []
                    if events[-1][0] == "message_delta" and events[-1][1]["offset"] > 0:
                        got_delta.set()
                    if events[-1][0] == "message" and events[-1][1]["role"] == "assistant":
                        return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.3)
    await s.api(dana).ok("POST", base + "/messages", {"content": "a long answer please"}, status=202)
    await asyncio.wait_for(got_delta.wait(), 15)
    t0 = asyncio.get_running_loop().time()
    await s.api(dana).ok("POST", base + "/interrupt", status=202)
    await asyncio.wait_for(reader, 15)
    took = asyncio.get_running_loop().time() - t0
    print(f"\ninterrupt → partial reply recorded in {took * 1000:.0f} ms")
    final = events[-1][1]
    assert final["interrupted"] is True and final["content"]
    assert final["content"] == "".join(d["text"] for e, d in events if e == "message_delta")
    chat = await s.api(dana).ok("GET", base)
    assert chat["status"] == "idle" and chat["messages"][-1]["interrupted"] is True
    recorded = await s.interceptions(chat_id, 1)
    assert [i["status"] for i in recorded] == ["interrupted"]  # one call: no summary of an interrupted turn


async def test_skills_of_a_user_deleted_while_chatd_was_away_are_dropped(stack: Stack, apps, make_settings,  # type: ignore[no-untyped-def]
                                                                         database_url) -> None:
    """auth.revoked is core NATS: a chatd that was down misses it. chatd reconciles skill owners against the
    registry's directory at start (and periodically), so the durable record — the deleted user — wins."""
    import uuid

    import asyncpg

    from aigw_chatd.app import create_app as chatd_app
    from aigw_testing.stack import wait_ready

    s = stack
    gus_id, _gus = await s.member("gus")
    ivy_id, ivy = await s.member("ivy")
    await s.api(ivy).ok("POST", s.urls["chatd"] + "/api/experimental/users/me/skills",
                        {"name": "kept", "content": "x"}, status=201)
    await s.owner.ok("DELETE", s.urls["registry"] + f"/api/v2/users/{gus_id}", status=204)
    # the state a chatd that was down during the deletion is left with: gus's skill is still there
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO chatd.skills (id, user_id, username, name, content) VALUES ($1, $2, 'gus',"
                           " 'orphan', 'y')", uuid.uuid4(), gus_id)
        settings = make_settings(AIGW_DATABASE_URL=database_url, AIGW_BOOTSTRAP_TOKEN=OWNER_TOKEN,
                                 AIGW_GATEWAY_URL=s.urls["gateway"])
        url = await apps.start(chatd_app(settings))  # a chatd (re)starting
        await wait_ready(url, 30)
        deadline = asyncio.get_running_loop().time() + 10
        while await conn.fetchval("SELECT count(*) FROM chatd.skills WHERE user_id = $1", gus_id):
            assert asyncio.get_running_loop().time() < deadline, "the deleted user's skills were not dropped"
            await asyncio.sleep(0.1)
        assert await conn.fetchval("SELECT count(*) FROM chatd.skills WHERE user_id = $1", ivy_id) == 1
        audit = await conn.fetchval("SELECT count(*) FROM chatd.audit_log WHERE action = 'skill.purge' AND"
                                    " target_user_id = $1", gus_id)
        assert audit >= 1
    finally:
        await conn.close()
