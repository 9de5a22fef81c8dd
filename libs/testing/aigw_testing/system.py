"""The whole system behind fault proxies, with the checks the hardening tests share.

``System.start`` runs the services in this process (``start_stack``) with NATS,
Postgres and the mock upstream each reached through a :class:`FaultProxy`, so a
test can take any of them away. It also collects every usage event the
gateways publish (a core subscription on the usage subjects, straight to NATS,
not through the proxy) and checks the budget tables against them:
:meth:`System.ledger` waits until the budget service has applied every event
that was published and asserts each was applied exactly once.

    sys_ = await System.start(apps, base_env, database_url, nats_url, mock_upstream)
    await sys_.nats.down(); ...; await sys_.nats.up()
    ledger = await sys_.ledger(expect=n)

:class:`ServiceProcess` runs one service as a child process (``aigw <service>``), for what an
in-process app cannot do: be killed with SIGKILL, or have its own RSS measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp import web

from aigw_common.aio import wait_event
from aigw_common.bus import Bus, Subjects
from aigw_common.cli import load_service
from aigw_common.schemas import TokenUsage
from aigw_common.settings import Settings

from .buskeys import auth_from_env
from .faultproxy import FaultProxy
from .harness import AppHarness
from .stack import START_ORDER, wait_ready
from .upstream import MockUpstream
from .usage import UsageCollector
from .wait import eventually

if TYPE_CHECKING:  # the SDKs are imported when a test asks for a client
    import anthropic
    import openai

STACK = ("registry", "keypool", "budget", "gateway")
OPENAI_KEY = "zzpool-openai-7Hq2Lm9Xw4Rt"  # does not look like sk-…: log scrubbing must not be what hides it
ANTHROPIC_KEY = "zzpool-anthropic-3Kd8Vb1Ns6Yp"


@dataclasses.dataclass
class Resp:
    status: int
    body: Any
    raw: bytes
    headers: Mapping[str, str]

    def __repr__(self) -> str:
        return f"Resp({self.status}, {self.body!r})"


class Api:
    """A JSON client for the control-plane APIs, as one caller (a token, or none)."""

    def __init__(self, http: aiohttp.ClientSession, token: str | None) -> None:
        self.http, self.token = http, token

    def as_(self, token: str | None) -> Api:
        return Api(self.http, token)

    async def call(self, method: str, url: str, body: Any = None, *, params: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None) -> Resp:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        h.update(headers or {})
        data = None
        if body is not None:
            data = msgspec.json.encode(body)
            h["Content-Type"] = "application/json"
        async with self.http.request(method, url, data=data, headers=h, params=params,
                                     timeout=aiohttp.ClientTimeout(total=30)) as r:
            raw = await r.read()
            try:
                parsed = msgspec.json.decode(raw) if raw else None
            except msgspec.DecodeError:
                parsed = raw.decode(errors="replace")
            return Resp(r.status, parsed, raw, dict(r.headers))

    async def ok(self, method: str, url: str, body: Any = None, status: int | None = None, **kw: Any) -> Any:
        r = await self.call(method, url, body, **kw)
        want = status or {"POST": 201, "DELETE": 204}.get(method, 200)
        assert r.status == want, f"{method} {url}: {r}"
        return r.body


@dataclasses.dataclass(frozen=True)
class Member:
    id: str
    username: str
    token: str
    token_id: str


@dataclasses.dataclass
class Ledger:
    """What the budget tables hold after every published event was applied."""

    interceptions: list[asyncpg.Record]
    events: int  # distinct usage events published
    processed: int  # event ids in budget.usage_claims

    def by_status(self) -> dict[str | None, int]:
        out: dict[str | None, int] = {}
        for r in self.interceptions:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _is_list(url: str) -> bool:
    """A multi-host URL: a comma list of NATS URLs, or a libpq URL with several hosts."""
    return "," in url


def _hostport(url: str) -> tuple[str, int]:
    p = urlsplit(url)
    return p.hostname or "127.0.0.1", p.port or 0


class System:
    def __init__(self) -> None:
        self.apps: AppHarness
        self.env: dict[str, str] = {}
        self.settings: Settings
        self.database_url = ""  # direct, for the tests' own queries
        self.nats_url = ""  # direct
        self.nats: FaultProxy  # unset when the stack uses a server list (a cluster): kill its nodes instead
        self.pg: FaultProxy  # likewise for a multi-host Postgres URL
        self.up: FaultProxy  # in front of the mock upstream
        self.upstream: MockUpstream
        self.urls: dict[str, str] = {}
        self.app: dict[str, web.Application] = {}
        self.http: aiohttp.ClientSession
        self.owner_token = ""
        self.owner: Api
        self.bus: Bus  # the test's own connection (direct)
        self.usage: UsageCollector
        self._proxies: list[FaultProxy] = []

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def start(cls, apps: AppHarness, base_env: Mapping[str, str], database_url: str, nats_url: str,
                    upstream: MockUpstream, *, services: Sequence[str] = STACK, env: Mapping[str, str] | None = None,
                    fixture: str = "openai/chatcompletions/simple") -> System:
        s = cls()
        s.apps, s.upstream, s.database_url, s.nats_url = apps, upstream, database_url, nats_url
        # A server list (a NATS cluster, a Postgres primary + standby) is reached directly: its faults are
        # made by killing its nodes, not by a proxy, and the clients must see every node.
        s.up = await FaultProxy.start_for(*_hostport(upstream.url))
        s._proxies = [s.up]
        nats_env, pg_env = nats_url, database_url
        if not _is_list(nats_url):
            s.nats = await FaultProxy.start_for(*_hostport(nats_url))
            s._proxies.append(s.nats)
            nats_env = s.nats.rewrite(nats_url)
        if not _is_list(database_url):
            s.pg = await FaultProxy.start_for(*_hostport(database_url))
            s._proxies.append(s.pg)
            pg_env = s.pg.rewrite(database_url)
        upstream.play(fixture)
        s.owner_token = "aigw_owner_" + secrets.token_urlsafe(24)
        up_url = s.up.rewrite(upstream.url)
        s.env = {
            **base_env,
            "AIGW_DATABASE_URL": pg_env,
            "AIGW_NATS_URL": nats_env,
            "AIGW_BOOTSTRAP_TOKEN": s.owner_token,
            "AIGW_OPENAI_BASE_URL": up_url + "/v1",
            "AIGW_OPENAI_KEY": OPENAI_KEY,
            "AIGW_ANTHROPIC_BASE_URL": up_url,
            "AIGW_ANTHROPIC_KEY": ANTHROPIC_KEY,
            **(env or {}),
        }
        s.settings = Settings.from_env(s.env)
        s.bus = Bus(servers=tuple(u.strip() for u in nats_url.split(",")), name="aigw-test-system",
                    subjects=Subjects(s.env["AIGW_BUS_PREFIX"]), auth=auth_from_env(s.env))
        await s.bus.start(wait=5)
        # A core subscription misses what is published while its node is down: on a cluster whose nodes the
        # test kills, the collector reads the usage stream itself (what the budget service consumes).
        s.usage = await UsageCollector(s.bus, from_stream=_is_list(nats_url)).start()
        s.http = aiohttp.ClientSession()
        s.owner = Api(s.http, s.owner_token)
        for name in START_ORDER:
            if name in services:
                await s.start_service(name)
        return s

    def settings_for(self, name: str) -> Settings:
        if name == "chatd" and "gateway" in self.urls:
            return dataclasses.replace(self.settings, gateway_url=self.urls["gateway"])
        return self.settings

    async def start_service(self, name: str, *, port: int | None = None, key: str | None = None) -> str:
        """Start (or restart, on ``port``) one service in this process; ``key`` names it (default: the service)."""
        app = load_service(name).create_app(self.settings_for(name))
        url = await self.apps.start(app, port=port or 0)
        await wait_ready(url, 30)
        self.app[key or name], self.urls[key or name] = app, url
        return url

    async def stop_service(self, key: str) -> None:
        await self.apps.stop(self.app.pop(key))

    async def restart_service(self, key: str, name: str | None = None) -> str:
        port = urlsplit(self.urls[key]).port
        await self.stop_service(key)
        return await self.start_service(name or key, port=port, key=key)

    async def close(self) -> None:
        await self.apps.stop_all()
        await self.http.close()
        await self.bus.close()
        for p in self._proxies:
            await p.close()

    # ------------------------------------------------------------ callers

    def api(self, token: str | None) -> Api:
        return Api(self.http, token)

    def url(self, service: str, path: str) -> str:
        return self.urls[service] + path

    async def member(self, username: str, roles: Sequence[str] = ("member",), scope: str = "admin") -> Member:
        """A new user with one token; admin scope unless asked, since most tests also call the admin APIs."""
        reg = self.urls["registry"]
        u = await self.owner.ok("POST", reg + "/api/v2/users", {"username": username, "roles": list(roles)})
        t = await self.owner.ok("POST", reg + f"/api/v2/users/{u['id']}/tokens", {"name": "t", "scope": scope})
        return Member(u["id"], username, t["token"], t["id"])

    def openai(self, token: str, gateway: str = "gateway", provider: str = "openai", **kw: Any) -> openai.AsyncOpenAI:
        import openai

        return openai.AsyncOpenAI(base_url=f"{self.urls[gateway]}/{provider}/v1", api_key=token,
                                  **{"max_retries": 0, "timeout": 20.0, **kw})

    def anthropic(self, token: str, gateway: str = "gateway", **kw: Any) -> anthropic.AsyncAnthropic:
        import anthropic

        return anthropic.AsyncAnthropic(base_url=self.urls[gateway] + "/anthropic", api_key=token,
                                        **{"max_retries": 0, "timeout": 20.0, **kw})

    # ------------------------------------------------------------ the budget tables

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url, server_settings={"search_path": "budget"})
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def ledger(self, expect: int | None = None, timeout: float = 30.0) -> Ledger:
        """Wait until the budget service has applied every usage event published so far (and, with ``expect``,
        until that many interceptions have ended), then check each event was applied exactly once: the
        processed ids are exactly the published ids, and every interception's tokens are the sum of its
        distinct token events (a double count would show as twice that)."""
        state: dict[str, Any] = {}

        async def settled() -> bool:
            # equality, not inclusion: the collector's copy of an event can lag the budget's by a moment
            if not await self.usage.sync():
                return False
            published = {e.event_id for e in self.usage.events}
            rows = await self.query("SELECT unnest(event_ids) AS event_id FROM usage_claims")
            state["published"], state["processed"] = published, {r["event_id"] for r in rows}
            ended = await self.query("SELECT count(*) AS n FROM interceptions WHERE status IS NOT NULL")
            state["ended"] = ended[0]["n"]
            return state["processed"] == published and (expect is None or state["ended"] >= expect)

        try:
            await eventually(settled, timeout, "the budget service to apply every usage event", interval=0.2)
        except AssertionError as e:
            missing = state.get("published", set()) - state.get("processed", set())
            extra = state.get("processed", set()) - state.get("published", set())
            detail = await self.query("SELECT e AS event_id, interception_id FROM usage_claims, unnest(event_ids) AS e"
                                      " WHERE e = ANY($1::text[])", list(extra))
            raise AssertionError(f"{e}: {len(missing)} published events not applied, {len(extra)} applied that no "
                                 f"gateway published {[dict(r) for r in detail][:5]}, {state.get('ended')} of "
                                 f"{expect} interceptions ended") from None
        published, processed = state["published"], state["processed"]
        rows = await self.query("SELECT * FROM interceptions ORDER BY occurred_at, id")
        if expect is not None:
            assert len(rows) == expect, f"{len(rows)} interceptions recorded, expected {expect}"
        sums: dict[str, int] = {}
        seen: set[str] = set()
        for ev in self.usage.events:
            if isinstance(ev, TokenUsage) and ev.event_id not in seen:
                seen.add(ev.event_id)
                t = ev.tokens
                sums[ev.interception_id] = sums.get(ev.interception_id, 0) + t.input_tokens + t.output_tokens \
                    + t.cache_read_tokens + t.cache_write_tokens
        for r in rows:
            got = r["input_tokens"] + r["output_tokens"] + r["cache_read_tokens"] + r["cache_write_tokens"]
            assert got == sums.get(r["id"], 0), f"interception {r['id']}: {got} tokens recorded, " \
                                                f"{sums.get(r['id'], 0)} published"
        spend = await self.query("SELECT coalesce(sum(spent_micros), 0)::bigint AS s FROM spend WHERE scope = 'user'")
        attributed = sum(r["attributed_micros"] for r in rows if r["user_id"])
        assert spend[0]["s"] == attributed, (spend[0]["s"], attributed)
        return Ledger(rows, len(published), len(processed))

    async def consumer_backlog(self) -> tuple[int, int]:
        """(pending, ack pending) of the budget's usage consumer: (0, 0) once nothing is left to deliver."""
        from aigw_budget.api import SERVICE

        consumer = self.app["budget"][SERVICE].consumer
        info = await self.bus.js.consumer_info(self.bus.subjects.usage_stream, consumer.durable)
        return info.num_pending, info.num_ack_pending


@pytest.fixture
async def start_system(apps: AppHarness, base_env: dict[str, str], database_url: str, nats_url: str,
                       mock_upstream: MockUpstream) -> AsyncIterator[Callable[..., Awaitable[System]]]:
    """``s = await start_system(services=…, env=…)``: the stack behind fault proxies, closed after the test."""
    started: list[System] = []

    async def start(**kw: Any) -> System:
        # nats_url= / database_url= point the stack at servers of the test's own (a cluster, a standby pair)
        s = await System.start(apps, base_env, kw.pop("database_url", database_url), kw.pop("nats_url", nats_url),
                               mock_upstream, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        await s.close()


# ---------------------------------------------------------------- steady traffic


@dataclasses.dataclass
class Outcome:
    at: float  # seconds since the traffic started
    stream: bool
    latency: float
    error: str = ""  # empty when the request succeeded with a whole answer


class Traffic:
    """Chat completions through the openai SDK at a fixed rate, every other one streamed; each must come back
    whole (a stream must end with the provider's last chunk). Latency is to the end of the answer."""

    def __init__(self, client: Any, rate: float, *, model: str = "gpt-4.1", max_in_flight: int = 256) -> None:
        self.client, self.rate, self.model = client, rate, model
        self.outcomes: list[Outcome] = []
        self._sem = asyncio.Semaphore(max_in_flight)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._t0 = 0.0

    def start(self) -> Traffic:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> list[Outcome]:
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.outcomes

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]

    def latencies(self) -> list[float]:
        return sorted(o.latency for o in self.outcomes if not o.error)

    def p(self, q: float) -> float:
        lat = self.latencies()
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while not self._stop.is_set():
            await self._sem.acquire()
            t = asyncio.create_task(self._one(i % 2 == 0))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
            delay = self._t0 + i / self.rate - loop.time()
            if delay > 0:
                await wait_event(self._stop, delay)
        if tasks:
            await asyncio.gather(*tasks)

    async def _one(self, stream: bool) -> None:
        loop = asyncio.get_running_loop()
        t = loop.time()
        error = ""
        try:
            msgs = [{"role": "user", "content": "how many angels?"}]
            if stream:
                text, finished = "", False
                async with await self.client.chat.completions.create(model=self.model, messages=msgs,
                                                                     stream=True) as s:
                    async for chunk in s:
                        for c in chunk.choices:
                            text += c.delta.content or ""
                            finished = finished or c.finish_reason is not None
                if not (text and finished):
                    error = f"incomplete stream ({len(text)} chars, finished={finished})"
            else:
                r = await self.client.chat.completions.create(model=self.model, messages=msgs)
                if not r.choices[0].message.content:
                    error = "empty answer"
        except Exception as e:  # every failure is an outcome the test asserts on
            error = f"{type(e).__name__}: {e}"[:300]
        finally:
            self._sem.release()
        self.outcomes.append(Outcome(t - self._t0, stream, loop.time() - t, error))


# ---------------------------------------------------------------- a service as a child process


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ServiceProcess:
    """``aigw <service>`` as a child, configured by ``env``; ``kill()`` is SIGKILL, ``stop()`` is SIGTERM."""

    def __init__(self, service: str, env: Mapping[str, str], log_path: Path) -> None:
        self.service = service
        self.port = free_port()
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}, **env,
                    f"AIGW_{service.upper()}_ADDR": f"127.0.0.1:{self.port}"}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, ready_within: float = 30.0) -> ServiceProcess:
        aigw = Path(sys.executable).parent / "aigw"
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(str(aigw), self.service, env=self.env, stdout=log,
                                                             stderr=log, stdin=asyncio.subprocess.DEVNULL)
        finally:
            log.close()
        try:
            await wait_ready(self.url, ready_within)
        except AssertionError:
            await self.kill()
            raise AssertionError(f"{self.service} did not start: {self.log_path.read_text()[-3000:]}") from None
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    async def kill(self) -> None:
        await self._signal(signal.SIGKILL, 10)

    async def stop(self, within: float = 30.0) -> int:
        return await self._signal(signal.SIGTERM, within)

    async def _signal(self, sig: int, within: float) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc is not None and self.proc.returncode is not None else 0
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            async with asyncio.timeout(within):
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()


__all__ = ["ANTHROPIC_KEY", "OPENAI_KEY", "STACK", "Api", "Ledger", "Member", "Outcome", "Resp", "ServiceProcess",
           "System", "Traffic", "free_port", "rss_bytes", "start_system"]
