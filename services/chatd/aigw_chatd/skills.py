"""Personal skills: a user's named instructions, used by a message that starts with ``/<name>``.

Rules: names unique per user (409), at most ``MAX_SKILLS`` per user (409 past
it), description ≤ 256 characters, content ≤ 64 KiB (UTF-8). A user manages
their own skills; an ``owner`` may read and delete anyone's but not create or
edit them. Every change is written to ``chatd.audit_log``. Skills of a deleted
user are purged on ``aigw.auth.revoked`` with ``deleted_user_ids``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from aigw_common.api import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Route,
    ValidationOut,
    read_json,
)
from aigw_common.auth import is_owner
from aigw_common.bus import Bus
from aigw_common.errors import BusError
from aigw_common.schemas import DirectoryLookup, DirectoryReply, Identity

from .models import SkillList, SkillOut, skill_out
from .store import Store

log = logging.getLogger(__name__)

MAX_SKILLS = 100
MAX_DESCRIPTION = 256
MAX_CONTENT_BYTES = 64 * 1024
MAX_NAME = 64
NAME_RE = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$")
SKILL_COLS = "id, user_id, username, name, description, content, created_at, updated_at"


class SkillCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    content: str
    description: str = ""


class SkillPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str | None = None
    description: str | None = None
    content: str | None = None


def validate(name: str | None, description: str | None, content: str | None) -> None:
    problems: list[ValidationOut] = []
    if name is not None and (len(name) > MAX_NAME or not NAME_RE.match(name)):
        problems.append(ValidationOut("name", f"lowercase letters and digits separated by - or _, at most {MAX_NAME} characters"))
    if description is not None and len(description) > MAX_DESCRIPTION:
        problems.append(ValidationOut("description", f"at most {MAX_DESCRIPTION} characters (got {len(description)})"))
    if content is not None:
        if not content.strip():
            problems.append(ValidationOut("content", "must not be empty"))
        elif len(content.encode()) > MAX_CONTENT_BYTES:
            problems.append(ValidationOut("content", f"at most {MAX_CONTENT_BYTES} bytes (64 KiB) of UTF-8"))
    if problems:
        raise BadRequest("invalid skill", detail="; ".join(f"{p.field}: {p.detail}" for p in problems),
                         validations=problems)


class SkillStore:
    def __init__(self, store: Store) -> None:
        self.pool = store.pool
        self._audit = store._audit

    async def list(self, user_id: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(f"SELECT {SKILL_COLS} FROM chatd.skills WHERE user_id = $1 ORDER BY name", user_id)

    async def get(self, user_id: str, id_or_name: str) -> asyncpg.Record | None:
        sid = _uuid(id_or_name)
        return await self.pool.fetchrow(
            f"SELECT {SKILL_COLS} FROM chatd.skills WHERE user_id = $1 AND (name = $2 OR id = $3)",
            user_id, id_or_name, sid,
        )

    async def user_by_name(self, username: str) -> str | None:
        return await self.pool.fetchval("SELECT user_id FROM chatd.skills WHERE username = $1 LIMIT 1", username)

    async def create(self, ident: Identity, body: SkillCreate) -> asyncpg.Record:
        async with self.pool.acquire() as c, c.transaction():
            # serialise a user's creations so two concurrent posts cannot both be the 100th
            await c.execute("SELECT pg_advisory_xact_lock(hashtextextended('chatd.skills:' || $1, 0))", ident.user_id)
            n = await c.fetchval("SELECT count(*) FROM chatd.skills WHERE user_id = $1", ident.user_id)
            if n >= MAX_SKILLS:
                raise Conflict(f"skill limit reached: at most {MAX_SKILLS} skills per user")
            try:
                row = await c.fetchrow(
                    f"INSERT INTO chatd.skills (id, user_id, username, name, description, content) "
                    f"VALUES ($1,$2,$3,$4,$5,$6) RETURNING {SKILL_COLS}",
                    uuid.uuid4(), ident.user_id, ident.username, body.name, body.description, body.content,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict(f"a skill named {body.name!r} already exists") from None
            await self._audit(c, ident.user_id, "skill.create", ident.user_id, body.name, {"id": str(row["id"])})
        return row

    async def update(self, ident: Identity, skill: asyncpg.Record, patch: SkillPatch) -> asyncpg.Record:
        async with self.pool.acquire() as c, c.transaction():
            try:
                row = await c.fetchrow(
                    f"UPDATE chatd.skills SET name = coalesce($2, name), description = coalesce($3, description), "
                    f"content = coalesce($4, content), username = $5, updated_at = now() WHERE id = $1 RETURNING {SKILL_COLS}",
                    skill["id"], patch.name, patch.description, patch.content, ident.username,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict(f"a skill named {patch.name!r} already exists") from None
            if row is None:
                raise NotFound("skill not found")
            changed = [f for f in ("name", "description", "content") if getattr(patch, f) is not None]
            await self._audit(c, ident.user_id, "skill.update", skill["user_id"], row["name"],
                              {"id": str(row["id"]), "fields": changed, "previous_name": skill["name"]})
        return row

    async def delete(self, ident: Identity, skill: asyncpg.Record) -> None:
        async with self.pool.acquire() as c, c.transaction():
            await c.execute("DELETE FROM chatd.skills WHERE id = $1", skill["id"])
            await self._audit(c, ident.user_id, "skill.delete", skill["user_id"], skill["name"], {"id": str(skill["id"])})

    async def purge_users(self, user_ids: Sequence[str]) -> int:
        """A deleted user's skills go with them (audited as the system's doing)."""
        async with self.pool.acquire() as c, c.transaction():
            rows = await c.fetch("DELETE FROM chatd.skills WHERE user_id = ANY($1::text[]) RETURNING user_id, name",
                                 user_ids)
            for uid in {r["user_id"] for r in rows}:
                names = sorted(r["name"] for r in rows if r["user_id"] == uid)
                await self._audit(c, None, "skill.purge", uid, "*", {"reason": "user deleted", "names": names})
        return len(rows)


    async def owners(self) -> Sequence[str]:
        return [r["user_id"] for r in await self.pool.fetch("SELECT DISTINCT user_id FROM chatd.skills")]


DIRECTORY_CHUNK = 500  # the registry answers at most this many ids per lookup


async def reconcile_owners(skills: SkillStore, bus: Bus, timeout: float) -> int:
    """Purge the skills of users the registry says are deleted: the durable half of user deletion.

    ``aigw.auth.revoked`` is core NATS: a chatd that was down when a user was deleted never hears it. So at
    start and periodically chatd asks the registry's directory about every user that owns skills and drops
    the skills of those marked deleted. A lookup that fails or answers an error changes nothing.
    """
    owners = await skills.owners()
    purged = 0
    for i in range(0, len(owners), DIRECTORY_CHUNK):
        chunk = list(owners[i:i + DIRECTORY_CHUNK])
        try:
            reply = await bus.request(bus.subjects.registry_directory, DirectoryLookup(user_ids=chunk), DirectoryReply,
                                      timeout=timeout)
        except BusError as e:
            log.warning("skill owners not reconciled: registry directory unavailable", extra={"error": str(e)})
            return purged
        if reply.error:
            log.warning("skill owners not reconciled", extra={"error": reply.error})
            return purged
        if gone := [u.id for u in reply.users if u.deleted and u.id in chunk]:
            purged += await skills.purge_users(gone)
            log.info("skills of deleted users purged (reconciliation)", extra={"users": len(gone)})
    return purged


def _uuid(s: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(s)
    except ValueError:
        return None


# --------------------------------------------------------------------- routes


class SkillRoutes:
    """``/api/experimental/users/{user}/skills[/{skill}]``."""

    def __init__(self, deps: Any) -> None:
        self.d = deps  # a Deps, filled once the app is up

    @property
    def skills(self) -> SkillStore:
        return self.d.skills

    async def _target(self, request: web.Request, ident: Identity, *, write: bool) -> str:
        """The user whose skills are addressed; 403 unless it is the caller, or an owner reading/deleting."""
        raw = request.match_info["user"]
        if raw in ("me", ident.user_id, ident.username):
            return ident.user_id
        if not is_owner(ident):
            raise Forbidden("you may only manage your own skills")
        if write:
            raise Forbidden("an owner may read and delete other users' skills, not create or edit them")
        return await self.skills.user_by_name(raw) or raw

    async def _skill(self, request: web.Request, user_id: str) -> asyncpg.Record:
        row = await self.skills.get(user_id, request.match_info["skill"])
        if row is None:
            raise NotFound("skill not found")
        return row

    async def list(self, request: web.Request, ident: Identity) -> SkillList:
        uid = await self._target(request, ident, write=False)
        return SkillList(skills=[skill_out(r) for r in await self.skills.list(uid)])

    async def create(self, request: web.Request, ident: Identity) -> SkillOut:
        await self._target(request, ident, write=True)
        body = await read_json(request, SkillCreate)
        validate(body.name, body.description, body.content)
        row = await self.skills.create(ident, body)
        log.info("skill created", extra={"user_id": ident.user_id, "skill": body.name})
        return skill_out(row)

    async def get(self, request: web.Request, ident: Identity) -> SkillOut:
        uid = await self._target(request, ident, write=False)
        return skill_out(await self._skill(request, uid))

    async def patch(self, request: web.Request, ident: Identity) -> SkillOut:
        uid = await self._target(request, ident, write=True)
        body = await read_json(request, SkillPatch)
        if body.name is None and body.description is None and body.content is None:
            raise BadRequest("nothing to change", "body", "give name, description or content")
        validate(body.name, body.description, body.content)
        row = await self.skills.update(ident, await self._skill(request, uid), body)
        return skill_out(row)

    async def delete(self, request: web.Request, ident: Identity) -> None:
        uid = await self._target(request, ident, write=False)
        await self.skills.delete(ident, await self._skill(request, uid))


_SKILLS = "/api/experimental/users/{user}/skills"

SKILL_ROUTES: list[Route] = [
    Route("GET", _SKILLS, SkillRoutes.list, "user", "List a user's skills (yours; owners: anyone's)", "skills",
          response=SkillList),
    Route("POST", _SKILLS, SkillRoutes.create, "user", "Create one of your skills", "skills", body=SkillCreate,
          response=SkillOut, status=201),
    Route("GET", _SKILLS + "/{skill}", SkillRoutes.get, "user", "Read a skill", "skills", response=SkillOut),
    Route("PATCH", _SKILLS + "/{skill}", SkillRoutes.patch, "user", "Change one of your skills", "skills",
          body=SkillPatch, response=SkillOut),
    Route("DELETE", _SKILLS + "/{skill}", SkillRoutes.delete, "user", "Delete a skill (yours; owners: anyone's)",
          "skills"),
]
