"""chatd: chats for in-house agents and UIs, every model call routed through the gateway.

See ``docs/architecture.md`` ("chatd") for the design and its HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web
from nats.aio.msg import Msg

from aigw_common import netguard
from aigw_common.api import error_middleware
from aigw_common.auth import FailureThrottle, IdentityCache
from aigw_common.bus import Bus, make_bus
from aigw_common.crypto import PURPOSE_AT_REST, PURPOSE_BUS, Sealer
from aigw_common.db import MigrationSet, close_pool, create_pool, migrate
from aigw_common.schemas import AuthRevoked
from aigw_common.service import METRICS, STATE, background, base_app, lifecycle, started
from aigw_common.settings import Settings

from .config import ChatdConfig
from .deps import Deps
from .hub import ChatHub
from .openapi import add_document
from .providers import ProviderDirectory
from .routes import add_routes
from .runner import TurnRunner
from .skills import SkillStore, reconcile_owners
from .store import Store

log = logging.getLogger(__name__)

MIGRATIONS: tuple[MigrationSet, ...] = (MigrationSet("chatd", Path(__file__).parent / "migrations"),)

DEPS = web.AppKey("chatd_deps", Deps)
BUS = web.AppKey("chatd_bus", Bus)


def create_app(settings: Settings, *, config: ChatdConfig | None = None) -> web.Application:
    settings = settings.for_service("chatd")  # only the secrets chatd holds (docs/security.md)
    app = base_app("chatd", settings, middlewares=[error_middleware])
    deps = Deps(settings, config or ChatdConfig(), uuid.uuid4().hex[:12])
    app[DEPS] = deps
    add_routes(app, deps)
    add_document(app)
    app.cleanup_ctx.append(lifecycle(_lifecycle))
    app.on_shutdown.append(_end_streams)
    return app


async def _end_streams(app: web.Application) -> None:
    """Open SSE streams would hold shutdown for the whole grace period: end them first."""
    deps = app[DEPS]
    if hasattr(deps, "hub"):
        deps.hub.close()


async def _lifecycle(app: web.Application, stack: contextlib.AsyncExitStack) -> None:
    """pool → bus → what follows it → tasks, each stop on ``stack`` as soon as its thing exists; shutdown:
    running turns drain (up to the grace), tasks stop, the HTTP clients, the bus, then the pool close."""
    d = app[DEPS]
    settings, config = d.settings, d.config
    d.at_rest = Sealer.from_keys(settings.require_encryption_keys(), PURPOSE_AT_REST)
    bus_sealer = Sealer.from_keys(settings.require_bus_keys(), PURPOSE_BUS)

    # 1. the pool (and the schema)
    pool = await create_pool(settings.require_database())
    stack.push_async_callback(close_pool, pool)
    async with pool.acquire() as conn:
        await migrate(conn, *MIGRATIONS)
    d.store = Store(pool)
    d.skills = SkillStore(d.store)

    # 2. the bus, and what follows it
    bus = make_bus(settings, "chatd", app[METRICS])
    stack.push_async_callback(bus.close)
    app[BUS] = bus
    d.identities = IdentityCache(bus, ttl=settings.identity_ttl, timeout=config.control_timeout,
                                 failures=FailureThrottle(settings.auth_failures_per_minute))
    d.hub = ChatHub(bus, d.replica_id)
    d.directory = ProviderDirectory(bus, d.store.sync_providers, timeout=config.control_timeout,
                                    interval=settings.revision_check_interval, sealer=bus_sealer)
    skills = d.skills

    async def on_revoked(msg: AuthRevoked, _m: Msg) -> None:
        if msg.deleted_user_ids:
            n = await skills.purge_users(list(msg.deleted_user_ids))
            log.info("skills of deleted users purged", extra={"users": len(msg.deleted_user_ids), "skills": n})

    await d.identities.start()
    # one replica per deletion is enough (queue group); the purge is idempotent anyway
    await bus.subscribe(bus.subjects.auth_revoked, AuthRevoked, on_revoked, queue="chatd-user-purge")
    await started(stack, d.directory)
    await bus.start(wait=2.0)
    session = aiohttp.ClientSession()  # to the gateway (AIGW_GATEWAY_URL: the operator's own address)
    stack.push_async_callback(session.close)
    direct = aiohttp.ClientSession(connector=netguard.upstream_connector(settings.allow_private_upstreams))
    stack.push_async_callback(direct.close)
    d.runner = TurnRunner(store=d.store, hub=d.hub, directory=d.directory, identities=d.identities,
                          settings=settings, config=config, runner_id=d.replica_id, session=session,
                          at_rest=d.at_rest, bus_sealer=bus_sealer, metrics=app[METRICS], direct_session=direct)
    state = app[STATE]
    state.checks.append(lambda: None if bus.connected else "not connected to NATS")

    # 3. tasks; running turns drain before they stop (the last thing pushed is the first undone)
    await d.runner.listen_interrupts()
    background(stack, d.runner.sweeper(), "chatd-sweeper")
    background(stack, _reconcile_skill_owners(d.skills, bus, config), "chatd-skill-owners")
    stack.push_async_callback(d.runner.drain, settings.shutdown_grace)


async def _reconcile_skill_owners(skills: SkillStore, bus: Bus, config: ChatdConfig) -> None:
    """At start (once NATS is up) and every ``owner_reconcile_interval``: see ``skills.reconcile_owners``."""
    while True:
        await bus.wait_connected()
        try:
            await reconcile_owners(skills, bus, config.control_timeout)
        except OSError as e:
            log.warning("skill owners not reconciled", extra={"error": str(e)})
        await asyncio.sleep(config.owner_reconcile_interval)
