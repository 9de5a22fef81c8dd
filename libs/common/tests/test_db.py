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
