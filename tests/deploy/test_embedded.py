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


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged-user hand-off happens only as root")


@needs_pg
@as_root
async def test_root_in_a_private_home_keeps_pgdata_where_postgres_can_enter(tmp_path: Path) -> None:
    """`aigw dev` as root in /root/x (0700): the data dir moves to a root-owned place, owned by the Postgres user
    (0700), remembered across restarts; the state dir itself is not opened up."""
    import pwd
    import uuid

    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    roots = (Path(tempfile.gettempdir()) / f"aigw-test-reloc-{uuid.uuid4().hex[:8]}",)
    pg = EmbeddedPostgres(private / ".aigw" / "postgres", relocation_roots=roots)
    try:
        url = await pg.start()
        try:
            conn = await asyncpg.connect(url)
            await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
            await conn.close()
        finally:
            await pg.stop()
        assert pg.pgdata.is_relative_to(roots[0]) and (pg.pgdata / "PG_VERSION").exists()
        home = pg.pgdata.parent
        st = home.stat()
        user = pwd.getpwuid(st.st_uid).pw_name
        assert user in ("postgres", "nobody") and st.st_mode & 0o777 == 0o700
        assert (private.stat().st_mode & 0o777) == 0o700  # nothing was opened up
        assert (pg.dir / "pgdata-location").read_text().strip() == str(pg.pgdata)
        # a new instance (the next `aigw dev`) finds the same data
        again = EmbeddedPostgres(private / ".aigw" / "postgres", relocation_roots=roots)
        try:
            conn = await asyncpg.connect(await again.start())
            assert await conn.fetchval("SELECT v FROM kept") == 7
            await conn.close()
        finally:
            await again.stop()
        assert again.pgdata == pg.pgdata
    finally:
        shutil.rmtree(roots[0], ignore_errors=True)


@needs_pg
@as_root
async def test_root_with_no_usable_location_fails_clearly(tmp_path: Path) -> None:
    """Where it truly cannot work (every fallback location refused), the error says why and what to do."""
    from aigw_common.errors import ConfigError

    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    hidden = tmp_path / "hidden"  # pytest's tmp is 0700: the Postgres user cannot enter anything under it
    pg = EmbeddedPostgres(private / "pg", relocation_roots=(hidden / "pg",))
    with pytest.raises(ConfigError) as e:
        await pg.start()
    msg = str(e.value)
    blocked = next(d for d in [*reversed(private.parents), private] if not d.stat().st_mode & 0o001)
    assert f"cannot enter {blocked}," in msg and str(hidden) in msg  # the state dir's and the fallback's reasons
    assert "AIGW_DATABASE_URL" in msg and "--dir" in msg
