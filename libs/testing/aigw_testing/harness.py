"""Run aiohttp apps (our services) on ephemeral ports inside a test's event loop, started and drained the
way ``aigw <service>`` does it (:func:`aigw_common.service.start` / :func:`aigw_common.service.drain`)."""

from __future__ import annotations

from aiohttp import web

from aigw_common.service import drain, start


class AppHarness:
    def __init__(self) -> None:
        self._runners: list[web.AppRunner] = []

    async def start(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> str:
        runner, bound = await start(app, host, port, grace=5)
        self._runners.append(runner)
        return f"http://{host}:{bound}"

    async def stop(self, app: web.Application) -> None:
        """Stop one app the way SIGTERM would: drain, then cleanup_ctx unwinds."""
        for r in list(self._runners):
            if r.app is app:
                self._runners.remove(r)
                await drain(r)

    async def stop_all(self) -> None:
        while self._runners:
            await drain(self._runners.pop())
