"""``make bench``: gateway overhead against a bare aiohttp pass-through proxy, in one run.

Three paths to the same mock upstream (a separate process replaying a recorded
OpenAI chat completion): direct, through a bare aiohttp proxy, and through the
gateway (recording to real JetStream, metrics and key pool on). For each
scenario it reports throughput, latency and the CPU time the proxy process
spent per request (from /proc), and the gateway/bare CPU ratio — the number
the target (≤ 1.5) is about.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from aigw_common.bus import Bus, Subjects
from aigw_common.crypto import generate_key
from aigw_testing.infra import DEFAULT_NATS, reachable
from aigw_testing.plugin import cleanup_jetstream
from aigw_testing.registry_stub import RegistryStub

ROOT = Path(__file__).resolve().parents[1]
CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


async def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Result:
    path: str
    scenario: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_req: float | None


async def drive(url: str, token: str, *, stream: bool, concurrency: int, total: int, pid: int | None) -> tuple[int, int, float, list[float], float | None]:
    body = b'{"model":"gpt-4.1","messages":[{"role":"user","content":"how many angels"}]' + (b',"stream":true}' if stream else b"}")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    lat: list[float] = []
    errors = 0
    remaining = total
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def one() -> None:
            nonlocal errors
            t = time.perf_counter()
            async with s.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            lat.append(time.perf_counter() - t)

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one()

        # warm up (connections, identity cache, JIT-free but caches)
        for _ in range(min(50, total // 10)):
            await one()
        lat.clear()
        errors = 0
        remaining = total
        c0 = cpu_seconds(pid) if pid else None
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        cpu = (cpu_seconds(pid) - c0) if pid and c0 is not None else None
    return total, errors, elapsed, lat, cpu


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def main_async(args: argparse.Namespace) -> int:
    nats_url = os.environ.get("AIGW_TEST_NATS_URL", DEFAULT_NATS)
    procs: list[subprocess.Popen[bytes]] = []
    embedded = None
    if not reachable(nats_url):
        from aigw_common.embedded import EmbeddedNats

        embedded = EmbeddedNats(tempfile.mkdtemp(prefix="aigw-bench-nats-"))
        nats_url = await embedded.start()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    key = generate_key()
    bus = Bus(servers=(nats_url,), name="bench", subjects=Subjects(prefix))
    try:
        mock_port, bare_port, gw_port = free_port(), free_port(), free_port()
        mock_url = f"http://127.0.0.1:{mock_port}"
        procs.append(spawn(["-m", "bench.servers", "mock", str(mock_port)]))
        procs.append(spawn(["-m", "bench.servers", "bare", str(bare_port), mock_url]))
        await bus.start(wait=5)
        import base64

        reg = await RegistryStub(bus, (base64.b64decode(key),)).start()
        reg.put_provider("openai", "openai", mock_url + "/v1", ["sk-bench-key-1", "sk-bench-key-2"])
        user = reg.add_user()
        data_dir = tempfile.mkdtemp(prefix="aigw-bench-")
        gw_env = {"AIGW_NATS_URL": nats_url, "AIGW_BUS_PREFIX": prefix, "AIGW_ENCRYPTION_KEYS": key,
                  "AIGW_GATEWAY_ADDR": f"127.0.0.1:{gw_port}", "AIGW_DATA_DIR": data_dir, "AIGW_LOG_LEVEL": "WARNING"}
        gw_proc = spawn(["-m", "aigw_common.cli", "gateway"], gw_env)
        procs.append(gw_proc)
        gw_url = f"http://127.0.0.1:{gw_port}"
        for u in (mock_url + "/ping", f"http://127.0.0.1:{bare_port}/ping", gw_url + "/readyz"):
            await wait_http(u)
        # wait for the gateway to load the provider set
        for _ in range(100):
            async with aiohttp.ClientSession() as s, s.get(gw_url + "/metrics") as r:
                if "aigw_gateway_provider_set_revision 1.0" in await r.text():
                    break
            await asyncio.sleep(0.1)

        paths = {
            "direct": (mock_url + "/v1/chat/completions", None),
            "bare": (f"http://127.0.0.1:{bare_port}/v1/chat/completions", procs[1].pid),
            "gateway": (gw_url + "/openai/v1/chat/completions", gw_proc.pid),
        }
        scenarios = [("non-stream c1", False, 1), ("non-stream c64", False, 64), ("stream c16", True, 16)]
        if args.only:
            scenarios = [sc for sc in scenarios if sc[0] == args.only]
        results: list[Result] = []
        spy = None
        if args.profile:  # sample the gateway with py-spy while it is measured
            cmd = ["py-spy", "record", "-p", str(gw_proc.pid), "-o", args.profile, "-f", "raw", "-r", "200"]
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220 - not waited on
        for scen, stream, conc in scenarios:
            n = args.requests if conc > 1 else max(200, args.requests // 4)
            for name, (url, pid) in paths.items():
                total, errors, secs, lat, cpu = await drive(url, user.token, stream=stream, concurrency=conc, total=n, pid=pid)
                lat.sort()
                results.append(Result(name, scen, total, errors, secs, statistics.median(lat) * 1000,
                                      lat[int(len(lat) * 0.99) - 1] * 1000, cpu * 1000 / total if cpu is not None else None))
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        print_report(results)
        bad = [r for r in results if r.errors]
        return 1 if bad else 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        await bus.close()
        await cleanup_jetstream(nats_url, prefix)
        if embedded is not None:
            await embedded.stop()


def print_report(results: list[Result]) -> None:
    print(f"{'scenario':<16}{'path':<9}{'req':>7}{'err':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}{'vs bare':>9}")
    by = {(r.scenario, r.path): r for r in results}
    for r in results:
        ratio = ""
        bare = by.get((r.scenario, "bare"))
        if r.path == "gateway" and bare and bare.cpu_ms_per_req and r.cpu_ms_per_req:
            ratio = f"{r.cpu_ms_per_req / bare.cpu_ms_per_req:.2f}x"
        cpu = f"{r.cpu_ms_per_req:.3f}" if r.cpu_ms_per_req is not None else "-"
        print(f"{r.scenario:<16}{r.path:<9}{r.requests:>7}{r.errors:>5}{r.requests / r.seconds:>9.0f}"
              f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{cpu:>12}{ratio:>9}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=3000, help="requests per scenario and path (c1 runs a quarter)")
    ap.add_argument("--only", help="run one scenario, e.g. 'non-stream c1'")
    ap.add_argument("--profile", help="write a py-spy profile (raw, collapsed stacks) of the gateway to this file")
    sys.exit(asyncio.run(main_async(ap.parse_args())))


if __name__ == "__main__":
    main()
