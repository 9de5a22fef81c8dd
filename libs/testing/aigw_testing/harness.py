"""Run aiohttp apps (our services) on ephemeral ports inside a test's event loop."""

from __future__ import annotations

from aiohttp import web

from aigw_common.service import HANDLER_CANCELLATION, STATE


class AppHarness:
    def __init__(self) -> None:
        self._runners: list[web.AppRunner] = []

    async def start(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5, handle_signals=False,
                               handler_cancellation=app.get(HANDLER_CANCELLATION, False))
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # aiohttp has no public bound-port API
        return f"http://{host}:{port}"

    async def stop(self, app: web.Application) -> None:
        """Stop one app the way SIGTERM would: drain, then cleanup_ctx unwinds."""
        for r in list(self._runners):
            if r.app is app:
                if STATE in app:
                    app[STATE].draining = True
                await r.cleanup()
                self._runners.remove(r)

    async def stop_all(self) -> None:
        while self._runners:
            r = self._runners.pop()
            await r.cleanup()
