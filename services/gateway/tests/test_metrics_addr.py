"""AIGW_METRICS_ADDR: /metrics on its own address, and then not on the gateway's public routes."""

from __future__ import annotations

import aiohttp
import pytest

from aigw_testing.system import free_port


@pytest.fixture
def gateway_env() -> dict[str, str]:
    return {"AIGW_METRICS_ADDR": f"127.0.0.1:{free_port()}"}


async def test_metrics_on_their_own_address(gw, gateway_env) -> None:  # type: ignore[no-untyped-def]
    addr = gateway_env["AIGW_METRICS_ADDR"]
    async with aiohttp.ClientSession() as s:
        for prefix in ("", "/api/v2/aibridge", "/api/v2/ai-gateway"):
            async with s.get(f"{gw.url}{prefix}/metrics") as r:
                body = await r.text()
                assert r.status == 404 and "aigw_gateway" not in body, (prefix, body[:200])
        async with s.get(f"{gw.url}/healthz") as r:
            assert r.status == 200
        async with s.get(f"http://{addr}/metrics") as r:
            body = await r.text()
            assert r.status == 200 and "aigw_gateway_provider_set_revision" in body and "Server" not in r.headers
        async with s.get(f"http://{addr}/v1/models") as r:
            assert r.status == 404  # nothing else there
