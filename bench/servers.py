"""Processes the benchmark measures: the mock upstream and a bare aiohttp pass-through proxy.

    python -m bench.servers mock PORT
    python -m bench.servers bare PORT UPSTREAM_URL
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

from aigw_testing.txtar import load
from aigw_testing.upstream import split_events

FIXTURE = "openai/chatcompletions/simple"


def mock_app() -> web.Application:
    fx = load(FIXTURE)
    blocking = fx.response("non-streaming").body
    events = split_events(fx.response("streaming").body)

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b'"stream":true' in body.replace(b" ", b""):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for e in events:
                await resp.write(e)
            await resp.write_eof()
            return resp
        return web.Response(body=blocking, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def bare_app(upstream: str) -> web.Application:
    """The floor to compare against: forward method, path, headers and body; relay the response as it streams."""
    drop = {"host", "content-length", "transfer-encoding", "connection"}

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
        async with request.app["session"].request(request.method, upstream + request.path_qs, data=body,
                                                   headers=headers) as up:
            resp = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in drop})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    app = mock_app() if kind == "mock" else bare_app(argv[2])
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
