"""One HTTP/1.1 request written byte for byte on a socket: no client library normalises the target
(``..``, ``%2F``) or rewrites the headers (``Connection``), which is the point of the tests that use it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from multidict import CIMultiDict
from yarl import URL


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes  # as received (chunked framing left in place for chunked answers)


async def request(url: str, method: str, target: str, headers: list[tuple[str, str]] | dict[str, str] | None = None,
                  body: bytes = b"", *, timeout: float = 30.0) -> RawResponse:
    """``target`` goes on the request line exactly as given; ``url`` says where to connect."""
    u = URL(url)
    reader, writer = await asyncio.open_connection(u.host, u.port)
    try:
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        head = f"{method} {target} HTTP/1.1\r\nHost: {u.host}:{u.port}\r\n"
        if not any(k.lower() == "connection" for k, _ in items):
            head += "Connection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in items)
        head += f"Content-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        async with asyncio.timeout(timeout):
            data = await reader.read()
    finally:
        writer.close()
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    hdrs: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs.add(k.strip(), v.strip())
    return RawResponse(int(lines[0].split()[1]), hdrs, rest)
