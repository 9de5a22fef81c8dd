"""The registry's HTTP API (``docs/api.md``): one route table (``aigw_common.api.Route``) drives the router,
the OpenAPI document and the RBAC matrix test; every handler returns the Struct its route declares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from aigw_common.api import BadRequest, Conflict, Forbidden, Query, Route, mount, read_json
from aigw_common.auth import is_owner
from aigw_common.errors import CryptoError
from aigw_common.openapi import document_route, serve_document

from . import identity as ident
from . import providers as prov
from .core import Actor, Registry, audit
from .models import (
    AuditEntry,
    AuditList,
    GroupCreate,
    GroupList,
    GroupOut,
    GroupPatch,
    KeyCreate,
    KeyList,
    KeyOut,
    ProviderConfigList,
    ProviderCreate,
    ProviderList,
    ProviderOut,
    ProviderPatch,
    RotateSecrets,
    RotateSecretsOut,
    TokenCreate,
    TokenCreated,
    TokenList,
    UserCreate,
    UserKeyList,
    UserKeyOut,
    UserKeyPut,
    UserList,
    UserOut,
    UserPatch,
)
from .openapi import DOCUMENT
from .rotate import pending, reseal

REGISTRY = web.AppKey("registry", Registry)

Handler = Callable[[Registry, web.Request, Actor], Awaitable[Any]]


async def list_audit_logs(reg: Registry, request: web.Request, actor: Actor) -> AuditList:
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
        cursor = int(q["cursor"]) if q.get("cursor") else None
    except ValueError:
        raise BadRequest("limit and cursor must be integers", "limit") from None
    if not 1 <= limit <= 500:
        raise BadRequest("limit must be between 1 and 500", "limit")
    if cursor is not None and not 0 < cursor < 2**63:
        raise BadRequest("cursor is out of range", "cursor")
    where: list[str] = []
    args: list[object] = []
    for col in ("action", "resource_type", "resource_id", "actor_name"):
        param = "actor" if col == "actor_name" else col
        if val := q.get(param):
            args.append(val)
            where.append(f"{col} = ${len(args)}")
    if cursor is not None:
        args.append(cursor)
        where.append(f"id < ${len(args)}")
    sql = ("SELECT id, at, actor_id, actor_name, action, resource_type, resource_id, before, after"
           " FROM registry.audit_logs" + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY id DESC LIMIT {limit + 1}")
    rows = await reg.pool.fetch(sql, *args)
    entries = [AuditEntry(id=str(r["id"]), at=r["at"], actor_id=str(r["actor_id"]) if r["actor_id"] else None,
                          actor_name=r["actor_name"], action=r["action"], resource_type=r["resource_type"],
                          resource_id=r["resource_id"], before=r["before"], after=r["after"]) for r in rows[:limit]]
    return AuditList(audit_logs=entries, next_cursor=entries[-1].id if len(rows) > limit else None)


async def rotate_secrets(reg: Registry, request: web.Request, actor: Actor) -> RotateSecretsOut:
    """Owner only: re-seal stored secrets with the first key of AIGW_ENCRYPTION_KEYS (see rotate.py)."""
    if not is_owner(actor):
        raise Forbidden("only an owner may rotate the encryption of stored secrets")
    body = await read_json(request, RotateSecrets) if request.can_read_body else RotateSecrets()
    current = reg.at_rest.current_key_id
    try:
        done = await reseal(reg, batch=body.batch_size, max_rows=body.max_rows)
    except CryptoError as e:
        raise Conflict("a stored secret cannot be opened with AIGW_ENCRYPTION_KEYS", str(e)) from None
    async with reg.transaction() as conn:
        left = await pending(conn, current)
        await audit(conn, actor, "secrets.rotate", "encryption_key", current, None,
                    {"resealed": done, "remaining": left})
    return RotateSecretsOut(key_id=current, resealed=done, remaining=left)


_PROVIDERS = "/api/v2/ai/providers"
_USERS = "/api/v2/users"
_GROUPS = "/api/v2/groups"
_STR = {"type": "string"}

ROUTES: list[Route] = [
    Route("GET", _PROVIDERS, prov.list_providers, "admin", "List providers", "providers", response=ProviderList),
    Route("POST", _PROVIDERS, prov.create_provider, "admin", "Create a provider", "providers",
          body=ProviderCreate, response=ProviderOut, status=201),
    Route("GET", _PROVIDERS + "/{idOrName}", prov.get_provider, "admin", "Read a provider", "providers",
          response=ProviderOut),
    Route("PATCH", _PROVIDERS + "/{idOrName}", prov.update_provider, "admin", "Update a provider", "providers",
          body=ProviderPatch, response=ProviderOut),
    Route("DELETE", _PROVIDERS + "/{idOrName}", prov.delete_provider, "admin",
          "Delete a provider (its keys and users' keys for it go too)", "providers"),
    Route("GET", _PROVIDERS + "/{idOrName}/keys", prov.list_keys, "admin", "List a provider's keys (masked)",
          "providers", response=KeyList),
    Route("POST", _PROVIDERS + "/{idOrName}/keys", prov.create_key, "admin",
          "Add a key to a provider's pool (position 0 is tried first)", "providers",
          body=KeyCreate, response=KeyOut, status=201),
    Route("DELETE", _PROVIDERS + "/{idOrName}/keys/{keyId}", prov.delete_key, "admin", "Remove a key",
          "providers"),
    Route("GET", _USERS + "/{user}/ai/provider-keys", ident.list_user_keys, "user",
          "List a user's own provider keys (BYOK)", "users", response=UserKeyList),
    Route("GET", _USERS + "/{user}/ai/provider-configs", ident.list_provider_configs, "user",
          "Which providers a user may call and how (organisation keys, own key); no URLs, settings or pool hints",
          "users", response=ProviderConfigList),
    Route("PUT", _USERS + "/{user}/ai/provider-keys/{provider}", ident.put_user_key, "user",
          "Store a user's own key for a provider", "users", body=UserKeyPut, response=UserKeyOut),
    Route("DELETE", _USERS + "/{user}/ai/provider-keys/{provider}", ident.delete_user_key, "user",
          "Delete a user's own key for a provider", "users"),
    Route("GET", _USERS, ident.list_users, "admin", "List users", "users", response=UserList),
    Route("POST", _USERS, ident.create_user, "admin", "Create a user", "users", body=UserCreate,
          response=UserOut, status=201),
    Route("GET", _USERS + "/{user}", ident.get_user, "user", "Read a user (members: only themselves)", "users",
          response=UserOut),
    Route("PATCH", _USERS + "/{user}", ident.update_user, "admin", "Update a user", "users", body=UserPatch,
          response=UserOut),
    Route("DELETE", _USERS + "/{user}", ident.delete_user, "admin",
          "Delete a user (their tokens and keys go too)", "users"),
    Route("GET", _USERS + "/{user}/tokens", ident.list_tokens, "user", "List a user's API tokens", "tokens",
          response=TokenList),
    Route("POST", _USERS + "/{user}/tokens", ident.create_token, "user",
          "Create an API token (shown once)", "tokens", body=TokenCreate, response=TokenCreated, status=201),
    Route("DELETE", _USERS + "/{user}/tokens/{tokenId}", ident.delete_token, "user", "Revoke an API token",
          "tokens"),
    Route("GET", _GROUPS, ident.list_groups, "admin", "List groups", "groups", response=GroupList),
    Route("POST", _GROUPS, ident.create_group, "admin", "Create a group", "groups", body=GroupCreate,
          response=GroupOut, status=201),
    Route("GET", _GROUPS + "/{group}", ident.get_group, "admin", "Read a group", "groups", response=GroupOut),
    Route("PATCH", _GROUPS + "/{group}", ident.update_group, "admin", "Rename a group", "groups",
          body=GroupPatch, response=GroupOut),
    Route("DELETE", _GROUPS + "/{group}", ident.delete_group, "admin", "Delete a group", "groups"),
    Route("PUT", _GROUPS + "/{group}/members/{user}", ident.put_member, "admin", "Add a member", "groups"),
    Route("DELETE", _GROUPS + "/{group}/members/{user}", ident.delete_member, "admin", "Remove a member", "groups"),
    Route("GET", "/api/v2/audit-logs", list_audit_logs, "admin", "Read the audit log, newest first", "audit",
          response=AuditList, query=(
              Query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page size (default 100)"),
              Query("cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "next_cursor of the previous page"),
              Query("action", _STR, "e.g. provider.update"),
              Query("resource_type", _STR, "provider, provider_key, user, token, group, user_provider_key"),
              Query("resource_id", _STR),
              Query("actor", _STR, "actor name"),
          )),
    Route("POST", "/api/v2/secrets/rotate", rotate_secrets, "admin",
          "Re-seal stored secrets with the first key of AIGW_ENCRYPTION_KEYS (owners only; batched, resumable)",
          "secrets", body=RotateSecrets, response=RotateSecretsOut),
    document_route("/api/v2/openapi.json"),
]


async def _caller(request: web.Request) -> Actor:
    actor = await ident.authenticate(request.app[REGISTRY], request)
    for name, val in (*request.match_info.items(), *request.query.items()):
        if "\x00" in val:  # Postgres text cannot hold NUL; no valid id, name or filter contains one
            raise BadRequest(f"{name} contains a NUL character", name)
    return actor


async def _invoke(route: Route, request: web.Request, actor: Actor) -> Any:
    handler: Handler = route.handler
    return await handler(request.app[REGISTRY], request, actor)


def add_routes(app: web.Application) -> None:
    mount(app, ROUTES, _caller, _invoke)
    serve_document(app, ROUTES, **DOCUMENT)
