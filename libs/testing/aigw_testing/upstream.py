"""A real HTTP server that plays the LLM provider, replaying recorded fixtures.

This is the only thing in the suite that is mocked. Tests choose a fixture
(``mock.play("openai/chatcompletions/simple")``); the server answers the
``streaming`` or ``non-streaming`` section according to the request's
``stream`` flag, event by event, and records every request it saw. Per-key
rules (``mock.on_key("k1", status=429, headers={"Retry-After": "2"})``) let a
test drive key-pool failover; ``mock.handler`` overrides everything.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .txtar import Fixture, RecordedResponse, load


@dataclass
class SeenRequest:
    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def key(self) -> str | None:
        return credential_of(self.headers)

    def json(self) -> dict[str, Any]:
        return msgspec.json.decode(self.body) if self.body else {}


@dataclass
class KeyRule:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    times: int | None = None  # None: forever


def credential_of(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> str | None:
    if v := headers.get("x-api-key"):
        return v
    if v := headers.get("api-key"):
        return v
    a = headers.get("Authorization", "")
    if a[:7].lower() == "bearer ":
        return a[7:]
    return a or None


Handler = Callable[[web.Request, bytes], Awaitable[web.StreamResponse | None]]


class MockUpstream:
    def __init__(self) -> None:
        self.url = ""
        self.requests: list[SeenRequest] = []
        self.count_by_key: collections.Counter[str | None] = collections.Counter()
        self.fixture: Fixture | None = None
        self.section_override: str | None = None
        self.key_rules: dict[str, KeyRule] = {}
        self.handler: Handler | None = None
        self.event_delay = 0.0
        self.disconnects = 0
        self._runner: web.AppRunner | None = None
        self._tool_call_turns: dict[str, int] = {}

    # ------------------------------------------------------------ configuration

    def play(self, fixture: str | Fixture, *, section: str | None = None, event_delay: float = 0.0) -> Fixture:
        self.fixture = load(fixture) if isinstance(fixture, str) else fixture
        self.section_override = section
        self.event_delay = event_delay
        return self.fixture

    def on_key(self, key: str, status: int, headers: dict[str, str] | None = None, body: bytes | dict[str, Any] | None = None,
               times: int | None = None) -> None:
        if isinstance(body, dict):
            body = msgspec.json.encode(body)
        self.key_rules[key] = KeyRule(status, headers or {}, body or b'{"error":{"message":"mock","type":"mock"}}', times)

    def clear_key(self, key: str) -> None:
        self.key_rules.pop(key, None)

    def reset(self) -> None:
        self.requests.clear()
        self.count_by_key.clear()

    # ------------------------------------------------------------ server

    async def start(self, host: str = "127.0.0.1") -> str:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = SeenRequest(request.method, request.path, request.query_string, request.headers, body)
        self.requests.append(seen)
        self.count_by_key[seen.key] += 1
        if seen.key is not None and (rule := self.key_rules.get(seen.key)) is not None:
            if rule.times is not None:
                rule.times -= 1
                if rule.times <= 0:
                    del self.key_rules[seen.key]
            return web.Response(status=rule.status, body=rule.body, headers={"Content-Type": "application/json", **rule.headers})
        if self.handler is not None:
            resp = await self.handler(request, body)
            if resp is not None:
                return resp
        if self.fixture is None:
            return web.json_response({"error": {"message": "mock upstream has no fixture", "type": "mock"}}, status=500)
        return await self.replay(request, self.fixture.response(self._section_for(body)))

    def _section_for(self, body: bytes) -> str:
        assert self.fixture is not None
        if self.section_override:
            return self.section_override
        streaming = False
        if body:
            try:
                streaming = bool(msgspec.json.decode(body).get("stream"))
            except (msgspec.DecodeError, AttributeError):
                streaming = False
        base = "streaming" if streaming else "non-streaming"
        if not self.fixture.has(base):
            base = "non-streaming" if self.fixture.has("non-streaming") else "streaming"
        return base

    async def replay(self, request: web.Request, rec: RecordedResponse) -> web.StreamResponse:
        headers = CIMultiDict(rec.headers)
        is_sse = "event-stream" in headers.get("Content-Type", "")
        if not is_sse or rec.is_whole:
            return web.Response(status=rec.status, body=rec.body, headers=headers)
        return await self.stream(request, web.StreamResponse(status=rec.status, headers=headers),
                                 split_events(rec.body))

    async def stream(self, request: web.Request, resp: web.StreamResponse,
                     events: Iterable[bytes]) -> web.StreamResponse:
        """Send ``events`` one write each, ``event_delay`` apart; a client that goes away counts in
        ``disconnects`` (what tests of cancellation look for)."""
        await resp.prepare(request)
        try:
            for event in events:
                await resp.write(event)
                if self.event_delay:
                    await asyncio.sleep(self.event_delay)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        return resp


def split_events(body: bytes) -> list[bytes]:
    """Split an SSE body into events, each ending in a blank line."""
    text = body.replace(b"\r\n", b"\n")
    parts = [p for p in text.split(b"\n\n") if p.strip()]
    return [p + b"\n\n" for p in parts]
