"""Polling for a condition in tests, with a deadline that names what was awaited."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


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
