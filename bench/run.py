"""``make bench``: what aigw costs per request with the whole system running, against a bare aiohttp proxy.

One run starts, each as its own process: the mock upstream (synthetic bodies,
0 or 50 ms before the first byte), a bare aiohttp pass-through proxy, and the
real system the way ``aigw dev`` starts it (embedded Postgres and NATS, then
registry, keypool, budget, chatd, gateway… as child processes). It then sets
up what users run — an OpenAI and an Anthropic provider with three pooled keys
each, a member in a group with a group budget in force and the seeded price
table — and drives each scenario through the bare proxy and through the
gateway (and straight at the mock, for the latency floor).

Per scenario and path it reports req/s, p50/p99 latency, time to first byte
for streams, CPU ms per request of the proxy process, and CPU ms per request
of the whole system (gateway + every service + NATS + Postgres, from /proc,
measured until the budget service has recorded the run's usage), with the
ratios against the bare proxy. The proxy under test is pinned to core 0 and
everything else to the other cores when the machine has them. Each cell is
``--repeat`` runs (2 by default) taken in turns with the other paths and pooled,
so a slow stretch of a shared machine does not land on one path alone.

    make bench                         # every scenario, both latencies
    python -m bench.run --seconds 3 --only 'chat c64'
    python -m bench.run --profile /tmp/gw.txt   # py-spy (if on PATH) samples the gateway
    python -m bench.run --cpu-profile /tmp/prof  # CPU-time samples of the gateway and the bare proxy
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from aigw_common.cli import run_loop
from aigw_common.embedded import free_port
from aigw_common.settings import Settings
from aigw_gateway.upstream import UpstreamClient

from . import procs
from .system import BenchSystem

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"openai": "gpt-4.1", "anthropic": "claude-sonnet-4-5"}


@dataclass(frozen=True)
class Scenario:
    name: str
    api: str  # chat | messages | responses
    stream: bool
    concurrency: int

    def request(self, token: str) -> tuple[str, bytes, dict[str, str]]:
        """(path below the proxy's provider root, body, headers)."""
        s = b',"stream":true' if self.stream else b""
        if self.api == "messages":
            body = (b'{"model":"claude-sonnet-4-5","max_tokens":256,'
                    b'"messages":[{"role":"user","content":"how many angels"}]' + s + b"}")
            return "/v1/messages", body, {"x-api-key": token, "anthropic-version": "2023-06-01",
                                          "content-type": "application/json"}
        if self.api == "responses":
            return "/v1/responses", b'{"model":"gpt-4.1","input":"how many angels"' + s + b"}", {
                "authorization": f"Bearer {token}", "content-type": "application/json"}
        return "/v1/chat/completions", (b'{"model":"gpt-4.1","messages":[{"role":"user","content":"how many angels"}]'
                                        + s + b"}"), {"authorization": f"Bearer {token}", "content-type": "application/json"}


SCENARIOS = [
    Scenario("chat c1", "chat", False, 1),
    Scenario("chat c64", "chat", False, 64),
    Scenario("chat stream c16", "chat", True, 16),
    Scenario("messages c64", "messages", False, 64),
    Scenario("responses stream c16", "responses", True, 16),
]


@dataclass
class Result:
    scenario: str
    latency_ms: int
    path: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    ttfb_p50_ms: float | None
    cpu_ms: float | None  # the proxy process (tree) per request
    system_ms: float | None  # every process of the system per request
    first_error: str = ""
    parts: dict[str, float] = field(default_factory=dict)  # CPU ms per request by component (gateway path)


@dataclass
class _Pool:
    """The runs of one cell added up: requests, seconds and CPU summed (CPU per request is total CPU over
    total requests), latencies pooled for the percentiles."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    lat: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    cpu: float | None = None
    system: float | None = None
    first_error: str = ""
    parts: dict[str, float] = field(default_factory=dict)

    def add(self, run: tuple[int, int, float, list[float], list[float], float | None, float | None, str],
            parts: dict[str, float]) -> None:
        n, err, secs, lat_s, ttfb, cpu, sys_cpu, first = run
        self.requests += n
        self.errors += err
        self.seconds += secs
        self.lat += lat_s
        self.ttfb += ttfb
        if cpu is not None:
            self.cpu = (self.cpu or 0.0) + cpu
        if sys_cpu is not None:
            self.system = (self.system or 0.0) + sys_cpu
        self.first_error = self.first_error or first
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v

    def result(self, scen: Scenario, lat: int, path: str, name: str | None = None) -> Result:
        n = self.requests
        self.lat.sort()
        self.ttfb.sort()
        return Result(
            name or scen.name, lat, path, n, self.errors, self.seconds,
            statistics.median(self.lat) * 1000 if self.lat else 0.0,
            self.lat[max(0, int(len(self.lat) * 0.99) - 1)] * 1000 if self.lat else 0.0,
            statistics.median(self.ttfb) * 1000 if (self.ttfb and scen.stream) else None,
            self.cpu * 1000 / n if (self.cpu is not None and n) else None,
            self.system * 1000 / n if (self.system is not None and n) else None, self.first_error,
            {k: v * 1000 / n for k, v in self.parts.items()} if n else {})


@dataclass
class Target:
    """One path under test: where to send, and which processes to charge."""

    name: str
    base: str  # URL the scenario's path is appended to, per API family
    anthropic_base: str
    proxy_pids: list[int] = field(default_factory=list)
    system_pids: list[int] = field(default_factory=list)
    components: dict[str, list[int]] = field(default_factory=dict)  # name -> roots, for the breakdown
    idle: dict[str, float] = field(default_factory=dict)  # name -> CPU s per wall s with no traffic (subtracted)


async def drive(target: Target, scen: Scenario, token: str, seconds: float,
                settle: Settle | None, parts: dict[str, float] | None = None,
                ) -> tuple[int, int, float, list[float], list[float], float | None, float | None, str]:
    path, body, headers = scen.request(token)
    url = URL((target.anthropic_base if scen.api == "messages" else target.base) + path)
    lat: list[float] = []
    ttfb: list[float] = []
    errors = 0
    first_error = ""
    # the load generator shares a core with the mock and the control plane: aiohttp's connector and parser
    # without ClientSession (the gateway's own lean client), so it takes as little of that core as it can
    client = UpstreamClient(aiohttp.TCPConnector(limit=scen.concurrency))
    hdrs = CIMultiDict(headers)
    connect = aiohttp.ClientTimeout(sock_connect=10)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(client.close)

        async def one() -> None:
            nonlocal errors, first_error
            t = time.perf_counter()
            try:
                async with asyncio.timeout(60):
                    r = await client.request("POST", url, hdrs, body, connect)
                    try:
                        await r.content.readany()
                        ttfb.append(time.perf_counter() - t)
                        rest = await r.content.read()
                    finally:
                        r.release()
                if r.status != 200:
                    errors += 1
                    first_error = first_error or f"{r.status} {rest[:200]!r}"
            except (aiohttp.ClientError, TimeoutError) as e:
                errors += 1
                first_error = first_error or repr(e)
            lat.append(time.perf_counter() - t)

        for _ in range(min(20, scen.concurrency * 2)):  # warm up: connections, identity cache, leases
            await one()
        lat.clear()
        ttfb.clear()
        errors, first_error = 0, ""
        stop_at = 0.0

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                await one()

        c0 = procs.tree_cpu(target.proxy_pids) if target.proxy_pids else None
        s0 = procs.tree_cpu(target.system_pids) if target.system_pids else None
        p0 = {k: procs.tree_cpu(v) for k, v in target.components.items()}
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        await asyncio.gather(*(worker() for _ in range(scen.concurrency)))
        elapsed = time.perf_counter() - t0
        cpu = procs.tree_cpu(target.proxy_pids) - c0 if c0 is not None else None
        if settle is not None:
            await settle.wait()
        window = time.perf_counter() - t0  # the control plane's background work in it is not the requests'
        background = sum(target.idle.values()) * window
        system = max(0.0, procs.tree_cpu(target.system_pids) - s0 - background) if s0 is not None else None
        if parts is not None:
            parts.update({k: max(0.0, procs.tree_cpu(v) - p0[k] - target.idle.get(k, 0.0) * window)
                          for k, v in target.components.items()})
    return len(lat), errors, elapsed, lat, ttfb, cpu, system, first_error


async def idle_rates(components: dict[str, list[int]], exclude: str, seconds: float = 3.0) -> dict[str, float]:
    """CPU seconds per second each process spends with no traffic (timers, heartbeats, Postgres' own work)."""
    await asyncio.sleep(1.0)  # let start-up work finish
    c0 = {k: procs.tree_cpu(v) for k, v in components.items() if k != exclude}
    await asyncio.sleep(seconds)
    return {k: (procs.tree_cpu(components[k]) - c0[k]) / seconds for k in c0}


async def at_rest(components: dict[str, list[int]], idle: dict[str, float], limit: float = 15.0) -> float:
    """Wait until the control plane spends no more than about its rate at rest (Postgres vacuuming and
    checkpointing after a heavy cell, the budget's tail): each run starts from rest, as a run on its own does,
    rather than sharing the load generator's core with the work of the runs before it. Returns the seconds waited."""
    rest = sum(idle.values())
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        c0 = sum(procs.tree_cpu(components[k]) for k in idle)
        await asyncio.sleep(0.5)
        if (sum(procs.tree_cpu(components[k]) for k in idle) - c0) / 0.5 <= rest * 1.5 + 0.005:
            break
    return time.monotonic() - t0


class Settle:
    """Waits until the budget service has recorded every usage event (its counter stops moving for longer than a
    quiet gateway holds usage, ``AIGW_USAGE_LINGER``, plus the budget consumer's own linger)."""

    def __init__(self, metrics_url: str, quiet: float) -> None:
        self.url = metrics_url
        self.quiet = quiet

    async def _count(self, http: aiohttp.ClientSession) -> float:
        async with http.get(self.url) as r:
            text = await r.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("aigw_budget_usage_events_total{"))

    async def wait(self, limit: float = 60.0) -> None:
        quiet = self.quiet
        async with aiohttp.ClientSession() as http:
            last, since, deadline = -1.0, time.monotonic(), time.monotonic() + limit
            while time.monotonic() < deadline:
                n = await self._count(http)
                if n != last:
                    last, since = n, time.monotonic()
                elif time.monotonic() - since >= quiet:
                    return
                await asyncio.sleep(0.1)


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def main_async(args: argparse.Namespace) -> int:
    cores = sorted(os.sched_getaffinity(0))
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="aigw-bench-"))
    os.chmod(tmp, 0o755)  # under root the embedded Postgres runs as an unprivileged user that must enter it
    procs_started: list[subprocess.Popen[bytes]] = []
    if args.cpu_profile:  # bench/cpuprof/sitecustomize.py, in every process we start; it arms itself in the proxies
        Path(args.cpu_profile).mkdir(parents=True, exist_ok=True)
        os.environ["BENCH_CPUPROF_DIR"] = str(Path(args.cpu_profile).resolve())
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "bench" / "cpuprof"),
                                                               os.environ.get("PYTHONPATH")) if p)
        notes.append(f"--cpu-profile: collapsed stacks (sampled on a 1 ms CPU-time timer) of the gateway and the bare "
                     f"proxy during their cells in {args.cpu_profile}/{{gateway,bare}}-PID.txt")
    system = BenchSystem(tmp, workers=1)
    try:
        mocks = {}
        for lat in args.latencies:
            port = free_port()
            procs_started.append(spawn(["-m", "bench.servers", "mock", str(port), str(lat)]))
            mocks[lat] = f"http://127.0.0.1:{port}"
        bare_ports = {lat: free_port() for lat in args.latencies}
        bares = {}
        for lat, port in bare_ports.items():
            p = spawn(["-m", "bench.servers", "bare", str(port), mocks[lat]])
            procs_started.append(p)
            bares[lat] = p
        for lat in args.latencies:
            await wait_http(mocks[lat] + "/ping")
            await wait_http(f"http://127.0.0.1:{bare_ports[lat]}/ping")
        print("bench: starting the system (embedded Postgres + NATS, every service)…", flush=True)
        await system.start(mocks)
        gw_pids = system.gateway_pids()
        control = system.control_pids()
        if len(cores) >= 2:
            procs.pin(gw_pids + [p.pid for p in bares.values()], {cores[0]})
            procs.pin(control + [p.pid for p in procs_started if p not in bares.values()], set(cores[1:]))
            # this process alone (the load generator): its tree holds the proxies too, which stay on core 0
            os.sched_setaffinity(0, set(cores[1:]))
            notes.append(f"proxy under test pinned to core {cores[0]}; load generator, mock and control plane on "
                         f"core(s) {','.join(map(str, cores[1:]))}")
            if len(cores) == 2:
                notes.append("only 2 cores: the load generator, the mock upstream and the whole control plane "
                             "share one core, so req/s at high concurrency is bounded by that core, not the proxy")
                # the usage pipeline can wait; the load generator's clock and the mock's answers cannot: at nice
                # 10 the control plane yields that core to them, so latency and time to first byte measure the
                # proxies rather than the queue behind Postgres (its CPU is counted all the same)
                procs.renice(control, 10)
                notes.append("the control plane runs at nice 10 on that core (it yields to the load generator and "
                             "the mock; its CPU still counts in sys/req)")
        else:
            notes.append("1 core: nothing can be kept apart; CPU per request still holds, req/s does not")
        results: list[Result] = []
        scenarios = [s for s in SCENARIOS if not args.only or s.name == args.only]
        spy = None
        if args.profile:
            if shutil.which("py-spy"):
                cmd = ["py-spy", "record", "-p", str(gw_pids[0]), "-o", args.profile, "-f", "raw", "-r", "200"]
                spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,  # noqa: ASYNC220 - stopped by SIGINT below
                                       stderr=open(args.profile + ".log", "wb"))  # noqa: ASYNC230 - closed with the process
            else:
                notes.append("--profile: py-spy is not on PATH (uv pip install py-spy)")
        settle = Settle(system.budget_metrics_url, Settings.from_env({}).usage_linger + 0.6)
        await settle.wait()  # the set-up's own requests recorded first: their batches are not "at rest"
        idle = await idle_rates(system.components(), exclude="gateway")
        notes.append("control plane at rest (subtracted from sys/req over each run's window): "
                     + ", ".join(f"{k} {v * 1000:.1f}" for k, v in sorted(idle.items()) if v) + " CPU ms/s")
        for lat in args.latencies:
            targets = [
                Target("direct", mocks[lat], mocks[lat]),
                Target("bare", f"http://127.0.0.1:{bare_ports[lat]}", f"http://127.0.0.1:{bare_ports[lat]}",
                       [bares[lat].pid], [bares[lat].pid]),
                Target("gateway", f"{system.gateway_url}/openai{lat}", f"{system.gateway_url}/anthropic{lat}",
                       gw_pids, gw_pids + control, system.components(), idle),
            ]
            for scen in scenarios:
                pooled: dict[str, _Pool] = {t.name: _Pool() for t in targets}
                # the paths take turns (direct, bare, gateway, direct, bare, …): a slow stretch of the machine
                # falls on each of them, not on one cell
                for rep in range(args.repeat):
                    for t in targets:
                        parts: dict[str, float] = {}
                        sampled = t.proxy_pids[:1] if args.cpu_profile else []
                        await at_rest(system.components(), idle)
                        for pid in sampled:
                            os.kill(pid, signal.SIGRTMIN + 1)
                        run = await drive(t, scen, system.member_token, args.seconds,
                                          settle if t.name == "gateway" else None, parts)
                        for pid in sampled:
                            os.kill(pid, signal.SIGRTMIN + 2)
                        pooled[t.name].add(run, parts)
                        n, err, secs, first = run[0], run[1], run[2], run[7]
                        print(f"  {scen.name:<22} {lat:>3} ms  {t.name:<8} {n / secs:>7.0f} req/s"
                              + (f"  (run {rep + 1}/{args.repeat})" if args.repeat > 1 else "")
                              + (f"  errors {err}: {first}" if err else ""), flush=True)
                results += [pooled[t.name].result(scen, lat, t.name) for t in targets]
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        if args.workers_row and len(cores) >= 2:
            results += await workers_row(system, args.latencies[0], args.seconds, cores)
        print_report(results, notes)
        return 1 if any(r.errors for r in results) else 0
    finally:
        for p in procs_started:
            p.terminate()
        await system.stop()
        for p in procs_started:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


async def workers_row(system: BenchSystem, lat: int, seconds: float, cores: list[int]) -> list[Result]:
    """req/s of chat c64 through a gateway with 1 and with 2 worker processes, each unpinned (all cores)."""
    out: list[Result] = []
    scen = Scenario("chat c64", "chat", False, 64)
    for n in (1, 2):
        url, pids = await system.extra_gateway(n, lat)
        procs.pin(pids, set(cores))
        os.sched_setaffinity(0, set(cores))
        t = Target(f"{n} worker" + ("s" if n > 1 else ""), f"{url}/openai{lat}", f"{url}/anthropic{lat}", pids)
        pool = _Pool()
        pool.add(await drive(t, scen, system.member_token, seconds, None), {})
        out.append(pool.result(scen, 0, t.name, name="workers chat c64"))
        await system.stop_extra_gateway()
    return out


def print_report(results: list[Result], notes: list[str]) -> None:
    print()
    hdr = (f"{'scenario':<22}{'lat':>5} {'path':<10}{'req':>7}{'err':>5}{'req/s':>8}{'p50':>8}{'p99':>8}"
           f"{'ttfb':>8}{'cpu/req':>9}{'ctl/req':>9}{'sys/req':>9}{'cpu x':>7}{'sys x':>7}")
    print(hdr)
    print("-" * len(hdr))
    by = {(r.scenario, r.latency_ms, r.path): r for r in results}
    for r in results:
        bare = by.get((r.scenario, r.latency_ms, "bare"))
        cx = sx = ""
        if r.path == "gateway" and bare and bare.cpu_ms and r.cpu_ms:
            cx = f"{r.cpu_ms / bare.cpu_ms:.2f}"
            if r.system_ms:
                sx = f"{r.system_ms / bare.cpu_ms:.2f}"

        ctl = r.system_ms - r.cpu_ms if (r.path == "gateway" and r.system_ms is not None
                                         and r.cpu_ms is not None) else None

        def f(v: float | None, w: int = 8, d: int = 2) -> str:
            return f"{v:>{w}.{d}f}" if v is not None else f"{'-':>{w}}"

        print(f"{r.scenario:<22}{r.latency_ms:>5} {r.path:<10}{r.requests:>7}{r.errors:>5}"
              f"{r.requests / r.seconds:>8.0f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}{f(r.ttfb_p50_ms)}"
              f"{f(r.cpu_ms, 9, 3)}{f(ctl, 9, 3)}{f(r.system_ms, 9, 3)}{cx:>7}{sx:>7}")
    print()
    print("lat: upstream latency before the first byte (ms); p50/p99/ttfb in ms; cpu/req: CPU ms per request of the")
    print("proxy process(es); ctl/req: the rest of the system (control plane + usage pipeline); sys/req: CPU ms per request of the whole system (gateway, registry, keypool, budget,")
    print("chatd, NATS, Postgres) until the usage is recorded, less what they spend at rest over that window;")
    print("cpu x / sys x: against the bare proxy's cpu/req.")
    for r in results:
        if r.parts:
            print(f"{r.scenario} @{r.latency_ms} ms, CPU ms/request by process: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in sorted(r.parts.items(), key=lambda kv: -kv[1])))
    added = []
    for r in results:
        d = by.get((r.scenario, r.latency_ms, "direct"))
        if r.path == "gateway" and r.ttfb_p50_ms is not None and d and d.ttfb_p50_ms is not None:
            added.append(f"{r.scenario} @{r.latency_ms} ms: +{r.ttfb_p50_ms - d.ttfb_p50_ms:.2f} ms")
    if added:
        print("time to first byte added by the gateway (p50, vs direct): " + "; ".join(added))
    for n in notes:
        print(f"note: {n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run (each cell is --repeat runs)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs per scenario and path, taking turns with the other paths; pooled (default 2)")
    ap.add_argument("--latencies", type=lambda v: [int(x) for x in v.split(",")], default=[0, 50],
                    help="upstream latencies in ms, comma list (default 0,50)")
    ap.add_argument("--only", help="run one scenario, e.g. 'chat c64'")
    ap.add_argument("--profile", help="write a py-spy profile (raw, collapsed stacks) of the gateway to this file")
    ap.add_argument("--cpu-profile", metavar="DIR",
                    help="sample the gateway and the bare proxy on CPU time (bench/cpuprof); stacks to DIR")
    ap.add_argument("--no-workers-row", dest="workers_row", action="store_false",
                    help="skip the 1-vs-2 gateway worker processes row")
    sys.exit(run_loop(main_async(ap.parse_args())))  # uvloop: the load generator's share of its core stays small


if __name__ == "__main__":
    main()
