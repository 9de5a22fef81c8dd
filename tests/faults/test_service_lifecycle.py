"""The one service skeleton (docs/architecture.md, "Service lifecycle").

A service whose startup fails halfway leaves nothing behind: no NATS connection, no Postgres connection,
no asyncio task. A service process stopped with SIGTERM drains in the documented order.

Each service runs against a NATS server of this test's own with monitoring on (its ``/connz`` lists the open
client connections) and the test's own database (``pg_stat_activity`` lists its backends). Startup fails
after the service's own steps (a later ``cleanup_ctx`` entry refuses to start, as any added step may), or in
the middle of them (the gateway's spool directory after the bus connected; chatd's migrations after the pool
opened). Before the failure, the test checks that the service had connected, so "nothing left" is not
"nothing opened".
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web

from aigw_common.service import serve
from aigw_common.settings import Settings
from aigw_testing.natsauth import AuthNats, auth_nats_server
from aigw_testing.system import ServiceProcess
from aigw_testing.wait import eventually

DB_SERVICES = ("registry", "budget", "chatd")
BUS_SERVICES = ("gateway", "registry", "keypool", "budget", "chatd")


class LaterStepFailed(Exception):
    """What the step after the service's own steps raises."""


@pytest.fixture
def nats() -> Iterator[AuthNats]:
    with auth_nats_server("") as server:
        yield server


def _db_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def _backends(pg_admin_url: str, db: str) -> int:
    conn = await asyncpg.connect(pg_admin_url)
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                                     db)
        return n
    finally:
        await conn.close()


async def _connections(nats: AuthNats) -> list[str]:
    return [str(c.get("name")) for c in await asyncio.to_thread(nats.connections)]


def _others() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {t for t in [asyncio.current_task()] if t is not None}


async def _start_fails(app: web.Application, error: type[BaseException]) -> None:
    """``serve`` as ``aigw <service>`` runs it: the startup error propagates (a started service would hang)."""
    with pytest.raises(error):
        async with asyncio.timeout(60):
            await serve(app, "127.0.0.1", 0, grace=2)


async def _nothing_left(nats: AuthNats, pg_admin_url: str, db: str | None, before: set[asyncio.Task[Any]]) -> None:
    async def no_connection() -> bool:
        return not await _connections(nats)

    await eventually(no_connection, 5, "no NATS connection left open")
    if db is not None:
        async def no_backend() -> bool:
            return await _backends(pg_admin_url, db) == 0

        await eventually(no_backend, 5, "no Postgres connection left open")

    def no_task() -> bool:
        return not (_others() - before)

    with contextlib.suppress(AssertionError):
        await eventually(no_task, 2, "no task left")
    assert not (left := _others() - before), f"tasks left running: {sorted(t.get_name() for t in left)}"


@pytest.fixture
def service_settings(make_settings: Callable[..., Settings], nats: AuthNats,
                     database_url: str) -> Callable[[str], Settings]:
    def make(service: str, **env: str) -> Settings:
        extra = {"AIGW_DATABASE_URL": database_url} if service in DB_SERVICES else {}
        return make_settings(**{"AIGW_NATS_URL": nats.anonymous_url, **extra, **env})

    return make


@pytest.mark.parametrize("service", [*BUS_SERVICES, "console"])
async def test_a_later_startup_step_fails(service: str, service_settings: Callable[..., Settings], nats: AuthNats,
                                          pg_admin_url: str, database_url: str) -> None:
    """Every step of the service started; a step after them fails: each is closed again, in reverse."""
    app = importlib.import_module(f"aigw_{service}.app").create_app(service_settings(service))
    db = _db_name(database_url) if service in DB_SERVICES else None
    seen: dict[str, Any] = {}

    async def later_step(_app: web.Application) -> AsyncIterator[None]:
        async def connected() -> bool:
            return f"aigw-{service}" in await _connections(nats)

        if service in BUS_SERVICES:
            await eventually(connected, 5, f"aigw-{service} connected to NATS")
        if db is not None:
            seen["backends"] = await _backends(pg_admin_url, db)
        raise LaterStepFailed("this step fails")
        yield  # pragma: no cover

    app.cleanup_ctx.append(later_step)
    before = _others()
    await _start_fails(app, LaterStepFailed)
    if db is not None:
        assert seen["backends"] > 0, "the service had no Postgres connection open when its startup failed"
    await _nothing_left(nats, pg_admin_url, db, before)
    if service == "console":
        from aigw_console.app import RUNTIME

        assert app[RUNTIME].http.closed


@pytest.mark.parametrize("service", BUS_SERVICES)
async def test_startup_fails_while_nats_is_unreachable(service: str, service_settings: Callable[..., Settings],
                                                       nats: AuthNats, pg_admin_url: str, database_url: str) -> None:
    """NATS is unreachable (nothing listens on its port): the bus keeps trying in the background while the
    rest starts (the pool opened); then a later step fails. The bus's connect loop, the followers' tasks and
    the pool are gone with it."""
    from aigw_common.embedded import free_port

    settings = service_settings(service, AIGW_NATS_URL=f"nats://127.0.0.1:{free_port()}")
    app = importlib.import_module(f"aigw_{service}.app").create_app(settings)
    db = _db_name(database_url) if service in DB_SERVICES else None
    seen: dict[str, Any] = {}

    async def later_step(_app: web.Application) -> AsyncIterator[None]:
        seen["tasks"] = sorted(t.get_name() for t in _others() - before)
        if db is not None:
            seen["backends"] = await _backends(pg_admin_url, db)
        raise LaterStepFailed("this step fails")
        yield  # pragma: no cover

    app.cleanup_ctx.append(later_step)
    before = _others()
    await _start_fails(app, LaterStepFailed)
    assert f"bus-connect-aigw-{service}" in seen["tasks"], seen
    if db is not None:
        assert seen["backends"] > 0, "the service had no Postgres connection open when its startup failed"
    await _nothing_left(nats, pg_admin_url, db, before)


async def test_gateway_spool_refused_after_the_bus_connected(service_settings: Callable[..., Settings],
                                                             nats: AuthNats, pg_admin_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The gateway's data dir is a file: its spool cannot be made, after the bus connected and the provider,
    key-state and report followers started."""
    from aigw_gateway.app import create_app

    data = tmp_path / "not-a-dir"
    data.write_text("")
    app = create_app(service_settings("gateway", AIGW_DATA_DIR=str(data)))
    before = _others()
    await _start_fails(app, OSError)
    assert (await asyncio.to_thread(nats.monitor, "varz"))["total_connections"], "the gateway never connected"
    await _nothing_left(nats, pg_admin_url, None, before)


async def test_chatd_migrations_refused_after_the_pool_opened(service_settings: Callable[..., Settings],
                                                              nats: AuthNats, pg_admin_url: str,
                                                              database_url: str) -> None:
    """chatd connects as a role that may not create its schema: the pool is open when the migration fails."""
    from aigw_chatd.app import create_app

    role = f"aigw_t_nocreate_{uuid.uuid4().hex[:8]}"
    db = _db_name(database_url)
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    finally:
        await admin.close()
    p = urlsplit(database_url)
    as_role = urlunsplit((p.scheme, f"{role}@{p.hostname}:{p.port or 5432}", p.path, p.query, p.fragment))
    try:
        app = create_app(service_settings("chatd", AIGW_DATABASE_URL=as_role))
        before = _others()
        await _start_fails(app, asyncpg.InsufficientPrivilegeError)
        await _nothing_left(nats, pg_admin_url, db, before)
    finally:
        admin = await asyncpg.connect(pg_admin_url)
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()


DRAIN_MESSAGES = ("shutting down", "listener closed; in-flight requests finishing", "unwinding", "stopping", "stopped")


def _drain_log(path: Path) -> list[str]:
    """The skeleton's drain messages in the process's log (stop steps as ``stop <step>``); what the service
    logs meanwhile (a follower's warning) is left out."""
    out: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        msg = str(rec.get("msg"))
        if msg in DRAIN_MESSAGES:
            out.append(f"stop {rec.get('step')}" if msg == "stopping" else msg)
    return out


@pytest.mark.parametrize("service", [*BUS_SERVICES, "console"])
async def test_sigterm_drains_in_order(service: str, base_env: dict[str, str], nats: AuthNats, database_url: str,
                                       tmp_path: Path) -> None:
    """SIGTERM: /readyz 503 and the listener closes, in-flight requests finish, then the lifecycle unwinds:
    the service's tasks and followers stop, then the bus drains and closes, then the pool closes."""
    env = {**base_env, "AIGW_NATS_URL": nats.anonymous_url, "AIGW_LOG_FORMAT": "json", "AIGW_LOG_LEVEL": "info"}
    if service in DB_SERVICES:
        env["AIGW_DATABASE_URL"] = database_url
    proc = await ServiceProcess(service, env, tmp_path / f"{service}.log").start()
    if service in BUS_SERVICES:
        async def connected() -> bool:
            return f"aigw-{service}" in await _connections(nats)

        await eventually(connected, 10, f"aigw-{service} connected to NATS")
    assert await proc.stop() == 0, proc.log_path.read_text()[-3000:]
    steps = _drain_log(proc.log_path)
    assert steps[:2] == ["shutting down", "listener closed; in-flight requests finishing"], steps
    assert "unwinding" in steps and steps[-1] == "stopped", steps
    stops = steps[steps.index("unwinding") + 1 : -1]
    assert all(s.startswith("stop ") for s in stops), steps
    bus = [i for i, s in enumerate(stops) if s == "stop Bus.close"]
    pool = [i for i, s in enumerate(stops) if s == "stop close_pool"]
    assert len(bus) == (service in BUS_SERVICES) and len(pool) == (service in DB_SERVICES), stops
    if bus:
        # every task and every follower of the bus stopped before it (HTTP clients and files may close later)
        work = [i for i, s in enumerate(stops) if s.startswith("stop task ") or s.endswith(".stop")
                or s.endswith(".drain")]
        assert work and max(work) < bus[0], stops
    if bus and pool:
        assert bus[0] < pool[0], stops
