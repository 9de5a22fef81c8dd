"""A real Postgres primary with a streaming standby, from the machine's binaries, for failover tests.

The primary is an :class:`~aigw_common.embedded.EmbeddedPostgres` (trust auth on loopback, which includes
replication); the standby is cloned from it with ``pg_basebackup -R`` (so it streams from the primary and
answers read-only queries) and runs on its own port in its own dir. Under root both run as the unprivileged
user ``EmbeddedPostgres`` picks, as ``aigw dev`` does.

    pair = await PgPair.start()
    url = pair.url("mydb")           # postgresql://…:p1,…:p2/mydb?target_session_attrs=read-write
    await pair.primary.stop(); await pair.promote()
    await pair.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from aigw_common.embedded import EmbeddedPostgres, log_tail, run_tool


class StandbyPostgres(EmbeddedPostgres):
    """An :class:`EmbeddedPostgres` whose data dir is a base backup of ``primary`` instead of a fresh initdb."""

    def __init__(self, data_dir: str | Path, primary: EmbeddedPostgres) -> None:
        super().__init__(data_dir)
        self.primary = primary

    async def _initdb(self, bindir: Path, as_user: dict[str, object]) -> None:
        cmd = [str(bindir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
               "-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast", "--no-sync"]
        await run_tool(cmd, self.logfile, "pg_basebackup", as_user)


class PgPair:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary = EmbeddedPostgres(root / "primary")
        self.standby = StandbyPostgres(root / "standby", self.primary)

    @classmethod
    async def start(cls, databases: tuple[str, ...] = ()) -> PgPair:
        """Primary up, ``databases`` created on it, then the standby cloned and streaming."""
        # not under pytest's tmp dir: that is private to root, and the servers may run as another user
        root = Path(tempfile.mkdtemp(prefix="aigw-pg-pair-"))
        os.chmod(root, 0o755)  # each server's own dir below is handed to its user; this one must let it pass
        p = cls(root)
        try:
            await p.primary.start()
            conn = await asyncpg.connect(p.primary.url)
            try:
                for db in databases:
                    await conn.execute(f'CREATE DATABASE "{db}"')
            finally:
                await conn.close()
            await p.standby.start()
            await p.wait_streaming()
        except BaseException:
            await p.close()
            raise
        return p

    def url(self, database: str) -> str:
        """Both hosts, the primary first; libpq semantics: the first one that accepts writes."""
        return (f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}/{database}"
                "?target_session_attrs=read-write")

    async def wait_streaming(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while True:
            conn = await asyncpg.connect(self.primary.url)
            try:
                if await conn.fetchval("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"):
                    return
            finally:
                await conn.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"the standby is not streaming:\n{log_tail(self.standby.logfile)}")
            await asyncio.sleep(0.1)

    async def promote(self, within: float = 30.0) -> float:
        """Make the standby the primary (``pg_promote``); return how long until it accepted writes."""
        t0 = time.monotonic()
        conn = await asyncpg.connect(self.standby.url)
        try:
            assert await conn.fetchval("SELECT pg_promote(true, $1)", int(within))
            assert not await conn.fetchval("SELECT pg_is_in_recovery()")
        finally:
            await conn.close()
        return time.monotonic() - t0

    async def close(self) -> None:
        for pg in (self.standby, self.primary):
            with contextlib.suppress(Exception):
                await pg.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
async def pg_pair() -> AsyncIterator[PgPair]:
    """A Postgres primary + streaming standby of the test's own, with a database ``aigw``; removed after."""
    p = await PgPair.start(("aigw",))
    yield p
    await p.close()


__all__ = ["PgPair", "StandbyPostgres", "pg_pair"]
