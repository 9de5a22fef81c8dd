"""Fixtures for keypool tests: the service on real NATS with a registry stand-in."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from aigw_common.bus import Bus
from aigw_common.keystate import ensure_marks_stream, keys_bucket
from aigw_testing import wait
from aigw_testing.registry_stub import RegistryStub


@pytest.fixture
async def registry(bus: Bus, make_settings) -> RegistryStub:  # type: ignore[no-untyped-def]
    stub = RegistryStub(bus, make_settings().bus_keys())
    await stub.start()
    await ensure_marks_stream(bus)
    return stub


@pytest.fixture
def eventually() -> Callable[..., Awaitable[float]]:
    return wait.eventually


@pytest.fixture
async def kv(bus: Bus):  # type: ignore[no-untyped-def]
    return await keys_bucket(bus)
