"""chatd test support: chatd on real Postgres and NATS, the registry stand-in on the bus, and the
fixture-replaying mock upstream playing the gateway (it records every request chatd makes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from aigw_chatd.app import DEPS, create_app
from aigw_chatd.config import ChatdConfig
from aigw_common.bus import Bus
from aigw_common.settings import Settings
from aigw_testing.registry_stub import RegistryStub, StubUser

FAST = ChatdConfig(backoff_base=0.05, backoff_max=0.2, retry_after_cap=0.2, lease=5.0, heartbeat=1.0,
                   sweep_interval=0.5, keepalive=1.0, control_timeout=1.0, read_timeout=10.0, summary_timeout=5.0)


@dataclass
class Api:
    """A user's view of chatd's HTTP API."""

    http: aiohttp.ClientSession
    base: str
    token: str

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (msgspec.json.encode(body) if body is not None else None)
        async with self.http.request(method, self.base + path, data=data,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"}) as r:
            text = await r.read()
            return r.status, (msgspec.json.decode(text) if text else None)

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, out = await self.call(method, path, body)
        assert got == status, (method, path, got, out)
        return out

    def as_user(self, user: StubUser, base: str | None = None) -> Api:
        return Api(self.http, base or self.base, user.token)


class SSE:
    """An SSE client on chatd's stream: events land in a queue as they arrive."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.seen: list[tuple[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        event, data = "", []
        async for raw in self.resp.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if data:
                    await self.events.put((event, msgspec.json.decode("\n".join(data))))
                event, data = "", []
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        await self.events.put(("<eof>", None))

    async def next(self, within: float = 15.0) -> tuple[str, Any]:
        ev = await asyncio.wait_for(self.events.get(), within)
        self.seen.append(ev)
        return ev

    async def until(self, pred: Callable[[str, Any], bool], within: float = 20.0) -> list[tuple[str, Any]]:
        got = []
        async with asyncio.timeout(within):
            while True:
                ev = await self.next(within)
                got.append(ev)
                if pred(*ev):
                    return got
                assert ev[0] != "<eof>", got

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.resp.close()


@dataclass
class Chatd:
    app: web.Application
    url: str

    @property
    def deps(self):  # type: ignore[no-untyped-def]
        return self.app[DEPS]


@dataclass
class World:
    settings: Settings
    registry: RegistryStub
    mock: Any
    http: aiohttp.ClientSession
    apps: Any
    replicas: list[Chatd] = field(default_factory=list)

    async def start(self, config: ChatdConfig = FAST, **env: str) -> Chatd:
        settings = self.settings if not env else _with_env(self.settings_env, env)
        app = create_app(settings, config=config)
        url = await self.apps.start(app)
        c = Chatd(app, url)
        self.replicas.append(c)
        return c

    def api(self, user: StubUser, replica: Chatd | None = None) -> Api:
        return Api(self.http, (replica or self.replicas[0]).url, user.token)

    async def sse(self, user: StubUser, chat_id: str, replica: Chatd | None = None) -> SSE:
        r = replica or self.replicas[0]
        resp = await self.http.get(f"{r.url}/api/experimental/chats/{chat_id}/stream",
                                   headers={"Authorization": f"Bearer {user.token}"},
                                   timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        assert resp.status == 200, await resp.text()
        return SSE(resp)

    settings_env: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def turn_done(event: str, data: Any) -> bool:
        """The chat went quiet: idle or error with nothing queued."""
        return (event == "status" and data.get("status") in ("idle", "error") and not data.get("queue")
                and "retry" not in data)

    async def turn(self, user: StubUser, chat_id: str, content: str, replica: Chatd | None = None,
                   ) -> list[tuple[str, Any]]:
        """Watch the chat, post a message, and return the stream's events until the chat goes quiet."""
        sse = await self.sse(user, chat_id, replica)
        try:
            assert (await sse.next())[0] == "snapshot"
            await self.api(user, replica).ok("POST", f"/api/experimental/chats/{chat_id}/messages",
                                             {"content": content}, status=202)
            return await sse.until(self.turn_done)
        finally:
            await sse.close()

    async def setup_chat(self, **kw: Any) -> tuple[StubUser, str]:
        return await setup_chat(self, **kw)

    @staticmethod
    def fixture_text(name: str) -> str:
        return fixture_text(name)

    @staticmethod
    async def eventually(fn: Callable[[], Any], within: float = 10.0, interval: float = 0.05) -> Any:
        return await eventually(fn, within, interval)


def _with_env(base: dict[str, str], extra: dict[str, str]) -> Settings:
    env = dict(base)
    env.update(extra)
    return Settings.from_env(env)


@pytest.fixture
async def world(database_url: str, base_env: dict[str, str], bus: Bus, mock_upstream: Any, apps: Any,
                ) -> AsyncIterator[World]:
    env = dict(base_env, AIGW_DATABASE_URL=database_url, AIGW_GATEWAY_URL=mock_upstream.url)
    settings = Settings.from_env(env)
    registry = await RegistryStub(bus, settings.bus_keys()).start()
    async with aiohttp.ClientSession() as http:
        w = World(settings, registry, mock_upstream, http, apps, settings_env=env)
        yield w
        for s in list(w.replicas):
            await apps.stop(s.app)


async def setup_chat(w, *, provider: str = "openai", ptype: str = "openai", model: str = "gpt-4.1",
                     fixture: str | None = "openai/chatcompletions/simple", user: StubUser | None = None,
                     replica: Chatd | None = None) -> tuple[StubUser, str]:
    """A provider in the registry, a model config (made by an owner), a member and their new chat."""
    if provider not in w.registry.providers:
        w.registry.put_provider(provider, ptype, w.mock.url + ("/v1" if ptype == "openai" else ""))
    if fixture:
        w.mock.play(fixture)
    owner = w.registry.add_user(roles=["owner"])
    member = user or w.registry.add_user(roles=["member"])
    mc = await w.api(owner, replica).ok("POST", "/api/experimental/chats/model-configs",
                                        {"display_name": f"{provider} {model}", "provider": provider, "model": model},
                                        status=201)
    chat = await w.api(member, replica).ok("POST", "/api/experimental/chats", {"model_config_id": mc["id"]},
                                           status=201)
    return member, chat["id"]


def fixture_text(name: str) -> str:
    """The assistant text a streaming fixture carries."""
    from aigw_testing.txtar import load

    out = []
    body = load(name).sections["streaming"].decode()
    for line in body.splitlines():
        if not line.startswith("data: ") or line.strip() == "data: [DONE]":
            continue
        obj = msgspec.json.decode(line[6:])
        for ch in obj.get("choices") or ():
            out.append((ch.get("delta") or {}).get("content") or "")
        if obj.get("type") == "content_block_delta" and obj["delta"].get("type") == "text_delta":
            out.append(obj["delta"]["text"])
    return "".join(out)


async def eventually(fn: Callable[[], Any], within: float = 10.0, interval: float = 0.05) -> Any:
    async with asyncio.timeout(within):
        while True:
            v = fn()
            if asyncio.iscoroutine(v):
                v = await v
            if v:
                return v
            await asyncio.sleep(interval)
