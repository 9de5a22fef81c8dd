"""asyncio helpers that are safe on every Python we support."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait for ``event`` up to ``seconds``; True when set.

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that
    arrives as the event fires, and a loop built on it then never stops (seen:
    a registry that never finished shutting down).
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def stop_task(task: asyncio.Task[object], *, timeout: float = 5.0, name: str = "") -> bool:
    """Cancel ``task`` and wait for it to end; True when it did.

    The cancel is repeated: a library that awaits with 3.11's ``wait_for`` can swallow one (nats-py
    does), and the task would then run on and hang shutdown. Never waits longer than ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.error("background task did not stop", extra={"task": name or task.get_name()})
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(0.5, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", extra={"task": name or task.get_name()}, exc_info=task.exception())
    return True
