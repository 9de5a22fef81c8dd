"""The registry service: providers, keys and identity in Postgres, pushed to every gateway over NATS.

Startup order (one ``cleanup_ctx``): pool → migrations → env seeding and the
bootstrap owner (under an advisory lock, before anything can read) → bus
(responders in a queue group) → outbox relay. Shutdown unwinds in reverse.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from aiohttp import web

from aigw_common.api import error_middleware
from aigw_common.bus import make_bus
from aigw_common.db import MigrationSet, close_pool, create_pool, migrate
from aigw_common.service import METRICS, STATE, background, base_app, lifecycle
from aigw_common.settings import Settings

from .api import REGISTRY, add_routes
from .core import SCHEMA, Registry
from .outbox import Relay
from .responders import Responders
from .seed import reconcile

log = logging.getLogger(__name__)

MIGRATIONS: tuple[MigrationSet, ...] = (MigrationSet(SCHEMA, Path(__file__).parent / "migrations"),)

MAX_BODY = 1024 * 1024  # control-plane bodies are small; keys are at most 10 KiB each


def create_app(settings: Settings, *, relay_poll: float = 1.0) -> web.Application:
    settings = settings.for_service("registry")  # only the secrets registry holds (docs/security.md)
    settings.require_database()
    settings.require_encryption_keys()
    if not settings.bus_sealing_keys:
        log.warning("AIGW_BUS_SEALING_KEYS is not set: the bus key is derived from AIGW_ENCRYPTION_KEYS, so "
                    "gateways must hold the at-rest key too; set AIGW_BUS_SEALING_KEYS (docs/security.md)")
    app = base_app("registry", settings, middlewares=[error_middleware], client_max_size=MAX_BODY)
    add_routes(app)
    reg = app[REGISTRY] = Registry(settings)
    ready = {"seeded": False}
    app[STATE].checks.append(lambda: None if ready["seeded"] else "seeding not finished")

    async def build(app: web.Application, stack: contextlib.AsyncExitStack) -> None:
        pool = reg.pool = await create_pool(settings.require_database())
        stack.push_async_callback(close_pool, pool)
        async with pool.acquire() as conn:
            await migrate(conn, *MIGRATIONS)
        await reconcile(reg)
        ready["seeded"] = True
        bus = make_bus(settings, "registry", app[METRICS])
        stack.push_async_callback(bus.close)
        reg.bus = bus
        await Responders(reg, app[METRICS]).subscribe(bus)
        await bus.start(wait=5)
        background(stack, Relay(reg, bus, app[METRICS], poll=relay_poll).run(), "registry-outbox-relay")

    app.cleanup_ctx.append(lifecycle(build))
    return app
