"""CPU per request of the gateway's upstream client: aiohttp ``ClientSession`` (configured as the gateway had
it) against ``aigw_gateway.upstream.UpstreamClient``, both on the gateway's netguard connector.

    python -m bench.upstream_client [--requests 20000] [--concurrency 16] [--rounds 3]

A raw asyncio server in a child process answers every request with a small JSON body (keep-alive), so the
client's process time is the client's own. Each round runs both clients, alternating, on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

import aiohttp
import uvloop
from multidict import CIMultiDict
from yarl import URL

from aigw_common import netguard
from aigw_gateway.upstream import UpstreamClient

_BODY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1}}'
_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
             + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class _Server(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            n = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) >= 0 else None]) if i >= 0 else 0
            if len(self.buf) < end + 4 + n:
                return
            self.buf = self.buf[end + 4 + n:]
            assert self.transport is not None
            self.transport.write(_RESPONSE)


async def _serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Server, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def _connector() -> aiohttp.TCPConnector:
    return netguard.upstream_connector(["loopback"], limit=0, limit_per_host=0, ttl_dns_cache=300,
                                       enable_cleanup_closed=True)


async def _run(kind: str, url: URL, requests: int, concurrency: int) -> float:
    headers = CIMultiDict({"Content-Type": "application/json", "Authorization": "Bearer sk-bench",
                           "Accept-Encoding": "identity"})
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    per = requests // concurrency
    if kind == "session":
        session = aiohttp.ClientSession(connector=_connector(), auto_decompress=True, skip_auto_headers=("User-Agent",),
                                        cookie_jar=aiohttp.DummyCookieJar())

        async def one() -> None:
            resp = await session.request("POST", url, headers=headers, data=body, timeout=timeout,
                                         allow_redirects=False)
            try:
                while await resp.content.readany():
                    pass
            finally:
                resp.close()
        close = session.close
    else:
        client = UpstreamClient(_connector())

        async def one() -> None:
            resp = await client.request("POST", url, headers, body, timeout)
            try:
                while await resp.content.readany():
                    pass
            finally:
                resp.close()
        close = client.close

    async def worker(n: int) -> None:
        for _ in range(n):
            async with asyncio.timeout(30):
                await one()

    await asyncio.gather(*(worker(10) for _ in range(concurrency)))  # warm: connections open
    t0 = time.process_time()
    await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    cpu = time.process_time() - t0
    await close()
    return cpu / (per * concurrency) * 1e6


def _wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"]:
        uvloop.run(_serve(int(argv[1])))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=18931)
    a = ap.parse_args(argv)
    server = subprocess.Popen([sys.executable, "-m", "bench.upstream_client", "serve", str(a.port)])
    try:
        _wait_listening(a.port)
        url = URL(f"http://127.0.0.1:{a.port}/v1/chat/completions")
        for r in range(a.rounds):
            for kind in ("session", "lean") if r % 2 == 0 else ("lean", "session"):
                us = uvloop.run(_run(kind, url, a.requests, a.concurrency))
                print(f"round {r + 1} {kind:8s} {us:7.1f} µs CPU/request", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
