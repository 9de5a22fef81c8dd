"""Where the tests find Postgres and NATS: the machine's, else the embedded ones ``aigw dev`` uses, else testcontainers."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_NATS = "nats://127.0.0.1:4222"


def reachable(url: str, timeout: float = 0.5) -> bool:
    p = urlsplit(url)
    try:
        with socket.create_connection((p.hostname or "127.0.0.1", p.port or 0), timeout=timeout):
            return True
    except OSError:
        return False


class Infra:
    """Session-wide servers; started lazily, stopped at the end of the session."""

    def __init__(self) -> None:
        self._pg: str | None = None
        self._nats: str | None = None
        self._stoppers: list[Callable[[], object]] = []

    def pg_admin_url(self) -> str:
        if self._pg is None:
            self._pg = self._find_pg()
        return self._pg

    def nats_url(self) -> str:
        if self._nats is None:
            self._nats = self._find_nats()
        return self._nats

    def _find_pg(self) -> str:
        url = os.environ.get("AIGW_TEST_PG_URL", DEFAULT_PG)
        if reachable(url):
            return url
        embedded: Any = None
        try:
            from aigw_common.embedded import EmbeddedPostgres as embedded
        except ImportError:
            pass
        if embedded is not None:
            import tempfile

            pg = embedded(tempfile.mkdtemp(prefix="aigw-test-pg-"))
            url = asyncio.run(pg.start())
            self._stoppers.append(lambda: asyncio.run(pg.stop()))
            return url
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-not-found]  # optional, only without local binaries

        c = PostgresContainer("postgres:16-alpine", driver=None).start()
        self._stoppers.append(c.stop)
        return c.get_connection_url()

    def _find_nats(self) -> str:
        url = os.environ.get("AIGW_TEST_NATS_URL", DEFAULT_NATS)
        if reachable(url):
            return url
        import tempfile

        from aigw_common.embedded import EmbeddedNats

        n = EmbeddedNats(tempfile.mkdtemp(prefix="aigw-test-nats-"))
        url = asyncio.run(n.start())
        self._stoppers.append(lambda: asyncio.run(n.stop()))
        return url

    def stop(self) -> None:
        for s in reversed(self._stoppers):
            s()
