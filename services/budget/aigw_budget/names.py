"""Users and groups by id or name, learned from the registry over the bus (never from its tables).

The budget API takes ``{user}`` / ``{group}`` as an id or a name, and a refused request names its
budget ("group 'eng'"). Both come from the registry's directory: ``aigw.registry.directory`` resolves
a batch of references, ``aigw.registry.directory.changed`` names the users and groups whose name,
existence or membership changed, and this cache drops exactly those (its TTL bounds a missed event).
An unknown reference is ``None`` (the API answers 404): a name is never taken for an id, so no budget
is ever created for a subject nothing would enforce it on. When the registry cannot be asked,
:meth:`Directory.resolve` raises :class:`~aigw_common.errors.BusError` (the API answers 503) and
:meth:`Directory.names` falls back to ids, which only label a message.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

from nats.aio.msg import Msg

from aigw_common.bus import Bus
from aigw_common.errors import BusError, DecodeError
from aigw_common.schemas import (
    BudgetScope,
    DirectoryChanged,
    DirectoryEntry,
    DirectoryLookup,
    DirectoryReply,
)

log = logging.getLogger(__name__)

BATCH = 200  # references per lookup (the registry takes at most 500)


class Directory:
    def __init__(self, bus: Bus, *, ttl: float = 60.0, timeout: float = 2.0, max_entries: int = 100_000) -> None:
        self.bus = bus
        self.ttl = ttl
        self.timeout = timeout
        self.max_entries = max_entries
        self._by_id: OrderedDict[tuple[str, str], tuple[DirectoryEntry, float]] = OrderedDict()
        self._by_name: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    async def start(self) -> None:
        await self.bus.subscribe(self.bus.subjects.directory_changed, DirectoryChanged, self._on_changed)

    async def _on_changed(self, msg: DirectoryChanged, _m: Msg | None) -> None:
        self.evict(user_ids=msg.user_ids, group_ids=msg.group_ids)

    def evict(self, *, user_ids: Sequence[str] = (), group_ids: Sequence[str] = ()) -> None:
        gone = {("user", i) for i in user_ids} | {("group", i) for i in group_ids}
        for k in gone:
            self._by_id.pop(k, None)
        for k in [k for k, (i, _) in self._by_name.items() if (k[0], i) in gone]:
            del self._by_name[k]

    def clear(self) -> None:
        self._by_id.clear()
        self._by_name.clear()

    # ------------------------------------------------------------ cache

    def _remember(self, scope: str, e: DirectoryEntry, now: float) -> None:
        self._by_id[(scope, e.id)] = (e, now + self.ttl)
        self._by_id.move_to_end((scope, e.id))
        if not e.deleted:
            self._by_name[(scope, e.name.lower())] = (e.id, now + self.ttl)
            self._by_name.move_to_end((scope, e.name.lower()))
        for d in (self._by_id, self._by_name):
            while len(d) > self.max_entries:
                d.popitem(last=False)

    def _cached(self, scope: str, ref: str, now: float) -> DirectoryEntry | None:
        hit = self._by_id.get((scope, ref))
        if hit is None:
            n = self._by_name.get((scope, ref.lower()))
            if n is not None and n[1] > now:
                hit = self._by_id.get((scope, n[0]))
        if hit is not None and hit[1] > now and not hit[0].deleted:
            return hit[0]
        return None

    async def _ask(self, req: DirectoryLookup) -> DirectoryReply:
        try:
            reply = await self.bus.request(self.bus.subjects.registry_directory, req, DirectoryReply,
                                           timeout=self.timeout)
        except DecodeError as e:
            raise BusError(f"undecodable directory reply: {e}") from e
        if reply.error:
            raise BusError(f"directory lookup refused: {reply.error}")
        now = time.monotonic()
        for entry in reply.users:
            self._remember("user", entry, now)
        for entry in reply.groups:
            self._remember("group", entry, now)
        return reply

    # ------------------------------------------------------------ queries

    async def resolve(self, scope: BudgetScope, ref: str) -> tuple[str, str] | None:
        """(id, name) of the live user/group ``ref`` names (an id or a name); None when there is none."""
        now = time.monotonic()
        hit = self._cached(scope, ref, now)
        if hit is not None:
            return hit.id, hit.name
        reply = await self._ask(DirectoryLookup(user_refs=[ref]) if scope == "user"
                                else DirectoryLookup(group_refs=[ref]))
        for e in reply.users if scope == "user" else reply.groups:
            if not e.deleted and (e.id == ref or e.name.lower() == ref.lower()):
                return e.id, e.name
        return None

    async def name(self, scope: str, subject_id: str) -> str:
        return (await self.names([(scope, subject_id)])).get((scope, subject_id), subject_id)

    async def names(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Display names by (scope, id), deleted users included; an id the registry does not know (or cannot
        be asked about right now) is its own label."""
        now = time.monotonic()
        out: dict[tuple[str, str], str] = {}
        missing: dict[str, list[str]] = {"user": [], "group": []}
        for k in dict.fromkeys(keys):
            hit = self._by_id.get(k)
            if hit is not None and hit[1] > now:
                out[k] = hit[0].name
            elif k[0] in missing:
                missing[k[0]].append(k[1])
        for scope, ids in missing.items():
            for i in range(0, len(ids), BATCH):
                chunk = ids[i:i + BATCH]
                try:
                    reply = await self._ask(DirectoryLookup(user_ids=chunk) if scope == "user"
                                            else DirectoryLookup(group_ids=chunk))
                except BusError as e:
                    log.warning("directory unavailable; labelling by id", extra={"error": str(e)})
                    break
                found = {e.id: e.name for e in (reply.users if scope == "user" else reply.groups)}
                for sid in chunk:
                    out[(scope, sid)] = found.get(sid, sid)
        for k in keys:
            out.setdefault(k, k[1])
        return out
