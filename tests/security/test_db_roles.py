"""One Postgres role per service, with rights on its own schema only (real Postgres, real roles).

``aigw migrate --owner registry=R --owner budget=B --owner chatd=C`` creates the roles, gives each its
schema and migrates it as that role. Then every service runs connected as its own role (the gateway and
keypool with no database at all), the whole path works — a user and a group in the registry, a group
budget set by name in budget (learned over the bus, not from registry tables), a metered LLM call, a chat
model config — and no role can read another service's schema.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from aigw_common.cli import run_migrations
from aigw_common.settings import Settings
from aigw_testing.stack import start_stack
from aigw_testing.wait import eventually

SCHEMAS = ("registry", "budget", "chatd")


def _as(url: str, user: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, f"{user}@{p.hostname}:{p.port or 5432}", p.path, p.query, p.fragment))


@pytest.fixture
async def roles(database_url: str, apps) -> AsyncIterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    names = {s: f"aigw_t{tag}_{s}" for s in SCHEMAS}
    yield names
    await apps.stop_all()  # nothing may hold a connection as these roles
    conn = await asyncpg.connect(database_url)
    try:
        for role in names.values():
            with contextlib.suppress(asyncpg.UndefinedObjectError):
                await conn.execute(f'DROP OWNED BY "{role}" CASCADE')
                await conn.execute(f'DROP ROLE "{role}"')
    finally:
        await conn.close()


async def test_each_service_runs_as_a_role_limited_to_its_schema(  # type: ignore[no-untyped-def]
        roles, database_url, base_env, apps, mock_upstream) -> None:
    admin_settings = Settings.from_env({**base_env, "AIGW_DATABASE_URL": database_url})
    await run_migrations(admin_settings, owners=roles)  # what `aigw migrate --owner registry=R …` does
    admin = await asyncpg.connect(database_url)
    try:
        for schema, role in roles.items():
            assert await admin.fetchval("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1",
                                        schema) == role
            owners = {r["tableowner"] for r in await admin.fetch(
                "SELECT tableowner FROM pg_tables WHERE schemaname = $1", schema)}
            assert owners == {role}, (schema, owners)
    finally:
        await admin.close()
    assert await run_migrations(admin_settings, owners=roles) == []  # again: nothing to do, still fine

    # no role reads (or even sees into) another service's schema
    for schema, role in roles.items():
        conn = await asyncpg.connect(_as(database_url, role))
        try:
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.schema_migrations") > 0
            for other in SCHEMAS:
                if other != schema:
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.fetch(f"SELECT * FROM {other}.schema_migrations")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE SCHEMA intruder")
        finally:
            await conn.close()

    owner_token = "aigw_owner_" + secrets.token_urlsafe(24)
    mock_upstream.play("openai/chatcompletions/simple")
    full = Settings.from_env({**base_env, "AIGW_BOOTSTRAP_TOKEN": owner_token,
                              "AIGW_OPENAI_BASE_URL": mock_upstream.url + "/v1", "AIGW_OPENAI_KEY": "zzpool-roles-1",
                              "AIGW_ALLOW_PRIVATE_UPSTREAMS": "loopback"})

    def settings_for(service: str, urls: Mapping[str, str]) -> Settings:
        import dataclasses

        dsn = _as(database_url, roles[service]) if service in roles else None
        return dataclasses.replace(full, database_url=dsn, gateway_url=urls.get("gateway", full.gateway_url))

    urls = await start_stack(apps, settings_for, ("registry", "keypool", "budget", "gateway", "chatd"))
    h = {"Authorization": f"Bearer {owner_token}"}
    async with aiohttp.ClientSession(headers=h) as http:
        async def call(method: str, url: str, body: object = None, status: int = 200) -> object:
            async with http.request(method, url, json=body) as r:
                got = await r.json() if r.content_length else None
                assert r.status == status, (method, url, r.status, got)
                return got

        reg, bud = urls["registry"], urls["budget"]
        user = await call("POST", reg + "/api/v2/users", {"username": "rolf", "roles": ["member"]}, 201)
        await call("POST", reg + "/api/v2/groups", {"name": "eng"}, 201)
        await call("PUT", reg + "/api/v2/groups/eng/members/rolf", status=204)
        tok = await call("POST", reg + f"/api/v2/users/{user['id']}/tokens", {"scope": "admin"}, 201)
        await call("PUT", bud + "/api/v2/groups/eng/ai/budget", {"spend_limit_micros": 10_000_000})
        await call("PUT", bud + "/api/v2/groups/nosuch/ai/budget", {"spend_limit_micros": 1}, 404)
        async with http.post(urls["gateway"] + "/openai/v1/chat/completions",
                             headers={"Authorization": f"Bearer {tok['token']}"},
                             json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200, await r.text()

        async def recorded() -> bool:
            body = await call("GET", bud + "/api/v2/ai/usage?group=eng")
            return body["total"]["interceptions"] == 1  # type: ignore[index]

        await eventually(recorded, timeout=20, what="the call recorded under the group, by budget's own role")
        await call("POST", urls["chatd"] + "/api/experimental/chats/model-configs",
                   {"display_name": "GPT", "provider": "openai", "model": "gpt-4.1"}, 201)
