"""Key health across the fleet: two real gateways, keypool and the real registry on real NATS.

The mock upstream counts requests per key; the clients are the real openai SDK.
A key one gateway sees revoked or rate-limited is skipped by the other within a
second, comes back by itself when its cooldown ends, survives a keypool
restart and a NATS restart, and a key replaced through the registry API is used
by every gateway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from aigw_common.embedded import EmbeddedNats
from aigw_common.settings import Settings
from aigw_gateway.app import BUS, GATEWAY_ID, LOADER, POOLS
from aigw_gateway.app import create_app as gateway_app
from aigw_gateway.keystate import KeyReporter, KeyStateWatcher
from aigw_keypool.app import create_app as keypool_app
from aigw_registry.app import create_app as registry_app
from aigw_testing.upstream import MockUpstream
from aigw_testing.wait import eventually

CHAT = "openai/chatcompletions/simple"
KEYS = ["sk-fleet-one-1111", "sk-fleet-two-2222", "sk-fleet-three-3333"]
PROPAGATION = 1.0  # the contract: every replica skips a marked key within a second


@dataclass
class Gateway:
    name: str
    url: str
    app: web.Application
    client: openai.AsyncOpenAI
    extras: list[Any] = field(default_factory=list)

    def state(self, provider_id: str, key_id: str) -> str:
        """As the hot path sees it: a cooling key whose time is up is usable."""
        h = self.app[POOLS].health(provider_id, key_id)
        return "valid" if h.state == "cooling" and h.until <= time.time() else h.state


@dataclass
class Fleet:
    apps: Any
    settings: Callable[..., Settings]
    http: aiohttp.ClientSession
    mock: MockUpstream
    owner: str
    registry_url: str = ""
    keypool_url: str = ""
    keypool: web.Application | None = None
    gateways: dict[str, Gateway] = field(default_factory=dict)
    provider: dict[str, Any] = field(default_factory=dict)

    async def admin(self, method: str, path: str, body: Any = None, *, base: str | None = None) -> Any:
        async with self.http.request(method, (base or self.registry_url) + path, json=body,
                                     headers={"Authorization": f"Bearer {self.owner}"}) as r:
            data = await r.json(content_type=None) if r.status != 204 else None
            assert r.status < 300, f"{method} {path}: {r.status} {data}"
            return data

    async def ready(self, url: str) -> None:
        async def ok() -> bool:
            try:
                async with self.http.get(url + "/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False
        await eventually(ok, 15, f"{url} ready")

    async def start_keypool(self) -> None:
        self.keypool = keypool_app(self.settings())
        self.keypool_url = await self.apps.start(self.keypool)
        await self.ready(self.keypool_url)

    async def stop_keypool(self) -> None:
        assert self.keypool is not None
        await self.apps.stop(self.keypool)
        self.keypool = None

    async def start_gateway(self, name: str) -> Gateway:
        app = gateway_app(self.settings())
        url = await self.apps.start(app)
        gw = Gateway(name, url, app, openai.AsyncOpenAI(base_url=f"{url}/fleet/v1", api_key=self.owner, max_retries=0))
        gw.extras = await _wire_keystate(app)
        await self.ready(url)
        await eventually(lambda: "fleet" in app[LOADER].current.by_name, 10, f"gateway {name} has the provider")
        self.gateways[name] = gw
        return gw

    async def stop_all(self) -> None:
        for gw in self.gateways.values():
            for x in gw.extras:
                await x.stop()
            await gw.client.close()

    @property
    def pid(self) -> str:
        return self.provider["id"]

    def kid(self, i: int) -> str:
        return self.provider["keys"][i]["id"]

    async def refresh_provider(self) -> None:
        self.provider = await self.admin("GET", f"/api/v2/ai/providers/{self.pid}")

    async def chat(self, gw: str, n: int = 1) -> None:
        for _ in range(n):
            r = await self.gateways[gw].client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
            assert r.choices[0].message.content

    def everyone(self, key: int, state: str) -> Callable[[], bool]:
        return lambda: all(g.state(self.pid, self.kid(key)) == state for g in self.gateways.values())

    async def health(self) -> dict[str, Any]:
        return await self.admin("GET", f"/api/v2/ai/providers/{self.pid}/keys/health", base=self.keypool_url)


async def _wire_keystate(app: web.Application) -> list[Any]:
    """Start the watcher and reporter unless the gateway app already runs them (the lead wires them in app.py)."""
    if any(isinstance(getattr(o, "__self__", None), KeyReporter) for o in app[POOLS].observers):
        return []
    watcher = KeyStateWatcher(app[BUS], app[POOLS])
    await watcher.start()
    reporter = KeyReporter(app[BUS], app[GATEWAY_ID])
    app[POOLS].observers.append(reporter.observe)
    await reporter.start()
    return [reporter, watcher]


@pytest.fixture
async def fleet_factory(apps, make_settings, database_url: str, mock_upstream: MockUpstream,  # type: ignore[no-untyped-def]
                        ) -> AsyncIterator[Callable[..., Any]]:
    owner = "aigw_boot_keypool_fleet_owner_token_0001"
    fleets: list[Fleet] = []
    async with aiohttp.ClientSession() as http:
        async def make(nats_url: str | None = None) -> Fleet:
            env = {"AIGW_DATABASE_URL": database_url, "AIGW_BOOTSTRAP_TOKEN": owner}
            if nats_url:
                env["AIGW_NATS_URL"] = nats_url
            f = Fleet(apps, lambda: make_settings(**env), http, mock_upstream, owner)
            fleets.append(f)
            reg = registry_app(f.settings(), relay_poll=0.2)
            f.registry_url = await apps.start(reg)
            await f.ready(f.registry_url)
            f.provider = await f.admin("POST", "/api/v2/ai/providers", {
                "name": "fleet", "type": "openai", "base_url": mock_upstream.url + "/v1", "keys": KEYS})
            mock_upstream.play(CHAT)
            await f.start_keypool()
            await f.start_gateway("a")
            await f.start_gateway("b")
            return f

        yield make
        for f in fleets:
            await f.stop_all()
            await apps.stop_all()  # gateways and keypool before the database goes


async def test_marks_spread_across_the_fleet_and_survive_a_keypool_restart(fleet_factory):
    f: Fleet = await fleet_factory()
    mock = f.mock

    # key 1 answers 401 to gateway A; gateway B stops using it within a second, without ever trying it
    mock.on_key(KEYS[0], 401)
    await f.chat("a")
    assert mock.count_by_key[KEYS[0]] == 1 and mock.count_by_key[KEYS[1]] == 1
    took = await eventually(lambda: f.gateways["b"].state(f.pid, f.kid(0)) == "revoked", PROPAGATION,
                            "gateway B sees key 1 revoked")
    print(f"\nrevoke propagated to gateway B in {took * 1000:.0f} ms")
    await f.chat("b", 3)
    assert mock.count_by_key[KEYS[0]] == 1, "gateway B sent a request to the revoked key"

    # key 2 answers 429 with Retry-After: 2; both skip it, then use it again once the cooldown ends
    mock.on_key(KEYS[1], 429, {"Retry-After": "2"})
    await f.chat("a")
    cooled_at = time.time()
    await eventually(f.everyone(1, "cooling"), PROPAGATION, "every gateway sees key 2 cooling")
    mock.clear_key(KEYS[1])  # it would answer again; the gateways must still wait out the cooldown
    n2 = mock.count_by_key[KEYS[1]]
    await f.chat("b", 2)
    await f.chat("a", 2)
    assert mock.count_by_key[KEYS[1]] == n2, "a cooling key was used"
    assert mock.count_by_key[KEYS[2]] >= 4
    await asyncio.sleep(max(0.0, cooled_at + 2.1 - time.time()))
    await f.chat("a")
    await f.chat("b")
    assert mock.count_by_key[KEYS[1]] == n2 + 2, "key 2 not used again after its cooldown"
    assert time.time() - cooled_at < 6

    # keypool restarted mid-run: a mark made while it is down is applied when it returns; key 1 stays revoked
    await f.stop_keypool()
    mock.on_key(KEYS[1], 401)
    await f.chat("a")
    await asyncio.sleep(0.3)
    assert f.gateways["b"].state(f.pid, f.kid(1)) == "valid"  # nobody told B yet
    await f.start_keypool()
    await eventually(lambda: f.gateways["b"].state(f.pid, f.kid(1)) == "revoked", 20, "mark applied after restart")
    n = mock.count_by_key[KEYS[1]]
    await f.chat("b", 2)
    assert mock.count_by_key[KEYS[1]] == n and mock.count_by_key[KEYS[0]] == 1
    body = await f.health()
    assert [k["state"] for k in body["keys"]] == ["revoked", "revoked", "valid"]

    async def reported() -> bool:  # stats live in keypool's memory: rebuilt from reports after the restart
        return (await f.health())["keys"][2]["successes_1m"] >= 2
    await eventually(reported, 3, "gateway reports reach keypool")

    # a gateway that starts late loads the state before it serves: it never tries the revoked keys
    c = await f.start_gateway("c")
    assert c.state(f.pid, f.kid(0)) == "revoked" and c.state(f.pid, f.kid(1)) == "revoked"
    await f.chat("c", 2)
    assert mock.count_by_key[KEYS[0]] == 1 and mock.count_by_key[KEYS[1]] == n

    # key 1 replaced through the registry API: every gateway uses the new key
    mock.clear_key(KEYS[0])
    mock.clear_key(KEYS[1])
    await f.admin("DELETE", f"/api/v2/ai/providers/{f.pid}/keys/{f.kid(0)}")
    await f.admin("POST", f"/api/v2/ai/providers/{f.pid}/keys", {"api_key": "sk-fleet-new-4444", "position": 0})
    await f.refresh_provider()
    assert f.provider["keys"][0]["hint"].endswith("4444")
    for g in f.gateways.values():
        await eventually(lambda g=g: f.kid(0) in {k.id for k in g.app[LOADER].current.by_name["fleet"].pool.keys},
                         5, f"gateway {g.name} has the new key")
    for name in f.gateways:
        await f.chat(name)
    assert mock.count_by_key["sk-fleet-new-4444"] == len(f.gateways)
    body = await f.health()
    assert body["keys"][0]["id"] == f.kid(0) and body["keys"][0]["state"] == "valid"


async def test_gateways_keep_serving_through_a_nats_restart_and_converge(fleet_factory, tmp_path):
    server = EmbeddedNats(tmp_path / "nats")
    url = await server.start()
    try:
        f: Fleet = await fleet_factory(url)
        mock = f.mock
        mock.on_key(KEYS[0], 401)
        await f.chat("a")
        await eventually(f.everyone(0, "revoked"), PROPAGATION, "key 1 revoked everywhere")
        await f.chat("b")  # B has verified the token too: identities are cached, NATS is not asked per request

        await server.stop()
        await eventually(lambda: not f.gateways["b"].app[BUS].connected, 10, "gateway B sees NATS gone")
        # both gateways serve from what they knew: key 1 stays skipped
        n0 = mock.count_by_key[KEYS[0]]
        await f.chat("a", 2)
        await f.chat("b", 2)
        assert mock.count_by_key[KEYS[0]] == n0

        await server.start()
        for g in f.gateways.values():
            await eventually(lambda g=g: g.app[BUS].connected, 15, f"gateway {g.name} reconnected")
        await f.ready(f.keypool_url)
        # after the restart a new mark spreads as before, and the old state is still there
        mock.on_key(KEYS[1], 429, {"Retry-After": "30"})

        async def mark_through_a() -> bool:
            try:
                await f.chat("a")
            except openai.APIError:
                return False
            return True
        await eventually(mark_through_a, 10, "gateway A serving")
        await eventually(f.everyone(1, "cooling"), 5, "key 2 cooling everywhere after the NATS restart")
        n1 = mock.count_by_key[KEYS[1]]
        await f.chat("b", 2)
        assert mock.count_by_key[KEYS[1]] == n1 and mock.count_by_key[KEYS[0]] == n0
        states = [k["state"] for k in (await f.health())["keys"]]
        assert states == ["revoked", "cooling", "valid"]
    finally:
        await server.stop()


async def test_reset_returns_a_revoked_key_to_every_gateway_within_a_second(fleet_factory):
    """POST …/keys/{keyId}/reset on keypool: audited in the registry's log, and every gateway uses the key again."""
    f: Fleet = await fleet_factory()
    mock = f.mock
    mock.on_key(KEYS[0], 401, times=1)  # the provider refused it once (a transient auth glitch, say)
    await f.chat("a")
    await eventually(f.everyone(0, "revoked"), PROPAGATION, "key 1 revoked everywhere")
    n = mock.count_by_key[KEYS[0]]
    await f.chat("b")
    assert mock.count_by_key[KEYS[0]] == n

    t0 = time.monotonic()
    body = await f.admin("POST", f"/api/v2/ai/providers/fleet/keys/{f.kid(0)}/reset", base=f.keypool_url)
    assert body["id"] == f.kid(0) and body["state"] == "valid" and body["reason"] == "reset"
    took = await eventually(f.everyone(0, "valid"), PROPAGATION, "every gateway uses key 1 again")
    print(f"\nreset reached every gateway in {(time.monotonic() - t0) * 1000:.0f} ms (wait {took * 1000:.0f} ms)")
    await f.chat("a")
    await f.chat("b")
    assert mock.count_by_key[KEYS[0]] == n + 2
    health = await f.health()
    assert health["keys"][0]["state"] == "valid" and health["keys"][0]["reason"] == "reset"
    # the same through `aigw admin keys reset|health`
    import io
    import json

    from aigw_common.admin import main as admin_main

    mock.on_key(KEYS[0], 401, times=1)
    await f.chat("a")
    await eventually(f.everyone(0, "revoked"), PROPAGATION, "key 1 revoked again")
    outs = []
    for verb in (["reset", "fleet", f.kid(0)], ["health", "fleet"]):
        buf = io.StringIO()
        argv = ["--registry-url", f.registry_url, "--keypool-url", f.keypool_url, "--token", f.owner, "keys", *verb]
        assert await asyncio.to_thread(admin_main, argv, {}, stdout=buf) == 0
        outs.append(json.loads(buf.getvalue()))
    assert outs[0]["state"] == "valid" and outs[1]["keys"][0]["reason"] == "reset"
    await eventually(f.everyone(0, "valid"), PROPAGATION, "every gateway uses key 1 again (admin CLI)")
    audit = (await f.admin("GET", "/api/v2/audit-logs", None))["audit_logs"]
    resets = [a for a in audit if a["action"] == "provider_key.reset"]
    assert len(resets) == 2 and {r["resource_id"] for r in resets} == {f.kid(0)}
    assert all(r["before"]["state"] == "revoked" and r["after"]["state"] == "valid" for r in resets)
