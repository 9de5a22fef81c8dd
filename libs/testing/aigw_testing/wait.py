"""Polling for a condition in tests, with a deadline that names what was awaited."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from aigw_common.embedded import log_tail


async def eventually(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition",
                     *, interval: float = 0.02) -> float:
    """Poll ``check`` (sync or async) until it is truthy; return the seconds it took, fail after ``timeout``."""
    t0 = time.monotonic()
    while True:
        r = check()
        if inspect.isawaitable(r):
            r = await r
        if r:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def http_ok(url: str, within: float, what: str, *, alive: Callable[[], None] | None = None,
                  log: Path | None = None) -> None:
    """GET ``url`` until it answers 200 (a readiness or health endpoint); fail after ``within`` seconds with
    ``what``, the last answer or error, and the tail of the server's ``log``. ``alive`` is called each
    round and raises when the server behind ``url`` is gone (no point waiting out the deadline)."""
    deadline = time.monotonic() + within
    last = ""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if alive is not None:
                alive()
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
                    last = await r.text()
            except (aiohttp.ClientError, TimeoutError) as e:
                last = repr(e)
            await asyncio.sleep(0.1)
    raise AssertionError(f"{what} after {within}s: {last}" + (f"\n{log_tail(log)}" if log is not None else ""))
