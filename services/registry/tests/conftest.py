"""Fixtures: a real registry (Postgres + NATS) on an ephemeral port, and a small JSON client."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aigw_common.settings import Settings
from aigw_registry.api import REGISTRY
from aigw_registry.app import create_app
from aigw_registry.core import Registry


@dataclass
class Resp:
    status: int
    body: Any

    def __repr__(self) -> str:
        return f"Resp({self.status}, {self.body!r})"


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str, token: str | None) -> None:
        self.session, self.url, self.token = session, url, token

    def as_(self, token: str | None) -> Client:
        return Client(self.session, self.url, token)

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   params: dict[str, str] | None = None) -> Resp:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        kw: dict[str, Any] = {"headers": headers, "params": params}
        if raw is not None:
            kw["data"] = raw
            headers["Content-Type"] = "application/json"
        elif body is not None:
            kw["json"] = body
        async with self.session.request(method, self.url + path, **kw) as r:
            data = await r.read()
            parsed = await r.json(content_type=None) if data else None
            return Resp(r.status, parsed)

    async def get(self, path: str, **kw: Any) -> Resp:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Resp:
        return await self.call("POST", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Resp:
        return await self.call("PATCH", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Resp:
        return await self.call("PUT", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Resp:
        return await self.call("DELETE", path, **kw)

    async def ok(self, method: str, path: str, body: Any = None, status: int | None = None,
                 params: dict[str, str] | None = None) -> Any:
        r = await self.call(method, path, body, params=params)
        expected = status or {"POST": 201, "DELETE": 204}.get(method, 200)
        assert r.status == expected, f"{method} {path}: {r}"
        return r.body

    async def new_user(self, username: str, roles: list[str], scope: str = "admin") -> tuple[dict[str, Any], str]:
        """Create a user and a token for them (admin scope unless asked: most tests call the admin APIs)."""
        user = await self.ok("POST", "/api/v2/users", {"username": username, "roles": roles})
        tok = await self.ok("POST", f"/api/v2/users/{user['id']}/tokens", {"name": "t", "scope": scope})
        return user, tok["token"]


@dataclass
class Running:
    url: str
    owner_token: str
    app: web.Application
    settings: Settings
    client: Client

    @property
    def reg(self) -> Registry:
        return self.app[REGISTRY]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def owner_token() -> str:
    return "aigw_boot_" + secrets.token_urlsafe(24)


@pytest.fixture
def registry_settings(make_settings: Callable[..., Settings], database_url: str, owner_token: str) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        return make_settings(**{"AIGW_DATABASE_URL": database_url, "AIGW_BOOTSTRAP_TOKEN": owner_token, **env})

    return make


@pytest.fixture
def start_registry(registry_settings: Callable[..., Settings], http: aiohttp.ClientSession,  # type: ignore[no-untyped-def]
                   owner_token: str, apps) -> Callable[..., Any]:
    """Start registries; ``apps`` is set up after the database, so apps stop before it is dropped."""
    async def start(settings: Settings | None = None, **env: str) -> Running:
        s = settings or registry_settings(**env)
        app = create_app(s, relay_poll=0.2)
        url = await apps.start(app)
        return Running(url, owner_token, app, s, Client(http, url, owner_token))

    return start


@pytest.fixture
async def registry(start_registry) -> Running:  # type: ignore[no-untyped-def]
    return await start_registry()


@pytest.fixture
def client(registry: Running) -> Client:
    return registry.client
