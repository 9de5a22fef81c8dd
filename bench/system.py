"""The system under test, started the way ``aigw dev`` starts it, and set up the way users run it.

:class:`BenchSystem` runs :class:`aigw_common.dev.DevStack` in a temporary state
dir on free ports (embedded Postgres and NATS, so their processes are ours to
measure), then, through the admin APIs: per upstream latency an OpenAI and an
Anthropic provider (``openai<ms>``, ``anthropic<ms>``) with three pooled keys
each, a member in a group whose budget is in force, and the seeded price table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from aigw_common.dev import DevStack
from aigw_common.embedded import free_port, stop_process
from aigw_common.settings import Settings

from .procs import tree

ROOT = Path(__file__).resolve().parents[1]
SERVICE_PORTS = ("gateway", "registry", "keypool", "budget", "chatd", "console")


def _known(var: str, env: dict[str, str], value: str = "true") -> bool:
    """Whether this checkout's settings know ``var`` (an unknown AIGW_ variable is a startup error)."""
    try:
        Settings.from_env({**env, var: value})
    except Exception:  # any refusal means "not known here"; the bench then leaves the variable out
        return False
    return True


class BenchSystem:
    def __init__(self, tmp: Path, *, workers: int = 1) -> None:
        self.tmp = tmp
        self.workers = workers
        self.stack: DevStack | None = None
        self.member_token = ""
        self.owner = ""
        self.urls: dict[str, str] = {}
        self._extra: subprocess.Popen[bytes] | None = None

    @property
    def gateway_url(self) -> str:
        return self.urls["gateway"]

    @property
    def budget_metrics_url(self) -> str:
        return self.urls["budget"] + "/metrics"

    async def start(self, mocks: dict[int, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
        for s in SERVICE_PORTS:
            port = free_port()
            env[f"AIGW_{s.upper()}_ADDR"] = f"127.0.0.1:{port}"
            self.urls[s] = f"http://127.0.0.1:{port}"
        env.update({"AIGW_LOG_LEVEL": "WARNING", "AIGW_LOG_FORMAT": "json"})
        if self.workers != 1:
            env["AIGW_GATEWAY_WORKERS"] = str(self.workers)
        probe = {k: v for k, v in env.items() if k != "AIGW_CONSOLE_ADDR"}
        if not _known("AIGW_CONSOLE_ADDR", probe, env["AIGW_CONSOLE_ADDR"]):  # an address, not "true"
            env.pop("AIGW_CONSOLE_ADDR")
        for var in ("AIGW_ALLOW_PRIVATE_UPSTREAMS", "AIGW_ALLOW_LINK_LOCAL_BASE_URLS"):
            if _known(var, {k: v for k, v in env.items() if k in probe}):
                env[var] = "true"
        self.stack = DevStack(self.tmp / "state", env)
        await self.stack.start()
        self.owner = self.stack.token
        await self._setup(mocks)

    async def _api(self, http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
        async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {self.owner}"}) as r:
            data = await r.json(content_type=None) if r.status != 204 else None
            if r.status >= 300:
                raise RuntimeError(f"bench setup: {method} {url} -> {r.status} {data}")
            return data

    async def _setup(self, mocks: dict[int, str]) -> None:
        reg, bud = self.urls["registry"], self.urls["budget"]
        async with aiohttp.ClientSession() as http:
            for lat, mock in mocks.items():
                keys = [f"zzbench-{lat}-key-{i}" for i in range(3)]
                await self._api(http, "POST", f"{reg}/api/v2/ai/providers",
                                {"name": f"openai{lat}", "type": "openai", "base_url": mock + "/v1", "keys": keys})
                await self._api(http, "POST", f"{reg}/api/v2/ai/providers",
                                {"name": f"anthropic{lat}", "type": "anthropic", "base_url": mock, "keys": keys})
            user = await self._api(http, "POST", f"{reg}/api/v2/users", {"username": "bench", "roles": ["member"]})
            group = await self._api(http, "POST", f"{reg}/api/v2/groups", {"name": "bench-team"})
            await self._api(http, "PUT", f"{reg}/api/v2/groups/{group['id']}/members/{user['id']}")
            tok = await self._api(http, "POST", f"{reg}/api/v2/users/{user['id']}/tokens", {"name": "bench"})
            self.member_token = tok["token"]
            # a budget in force: admission runs on every request (10,000 USD: the bench never reaches it)
            await self._api(http, "PUT", f"{bud}/api/v2/groups/{group['id']}/ai/budget",
                            {"spend_limit_micros": 10_000 * 1_000_000, "period": "month"})
        for lat in mocks:
            await self.wait_serving(self.gateway_url, lat)

    async def wait_serving(self, gateway: str, lat: int, timeout: float = 60.0) -> None:
        """Until both providers answer through the gateway (provider set, identity and budget all loaded)."""
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
        deadline = time.monotonic() + timeout
        last = ""
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.post(f"{gateway}/openai{lat}/v1/chat/completions", json=body,
                                         headers={"Authorization": f"Bearer {self.member_token}"}) as r:
                        last = f"{r.status} {(await r.read())[:200]!r}"
                        if r.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"bench: gateway {gateway} never served provider openai{lat}: {last}")

    def _child(self, name: str) -> int | None:
        assert self.stack is not None
        return next((c.proc.pid for c in self.stack.children if c.name == name), None)

    def gateway_pids(self) -> list[int]:
        pid = self._child("gateway")
        return tree(pid) if pid else []

    def components(self) -> dict[str, list[int]]:
        """Every process of the system by name (roots of their trees), for the per-process breakdown."""
        assert self.stack is not None
        out = {c.name: [c.proc.pid] for c in self.stack.children}
        for name, server in (("nats", self.stack.nats), ("postgres", self.stack.pg)):
            if server is not None and server.proc is not None:
                out[name] = [server.proc.pid]
        return out

    def control_pids(self) -> list[int]:
        """Every other process of the system: the other services, NATS and Postgres (roots of their trees)."""
        assert self.stack is not None
        out = [c.proc.pid for c in self.stack.children if c.name != "gateway"]
        for server in (self.stack.nats, self.stack.pg):
            if server is not None and server.proc is not None:
                out.append(server.proc.pid)
        return out

    async def extra_gateway(self, workers: int, lat: int) -> tuple[str, list[int]]:
        """A second gateway on the same system with ``workers`` worker processes; (URL, its pids)."""
        assert self.stack is not None
        port = free_port()
        env = {**self.stack.child_env("gateway"), "AIGW_GATEWAY_ADDR": f"127.0.0.1:{port}",
               "AIGW_DATA_DIR": str(self.tmp / f"gw-extra-{workers}")}
        if workers != 1:
            env["AIGW_GATEWAY_WORKERS"] = str(workers)
        cmd = [sys.executable, "-m", "aigw_common.cli", "gateway"]
        self._extra = subprocess.Popen(cmd, env=env, cwd=ROOT,  # noqa: ASYNC220 - waited for over HTTP, not here
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        await self.wait_serving(url, lat)
        return url, tree(self._extra.pid)

    async def stop_extra_gateway(self) -> None:
        if self._extra is not None:
            await stop_process(self._extra, signal.SIGTERM, 30.0, "gateway")
            self._extra = None

    async def stop(self) -> None:
        await self.stop_extra_gateway()
        if self.stack is not None:
            await self.stack.stop()
