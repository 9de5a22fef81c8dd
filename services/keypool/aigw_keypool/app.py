"""keypool service: fleet-wide key health (see :mod:`aigw_keypool.service`)."""

from __future__ import annotations

import contextlib

from aiohttp import web

from aigw_common.api import error_middleware
from aigw_common.auth import FailureThrottle, IdentityCache
from aigw_common.bus import make_bus
from aigw_common.crypto import PURPOSE_BUS, Sealer
from aigw_common.db import MigrationSet
from aigw_common.service import METRICS, STATE, base_app, lifecycle, started
from aigw_common.settings import Settings

from .api import AUDIT, IDENTITIES, SERVICE, add_routes
from .audit import AuditLog
from .logic import Backoff
from .openapi import add_document
from .service import KeyPoolService

MIGRATIONS: tuple[MigrationSet, ...] = ()


def create_app(settings: Settings) -> web.Application:
    settings = settings.for_service("keypool")  # only the secrets keypool holds (docs/security.md)
    app = base_app("keypool", settings, middlewares=[error_middleware])
    add_routes(app)
    add_document(app)

    async def build(app: web.Application, stack: contextlib.AsyncExitStack) -> None:
        """bus → the service (mirror, followers, loops); shutdown undoes it in reverse."""
        bus = make_bus(settings, "keypool", app[METRICS])
        stack.push_async_callback(bus.close)
        await bus.start(wait=2.0)
        identities = IdentityCache(bus, ttl=settings.identity_ttl,
                                   failures=FailureThrottle(settings.auth_failures_per_minute))
        await identities.start()
        sealer = Sealer.from_keys(settings.bus_keys(), PURPOSE_BUS) if settings.bus_keys() else None
        svc = KeyPoolService(bus, app[METRICS], resync_interval=settings.revision_check_interval,
                             backoff=Backoff(settings.key_recheck_min, settings.key_recheck_max), sealer=sealer,
                             allowed_upstreams=settings.allow_private_upstreams)
        app[AUDIT] = AuditLog(bus)
        app[IDENTITIES] = identities
        app[SERVICE] = svc
        await started(stack, svc)
        app[STATE].checks.append(svc.not_ready)

    app.cleanup_ctx.append(lifecycle(build))
    return app
