"""``AIGW_GATEWAY_WORKERS=2``: two gateway processes share one port under a supervisor that restarts a
dead worker and drains all on SIGTERM. The gateway runs as a real child process, the rest in this process.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from aigw_testing.system import ServiceProcess, System
from aigw_testing.wait import eventually

SERVICES = ("registry", "keypool", "budget")
BODY = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "how many angels?"}]}


def children(pid: int) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone in between
            if int(stat[1]) == pid:
                out.add(int(d))
    return out


def listeners(port: int) -> int:
    """Sockets listening on ``port`` (``/proc/net/tcp``: state 0A), one per worker that is serving."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A")


async def burst(url: str, token: str, n: int) -> list[int]:
    """``n`` requests, each on a new connection (the kernel spreads connections, not requests)."""
    async def one() -> int:
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http, \
                    http.post(url + "/openai/v1/chat/completions", json=BODY,
                              headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                return r.status
        except aiohttp.ClientError:
            return 0
    return list(await asyncio.gather(*(one() for _ in range(n))))


async def all_ok(url: str, token: str, n: int) -> bool:
    return all(code == 200 for code in await burst(url, token, n))


@pytest.mark.timeout(180)
async def test_two_workers_share_the_port_restart_and_drain(start_system, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=SERVICES)
    m = await s.member("workers")
    gw = await ServiceProcess("gateway", {**s.env, "AIGW_GATEWAY_WORKERS": "2"}, tmp_path / "gw.log").start()
    try:
        await eventually(lambda: len(children(gw.pid)) == 2, 30, "two worker processes")
        first = children(gw.pid)
        await eventually(lambda: listeners(gw.port) == 2, 60, "both workers listening on the one port")

        # both workers are ready and serve: every request answered, usage from two distinct gateway ids
        await eventually(lambda: all_ok(gw.url, m.token, 4), 30, "both workers serving")
        assert await burst(gw.url, m.token, 40) == [200] * 40
        await eventually(lambda: len({e.gateway_id for e in s.usage.started()}) == 2, 15,
                         "usage from both workers (distinct lease holders)")

        # a worker killed with SIGKILL is replaced, and the port keeps serving meanwhile
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: len(children(gw.pid) - first) == 1 and len(children(gw.pid)) == 2, 30,
                         "the dead worker replaced")
        await eventually(lambda: listeners(gw.port) == 2, 60, "the new worker listening")
        await eventually(lambda: all_ok(gw.url, m.token, 10), 30, "serving after the restart")

        # SIGTERM drains every worker and the supervisor exits cleanly
        workers = children(gw.pid)
        assert await gw.stop(within=60) == 0
        assert all(_state(p) in ("gone", "Z") for p in workers)
    finally:  # a failed run must not leave the supervisor and its workers behind
        await gw.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
