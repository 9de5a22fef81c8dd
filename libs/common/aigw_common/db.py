"""Postgres: an asyncpg pool and SQL migrations per schema, applied under an advisory lock.

Migrations are plain ``NNNN_name.sql`` files in a service's ``migrations/``
folder. Each schema tracks what it applied in ``<schema>.schema_migrations``;
every replica may call :func:`migrate` at start, the advisory lock makes the
second one wait and then find nothing to do.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg
import msgspec

from .errors import DatabaseUnavailable, MigrationError

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x61696777  # "aigw"


@dataclass(frozen=True, slots=True)
class MigrationSet:
    """The migrations of one schema."""

    schema: str
    directory: Path

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.sql") if p.name[:4].isdigit())


async def _init_conn(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=lambda v: msgspec.json.encode(v).decode(), decoder=msgspec.json.decode,
            schema="pg_catalog",
        )


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0,
                      retry_for: float = 30.0, server_settings: dict[str, str] | None = None) -> asyncpg.Pool:
    """Connect, retrying for ``retry_for`` seconds so a service may start before its database.

    ``server_settings`` (e.g. ``{"search_path": "budget"}``) apply to every connection of the pool.
    """
    deadline = asyncio.get_running_loop().time() + retry_for
    delay = 0.2
    while True:
        try:
            return await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, timeout=timeout, init=_init_conn,
                command_timeout=30, max_inactive_connection_lifetime=300, server_settings=server_settings,
            )
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError, TimeoutError,
                asyncpg.TargetServerAttributeNotMatched) as e:
            if asyncio.get_running_loop().time() > deadline:
                raise DatabaseUnavailable(f"cannot connect to Postgres: {e}") from e
            log.warning("postgres not reachable yet; retrying", extra={"error": str(e)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)


# Failures that say "the database is not there right now" or "the same thing again may work": a server
# stopping or starting, a connection cut, a failover in progress (a standby still read-only, or no host of
# a multi-host URL yet matching target_session_attrs), a deadlock or serialization failure.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError: the connection was cut mid-transaction
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,
    asyncpg.TransactionRollbackError,  # deadlock, serialization failure
    asyncpg.ReadOnlySQLTransactionError,  # reached a standby (or a demoted primary) during a failover
    asyncpg.TargetServerAttributeNotMatched,  # no host is read-write yet: the standby is being promoted
    asyncpg.InternalClientError,  # a connection left mid-operation when its server went away
)
# Everything a database call can raise; catch these, then tell them apart with :func:`is_transient`.
DB_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                                              asyncpg.InternalClientError)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_DB_ERRORS)


T = TypeVar("T")


async def in_transaction(pool: asyncpg.Pool, fn: Callable[[asyncpg.Connection], Awaitable[T]], *,
                         attempts: int = 3, retry_delay: float = 0.5, acquire_timeout: float = 5.0,
                         isolation: str | None = None, readonly: bool = False) -> T:
    """Run ``fn(conn)`` in a transaction; when the transaction is cut by a transient failure (a failover, a
    restart, a deadlock), run it again on a fresh connection, up to ``attempts`` times in all: the first
    retry at once, later ones after ``retry_delay``, doubling. (A database that is simply down fails each
    attempt fast, so a caller answering requests is never held up long.)

    ``fn`` must be safe to run again: it is, when the cut transaction rolled back. (A commit whose answer was
    lost may have applied: callers that write make their writes idempotent, e.g. keyed by an event id.) The
    pool replaces a cut connection on the next acquire; with a multi-host ``AIGW_DATABASE_URL`` and
    ``target_session_attrs=read-write`` that connection goes to whichever host is the primary now. After the
    last attempt a transient failure raises :class:`DatabaseUnavailable` (retryable); anything else propagates.
    """
    delay = 0.0  # the first retry at once: a cut connection is replaced by a fresh one, nothing to wait for
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire(timeout=acquire_timeout) as conn:
                try:
                    async with conn.transaction(isolation=isolation, readonly=readonly):
                        return await fn(conn)
                except TRANSIENT_DB_ERRORS:
                    # never hand a cut connection back: the pool would give it to the next caller, which
                    # would meet a half-dead protocol state instead of a fresh connection to the new primary
                    conn.terminate()
                    raise
        except TRANSIENT_DB_ERRORS as e:
            if attempt == attempts:
                raise DatabaseUnavailable(f"database unavailable: {type(e).__name__}: {e}") from e
            log.warning("transaction cut; retrying", extra={"error": f"{type(e).__name__}: {e}",
                                                            "attempt": attempt, "retry_in": delay})
            await asyncio.sleep(delay)
            delay = min(max(delay * 2, retry_delay), 5.0)
    raise AssertionError("unreachable")


ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def provision_owners(conn: asyncpg.Connection, owners: Mapping[str, str]) -> None:
    """Give each schema its own role (``{"registry": "aigw_registry", …}``): the role is created if missing
    (LOGIN, no password: set one with ALTER ROLE, or use your platform's IAM auth), owns the schema and
    everything in it, and nobody else (PUBLIC) may use the schema. Run as a role that may create roles.
    Migrations then run as the owner (:func:`migrate` with ``owners``), so new objects are the role's too."""
    dbname = await conn.fetchval("SELECT current_database()")
    for schema, role in owners.items():
        if not ROLE_RE.match(role) or not ROLE_RE.match(schema):
            raise MigrationError(f"invalid role or schema name {role!r}/{schema!r}: use [a-z_][a-z0-9_]*")
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await conn.execute(f'CREATE ROLE "{role}" LOGIN')
        await conn.execute(f'GRANT "{role}" TO current_user')  # to act as the owner below (no-op for superusers)
        await conn.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO "{role}"')
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}" AUTHORIZATION "{role}"')
        await conn.execute(f'ALTER SCHEMA "{schema}" OWNER TO "{role}"')
        await conn.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM PUBLIC')
        for kind, rows in (("TABLE", "SELECT tablename AS n FROM pg_tables WHERE schemaname = $1"),
                           ("SEQUENCE", "SELECT sequencename AS n FROM pg_sequences WHERE schemaname = $1"),
                           ("VIEW", "SELECT viewname AS n FROM pg_views WHERE schemaname = $1")):
            for r in await conn.fetch(rows, schema):
                await conn.execute(f'ALTER {kind} "{schema}"."{r["n"]}" OWNER TO "{role}"')
        log.info("schema owner provisioned", extra={"schema": schema, "role": role})


async def migrate(conn: asyncpg.Connection, *sets: MigrationSet, owners: Mapping[str, str] | None = None) -> list[str]:
    """Apply pending migrations of each set in order; return what was applied.

    With ``owners`` (schema → role, see :func:`provision_owners`) each schema's migrations run as its role.
    A service migrating at start with a role that owns only its schema works too: an existing schema is
    not created again (that would need CREATE on the database)."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        if owners:
            await provision_owners(conn, owners)
        for ms in sets:
            if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", ms.schema):
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{ms.schema}"')
            role = (owners or {}).get(ms.schema)
            if role:
                await conn.execute(f'SET ROLE "{role}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{ms.schema}".schema_migrations ('
                "version text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["version"]: r["checksum"]
                for r in await conn.fetch(f'SELECT version, checksum FROM "{ms.schema}".schema_migrations')
            }
            for path in ms.files():
                sql = path.read_text()
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if path.stem in done:
                    if done[path.stem] != checksum:
                        log.warning("applied migration changed on disk", extra={"migration": f"{ms.schema}/{path.name}"})
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(f'SET LOCAL search_path TO "{ms.schema}", public')
                        await conn.execute(sql)
                        await conn.execute(
                            f'INSERT INTO "{ms.schema}".schema_migrations (version, checksum) VALUES ($1, $2)',
                            path.stem, checksum,
                        )
                except asyncpg.PostgresError as e:
                    raise MigrationError(f"migration {ms.schema}/{path.name} failed: {e}") from e
                applied.append(f"{ms.schema}/{path.stem}")
                log.info("migration applied", extra={"migration": f"{ms.schema}/{path.name}"})
            if role:
                await conn.execute("RESET ROLE")
    finally:
        await conn.execute("RESET ROLE")
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def migrate_dsn(dsn: str, *sets: MigrationSet, owners: Mapping[str, str] | None = None) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn, *sets, owners=owners)
    finally:
        await conn.close()


async def close_pool(pool: asyncpg.Pool, timeout: float = 10.0) -> None:
    """Close gracefully, but never hang shutdown on a connection that will not come back (Postgres gone)."""
    try:
        async with asyncio.timeout(timeout):
            await pool.close()
    except TimeoutError:
        log.warning("postgres pool did not close in time; terminating its connections")
        pool.terminate()
