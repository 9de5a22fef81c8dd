"""The user/group directory on the bus: ``aigw.registry.directory`` lookups and ``…directory.changed`` events.

Other services (budget) learn names, ids and group membership here instead of reading the registry's
tables, so each service keeps to its own schema (and its own database role). A lookup resolves a bounded
batch of references; a change event lists the users and groups whose name, existence or membership
changed, so a follower evicts exactly those from its cache (its TTL bounds a missed event).
"""

from __future__ import annotations

import asyncpg

from aigw_common.ids import is_uuid
from aigw_common.schemas import DirectoryEntry, DirectoryLookup, DirectoryReply

# One reply stays far below NATS's default 1 MiB payload: 4 x 500 entries of at most a few hundred bytes.
MAX_REFS = 500


def _split(refs: list[str]) -> tuple[list[str], list[str]]:
    ids = [r for r in refs if is_uuid(r)]
    names = [r.lower() for r in refs if not is_uuid(r) and r and "\x00" not in r]
    return ids, names


async def lookup(conn: asyncpg.Connection, req: DirectoryLookup) -> DirectoryReply:
    """Resolve ``req``: references (id or name) to live users/groups; ids to names, deleted users included."""
    if sum(len(x) for x in (req.user_refs, req.group_refs, req.user_ids, req.group_ids)) > MAX_REFS:
        return DirectoryReply(error=f"at most {MAX_REFS} references per lookup")
    users: dict[str, DirectoryEntry] = {}
    groups: dict[str, DirectoryEntry] = {}
    ref_ids, ref_names = _split(req.user_refs)
    live_ids = [i for i in req.user_ids if is_uuid(i)]
    if ref_ids or ref_names or live_ids:
        rows = await conn.fetch(
            "SELECT u.id::text AS id, u.username AS name, u.deleted_at IS NOT NULL AS deleted,"
            " coalesce(array_agg(m.group_id::text ORDER BY m.group_id) FILTER (WHERE m.group_id IS NOT NULL),"
            " '{}') AS group_ids"
            " FROM registry.users u LEFT JOIN registry.group_members m ON m.user_id = u.id"
            " WHERE ((u.id = ANY($1::uuid[]) OR lower(u.username) = ANY($2::text[])) AND u.deleted_at IS NULL)"
            " OR u.id = ANY($3::uuid[])"
            " GROUP BY u.id", ref_ids, ref_names, live_ids)
        for r in rows:
            users[r["id"]] = DirectoryEntry(id=r["id"], name=r["name"], deleted=r["deleted"],
                                            group_ids=list(r["group_ids"]))
    ref_ids, ref_names = _split(req.group_refs)
    gids = [i for i in req.group_ids if is_uuid(i)]
    if ref_ids or ref_names or gids:
        rows = await conn.fetch(
            "SELECT id::text AS id, name FROM registry.groups"
            " WHERE id = ANY($1::uuid[]) OR lower(name) = ANY($2::text[])", ref_ids + gids, ref_names)
        for r in rows:
            groups[r["id"]] = DirectoryEntry(id=r["id"], name=r["name"])
    return DirectoryReply(users=list(users.values()), groups=list(groups.values()))
