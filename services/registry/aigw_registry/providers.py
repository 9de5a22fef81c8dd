"""Providers and their key pools: reads, writes and the shared insert the seeder also uses."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from aigw_common.api import Conflict, NotFound, read_json
from aigw_common.crypto import mask_secret
from aigw_common.ids import is_uuid
from aigw_common.llm import bedrock

from . import validate as v
from .core import Actor, Registry, assignments, audit, auth_revoked, new_id, providers_changed
from .models import (
    KeyCreate,
    KeyList,
    KeyOut,
    ProviderCreate,
    ProviderList,
    ProviderOut,
    ProviderPatch,
    to_builtins,
)

_COLS = "id, type, name, display_name, enabled, allow_byok, base_url, settings_sealed, created_at, updated_at"


async def fetch_provider(conn: asyncpg.Connection, ref: str, *, lock: str = "") -> asyncpg.Record:
    """A live provider by id or name, optionally locked (``FOR UPDATE`` / ``FOR SHARE``); 404 when missing."""
    col = "id" if is_uuid(ref) else "name"
    row = await conn.fetchrow(
        f"SELECT {_COLS} FROM registry.ai_providers WHERE {col} = $1 AND deleted_at IS NULL {lock}",
        ref if col == "name" else str(ref),
    )
    if row is None:
        raise NotFound(f"provider {ref!r} not found")
    return row


async def fetch_keys(conn: asyncpg.Connection, provider_ids: list[Any]) -> dict[str, list[asyncpg.Record]]:
    rows = await conn.fetch(
        "SELECT id, provider_id, position, api_key_sealed, hint, created_at FROM registry.ai_provider_keys"
        " WHERE provider_id = ANY($1::uuid[]) ORDER BY provider_id, position",
        [str(p) for p in provider_ids],
    )
    out: dict[str, list[asyncpg.Record]] = {str(p): [] for p in provider_ids}
    for r in rows:
        out[str(r["provider_id"])].append(r)
    return out


def settings_of(reg: Registry, row: asyncpg.Record) -> dict[str, str]:
    if not row["settings_sealed"]:
        return {}
    return msgspec.json.decode(reg.open("provider-settings", str(row["id"]), row["settings_sealed"]))


def key_out(k: asyncpg.Record) -> KeyOut:
    return KeyOut(id=str(k["id"]), hint=k["hint"], position=k["position"], created_at=k["created_at"])


def provider_out(reg: Registry, row: asyncpg.Record, keys: list[asyncpg.Record]) -> ProviderOut:
    return ProviderOut(
        id=str(row["id"]), name=row["name"], display_name=row["display_name"], type=row["type"],
        base_url=row["base_url"], enabled=row["enabled"], allow_byok=row["allow_byok"],
        settings=v.mask_settings(row["type"], settings_of(reg, row)),
        keys=[key_out(k) for k in keys], created_at=row["created_at"], updated_at=row["updated_at"],
    )


async def load_out(reg: Registry, conn: asyncpg.Connection, ref: str) -> ProviderOut:
    row = await fetch_provider(conn, ref)
    keys = await fetch_keys(conn, [row["id"]])
    return provider_out(reg, row, keys[str(row["id"])])


def _name_taken(name: str) -> Conflict:
    return Conflict(f"a provider named {name!r} already exists", "provider names are unique among providers that are not deleted")


def _seal_settings(reg: Registry, pid: str, settings: dict[str, str]) -> tuple[str | None, str | None]:
    if not settings:
        return None, None
    return reg.seal("provider-settings", pid, msgspec.json.encode(settings).decode())


async def _insert_key(reg: Registry, conn: asyncpg.Connection, pid: str, api_key: str, position: int) -> asyncpg.Record:
    kid = new_id()
    sealed, enc_kid = reg.seal("provider-key", kid, api_key)
    return await conn.fetchrow(
        "INSERT INTO registry.ai_provider_keys (id, provider_id, position, api_key_sealed, key_id, hint)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, provider_id, position, hint, created_at",
        kid, pid, position, sealed, enc_kid, key_hint(api_key),
    )


def key_hint(api_key: str) -> str:
    """The masked hint a key is shown by; for a Bedrock access-key pair (``AKID:SECRET``), of its key id only,
    so no character of the secret is ever shown."""
    akid = bedrock.access_key_id_of(api_key)
    return mask_secret(akid) if akid is not None else mask_secret(api_key)


async def insert_provider(
    reg: Registry, conn: asyncpg.Connection, actor: Actor, *, name: str, ptype: str, base_url: str,
    display_name: str, enabled: bool, allow_byok: bool, settings: dict[str, str], keys: list[str],
    action: str = "provider.create",
) -> ProviderOut:
    """Insert a provider with its keys, audit it and queue ``providers.changed`` (caller's transaction).

    Raises asyncpg.UniqueViolationError when the name is taken."""
    pid = new_id()
    sealed, enc_kid = _seal_settings(reg, pid, settings)
    await conn.execute(
        "INSERT INTO registry.ai_providers (id, type, name, display_name, enabled, allow_byok, base_url,"
        " settings_sealed, settings_key_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        pid, ptype, name, display_name or name, enabled, allow_byok, base_url, sealed, enc_kid,
    )
    for i, key in enumerate(keys):
        await _insert_key(reg, conn, pid, key, i)
    out = await load_out(reg, conn, pid)
    await audit(conn, actor, action, "provider", pid, None, to_builtins(out))
    await providers_changed(conn, pid)
    return out


# ------------------------------------------------------------------ handlers


async def list_providers(reg: Registry, request: web.Request, actor: Actor) -> ProviderList:
    async with reg.pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT {_COLS} FROM registry.ai_providers WHERE deleted_at IS NULL ORDER BY name")
        keys = await fetch_keys(conn, [r["id"] for r in rows])
    return ProviderList(providers=[provider_out(reg, r, keys[str(r["id"])]) for r in rows])


async def get_provider(reg: Registry, request: web.Request, actor: Actor) -> ProviderOut:
    async with reg.pool.acquire() as conn:
        return await load_out(reg, conn, request.match_info["idOrName"])


async def create_provider(reg: Registry, request: web.Request, actor: Actor) -> ProviderOut:
    body = await read_json(request, ProviderCreate)
    p = v.Problems()
    name = p.check(v.provider_name, body.name)
    ptype = p.check(v.provider_type, body.type)
    base = p.check(v.base_url, body.base_url, allowed=reg.settings.allow_private_upstreams)
    disp = p.check(v.display_name, body.display_name)
    settings = v.provider_settings(p, ptype, body.settings) if ptype else {}
    keys = [p.check(v.secret_value, k, f"keys[{i}]") for i, k in enumerate(body.keys)]
    if len(keys) > v.MAX_KEYS_PER_PROVIDER:
        p.add("keys", f"at most {v.MAX_KEYS_PER_PROVIDER} keys per provider")
    if keys and not body.enabled:
        p.add("keys", "a key cannot be attached to a disabled provider")
    p.raise_if_any()
    assert name and ptype and base is not None
    try:
        async with reg.transaction() as conn:
            out = await insert_provider(
                reg, conn, actor, name=name, ptype=ptype, base_url=base, display_name=disp or "",
                enabled=body.enabled, allow_byok=body.allow_byok, settings=settings, keys=[k for k in keys if k],
            )
    except asyncpg.UniqueViolationError:
        raise _name_taken(name) from None
    return out


async def update_provider(reg: Registry, request: web.Request, actor: Actor) -> ProviderOut:
    body = await read_json(request, ProviderPatch)
    ref = request.match_info["idOrName"]
    new_name: str | None = None
    try:
        async with reg.transaction() as conn:
            row = await fetch_provider(conn, ref, lock="FOR UPDATE")
            pid = str(row["id"])
            before = provider_out(reg, row, (await fetch_keys(conn, [pid]))[pid])
            p = v.Problems()
            sets: dict[str, Any] = {}
            if body.name is not msgspec.UNSET:
                new_name = sets["name"] = p.check(v.provider_name, body.name)
            if body.display_name is not msgspec.UNSET:
                sets["display_name"] = p.check(v.display_name, body.display_name) or (new_name or row["name"])
            if body.base_url is not msgspec.UNSET:
                sets["base_url"] = p.check(v.base_url, body.base_url,
                                           allowed=reg.settings.allow_private_upstreams)
            if body.enabled is not msgspec.UNSET:
                sets["enabled"] = body.enabled
            if body.allow_byok is not msgspec.UNSET:
                sets["allow_byok"] = body.allow_byok
            if body.settings is not msgspec.UNSET:
                merged = v.merge_settings(row["type"], settings_of(reg, row), body.settings)
                sets["settings_sealed"], sets["settings_key_id"] = _seal_settings(
                    reg, pid, v.provider_settings(p, row["type"], merged))
            p.raise_if_any()
            if not sets:
                return before
            assign, values = assignments(sets)
            await conn.execute(f"UPDATE registry.ai_providers SET {assign}, updated_at = now() WHERE id = $1",
                               pid, *values)
            after = await load_out(reg, conn, pid)
            await audit(conn, actor, "provider.update", "provider", pid, to_builtins(before), to_builtins(after))
            await providers_changed(conn, pid)
    except asyncpg.UniqueViolationError:
        raise _name_taken(new_name or "") from None
    return after


async def delete_provider(reg: Registry, request: web.Request, actor: Actor) -> None:
    async with reg.transaction() as conn:
        row = await fetch_provider(conn, request.match_info["idOrName"], lock="FOR UPDATE")
        pid = str(row["id"])
        before = provider_out(reg, row, (await fetch_keys(conn, [pid]))[pid])
        byok_users = [str(r["user_id"]) for r in await conn.fetch(
            "DELETE FROM registry.user_ai_provider_keys WHERE provider_id = $1 RETURNING user_id", pid)]
        await conn.execute("DELETE FROM registry.ai_provider_keys WHERE provider_id = $1", pid)
        # Soft delete; the credentials in settings go with it.
        await conn.execute(
            "UPDATE registry.ai_providers SET deleted_at = now(), updated_at = now(), enabled = false,"
            " settings_sealed = NULL, settings_key_id = NULL WHERE id = $1", pid)
        await audit(conn, actor, "provider.delete", "provider", pid, to_builtins(before), None)
        await providers_changed(conn, pid)
        await auth_revoked(conn, user_ids=byok_users)
    return None


async def list_keys(reg: Registry, request: web.Request, actor: Actor) -> KeyList:
    async with reg.pool.acquire() as conn:
        row = await fetch_provider(conn, request.match_info["idOrName"])
        keys = (await fetch_keys(conn, [row["id"]]))[str(row["id"])]
    return KeyList(provider_id=str(row["id"]), keys=[key_out(k) for k in keys])


def _key_audit(row: asyncpg.Record, k: asyncpg.Record) -> dict[str, Any]:
    return {"provider_id": str(row["id"]), "provider_name": row["name"], **to_builtins(key_out(k))}


async def create_key(reg: Registry, request: web.Request, actor: Actor) -> KeyOut:
    body = await read_json(request, KeyCreate)
    p = v.Problems()
    api_key = p.check(v.secret_value, body.api_key, "api_key")
    if body.position is not None and body.position < 0:
        p.add("position", "must be 0 or more (0 is tried first)")
    async with reg.transaction() as conn:
        row = await fetch_provider(conn, request.match_info["idOrName"], lock="FOR UPDATE")
        p.raise_if_any()
        assert api_key is not None
        if not row["enabled"]:
            raise Conflict(f"provider {row['name']!r} is disabled", "enable it before attaching keys")
        pid = str(row["id"])
        count = int(await conn.fetchval("SELECT count(*) FROM registry.ai_provider_keys WHERE provider_id = $1", pid))
        if count >= v.MAX_KEYS_PER_PROVIDER:
            raise Conflict(f"provider {row['name']!r} already has {count} keys", f"the limit is {v.MAX_KEYS_PER_PROVIDER}")
        pos = count if body.position is None else min(body.position, count)
        await conn.execute("UPDATE registry.ai_provider_keys SET position = position + 1"
                           " WHERE provider_id = $1 AND position >= $2", pid, pos)
        k = await _insert_key(reg, conn, pid, api_key, pos)
        await conn.execute("UPDATE registry.ai_providers SET updated_at = now() WHERE id = $1", pid)
        await audit(conn, actor, "provider_key.create", "provider_key", str(k["id"]), None, _key_audit(row, k))
        await providers_changed(conn, pid)
    return key_out(k)


async def delete_key(reg: Registry, request: web.Request, actor: Actor) -> None:
    key_ref = request.match_info["keyId"]
    async with reg.transaction() as conn:
        row = await fetch_provider(conn, request.match_info["idOrName"], lock="FOR UPDATE")
        pid = str(row["id"])
        k = None
        if is_uuid(key_ref):
            k = await conn.fetchrow(
                "DELETE FROM registry.ai_provider_keys WHERE id = $1 AND provider_id = $2"
                " RETURNING id, position, hint, created_at", key_ref, pid)
        if k is None:
            raise NotFound(f"key {key_ref!r} of provider {row['name']!r} not found")
        await conn.execute("UPDATE registry.ai_provider_keys SET position = position - 1"
                           " WHERE provider_id = $1 AND position > $2", pid, k["position"])
        await conn.execute("UPDATE registry.ai_providers SET updated_at = now() WHERE id = $1", pid)
        await audit(conn, actor, "provider_key.delete", "provider_key", str(k["id"]), _key_audit(row, k), None)
        await providers_changed(conn, pid)
    return None
