"""A TCP proxy that tests put in front of a real server (Postgres, NATS, an upstream) to inject faults.

``await proxy.down()`` cuts every open connection (RST) and stops listening, so
the client sees exactly what a stopped server looks like (connection reset,
then connection refused); ``await proxy.up()`` listens again on the same port.
``stall()`` keeps connections open but stops relaying bytes (a hung server or
a partition); ``resume()`` relays again. The machine's server is never touched.

    proxy = await FaultProxy.start_for("127.0.0.1", 5432)
    dsn = proxy.rewrite(database_url)        # point the client at the proxy
    await proxy.down(); ...; await proxy.up()
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        self.connections = 0  # accepted so far
        self.bytes_relayed = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @classmethod
    async def start_for(cls, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> FaultProxy:
        p = cls(target_host, target_port, host=host, port=port)
        await p.up()
        return p

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def rewrite(self, url: str) -> str:
        """``url`` (postgresql://…, nats://…, http://…) with host and port replaced by the proxy's."""
        p = urlsplit(url)
        auth = p.netloc.rpartition("@")[0]
        netloc = (auth + "@" if auth else "") + f"{self.host}:{self.port}"
        return urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))

    async def up(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Stop listening and reset every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.reset_connections()
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await server.wait_closed()

    def reset_connections(self) -> None:
        for w in list(self._open):
            w.transport.abort()
        self._open.clear()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        await self.down()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def __aenter__(self) -> FaultProxy:
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if self._server is None:  # went down while connecting
            writer.transport.abort()
            uwriter.transport.abort()
            return
        self._open.update((writer, uwriter))
        t1 = asyncio.create_task(self._pipe(reader, uwriter))
        t2 = asyncio.create_task(self._pipe(ureader, writer))
        for t in (t1, t2):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        await asyncio.wait({t1, t2}, return_when=asyncio.FIRST_COMPLETED)
        for w in (writer, uwriter):
            self._open.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                self.bytes_relayed += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()


__all__ = ["FaultProxy"]
