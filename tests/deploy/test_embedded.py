"""The embedded servers ``aigw dev`` and the test plugin fall back to: start, serve, stop, leave nothing behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

from aigw_common.embedded import EmbeddedNats, EmbeddedPostgres, find_postgres_bin_dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is as good as gone (its parent has not reaped it yet)
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A dir the unprivileged Postgres user can enter even when the suite runs as root (pytest's tmp is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="aigw-embedded-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _wait_gone(pids: list[int], within: float = 15.0) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


needs_pg = pytest.mark.skipif(find_postgres_bin_dir() is None, reason="no PostgreSQL server binaries here")


@needs_pg
async def test_postgres_starts_serves_restarts_on_same_port_and_stops(state_dir: Path) -> None:
    pg = EmbeddedPostgres(state_dir / "pg")
    url = await pg.start()
    try:
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        await conn.close()
    finally:
        pid = pg.proc.pid if pg.proc else 0
        await pg.stop()
    assert not _alive(pid)
    # data and port survive a restart
    url2 = await pg.start()
    try:
        assert url2 == url
        conn = await asyncpg.connect(url2)
        assert await conn.fetchval("SELECT v FROM kept") == 42
        await conn.close()
    finally:
        pid = pg.proc.pid if pg.proc else 0
        await pg.stop()
    assert not _alive(pid)


async def test_nats_starts_with_jetstream_and_stops(state_dir: Path) -> None:
    n = EmbeddedNats(state_dir / "nats")
    url = await n.start()
    pid = n.proc.pid if n.proc else 0
    try:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="EMBEDDED_T", subjects=["embedded.t"])
        ack = await js.publish("embedded.t", b"x")
        assert ack.seq == 1
        await nc.close()
    finally:
        await n.stop()
    assert not _alive(pid)


@needs_pg
def test_killed_parent_leaves_no_server_behind(state_dir: Path) -> None:
    """Even ``kill -9`` of the process that started them must not orphan Postgres or NATS."""
    d = state_dir
    script = textwrap.dedent(f"""
        import asyncio, sys
        from aigw_common.embedded import EmbeddedNats, EmbeddedPostgres
        async def main():
            pg, n = EmbeddedPostgres({str(d / "pg")!r}), EmbeddedNats({str(d / "nats")!r})
            await pg.start(); await n.start()
            print(pg.proc.pid, n.proc.pid, flush=True)
            await asyncio.sleep(120)
        asyncio.run(main())
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline() if p.stdout else ""
        pids = [int(x) for x in line.split()]
        assert len(pids) == 2, line
        assert all(_alive(x) for x in pids)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert _wait_gone(pids) == []


def _pgserver_bin() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return d if (d / "postgres").exists() else None


@pytest.mark.skipif(_pgserver_bin() is None, reason="the embedded-pg extra (pgserver) is not installed")
async def test_postgres_from_the_pgserver_wheel(state_dir: Path) -> None:
    pg = EmbeddedPostgres(state_dir / "pg", bin_dir=_pgserver_bin())
    url = await pg.start()
    try:
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        await pg.stop()
