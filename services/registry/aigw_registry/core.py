"""The registry's shared state: pool, sealers, bus, and the write helpers every mutation uses.

A mutation runs in :meth:`Registry.transaction`; inside it writes its audit
entry (:func:`audit`), bumps the revision when provider data changed
(:func:`bump_revision`), and queues its bus events in the outbox
(:func:`enqueue`). The outbox relay is woken after commit, so an event is
never published for a change that rolled back, and never lost for one that
committed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from aigw_common.auth import ROLE_OWNER
from aigw_common.bus import Bus, encode
from aigw_common.crypto import PURPOSE_AT_REST, PURPOSE_BUS, Sealer
from aigw_common.schemas import AuthRevoked, DirectoryChanged, ProvidersChanged
from aigw_common.settings import Settings

SCHEMA = "registry"
SEED_LOCK = 0x61696772  # advisory lock for env seeding and the bootstrap owner
OWNER_LOCK = 0x6169676F  # serialises changes that could remove the last owner

OUTBOX_KINDS = {"providers.changed": ProvidersChanged, "auth.revoked": AuthRevoked,
                "directory.changed": DirectoryChanged}
OutboxMessage = ProvidersChanged | AuthRevoked | DirectoryChanged


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling the API (or the system, for seeding)."""

    user_id: str | None
    username: str
    roles: tuple[str, ...]
    token_id: str | None = None
    scope: str = "admin"  # the API refuses gateway-scoped tokens before an Actor is built


SYSTEM = Actor(None, "system", (ROLE_OWNER,))


@dataclass(slots=True)
class Registry:
    settings: Settings
    pool: asyncpg.Pool = field(init=False)  # set when the service starts
    bus: Bus | None = None
    at_rest: Sealer = field(init=False)
    for_bus: Sealer = field(init=False)
    outbox_wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.at_rest = Sealer.from_keys(self.settings.require_encryption_keys(), PURPOSE_AT_REST)
        self.for_bus = Sealer.from_keys(self.settings.require_bus_keys(), PURPOSE_BUS)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction; after it commits the outbox relay is woken."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                yield conn
        self.outbox_wake.set()

    # Secrets at rest are bound to their row (AAD), so a sealed value copied onto another row fails to open.
    def seal(self, kind: str, row_id: str, plaintext: str) -> tuple[str, str]:
        sealed = self.at_rest.seal(plaintext, aad=f"{kind}:{row_id}".encode())
        return sealed, self.at_rest.key_id_of(sealed)

    def open(self, kind: str, row_id: str, sealed: str) -> str:
        return self.at_rest.open(sealed, aad=f"{kind}:{row_id}".encode())


def new_id() -> str:
    return str(uuid.uuid4())


def assignments(sets: dict[str, Any], first: int = 2) -> tuple[str, list[Any]]:
    """``a = $2, b = $3`` and the values, for an UPDATE of the columns in ``sets``. Column names come from our
    handlers, never from a client; values are always parameters (``$1`` is left for the row's id)."""
    cols = list(sets)
    return ", ".join(f"{c} = ${i + first}" for i, c in enumerate(cols)), [sets[c] for c in cols]


async def audit(conn: asyncpg.Connection, actor: Actor, action: str, resource_type: str, resource_id: str,
                before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    await conn.execute(
        "INSERT INTO registry.audit_logs (actor_id, actor_name, action, resource_type, resource_id, before, after)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        actor.user_id, actor.username, action, resource_type, resource_id, before, after,
    )


async def bump_revision(conn: asyncpg.Connection) -> int:
    """Next provider-data revision; the row lock orders concurrent provider changes."""
    return int(await conn.fetchval("UPDATE registry.state SET revision = revision + 1 RETURNING revision"))


async def enqueue(conn: asyncpg.Connection, msg: OutboxMessage) -> None:
    kind = next(k for k, t in OUTBOX_KINDS.items() if isinstance(msg, t))
    await conn.execute("INSERT INTO registry.outbox (kind, payload) VALUES ($1, $2)", kind, encode(msg))


async def providers_changed(conn: asyncpg.Connection, *provider_ids: str) -> int:
    """Bump the revision and queue ``providers.changed`` for it, in the caller's transaction."""
    rev = await bump_revision(conn)
    await enqueue(conn, ProvidersChanged(revision=rev, provider_ids=list(provider_ids)))
    return rev


async def directory_changed(conn: asyncpg.Connection, *, user_ids: list[str] | None = None,
                            group_ids: list[str] | None = None) -> None:
    """Queue ``registry.directory.changed``: a user's or group's name, existence or membership changed."""
    if user_ids or group_ids:
        await enqueue(conn, DirectoryChanged(user_ids=list(dict.fromkeys(user_ids or ())),
                                             group_ids=list(dict.fromkeys(group_ids or ()))))


async def auth_revoked(conn: asyncpg.Connection, *, user_ids: list[str] | None = None,
                       token_ids: list[str] | None = None, deleted_user_ids: list[str] | None = None) -> None:
    """Queue ``auth.revoked``: caches drop these tokens/users; deleted users are also listed in user_ids."""
    users = list(dict.fromkeys([*(user_ids or ()), *(deleted_user_ids or ())]))
    if users or token_ids:
        await enqueue(conn, AuthRevoked(user_ids=users, token_ids=list(token_ids or ()),
                                        deleted_user_ids=list(deleted_user_ids or ())))
