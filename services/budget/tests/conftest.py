"""Fixtures for budget tests: the service on real Postgres and NATS, identities from a registry stand-in."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import asyncpg
import pytest

from aigw_budget.api import SERVICE
from aigw_budget.app import MIGRATIONS, create_app
from aigw_budget.service import BudgetService
from aigw_common.bus import Bus
from aigw_common.db import create_pool, migrate
from aigw_common.schemas import InterceptionEnded, InterceptionStarted, TokenCounts, TokenUsage
from aigw_testing.registry_stub import RegistryStub, StubUser


@pytest.fixture
def eventually() -> Callable[..., Awaitable[None]]:
    async def wait(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0,
                   what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while True:
            r = check()
            if not isinstance(r, bool):
                r = await r
            if r:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.05)

    return wait


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a migrated budget schema (no service running)."""
    p = await create_pool(database_url, max_size=8, server_settings={"search_path": "budget"})
    async with p.acquire() as conn:
        await migrate(conn, *MIGRATIONS)
    yield p
    await p.close()


@dataclass
class Client:
    url: str
    session: aiohttp.ClientSession
    token: str

    async def call(self, method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, json=body, params=params or None,
                                        headers={"Authorization": f"Bearer {self.token}"}) as r:
            data = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, data


@dataclass
class Budget:
    """The budget service running in-process, with an admin and a member."""

    url: str
    svc: BudgetService
    stub: RegistryStub
    admin_user: StubUser
    member_user: StubUser
    admin: Client
    member: Client
    session: aiohttp.ClientSession

    def client(self, user: StubUser) -> Client:
        return Client(self.url, self.session, user.token)


@pytest.fixture
async def budget(bus: Bus, make_settings, database_url: str, apps) -> AsyncIterator[Budget]:  # type: ignore[no-untyped-def]
    settings = make_settings(AIGW_DATABASE_URL=database_url)
    stub = RegistryStub(bus, settings.bus_keys())
    await stub.start()
    app = create_app(settings)
    url = await apps.start(app)
    await asyncio.wait_for(app[SERVICE].consumer.ready.wait(), 10)
    admin_user = stub.add_user(roles=["admin"], username="ada")
    member_user = stub.add_user(roles=["member"], group_ids=["grp-eng"], username="mo")
    stub.add_group("ops")
    async with aiohttp.ClientSession() as session:
        yield Budget(url, app[SERVICE], stub, admin_user, member_user, Client(url, session, admin_user.token),
                     Client(url, session, member_user.token), session)


def started(iid: str, user_id: str | None = "u1", group_ids: list[str] | None = None, *, at: float | None = None,
            model: str = "gpt-4o-mini", gateway_id: str = "", **kw: Any) -> InterceptionStarted:
    return InterceptionStarted(
        event_id=f"{iid}-s", interception_id=iid, at=at or time.time(), user_id=user_id,
        group_ids=group_ids if group_ids is not None else ["g1"], provider_id="p1", provider_name="openai",
        provider_type="openai", endpoint="chat_completions", model=model, gateway_id=gateway_id, **kw,
    )


def tokens(iid: str, n: int = 0, *, model: str = "gpt-4o-mini", at: float | None = None, **counts: int) -> TokenUsage:
    return TokenUsage(event_id=f"{iid}-t{n}", interception_id=iid, at=at or time.time(), model=model,
                      tokens=TokenCounts(**counts))


def ended(iid: str, status: str = "ok", *, at: float | None = None) -> InterceptionEnded:
    return InterceptionEnded(event_id=f"{iid}-e", interception_id=iid, at=at or time.time(), status=status,  # type: ignore[arg-type]
                             status_code=200, duration_ms=12)


@pytest.fixture
def ev() -> SimpleNamespace:
    """Usage event builders: ``ev.started(iid, …)``, ``ev.tokens(iid, n, input_tokens=…)``, ``ev.ended(iid)``."""
    return SimpleNamespace(started=started, tokens=tokens, ended=ended, new_id=lambda: uuid.uuid4().hex)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long-running test, excluded from the default run (-m 'not soak')")
