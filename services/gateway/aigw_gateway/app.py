"""The gateway application: one factory, every connection and background task in one cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractResolver

from aigw_common import netguard
from aigw_common.aio import stop_task
from aigw_common.auth import FailureThrottle, IdentityCache
from aigw_common.bus import Bus, make_bus
from aigw_common.crypto import PURPOSE_BUS, Sealer
from aigw_common.errors import BusError
from aigw_common.keystate import ensure_marks_stream
from aigw_common.metrics import Gauge
from aigw_common.schemas import KeyMarked
from aigw_common.service import (
    HANDLER_CANCELLATION,
    METRICS,
    SETTINGS,
    STATE,
    background,
    base_app,
    lifecycle,
    metrics_listener,
    started,
)
from aigw_common.settings import Settings

from .adapters import Adapters
from .breaker import STATE_NAMES, Breakers
from .budget import BudgetGuard
from .dump import DumpStore
from .keys import KeyPools
from .keystate import KeyReporter, KeyStateWatcher
from .limits import LimitGuard
from .metrics import GatewayMetrics
from .providers import ProviderLoader, ProviderSet
from .proxy import Gateway
from .recorder import Recorder, RecordPolicy
from .spool import Spool
from .upstream import UpstreamClient

log = logging.getLogger(__name__)

MIGRATIONS = ()

BUS = web.AppKey("bus", Bus)
GATEWAY = web.AppKey("gateway", Gateway)
ADAPTERS = web.AppKey("adapters", Adapters)
LOADER = web.AppKey("provider_loader", ProviderLoader)
POOLS = web.AppKey("key_pools", KeyPools)
RECORDER = web.AppKey("recorder", Recorder)
IDENTITIES = web.AppKey("identities", IdentityCache)
GUARD = web.AppKey("budget_guard", BudgetGuard)
LIMITS = web.AppKey("limit_guard", LimitGuard)
GATEWAY_ID = web.AppKey("gateway_id", str)
# Tests only: the DNS resolver under the upstream address guard (a name → address map stands in for DNS).
UPSTREAM_RESOLVER = web.AppKey("upstream_resolver", AbstractResolver)


def create_app(settings: Settings) -> web.Application:
    settings = settings.for_service("gateway")  # holds the bus sealing key only: no at-rest key, no DSN
    settings.require_bus_keys()
    app = base_app("gateway", settings, client_max_size=settings.max_body_bytes,
                   public_metrics=settings.metrics_addr is None)
    app[HANDLER_CANCELLATION] = True
    if settings.metrics_addr is not None:
        app.cleanup_ctx.append(_metrics_elsewhere)
    app.cleanup_ctx.append(lifecycle(_lifecycle))
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


async def _handle(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle(request)


async def _metrics_elsewhere(app: web.Application) -> AsyncIterator[None]:
    """AIGW_METRICS_ADDR: /metrics on its own listener (the public routes answer 404 for it)."""
    settings = app[SETTINGS]
    assert settings.metrics_addr is not None
    async with metrics_listener(app[METRICS], settings.metrics_addr.host, settings.metrics_addr.port,
                                reuse_port=settings.gateway_workers > 1):
        yield


async def _lifecycle(app: web.Application, stack: contextlib.AsyncExitStack) -> None:
    """Start in dependency order, each stop on ``stack`` as soon as its thing exists (a failed step closes
    what came before it); shutdown unwinds the same stack: tasks, recorder (spools what is unsent), the
    bus drains, then the HTTP client closes."""
    settings = app[SETTINGS]
    metrics = GatewayMetrics.create(app[METRICS])
    bus_sealer = Sealer.from_keys(settings.require_bus_keys(), PURPOSE_BUS)
    # every upstream address is checked after DNS and at connect (AIGW_ALLOW_PRIVATE_UPSTREAMS)
    connector = netguard.upstream_connector(settings.allow_private_upstreams, resolver=app.get(UPSTREAM_RESOLVER),
                                            limit=0, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    # the connector's connections, aiohttp's parser, no ClientSession (upstream.py says why): no cookies, no
    # redirects, no User-Agent of ours; bodies a provider compresses are decoded before usage is read
    upstream = UpstreamClient(connector, auto_decompress=True)
    stack.push_async_callback(upstream.close)
    dumps = DumpStore(settings.dump_dir, settings.dump_max_bytes) if settings.dump_dir is not None else None
    if dumps is not None:
        stack.push_async_callback(asyncio.to_thread, dumps.stop)
        await asyncio.to_thread(dumps.start)

    bus = make_bus(settings, "gateway", app[METRICS])
    stack.push_async_callback(bus.close)
    pools = KeyPools()
    app[GATEWAY_ID] = pools.gateway_id
    marks = _MarkSink(bus)
    stack.push_async_callback(marks.stop)
    pools.sink = marks
    bus.on_connect(marks.on_connect)
    bus.on_reconnect(marks.on_connect)
    await bus.start(wait=2.0)

    identities = IdentityCache(bus, ttl=settings.identity_ttl,
                               failures=FailureThrottle(settings.auth_failures_per_minute))
    Gauge("aigw_gateway_auth_verify_requests", "Token verifications asked of the registry (cumulative)",
          registry=app[METRICS]).set_function(lambda: identities.verify_requests)
    Gauge("aigw_gateway_auth_throttled_requests", "Requests refused for too many failed authentications "
          "from their address (cumulative)", registry=app[METRICS]).set_function(lambda: identities.failures.throttled)
    await identities.start()

    watcher = KeyStateWatcher(bus, pools, resync_interval=settings.revision_check_interval)
    reporter = KeyReporter(bus, pools.gateway_id)
    pools.observers.append(reporter.observe)

    def on_swap(s: ProviderSet) -> None:
        metrics.revision.set(s.revision)
        metrics.providers_failed.set(len(s.failed))
        watcher.replay()  # fleet state for keys the previous set did not know yet

    def on_breaker(key: tuple[str, str, str], state: int) -> None:
        labels = (key[0], key[1], metrics.model(key[2]))
        metrics.circuit_state.labels(*labels).set(state)
        if state == 1:
            metrics.circuit_trips.labels(*labels).inc()
        log.warning("circuit breaker state change", extra={"provider": key[0], "endpoint": key[1], "model": key[2],
                                                           "state": STATE_NAMES[state]})

    adapters = app[ADAPTERS] = Adapters.from_settings(settings)
    loader = await started(stack, ProviderLoader(bus, bus_sealer, pools, adapters,
                                                 interval=settings.revision_check_interval, on_swap=on_swap))
    await started(stack, watcher)  # the fleet's key state before we serve (bounded wait; NATS down → skip)
    await started(stack, reporter)
    app[STATE].checks.append(watcher.not_ready)
    spool = Spool(settings.data_dir / "spool" / f"gateway-{pools.gateway_id}", settings.spool_max_bytes)
    stack.callback(spool.close)  # the recorder closes it too (idempotent); this covers a recorder that never started
    recorder = await started(stack, Recorder(bus, spool, registry=app[METRICS], linger=settings.usage_linger,
                                             policy=RecordPolicy(settings.record_prompts, settings.record_prompt_bytes)))
    guard = await started(stack, BudgetGuard(bus, settings, app[METRICS]))
    limits = await started(stack, LimitGuard(bus, app[METRICS], holder_id=guard.id,
                                             snapshot_interval=max(5.0, settings.revision_check_interval)))
    background(stack, _spool_gauges(recorder, metrics), "spool-gauges")

    breakers = Breakers(settings.breaker, on_state=on_breaker)
    gw = Gateway(settings, loader, pools, breakers, identities, recorder, guard, metrics, upstream, bus_sealer, dumps,
                 limits=limits)
    app[BUS], app[LOADER], app[POOLS], app[RECORDER] = bus, loader, pools, recorder
    app[IDENTITIES], app[GUARD], app[GATEWAY], app[LIMITS] = identities, guard, gw, limits
    # Ready with zero providers and with NATS down: the gateway serves what it knows and keeps retrying.


class _MarkSink:
    """Publishes key marks without making the request wait; marks that cannot go out now are kept
    (bounded) and sent on reconnect, so the rest of the fleet still hears of them. A publish can also fail
    while the connection stays up (a JetStream cluster electing the stream's leader): then the backlog is
    retried every ``retry_interval`` seconds, since no reconnect will come to flush it."""

    def __init__(self, bus: Bus, max_backlog: int = 10_000, retry_interval: float = 1.0) -> None:
        self.bus = bus
        self.backlog: list[KeyMarked] = []
        self.max_backlog = max_backlog
        self.retry_interval = retry_interval
        self._tasks: set[asyncio.Task[bool]] = set()
        self._retry: asyncio.Task[None] | None = None

    def __call__(self, mark: KeyMarked) -> None:
        t = asyncio.get_running_loop().create_task(self._publish(mark))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _publish(self, mark: KeyMarked) -> bool:
        try:
            await self.bus.js_publish(self.bus.subjects.keys_marked, mark, msg_id=mark.event_id, timeout=2.0)
            return True
        except BusError as e:
            log.warning("key mark not published yet; applied locally, retried on reconnect",
                        extra={"provider_id": mark.provider_id, "key_id": mark.key_id, "error": str(e)})
            if len(self.backlog) < self.max_backlog:
                self.backlog.append(mark)
            if self._retry is None or self._retry.done():
                self._retry = asyncio.get_running_loop().create_task(self._retry_backlog())
            return False

    async def _retry_backlog(self) -> None:
        while self.backlog:
            await asyncio.sleep(self.retry_interval)
            if self.bus.connected:
                backlog, self.backlog = self.backlog, []
                for mark in backlog:
                    await self._publish(mark)

    async def stop(self) -> None:
        if self._retry is not None:
            await stop_task(self._retry)

    async def on_connect(self) -> None:
        try:
            await ensure_marks_stream(self.bus)
        except Exception as e:
            log.warning("could not ensure the key-marks stream", extra={"error": str(e)})
        backlog, self.backlog = self.backlog, []
        for mark in backlog:
            await self._publish(mark)


async def _spool_gauges(recorder: Recorder, metrics: GatewayMetrics) -> None:
    while True:
        metrics.usage_spooled.set(recorder.spool.size)
        metrics.usage_dropped.set(recorder.spool.dropped)
        await asyncio.sleep(5)


__all__ = ["BUS", "GATEWAY", "GATEWAY_ID", "LOADER", "MIGRATIONS", "POOLS", "RECORDER", "STATE", "UPSTREAM_RESOLVER",
           "create_app"]
