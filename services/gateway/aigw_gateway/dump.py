"""API dumps for debugging a provider: request and response as streamed, with credentials masked."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from multidict import CIMultiDict, CIMultiDictProxy

log = logging.getLogger(__name__)

MASKED_HEADERS = frozenset(
    h.lower() for h in ("Authorization", "X-Api-Key", "Api-Key", "Cookie", "Set-Cookie", "Proxy-Authorization",
                        "X-Amz-Security-Token", "X-AIGW-Token")
)


def mask_value(v: str) -> str:
    if len(v) <= 8:
        return "***"
    return v[:4] + "***" + v[-2:] if not v.lower().startswith("bearer ") else "Bearer ***" + v[-2:]


def render_headers(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> str:
    return "".join(f"{k}: {mask_value(v) if k.lower() in MASKED_HEADERS else v}\n" for k, v in headers.items())


class Dump:
    """One interception's dump files; writes go to a thread so the event loop never waits on disk."""

    def __init__(self, base: Path, provider: str, interception_id: str) -> None:
        d = base / provider
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.req_path = d / f"{stamp}-{interception_id}.request.txt"
        self.resp_path = d / f"{stamp}-{interception_id}.response.txt"
        self._dir = d
        self._chunks: list[bytes] = []

    async def request(self, method: str, url: str, headers: CIMultiDict[str], body: bytes) -> None:
        text = f"{method} {url}\n{render_headers(headers)}\n".encode() + body
        await asyncio.to_thread(self._write, self.req_path, text)

    def response_head(self, status: int, headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> None:
        self._chunks.append(f"HTTP {status}\n{render_headers(headers)}\n".encode())

    def response_chunk(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    async def finish(self) -> None:
        await asyncio.to_thread(self._write, self.resp_path, b"".join(self._chunks))

    def _write(self, path: Path, data: bytes) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError as e:
            log.warning("api dump failed", extra={"path": str(path), "error": str(e)})
