"""The whole system behind fault proxies (``aigw_testing.system``), one per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from aigw_testing.system import System


@pytest.fixture
async def start_system(apps, base_env, database_url, nats_url, mock_upstream  # type: ignore[no-untyped-def]
                       ) -> AsyncIterator[Callable[..., Awaitable[System]]]:
    started: list[System] = []

    async def start(**kw: Any) -> System:
        s = await System.start(apps, base_env, database_url, nats_url, mock_upstream, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        await s.close()
