"""A gateway on an ephemeral port, fed by a registry stand-in on real NATS, in front of the fixture mock upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from aigw_common.bus import Bus
from aigw_common.settings import Settings
from aigw_gateway.app import LOADER, create_app
from aigw_testing.registry_stub import RegistryStub, StubUser
from aigw_testing.upstream import MockUpstream
from aigw_testing.usage import UsageCollector


@dataclass
class GW:
    url: str
    app: web.Application
    registry: RegistryStub
    user: StubUser
    usage: UsageCollector
    upstream: MockUpstream
    settings: Settings

    async def wait_revision(self, revision: int | None = None, timeout: float = 5.0) -> None:
        want = self.registry.revision if revision is None else revision
        loader = self.app[LOADER]
        deadline = asyncio.get_running_loop().time() + timeout
        while loader.current.revision != want:
            assert asyncio.get_running_loop().time() < deadline, f"gateway at revision {loader.current.revision}, want {want}"
            await asyncio.sleep(0.02)


@pytest.fixture
async def registry(bus: Bus, make_settings) -> RegistryStub:  # type: ignore[no-untyped-def]
    return await RegistryStub(bus, make_settings().bus_keys()).start()


@pytest.fixture
def gateway_env() -> dict[str, str]:
    """Extra AIGW_* variables for the gateway under test (override in a test module)."""
    return {}


@pytest.fixture
async def gw(apps, make_settings, registry: RegistryStub, mock_upstream: MockUpstream, bus: Bus,  # type: ignore[no-untyped-def]
             gateway_env: dict[str, str]) -> AsyncIterator[GW]:
    registry.put_provider("openai", "openai", mock_upstream.url + "/v1", ["sk-test-key-1"])
    registry.put_provider("anthropic", "anthropic", mock_upstream.url, ["sk-ant-test-key-1"])
    user = registry.add_user(roles=["member"], group_ids=["g-eng"])
    usage = await UsageCollector(bus).start()
    settings = make_settings(**gateway_env)
    app = create_app(settings)
    url = await apps.start(app)
    g = GW(url, app, registry, user, usage, mock_upstream, settings)
    await g.wait_revision()
    yield g
