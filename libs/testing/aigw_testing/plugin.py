"""pytest plugin (loaded with ``-p aigw_testing.plugin``): real Postgres and NATS, isolated per test.

Every test that asks for ``database_url`` gets a database of its own; every
test gets its own bus subject prefix (``bus_prefix``), and the JetStream
streams and buckets made under it are deleted afterwards. Tests can run in
parallel (``pytest -n``) against one Postgres and one NATS.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import pytest

from aigw_common.bus import Bus, BusAuth, Subjects
from aigw_common.crypto import generate_key
from aigw_common.settings import Settings

from .buskeys import BusKeys
from .harness import AppHarness
from .infra import Infra
from .natscluster import nats_cluster  # noqa: F401 - a fixture: a three-node JetStream cluster of its own
from .pgpair import pg_pair  # noqa: F401 - a fixture: a Postgres primary + streaming standby of its own
from .system import start_system  # noqa: F401 - a fixture: the whole stack behind fault proxies
from .upstream import MockUpstream

if TYPE_CHECKING:
    from .natsauth import AuthNats


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    i = Infra()
    yield i
    i.stop()


@pytest.fixture(scope="session")
def pg_admin_url(infra: Infra) -> str:
    return infra.pg_admin_url()


@pytest.fixture(scope="session")
def nats_url(infra: Infra) -> str:
    return infra.nats_url()


def _with_db(url: str, db: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + db, p.query, p.fragment))


@pytest.fixture
async def database_url(pg_admin_url: str, apps: AppHarness) -> AsyncIterator[str]:
    """A fresh database. Every app the test started is stopped before the database is dropped, whatever the
    fixture order (an app still running would see its database vanish mid-shutdown)."""
    name = f"aigw_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield _with_db(pg_admin_url, name)
    await apps.stop_all()
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def bus_prefix(nats_url: str) -> AsyncIterator[str]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    await cleanup_jetstream(nats_url, prefix)


async def cleanup_jetstream(nats_url: str, prefix: str) -> None:
    subjects = Subjects(prefix)
    stream_prefix = subjects.usage_stream.removesuffix("USAGE")
    bucket_prefix = "KV_" + subjects.keys_bucket.removesuffix("keys")
    with contextlib.suppress(Exception):
        nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            for name in await js.streams_info():
                n = name.config.name or ""
                if n.startswith(stream_prefix) or n.startswith(bucket_prefix):
                    with contextlib.suppress(Exception):
                        await js.delete_stream(n)
        finally:
            await nc.close()


@pytest.fixture
def encryption_key() -> str:
    return generate_key()


@pytest.fixture
def bus_keys() -> BusKeys:
    """Fresh bus signing keys for this test: one Ed25519 pair per producer (registry, budget, keypool)."""
    return BusKeys.generate()


@pytest.fixture
def bus_auth(bus_keys: BusKeys) -> BusAuth:
    """Proof of sender for a test's own bus: may sign as every producer (the test plays any of them)."""
    return bus_keys.auth()


@pytest.fixture
def auth_nats() -> Iterator[AuthNats]:
    """A private nats-server with the production (k8s) authorization: one user per service."""
    from .natsauth import auth_nats_server

    with auth_nats_server() as server:
        yield server


@pytest.fixture
def bus_sealing_key() -> str:
    return generate_key()


@pytest.fixture
def base_env(nats_url: str, bus_prefix: str, encryption_key: str, bus_sealing_key: str, bus_keys: BusKeys,
             tmp_path: Path) -> dict[str, str]:
    """The environment a service would get, pointed at this test's isolated bus and data dir.

    It holds every producer's signing key (each service reads only its own) and all public keys."""
    return {
        **bus_keys.env(),
        "AIGW_NATS_URL": nats_url,
        "AIGW_BUS_PREFIX": bus_prefix,
        "AIGW_ENCRYPTION_KEYS": encryption_key,  # at rest (registry, chatd)
        "AIGW_BUS_SEALING_KEYS": bus_sealing_key,  # on the bus (registry seals; gateway, keypool, chatd open)
        "AIGW_DATA_DIR": str(tmp_path / "data"),
        "AIGW_LOG_FORMAT": "text",
        "AIGW_SHUTDOWN_GRACE": "2s",
        # tests wait for usage to be recorded, and a quiet gateway holds it 1 s by default; the hold itself is
        # tested in test_usage_record.py, and test_gateway_stop.py kills a gateway running the default
        "AIGW_USAGE_LINGER": "0.25s",
        # The mock upstream, the fault proxies and the Bedrock mock listen on 127.0.0.1; a deployment
        # allows no private upstream by default. Tests of that default override it (set it to "false").
        "AIGW_ALLOW_PRIVATE_UPSTREAMS": "loopback",
    }


@pytest.fixture
def make_settings(base_env: dict[str, str]) -> Callable[..., Settings]:
    """``make_settings(AIGW_DATABASE_URL=..., AIGW_OPENAI_KEY=...)`` → validated Settings."""

    def make(**overrides: str) -> Settings:
        env = dict(base_env)
        env.update({k: v for k, v in overrides.items() if v is not None})
        return Settings.from_env(env)

    return make


@pytest.fixture
async def bus(nats_url: str, bus_prefix: str, bus_auth: BusAuth) -> AsyncIterator[Bus]:
    b = Bus(servers=(nats_url,), name="aigw-test", subjects=Subjects(bus_prefix), auth=bus_auth)
    await b.start(wait=5)
    assert b.connected, f"cannot connect to NATS at {nats_url}"
    yield b
    await b.close()


@pytest.fixture
async def mock_upstream() -> AsyncIterator[MockUpstream]:
    m = MockUpstream()
    await m.start()
    yield m
    await m.stop()


@pytest.fixture
async def mock_bedrock() -> AsyncIterator[Any]:  # a MockBedrock (imported lazily: botocore)
    """A mock Bedrock runtime checking SigV4 (``mock_bedrock.access_key`` / ``secret_key`` / ``region``)."""
    from .bedrock_mock import MockBedrock

    m = MockBedrock()
    await m.start()
    yield m
    await m.stop()


@pytest.fixture
async def apps() -> AsyncIterator[AppHarness]:
    h = AppHarness()
    yield h
    await h.stop_all()
