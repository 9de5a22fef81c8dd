"""Fixtures for keypool tests: the service on real NATS with a registry stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from aigw_common.bus import Bus
from aigw_common.keystate import ensure_marks_stream, keys_bucket
from aigw_testing.registry_stub import RegistryStub


@pytest.fixture
async def registry(bus: Bus, make_settings) -> RegistryStub:  # type: ignore[no-untyped-def]
    stub = RegistryStub(bus, make_settings().encryption_keys)
    await stub.start()
    await ensure_marks_stream(bus)
    return stub


@pytest.fixture
def eventually() -> Callable[..., Awaitable[None]]:
    async def wait(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0,  # noqa: ASYNC109
                   what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while True:
            r = check()
            if not isinstance(r, bool):
                r = await r
            if r:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.05)

    return wait


@pytest.fixture
async def kv(bus: Bus):  # type: ignore[no-untyped-def]
    return await keys_bucket(bus)
