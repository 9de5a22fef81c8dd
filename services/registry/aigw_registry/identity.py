"""Users, groups, membership, API tokens and users' own provider keys (BYOK), plus who is calling.

The registry authenticates its own API against its database (token hash
lookup), with no bus round trip. Access rules beyond the route's role:
an admin acts on members and admins but not on owners, and only an owner
grants the owner role; no change may leave the system without an owner.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from aigw_common.api import Conflict, Forbidden, NotFound, Unauthorized, read_json
from aigw_common.auth import (
    GATEWAY_SCOPE_REFUSED,
    ROLE_OWNER,
    SCOPE_ADMIN,
    bearer_token,
    is_admin,
    is_owner,
    same_token,
)
from aigw_common.crypto import hash_token, mask_secret, new_token
from aigw_common.ids import is_uuid
from aigw_common.llm import capabilities

from . import validate as v
from .core import (
    OWNER_LOCK,
    Actor,
    Registry,
    assignments,
    audit,
    auth_revoked,
    directory_changed,
    new_id,
)
from .models import (
    GroupCreate,
    GroupList,
    GroupOut,
    GroupPatch,
    GroupRef,
    MemberRef,
    ProviderConfigList,
    ProviderConfigOut,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenOut,
    UserCreate,
    UserKeyList,
    UserKeyOut,
    UserKeyPut,
    UserList,
    UserOut,
    UserPatch,
    to_builtins,
)
from .providers import fetch_provider

# ------------------------------------------------------------------ authentication


async def authenticate(reg: Registry, request: web.Request) -> Actor:
    token = bearer_token(request)
    if not token:
        raise Unauthorized("missing token: send Authorization: Bearer <aigw token>")
    h = hash_token(token)
    row = await reg.pool.fetchrow(
        "SELECT t.id, t.token_hash, t.scope, u.id AS user_id, u.username, u.roles FROM registry.api_tokens t"
        " JOIN registry.users u ON u.id = t.user_id"
        " WHERE t.token_hash = $1 AND u.deleted_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())",
        h,
    )
    if row is None or not same_token(row["token_hash"], h):
        raise Unauthorized()
    if row["scope"] != SCOPE_ADMIN:  # every registry route is control plane
        raise Forbidden(GATEWAY_SCOPE_REFUSED)
    return Actor(str(row["user_id"]), row["username"], tuple(row["roles"]), str(row["id"]), row["scope"])


def is_self(actor: Actor, ref: str) -> bool:
    return ref == "me" or ref == actor.user_id or ref.lower() == actor.username.lower()


# ------------------------------------------------------------------ users


_USER_COLS = "id, username, email, roles, created_at, updated_at"


async def fetch_user(conn: asyncpg.Connection, ref: str, actor: Actor, *, lock: str = "") -> asyncpg.Record:
    """A live user by id, username or ``me``; 404 when missing."""
    if ref == "me":
        ref = actor.user_id or ""
    if is_uuid(ref):
        row = await conn.fetchrow(
            f"SELECT {_USER_COLS} FROM registry.users WHERE id = $1 AND deleted_at IS NULL {lock}", ref)
    else:
        row = await conn.fetchrow(
            f"SELECT {_USER_COLS} FROM registry.users WHERE lower(username) = lower($1) AND deleted_at IS NULL {lock}",
            ref)
    if row is None:
        raise NotFound(f"user {ref!r} not found")
    return row


def check_target(actor: Actor, target: asyncpg.Record) -> None:
    """Admins manage members and admins; an owner account is managed only by an owner."""
    if str(target["id"]) == actor.user_id:
        return
    if ROLE_OWNER in target["roles"] and not is_owner(actor):
        raise Forbidden("only an owner may manage an owner account")


async def target_user(conn: asyncpg.Connection, request: web.Request, actor: Actor, *, lock: str = "") -> asyncpg.Record:
    """The ``{user}`` of a self-or-admin route: members reach only themselves (403 otherwise)."""
    ref = request.match_info["user"]
    if not is_admin(actor) and not is_self(actor, ref):
        raise Forbidden("members may only manage their own account")
    row = await fetch_user(conn, ref, actor, lock=lock)
    if not is_admin(actor) and str(row["id"]) != actor.user_id:
        raise Forbidden("members may only manage their own account")
    check_target(actor, row)
    return row


async def user_out(conn: asyncpg.Connection, row: asyncpg.Record) -> UserOut:
    groups = await conn.fetch(
        "SELECT g.id, g.name FROM registry.group_members m JOIN registry.groups g ON g.id = m.group_id"
        " WHERE m.user_id = $1 ORDER BY g.name", row["id"])
    return UserOut(id=str(row["id"]), username=row["username"], email=row["email"], roles=list(row["roles"]),
                   groups=[GroupRef(id=str(g["id"]), name=g["name"]) for g in groups],
                   created_at=row["created_at"], updated_at=row["updated_at"])


def _username_taken(name: str) -> Conflict:
    return Conflict(f"a user named {name!r} already exists")


async def _owners_left(conn: asyncpg.Connection, excluding: str) -> int:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", OWNER_LOCK)
    return int(await conn.fetchval(
        "SELECT count(*) FROM registry.users WHERE deleted_at IS NULL AND 'owner' = ANY(roles) AND id <> $1",
        excluding))


async def insert_user(conn: asyncpg.Connection, actor: Actor, username: str, email: str | None,
                      roles: list[str], action: str = "user.create") -> UserOut:
    uid = new_id()
    row = await conn.fetchrow(
        f"INSERT INTO registry.users (id, username, email, roles) VALUES ($1, $2, $3, $4) RETURNING {_USER_COLS}",
        uid, username, email, roles)
    out = await user_out(conn, row)
    await audit(conn, actor, action, "user", uid, None, to_builtins(out))
    await directory_changed(conn, user_ids=[uid])
    return out


async def list_users(reg: Registry, request: web.Request, actor: Actor) -> UserList:
    async with reg.pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT {_USER_COLS} FROM registry.users WHERE deleted_at IS NULL ORDER BY lower(username)")
        return UserList(users=[await user_out(conn, r) for r in rows])


async def get_user(reg: Registry, request: web.Request, actor: Actor) -> UserOut:
    async with reg.pool.acquire() as conn:
        ref = request.match_info["user"]
        if not is_admin(actor) and not is_self(actor, ref):
            raise Forbidden("members may only read their own account")
        return await user_out(conn, await fetch_user(conn, ref, actor))


async def create_user(reg: Registry, request: web.Request, actor: Actor) -> UserOut:
    body = await read_json(request, UserCreate)
    p = v.Problems()
    username = p.check(v.account_name, body.username, "username")
    email = p.check(v.email, body.email)
    roles = p.check(v.roles, body.roles)
    p.raise_if_any()
    assert username and roles
    if ROLE_OWNER in roles and not is_owner(actor):
        raise Forbidden("only an owner may grant the owner role")
    try:
        async with reg.transaction() as conn:
            out = await insert_user(conn, actor, username, email, roles)
    except asyncpg.UniqueViolationError:
        raise _username_taken(username) from None
    return out


async def update_user(reg: Registry, request: web.Request, actor: Actor) -> UserOut:
    body = await read_json(request, UserPatch)
    p = v.Problems()
    sets: dict[str, Any] = {}
    if body.username is not msgspec.UNSET:
        sets["username"] = p.check(v.account_name, body.username, "username")
    if body.email is not msgspec.UNSET:
        sets["email"] = p.check(v.email, body.email)
    if body.roles is not msgspec.UNSET:
        sets["roles"] = p.check(v.roles, body.roles)
    try:
        async with reg.transaction() as conn:
            row = await fetch_user(conn, request.match_info["user"], actor, lock="FOR UPDATE")
            check_target(actor, row)
            p.raise_if_any()
            before = await user_out(conn, row)
            if "roles" in sets:
                granting = ROLE_OWNER in sets["roles"] and ROLE_OWNER not in row["roles"]
                if granting and not is_owner(actor):
                    raise Forbidden("only an owner may grant the owner role")
                if ROLE_OWNER in row["roles"] and ROLE_OWNER not in sets["roles"]:
                    if await _owners_left(conn, str(row["id"])) == 0:
                        raise Conflict("this would leave no owner", "grant the owner role to another user first")
            if not sets:
                return before
            assign, values = assignments(sets)
            row = await conn.fetchrow(
                f"UPDATE registry.users SET {assign}, updated_at = now() WHERE id = $1 RETURNING {_USER_COLS}",
                row["id"], *values)
            after = await user_out(conn, row)
            await audit(conn, actor, "user.update", "user", after.id, to_builtins(before), to_builtins(after))
            if before.roles != after.roles:
                await auth_revoked(conn, user_ids=[after.id])
            if before.username != after.username:
                await directory_changed(conn, user_ids=[after.id])
    except asyncpg.UniqueViolationError:
        raise _username_taken(str(sets.get("username"))) from None
    return after


async def delete_user(reg: Registry, request: web.Request, actor: Actor) -> None:
    async with reg.transaction() as conn:
        row = await fetch_user(conn, request.match_info["user"], actor, lock="FOR UPDATE")
        check_target(actor, row)
        uid = str(row["id"])
        if ROLE_OWNER in row["roles"] and await _owners_left(conn, uid) == 0:
            raise Conflict("this would leave no owner", "grant the owner role to another user first")
        before = await user_out(conn, row)
        tokens = [str(r["id"]) for r in await conn.fetch(
            "DELETE FROM registry.api_tokens WHERE user_id = $1 RETURNING id", uid)]
        await conn.execute("DELETE FROM registry.user_ai_provider_keys WHERE user_id = $1", uid)
        await conn.execute("DELETE FROM registry.group_members WHERE user_id = $1", uid)
        await conn.execute("UPDATE registry.users SET deleted_at = now(), updated_at = now() WHERE id = $1", uid)
        await audit(conn, actor, "user.delete", "user", uid, to_builtins(before), None)
        await auth_revoked(conn, deleted_user_ids=[uid], token_ids=tokens)
        await directory_changed(conn, user_ids=[uid], group_ids=[g.id for g in before.groups])
    return None


# ------------------------------------------------------------------ tokens


def token_out(r: asyncpg.Record) -> TokenOut:
    return TokenOut(id=str(r["id"]), user_id=str(r["user_id"]), name=r["name"], hint=r["hint"], scope=r["scope"],
                    created_at=r["created_at"], expires_at=r["expires_at"])


_TOKEN_COLS = "id, user_id, name, hint, scope, created_at, expires_at"
TOKEN_DEFAULT_LIFETIME = timedelta(days=90)
TOKEN_MAX_LIFETIME = timedelta(days=36500)


async def insert_token(conn: asyncpg.Connection, actor: Actor, user_id: str, token: str, name: str,
                       expires_at: datetime | None, scope: str, action: str = "token.create") -> asyncpg.Record:
    row = await conn.fetchrow(
        f"INSERT INTO registry.api_tokens (id, user_id, name, token_hash, hint, expires_at, scope)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_TOKEN_COLS}",
        new_id(), user_id, name, hash_token(token), mask_secret(token), expires_at, scope)
    await audit(conn, actor, action, "token", str(row["id"]), None, to_builtins(token_out(row)))
    return row


async def list_tokens(reg: Registry, request: web.Request, actor: Actor) -> TokenList:
    async with reg.pool.acquire() as conn:
        user = await target_user(conn, request, actor)
        rows = await conn.fetch(
            f"SELECT {_TOKEN_COLS} FROM registry.api_tokens WHERE user_id = $1 ORDER BY created_at", user["id"])
    return TokenList(tokens=[token_out(r) for r in rows])


async def create_token(reg: Registry, request: web.Request, actor: Actor) -> TokenCreated:
    body = await read_json(request, TokenCreate)
    p = v.Problems()
    name = p.check(v.token_name, body.name) or ""
    now = datetime.now(UTC)
    expires: datetime | None
    if body.expires_at is msgspec.UNSET:
        expires = now + TOKEN_DEFAULT_LIFETIME
    elif body.expires_at is None:
        if not is_owner(actor):
            raise Forbidden("only an owner may create a token that never expires; give expires_at a date")
        expires = None
    else:
        expires = body.expires_at if body.expires_at.tzinfo else body.expires_at.replace(tzinfo=UTC)
        if expires <= now:
            p.add("expires_at", "must be in the future")
        elif expires > now + TOKEN_MAX_LIFETIME:
            p.add("expires_at", "must be within 100 years")
    async with reg.transaction() as conn:
        user = await target_user(conn, request, actor, lock="FOR SHARE")
        p.raise_if_any()
        token = new_token()
        row = await insert_token(conn, actor, str(user["id"]), token, name, expires, body.scope)
    t = token_out(row)
    return TokenCreated(**msgspec.structs.asdict(t), token=token)


async def delete_token(reg: Registry, request: web.Request, actor: Actor) -> None:
    ref = request.match_info["tokenId"]
    async with reg.transaction() as conn:
        user = await target_user(conn, request, actor)
        row = None
        if is_uuid(ref):
            row = await conn.fetchrow(
                f"DELETE FROM registry.api_tokens WHERE id = $1 AND user_id = $2 RETURNING {_TOKEN_COLS}",
                ref, user["id"])
        if row is None:
            raise NotFound(f"token {ref!r} not found")
        await audit(conn, actor, "token.delete", "token", str(row["id"]), to_builtins(token_out(row)), None)
        await auth_revoked(conn, token_ids=[str(row["id"])])
    return None


# ------------------------------------------------------------------ users' provider keys (BYOK)


def user_key_out(r: asyncpg.Record) -> UserKeyOut:
    return UserKeyOut(provider_id=str(r["provider_id"]), provider_name=r["provider_name"], hint=r["hint"],
                      created_at=r["created_at"], updated_at=r["updated_at"])


_USER_KEY_SELECT = (
    "SELECT k.provider_id, p.name AS provider_name, k.hint, k.created_at, k.updated_at"
    " FROM registry.user_ai_provider_keys k JOIN registry.ai_providers p ON p.id = k.provider_id"
)


async def list_user_keys(reg: Registry, request: web.Request, actor: Actor) -> UserKeyList:
    async with reg.pool.acquire() as conn:
        user = await target_user(conn, request, actor)
        rows = await conn.fetch(_USER_KEY_SELECT + " WHERE k.user_id = $1 AND p.deleted_at IS NULL ORDER BY p.name",
                                user["id"])
    return UserKeyList(provider_keys=[user_key_out(r) for r in rows])


def _centralized(ptype: str, has_pool: bool) -> bool:
    """Whether the organisation's side can serve a type: its pool keys, or no key at all for a keyless type
    (Bedrock signs with AWS credentials, a local openai-compat server needs none); never a BYOK-only one."""
    cap = capabilities(ptype)
    return cap is not None and not cap.byok_only and (has_pool or cap.keyless)


async def list_provider_configs(reg: Registry, request: web.Request, actor: Actor) -> ProviderConfigList:
    """Which enabled providers a user may call, and how: with the organisation's keys, their own, or both."""
    async with reg.pool.acquire() as conn:
        user = await target_user(conn, request, actor)
        rows = await conn.fetch(
            "SELECT p.name, p.type, p.display_name, p.allow_byok,"
            " EXISTS (SELECT 1 FROM registry.ai_provider_keys k WHERE k.provider_id = p.id) AS has_pool,"
            " EXISTS (SELECT 1 FROM registry.user_ai_provider_keys u WHERE u.provider_id = p.id AND u.user_id = $1)"
            "   AS has_key"
            " FROM registry.ai_providers p WHERE p.deleted_at IS NULL AND p.enabled ORDER BY p.name", user["id"])
    out = [ProviderConfigOut(
        name=r["name"], type=r["type"], display_name=r["display_name"],
        byok=bool(r["allow_byok"] and reg.settings.allow_byok),
        centralized=_centralized(r["type"], r["has_pool"]),
        has_key=r["has_key"],
    ) for r in rows]
    return ProviderConfigList(providers=out)


async def put_user_key(reg: Registry, request: web.Request, actor: Actor) -> UserKeyOut:
    body = await read_json(request, UserKeyPut)
    p = v.Problems()
    api_key = p.check(v.secret_value, body.api_key, "api_key")
    async with reg.transaction() as conn:
        user = await target_user(conn, request, actor, lock="FOR SHARE")
        prov = await fetch_provider(conn, request.match_info["provider"], lock="FOR SHARE")
        p.raise_if_any()
        assert api_key is not None
        if not prov["enabled"]:
            raise Conflict(f"provider {prov['name']!r} is disabled", "a key cannot be attached to a disabled provider")
        if not prov["allow_byok"] or not reg.settings.allow_byok:
            raise Forbidden(f"BYOK is not enabled for provider {prov['name']!r}")
        uid, pid = str(user["id"]), str(prov["id"])
        before_row = await conn.fetchrow(_USER_KEY_SELECT + " WHERE k.user_id = $1 AND k.provider_id = $2", uid, pid)
        sealed, enc_kid = reg.seal("user-provider-key", f"{uid}:{pid}", api_key)
        await conn.execute(
            "INSERT INTO registry.user_ai_provider_keys (user_id, provider_id, api_key_sealed, key_id, hint)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, provider_id) DO UPDATE SET"
            " api_key_sealed = EXCLUDED.api_key_sealed, key_id = EXCLUDED.key_id, hint = EXCLUDED.hint,"
            " updated_at = now()", uid, pid, sealed, enc_kid, mask_secret(api_key))
        row = await conn.fetchrow(_USER_KEY_SELECT + " WHERE k.user_id = $1 AND k.provider_id = $2", uid, pid)
        out = user_key_out(row)
        await audit(conn, actor, "user_provider_key.put", "user_provider_key", f"{uid}:{pid}",
                    to_builtins(user_key_out(before_row)) if before_row else None,
                    {"user_id": uid, **to_builtins(out)})
        await auth_revoked(conn, user_ids=[uid])
    return out


async def delete_user_key(reg: Registry, request: web.Request, actor: Actor) -> None:
    async with reg.transaction() as conn:
        user = await target_user(conn, request, actor)
        prov = await fetch_provider(conn, request.match_info["provider"])
        uid, pid = str(user["id"]), str(prov["id"])
        row = await conn.fetchrow(_USER_KEY_SELECT + " WHERE k.user_id = $1 AND k.provider_id = $2", uid, pid)
        if row is None:
            raise NotFound(f"a key of user {user['username']!r} for provider {prov['name']!r} not found")
        await conn.execute("DELETE FROM registry.user_ai_provider_keys WHERE user_id = $1 AND provider_id = $2",
                           uid, pid)
        await audit(conn, actor, "user_provider_key.delete", "user_provider_key", f"{uid}:{pid}",
                    {"user_id": uid, **to_builtins(user_key_out(row))}, None)
        await auth_revoked(conn, user_ids=[uid])
    return None


# ------------------------------------------------------------------ groups


async def fetch_group(conn: asyncpg.Connection, ref: str, *, lock: str = "") -> asyncpg.Record:
    col = "id = $1" if is_uuid(ref) else "lower(name) = lower($1)"
    row = await conn.fetchrow(f"SELECT id, name, created_at, updated_at FROM registry.groups WHERE {col} {lock}", ref)
    if row is None:
        raise NotFound(f"group {ref!r} not found")
    return row


async def group_out(conn: asyncpg.Connection, row: asyncpg.Record) -> GroupOut:
    members = await conn.fetch(
        "SELECT u.id, u.username FROM registry.group_members m JOIN registry.users u ON u.id = m.user_id"
        " WHERE m.group_id = $1 ORDER BY lower(u.username)", row["id"])
    return GroupOut(id=str(row["id"]), name=row["name"],
                    members=[MemberRef(id=str(m["id"]), username=m["username"]) for m in members],
                    created_at=row["created_at"], updated_at=row["updated_at"])


def _group_taken(name: str) -> Conflict:
    return Conflict(f"a group named {name!r} already exists")


async def list_groups(reg: Registry, request: web.Request, actor: Actor) -> GroupList:
    async with reg.pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, name, created_at, updated_at FROM registry.groups ORDER BY lower(name)")
        return GroupList(groups=[await group_out(conn, r) for r in rows])


async def get_group(reg: Registry, request: web.Request, actor: Actor) -> GroupOut:
    async with reg.pool.acquire() as conn:
        return await group_out(conn, await fetch_group(conn, request.match_info["group"]))


async def create_group(reg: Registry, request: web.Request, actor: Actor) -> GroupOut:
    body = await read_json(request, GroupCreate)
    p = v.Problems()
    name = p.check(v.account_name, body.name, "name")
    p.raise_if_any()
    assert name
    try:
        async with reg.transaction() as conn:
            row = await conn.fetchrow(
                "INSERT INTO registry.groups (id, name) VALUES ($1, $2) RETURNING id, name, created_at, updated_at",
                new_id(), name)
            out = await group_out(conn, row)
            await audit(conn, actor, "group.create", "group", out.id, None, to_builtins(out))
            await directory_changed(conn, group_ids=[out.id])
    except asyncpg.UniqueViolationError:
        raise _group_taken(name) from None
    return out


async def update_group(reg: Registry, request: web.Request, actor: Actor) -> GroupOut:
    body = await read_json(request, GroupPatch)
    p = v.Problems()
    name = p.check(v.account_name, body.name, "name") if body.name is not msgspec.UNSET else None
    try:
        async with reg.transaction() as conn:
            row = await fetch_group(conn, request.match_info["group"], lock="FOR UPDATE")
            p.raise_if_any()
            before = await group_out(conn, row)
            if name is None:
                return before
            row = await conn.fetchrow("UPDATE registry.groups SET name = $2, updated_at = now() WHERE id = $1"
                                      " RETURNING id, name, created_at, updated_at", row["id"], name)
            after = await group_out(conn, row)
            await audit(conn, actor, "group.update", "group", after.id, to_builtins(before), to_builtins(after))
            await directory_changed(conn, group_ids=[after.id])
    except asyncpg.UniqueViolationError:
        raise _group_taken(name or "") from None
    return after


async def delete_group(reg: Registry, request: web.Request, actor: Actor) -> None:
    async with reg.transaction() as conn:
        row = await fetch_group(conn, request.match_info["group"], lock="FOR UPDATE")
        before = await group_out(conn, row)
        await conn.execute("DELETE FROM registry.groups WHERE id = $1", row["id"])
        await audit(conn, actor, "group.delete", "group", before.id, to_builtins(before), None)
        await auth_revoked(conn, user_ids=[m.id for m in before.members])
        await directory_changed(conn, user_ids=[m.id for m in before.members], group_ids=[before.id])
    return None


async def put_member(reg: Registry, request: web.Request, actor: Actor) -> None:
    async with reg.transaction() as conn:
        group = await fetch_group(conn, request.match_info["group"], lock="FOR UPDATE")
        user = await fetch_user(conn, request.match_info["user"], actor, lock="FOR SHARE")
        added = await conn.fetchval(
            "INSERT INTO registry.group_members (group_id, user_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING user_id", group["id"], user["id"])
        if added is not None:
            await conn.execute("UPDATE registry.groups SET updated_at = now() WHERE id = $1", group["id"])
            await audit(conn, actor, "group_member.add", "group", str(group["id"]), None,
                        _member_audit(group, user))
            await auth_revoked(conn, user_ids=[str(user["id"])])
            await directory_changed(conn, user_ids=[str(user["id"])], group_ids=[str(group["id"])])
    return None


def _member_audit(group: asyncpg.Record, user: asyncpg.Record) -> dict[str, Any]:
    return {"group_id": str(group["id"]), "group": group["name"], "user_id": str(user["id"]),
            "username": user["username"]}


async def delete_member(reg: Registry, request: web.Request, actor: Actor) -> None:
    async with reg.transaction() as conn:
        group = await fetch_group(conn, request.match_info["group"], lock="FOR UPDATE")
        user = await fetch_user(conn, request.match_info["user"], actor)
        removed = await conn.fetchval(
            "DELETE FROM registry.group_members WHERE group_id = $1 AND user_id = $2 RETURNING user_id",
            group["id"], user["id"])
        if removed is None:
            raise NotFound(f"user {user['username']!r} in group {group['name']!r} not found")
        await conn.execute("UPDATE registry.groups SET updated_at = now() WHERE id = $1", group["id"])
        await audit(conn, actor, "group_member.remove", "group", str(group["id"]), _member_audit(group, user), None)
        await auth_revoked(conn, user_ids=[str(user["id"])])
        await directory_changed(conn, user_ids=[str(user["id"])], group_ids=[str(group["id"])])
    return None
