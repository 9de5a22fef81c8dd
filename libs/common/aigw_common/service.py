"""What every service shares: the app skeleton, health endpoints, and one start/drain order.

The skeleton (``docs/architecture.md``, "Service lifecycle"): ``create_app(settings)`` builds the app with
:func:`base_app` and adds one :func:`lifecycle` entry to ``app.cleanup_ctx``. Its build function starts
each resource in order, pool → bus → what uses the bus → background tasks, and registers each one's stop
on an ``AsyncExitStack`` the moment it exists, so a failure at any step closes what started before it in
reverse before the error propagates. :func:`start` does the same across ``cleanup_ctx`` entries.

:func:`serve` runs it until SIGTERM/SIGINT sets its stop event; then :func:`drain` goes in one order for
every service: ``/readyz`` 503 → the listener closes → in-flight requests finish (up to the grace;
``on_shutdown`` ends open streams) → the stack unwinds: background tasks stop, the bus drains and
closes, the pool closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

from aiohttp import web, web_response
from prometheus_client import CollectorRegistry

from . import tracing
from .aio import stop_task
from .metrics import metrics_handler, new_registry
from .settings import Settings
from .tracing import tracing_middleware

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], str | None]  # returns why the service is not ready, or None


@dataclass(slots=True)
class ServiceState:
    name: str
    checks: list[ReadyCheck] = field(default_factory=list)
    draining: bool = False

    def not_ready_reasons(self) -> list[str]:
        reasons = ["shutting down"] if self.draining else []
        for check in self.checks:
            r = check()
            if r:
                reasons.append(r)
        return reasons


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics_registry", CollectorRegistry)
STATE = web.AppKey("service_state", ServiceState)
# Cancel a handler when its client disconnects (the gateway sets it: a gone client must cancel the upstream call).
HANDLER_CANCELLATION = web.AppKey("handler_cancellation", bool)


async def _no_server_banner(_request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp names itself and its Python in ``Server``; a banner only helps whoever scans for versions."""
    response.headers.popall("Server", None)


async def _listener_closed(app: web.Application) -> None:
    """``on_shutdown`` runs once the listener is closed, before in-flight requests are waited for."""
    log.info("listener closed; in-flight requests finishing", extra={"service": app[STATE].name})


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    reasons = request.app[STATE].not_ready_reasons()
    if reasons:
        return web.json_response({"status": "not ready", "reasons": reasons}, status=503)
    return web.json_response({"status": "ready"})


def base_app(
    name: str, settings: Settings, *, middlewares: list[Any] | None = None, client_max_size: int | None = None,
    handler_args: dict[str, Any] | None = None,
    public_metrics: bool = True,
) -> web.Application:
    """A new application with settings, a private metrics registry, and /healthz /readyz /metrics
    (``public_metrics=False``: no /metrics here; the service serves it elsewhere, :func:`metrics_listener`)."""
    # the tracing middleware only when tracing is on (decided here, once setup_tracing has run): an app with
    # no middleware at all skips aiohttp's whole middleware chain per request (the gateway has no other)
    traced = [tracing_middleware] if tracing.enabled() else []
    app = web.Application(
        middlewares=[*traced, *(middlewares or [])],  # first: the server span covers the rest
        client_max_size=client_max_size or settings.max_body_bytes,
        handler_args=handler_args,
    )
    app[SETTINGS] = settings
    app[METRICS] = new_registry()
    app[STATE] = ServiceState(name)
    app.on_response_prepare.append(_no_server_banner)
    app.on_shutdown.append(_listener_closed)
    # Answers aiohttp's parser makes itself (a malformed request line) skip the app's signals: give them
    # an empty Server value instead of aiohttp's "Python/3.x aiohttp/3.x" (process-wide, idempotent).
    web_response.SERVER_SOFTWARE = ""  # type: ignore[attr-defined]  # imported from aiohttp.http, not re-exported; this module global is the one responses read
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    if public_metrics:
        app.router.add_get("/metrics", metrics_handler(app[METRICS]))
    return app


@contextlib.asynccontextmanager
async def metrics_listener(registry: CollectorRegistry, host: str, port: int, *,
                           reuse_port: bool = False) -> AsyncIterator[None]:
    """``/metrics`` alone on its own address (``AIGW_METRICS_ADDR``), for the duration of the context."""
    app = web.Application()
    app.on_response_prepare.append(_no_server_banner)
    app.router.add_get("/metrics", metrics_handler(registry))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None).start()
        log.info("metrics listening", extra={"addr": f"{host}:{port}"})
        yield
    finally:
        await runner.cleanup()


GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Once started: move what start-up made (modules, classes, settings, caches) out of the collector's
    sight, and collect the young generation every 10,000 allocations instead of 700.

    With Python's default a serving process collected every dozen requests, and each collection walked the
    objects of every request in flight (the gateway: ~9 % of its CPU at 64 concurrent requests, and
    full collections of the whole start-up heap, tens of ms, now and then). What a request leaves in
    reference cycles is still collected, in fewer, larger batches (docs/performance.md).
    """
    gc.collect()
    gc.freeze()
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


Build = Callable[[web.Application, contextlib.AsyncExitStack], Awaitable[None]]
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _step(callback: Callable[..., object], args: tuple[object, ...]) -> str:
    if callback is stop_task and args and isinstance(args[0], asyncio.Task):
        return f"task {args[0].get_name()}"
    if callback is asyncio.to_thread and args and callable(args[0]):
        return getattr(args[0], "__qualname__", "thread")
    return getattr(callback, "__qualname__", "step")


class _LoggedStack(contextlib.AsyncExitStack):
    """Logs each stop as it runs, so the drain order can be read in the log (and is checked by a test)."""

    def push_async_callback(self, callback: Callable[_P, Awaitable[_T]], /,
                            *args: _P.args, **kwds: _P.kwargs) -> Callable[_P, Awaitable[_T]]:
        step = _step(callback, args)

        async def stop() -> None:
            log.info("stopping", extra={"step": step})
            await callback(*args, **kwds)

        super().push_async_callback(stop)
        return callback

    def callback(self, callback: Callable[_P, _T], /, *args: _P.args, **kwds: _P.kwargs) -> Callable[_P, _T]:
        step = _step(callback, args)

        def stop() -> None:
            log.info("stopping", extra={"step": step})
            callback(*args, **kwds)

        super().callback(stop)
        return callback


def lifecycle(build: Build) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry that runs ``build(app, stack)``: each step starts one thing and puts its stop
    on ``stack`` at once, so a failed step closes everything before it (reverse order) and shutdown unwinds
    the same stack."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with _LoggedStack() as stack:
            await build(app, stack)
            yield
            log.info("unwinding", extra={"service": app[STATE].name})

    ctx.__name__ = ctx.__qualname__ = getattr(build, "__name__", "lifecycle")
    return ctx


class Startable(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


_S = TypeVar("_S", bound=Startable)


async def started(stack: contextlib.AsyncExitStack, thing: _S) -> _S:
    """``thing.start()`` with ``thing.stop()`` already on ``stack``: a start that fails halfway is stopped too
    (so ``stop`` must be safe on a thing that started partly or not at all)."""
    stack.push_async_callback(thing.stop)
    await thing.start()
    return thing


def background(stack: contextlib.AsyncExitStack, coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task[object]:
    """A background task that ``stack`` cancels and waits for (:func:`aigw_common.aio.stop_task`)."""
    task: asyncio.Task[object] = asyncio.create_task(coro, name=name)
    stack.push_async_callback(stop_task, task)
    return task


async def start(app: web.Application, host: str, port: int, *, grace: float = 20.0,
                reuse_port: bool = False) -> tuple[web.AppRunner, int]:
    """Start ``app`` (every ``cleanup_ctx`` entry in order) and listen; returns the runner and the bound port.

    If any step fails (a ``cleanup_ctx`` entry, or the address is taken), the entries that had started are
    unwound in reverse before the error propagates: nothing is left connected or running.
    """
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=grace,
                           handler_cancellation=app.get(HANDLER_CANCELLATION, False))
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024)
        await site.start()
    except BaseException:
        await runner.cleanup()  # aiohttp: after a failed startup this unwinds only the entries that started
        raise
    addresses = runner.addresses  # the bound sockets' names (port 0 asked for a free one)
    return runner, int(addresses[0][1]) if addresses else port


async def drain(runner: web.AppRunner) -> None:
    """The one shutdown order: ``/readyz`` 503, stop accepting, in-flight requests finish (up to the grace;
    ``on_shutdown`` ends streams), then ``cleanup_ctx`` unwinds in reverse (tasks, bus, pool)."""
    state = runner.app.get(STATE)
    name = state.name if state is not None else "app"
    if state is not None:
        state.draining = True
    log.info("shutting down", extra={"service": name})
    await runner.cleanup()
    log.info("stopped", extra={"service": name})


async def serve(app: web.Application, host: str, port: int, *, grace: float = 20.0,
                stop: asyncio.Event | None = None, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then :func:`drain`.

    ``reuse_port``: several worker processes bind the same address (``AIGW_GATEWAY_WORKERS``).
    """
    state = app[STATE]
    runner, _ = await start(app, host, port, grace=grace, reuse_port=reuse_port)
    log.info("listening", extra={"service": state.name, "addr": f"{host}:{port}"})
    tune_gc()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        try:
            await drain(runner)
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
