import asyncio

import asyncpg

from aigw_common.db import MigrationSet, create_pool, migrate_dsn


async def test_migrations_apply_once_under_lock(database_url, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "0001_init.sql").write_text("CREATE TABLE things (id int primary key, doc jsonb);")
    (d / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN name text;")
    ms = MigrationSet("demo", d)
    results = await asyncio.gather(migrate_dsn(database_url, ms), migrate_dsn(database_url, ms))
    assert sorted(len(r) for r in results) == [0, 2]
    pool = await create_pool(database_url)
    try:
        await pool.execute("INSERT INTO demo.things VALUES (1, $1, 'x')", {"a": [1, 2]})
        assert await pool.fetchval("SELECT doc FROM demo.things") == {"a": [1, 2]}
    finally:
        await pool.close()
    conn = await asyncpg.connect(database_url)
    assert await conn.fetchval("SELECT count(*) FROM demo.schema_migrations") == 2
    await conn.close()


async def test_a_cut_transaction_runs_again_on_a_fresh_connection(database_url):
    """The first attempt's connection is terminated by the server mid-transaction (what a failover does to
    every open connection): the transaction rolls back and runs again, once, on a new connection."""
    from aigw_common.db import in_transaction

    pool = await create_pool(database_url, min_size=1, max_size=2)
    admin = await asyncpg.connect(database_url)
    try:
        await pool.execute("CREATE TABLE cut (id int primary key)")
        pids: list[int] = []

        async def work(conn: asyncpg.Connection) -> int:
            pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
            await conn.execute("INSERT INTO cut VALUES (1) ON CONFLICT DO NOTHING")
            if len(pids) == 1:
                await admin.execute("SELECT pg_terminate_backend($1)", pids[0])
                await conn.execute("SELECT 1")  # the server is gone under us
            return await conn.fetchval("SELECT count(*) FROM cut")

        assert await in_transaction(pool, work, retry_delay=0.05) == 1
        assert len(pids) == 2 and pids[0] != pids[1]
    finally:
        await admin.close()
        await pool.close()


async def test_a_standby_that_stays_read_only_is_a_retryable_error(pg_admin_url):
    from aigw_common.db import in_transaction
    from aigw_common.errors import DatabaseUnavailable

    pool = await create_pool(pg_admin_url, min_size=0, max_size=1)
    try:
        async def work(conn: asyncpg.Connection) -> None:
            # what a write meets on a standby that is not promoted yet
            await conn.execute("SET TRANSACTION READ ONLY")
            await conn.execute("CREATE TEMP TABLE nope (id int)")

        try:
            await in_transaction(pool, work, attempts=2, retry_delay=0.01)
        except DatabaseUnavailable as e:
            assert e.retryable and "ReadOnlySQLTransactionError" in e.message
        else:
            raise AssertionError("no error")
    finally:
        await pool.close()
