"""The budget service: usage recording, prices, budgets and their enforcement leases (``docs/api.md``, ``docs/bus.md``, ``docs/contract.md``)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from aiohttp import web

from aigw_common.api import error_middleware
from aigw_common.auth import FailureThrottle, IdentityCache
from aigw_common.bus import make_bus
from aigw_common.db import MigrationSet, close_pool, create_pool, migrate
from aigw_common.service import METRICS, STATE, base_app, lifecycle, started
from aigw_common.settings import Settings

from .api import IDENTITIES, SERVICE, add_routes
from .openapi import add_document
from .service import BudgetService

MIGRATIONS: tuple[MigrationSet, ...] = (MigrationSet("budget", Path(__file__).parent / "migrations"),)


def create_app(settings: Settings, *, lease_ttl: float | None = None, lease_grace: float | None = None) -> web.Application:
    settings = settings.for_service("budget")  # only the secrets budget holds (docs/security.md)
    app = base_app("budget", settings, middlewares=[error_middleware])
    add_routes(app)
    add_document(app)
    extra = {k: v for k, v in (("lease_ttl", lease_ttl), ("lease_grace", lease_grace)) if v is not None}

    async def build(app: web.Application, stack: contextlib.AsyncExitStack) -> None:
        """pool → schema → bus → the service (its consumer and loops); shutdown undoes it in reverse."""
        pool = await create_pool(settings.require_database(), max_size=10,
                                 server_settings={"search_path": "budget"})
        stack.push_async_callback(close_pool, pool)
        async with pool.acquire() as conn:
            await migrate(conn, *MIGRATIONS)
        bus = make_bus(settings, "budget", app[METRICS])
        stack.push_async_callback(bus.close)
        await bus.start(wait=5)
        svc = BudgetService(settings, pool, bus, app[METRICS], **extra)
        identities = IdentityCache(bus, ttl=settings.identity_ttl,
                                   failures=FailureThrottle(settings.auth_failures_per_minute))
        await identities.start()
        await started(stack, svc)
        app[SERVICE] = svc
        app[IDENTITIES] = identities
        state = app[STATE]
        state.checks.append(lambda: None if bus.connected else "NATS not connected")
        state.checks.append(lambda: None if svc.consumer.ready.is_set() else "usage consumer not subscribed")

    app.cleanup_ctx.append(lifecycle(build))
    return app
