"""Postgres access for chatd (schema ``chatd``): chats, messages, turns, model configs, skills, audit.

Ordering and the one-turn-per-chat rule live here: a turn is *claimed* under
the chat's row lock, and a partial unique index allows one running turn per
chat, so two replicas can never run turns of the same chat at once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .models import ChatOut, MessageOut, PartialOut, chat_out, message_out, queued_out

CHAT_COLS = ("id, owner_id, model_config_id, title, status, archived, last_turn_summary, last_error, summarize, "
             "created_at, updated_at")
MC_COLS = ("id, display_name, provider_id, provider_name, provider_type, base_url, allow_byok, model, enabled, "
           "created_at, updated_at")


@dataclass(frozen=True, slots=True)
class ClaimedTurn:
    id: uuid.UUID
    chat_id: uuid.UUID
    seq: int
    user_message_id: uuid.UUID
    content: str
    skill_name: str | None
    instructions: str | None
    user_id: str
    token_id: str
    token_sealed: str | None
    attempts: int

    def __repr__(self) -> str:  # the sealed token stays out of logs too
        return f"ClaimedTurn(id={self.id}, chat_id={self.chat_id}, seq={self.seq}, attempts={self.attempts})"


def _claimed(r: asyncpg.Record) -> ClaimedTurn:
    return ClaimedTurn(r["id"], r["chat_id"], r["seq"], r["user_message_id"], r["content"], r["skill_name"],
                       r["instructions"], r["user_id"], r["token_id"], r["token_sealed"], r["attempts"])


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # ------------------------------------------------------------ model configs

    async def create_model_config(self, *, display_name: str, provider: Any, model: str, created_by: str) -> asyncpg.Record:
        async with self.pool.acquire() as c, c.transaction():
            row = await c.fetchrow(
                f"INSERT INTO chatd.model_configs (id, display_name, provider_id, provider_name, provider_type, base_url, "
                f"allow_byok, model, enabled, created_by) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING {MC_COLS}",
                uuid.uuid4(), display_name, provider.id, provider.name, provider.type, provider.base_url,
                provider.allow_byok, model, provider.enabled, created_by,
            )
            await self._audit(c, created_by, "model_config.create", None, str(row["id"]),
                              {"provider": provider.name, "model": model})
        return row

    async def list_model_configs(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(f"SELECT {MC_COLS} FROM chatd.model_configs ORDER BY created_at, id")

    async def get_model_config(self, mc_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.pool.fetchrow(f"SELECT {MC_COLS} FROM chatd.model_configs WHERE id = $1", mc_id)

    async def sync_providers(self, revision: int, providers: list[Any]) -> int:
        """Follow the registry: a config is enabled only while its provider is in the snapshot and enabled.

        Snapshots older than the last one applied (by any replica) are ignored."""
        enabled = [p for p in providers if p.enabled]
        ids = [p.id for p in enabled]
        async with self.pool.acquire() as c, c.transaction():
            applied = await c.fetchval("SELECT revision FROM chatd.registry_state FOR UPDATE")
            if revision < applied:
                return 0
            await c.execute("UPDATE chatd.registry_state SET revision = $1", revision)
            off = await c.execute(
                "UPDATE chatd.model_configs SET enabled = false, updated_at = now() "
                "WHERE enabled AND NOT (provider_id = ANY($1::text[]))", ids,
            )
            on = await c.execute(
                "UPDATE chatd.model_configs m SET enabled = true, provider_name = p.name, provider_type = p.type, "
                "base_url = p.base_url, allow_byok = p.allow_byok, updated_at = now() "
                "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[]) AS p(id, name, type, base_url, allow_byok) "
                "WHERE m.provider_id = p.id AND (NOT m.enabled OR m.provider_name <> p.name OR m.provider_type <> p.type "
                "OR m.base_url <> p.base_url OR m.allow_byok <> p.allow_byok)",
                ids, [p.name for p in enabled], [p.type for p in enabled], [p.base_url for p in enabled],
                [p.allow_byok for p in enabled],
            )
        return int(off.split()[-1]) + int(on.split()[-1])

    # ------------------------------------------------------------ chats

    async def create_chat(self, owner_id: str, model_config_id: uuid.UUID, title: str) -> asyncpg.Record:
        return await self.pool.fetchrow(
            f"INSERT INTO chatd.chats (id, owner_id, model_config_id, title) VALUES ($1,$2,$3,$4) RETURNING {CHAT_COLS}",
            uuid.uuid4(), owner_id, model_config_id, title,
        )

    async def get_chat(self, chat_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.pool.fetchrow(f"SELECT {CHAT_COLS} FROM chatd.chats WHERE id = $1", chat_id)

    async def list_chats(self, owner_id: str, *, archived: bool | None, limit: int,
                         before: tuple[datetime, uuid.UUID] | None) -> list[asyncpg.Record]:
        args: list[Any] = [owner_id]
        where = "owner_id = $1"
        if archived is not None:
            args.append(archived)
            where += f" AND archived = ${len(args)}"
        if before is not None:
            args.extend(before)
            where += f" AND (created_at, id) < (${len(args) - 1}, ${len(args)})"
        args.append(limit)
        return await self.pool.fetch(
            f"SELECT {CHAT_COLS} FROM chatd.chats WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )

    async def update_chat(self, chat_id: uuid.UUID, *, title: str | None, archived: bool | None,
                          summarize: bool | None = None) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"UPDATE chatd.chats SET title = coalesce($2, title), archived = coalesce($3, archived), "
            f"summarize = coalesce($4, summarize), updated_at = now() "
            f"WHERE id = $1 RETURNING {CHAT_COLS}", chat_id, title, archived, summarize,
        )

    async def delete_chat(self, chat_id: uuid.UUID) -> bool:
        return (await self.pool.execute("DELETE FROM chatd.chats WHERE id = $1", chat_id)) != "DELETE 0"

    async def chat_body(self, chat_id: uuid.UUID) -> ChatOut | None:
        """The chat read body (and the stream's snapshot): status, messages and the queue, in one snapshot."""
        async with self.pool.acquire() as c, c.transaction(isolation="repeatable_read", readonly=True):
            chat = await c.fetchrow(f"SELECT {CHAT_COLS} FROM chatd.chats WHERE id = $1", chat_id)
            if chat is None:
                return None
            msgs = await c.fetch("SELECT id, role, content, created_at, interrupted FROM chatd.messages "
                                 "WHERE chat_id = $1 ORDER BY seq", chat_id)
            queue = await c.fetch("SELECT id, user_message_id, content, created_at FROM chatd.turns "
                                  "WHERE chat_id = $1 AND status = 'queued' ORDER BY seq", chat_id)
            running = await c.fetchrow("SELECT id, partial_message_id, partial_text FROM chatd.turns "
                                       "WHERE chat_id = $1 AND status = 'running'", chat_id)
        # the reply streamed so far by a running turn (as last flushed; the runner's replica knows it exactly)
        partial = (PartialOut(message_id=running["partial_message_id"], text=running["partial_text"] or "",
                              turn_id=running["id"])
                   if running is not None and running["partial_message_id"] is not None else None)
        return chat_out(chat, [message_out(m) for m in msgs], [queued_out(q) for q in queue], partial)

    async def status_body(self, chat_id: uuid.UUID) -> dict[str, Any] | None:
        async with self.pool.acquire() as c:
            chat = await c.fetchrow("SELECT status, last_error FROM chatd.chats WHERE id = $1", chat_id)
            if chat is None:
                return None
            queue = await c.fetch("SELECT id, user_message_id, content, created_at FROM chatd.turns "
                                  "WHERE chat_id = $1 AND status = 'queued' ORDER BY seq", chat_id)
            running = await c.fetchval("SELECT id FROM chatd.turns WHERE chat_id = $1 AND status = 'running'", chat_id)
        return {"status": chat["status"], "turn_id": running, "last_error": chat["last_error"],
                "queue": [queued_out(q) for q in queue]}

    # ------------------------------------------------------------ turns

    async def enqueue_turn(self, *, turn_id: uuid.UUID, chat_id: uuid.UUID, user_message_id: uuid.UUID, content: str,
                           skill_name: str | None, instructions: str | None, user_id: str, token_id: str,
                           token_hash: str, token_sealed: str) -> None:
        await self.pool.execute(
            "INSERT INTO chatd.turns (id, chat_id, user_message_id, content, skill_name, instructions, user_id, "
            "token_id, token_hash, token_sealed) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
            turn_id, chat_id, user_message_id, content, skill_name, instructions, user_id, token_id, token_hash,
            token_sealed,
        )

    async def claim_next(self, chat_id: uuid.UUID, runner: str, lease: float,
                         conn: asyncpg.Connection | None = None) -> ClaimedTurn | None:
        """Start the oldest queued turn of the chat unless one is running; its user message joins the history."""
        if conn is None:
            async with self.pool.acquire() as c, c.transaction():
                return await self._claim(c, chat_id, runner, lease)
        return await self._claim(conn, chat_id, runner, lease)

    async def _claim(self, c: asyncpg.Connection, chat_id: uuid.UUID, runner: str, lease: float) -> ClaimedTurn | None:
        if await c.fetchval("SELECT 1 FROM chatd.chats WHERE id = $1 FOR UPDATE", chat_id) is None:
            return None
        if await c.fetchval("SELECT 1 FROM chatd.turns WHERE chat_id = $1 AND status = 'running'", chat_id):
            return None
        row = await c.fetchrow(
            "UPDATE chatd.turns SET status = 'running', runner = $2, lease_until = now() + make_interval(secs => $3), "
            "started_at = coalesce(started_at, now()) WHERE id = (SELECT id FROM chatd.turns WHERE chat_id = $1 "
            "AND status = 'queued' ORDER BY seq LIMIT 1) RETURNING *", chat_id, runner, lease,
        )
        if row is None:
            return None
        await c.execute(
            "INSERT INTO chatd.messages (id, chat_id, turn_id, role, content, created_at) VALUES ($1,$2,$3,'user',$4,$5) "
            "ON CONFLICT (id) DO NOTHING", row["user_message_id"], chat_id, row["id"], row["content"], row["created_at"],
        )
        await c.execute("UPDATE chatd.chats SET status = 'running', updated_at = now() WHERE id = $1", chat_id)
        return _claimed(row)

    async def user_message(self, message_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT id, role, content, created_at, interrupted FROM chatd.messages "
                                        "WHERE id = $1", message_id)

    async def history(self, chat_id: uuid.UUID, upto_message: uuid.UUID) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT id, role, content FROM chatd.messages WHERE chat_id = $1 AND seq <= "
            "(SELECT seq FROM chatd.messages WHERE id = $2) ORDER BY seq", chat_id, upto_message,
        )

    async def heartbeat(self, turn_id: uuid.UUID, runner: str, lease: float) -> bool | None:
        """Extend the lease; False when the turn is no longer ours (chat deleted, lease lost), None when an
        interrupt asked it to stop."""
        interrupt = await self.pool.fetchval(
            "UPDATE chatd.turns SET lease_until = now() + make_interval(secs => $3) "
            "WHERE id = $1 AND status = 'running' AND runner = $2 RETURNING interrupt_requested", turn_id, runner, lease,
        )
        if interrupt is None:
            return False
        return None if interrupt else True

    async def request_interrupt(self, chat_id: uuid.UUID) -> tuple[uuid.UUID, str | None] | None:
        """Mark the chat's running turn to be stopped; (turn id, runner replica), or None when none runs."""
        row = await self.pool.fetchrow(
            "UPDATE chatd.turns SET interrupt_requested = true WHERE chat_id = $1 AND status = 'running' "
            "RETURNING id, runner", chat_id)
        return (row["id"], row["runner"]) if row is not None else None

    async def saved_partial(self, chat_id: uuid.UUID, message_id: uuid.UUID) -> tuple[bool, str | None]:
        """(still running, the runner's last saved copy of the reply being streamed, if it is that reply)."""
        row = await self.pool.fetchrow(
            "SELECT partial_message_id, partial_text FROM chatd.turns WHERE chat_id = $1 AND status = 'running'",
            chat_id)
        if row is None:
            return False, None
        return True, row["partial_text"] if row["partial_message_id"] == message_id else None

    async def save_partial(self, turn_id: uuid.UUID, runner: str, message_id: uuid.UUID, text: str) -> None:
        await self.pool.execute(
            "UPDATE chatd.turns SET partial_message_id = $3, partial_text = $4 "
            "WHERE id = $1 AND status = 'running' AND runner = $2", turn_id, runner, message_id, text)

    async def note_attempt(self, turn_id: uuid.UUID, runner: str) -> int:
        return await self.pool.fetchval(
            "UPDATE chatd.turns SET attempts = attempts + 1 WHERE id = $1 AND runner = $2 RETURNING attempts",
            turn_id, runner,
        ) or 0

    async def finish_turn(self, turn: ClaimedTurn, runner: str, lease: float, *, reply: str | None,
                          assistant_message_id: uuid.UUID | None, error: dict[str, Any] | None,
                          interrupted: bool = False,
                          ) -> tuple[MessageOut | None, ClaimedTurn | None] | None:
        """Persist the outcome and claim the chat's next queued turn, atomically.

        Returns (assistant message body or None, next claimed turn or None), or None when the turn was
        no longer ours (chat deleted, or the lease expired and another replica requeued it)."""
        async with self.pool.acquire() as c, c.transaction():
            if await c.fetchval("SELECT 1 FROM chatd.chats WHERE id = $1 FOR UPDATE", turn.chat_id) is None:
                return None
            status = "interrupted" if interrupted else "failed" if error else "succeeded"
            ok = await c.fetchval(
                "UPDATE chatd.turns SET status = $3, ended_at = now(), token_sealed = NULL, lease_until = NULL, "
                "assistant_message_id = $4, error = $5, partial_text = NULL "
                "WHERE id = $1 AND status = 'running' AND runner = $2 RETURNING seq",
                turn.id, runner, status, assistant_message_id, error,
            )
            if ok is None:
                return None
            msg = None
            if interrupted:
                # the partial reply is kept, marked; the chat goes idle; the summary is left as it was
                if reply and assistant_message_id is not None:
                    row = await c.fetchrow(
                        "INSERT INTO chatd.messages (id, chat_id, turn_id, role, content, interrupted) "
                        "VALUES ($1,$2,$3,'assistant',$4,true) RETURNING id, role, content, created_at, interrupted",
                        assistant_message_id, turn.chat_id, turn.id, reply,
                    )
                    msg = message_out(row)
                await c.execute("UPDATE chatd.chats SET status = 'idle', last_error = NULL, updated_at = now() "
                                "WHERE id = $1", turn.chat_id)
            elif error is None:
                assert assistant_message_id is not None and reply is not None
                row = await c.fetchrow(
                    "INSERT INTO chatd.messages (id, chat_id, turn_id, role, content) VALUES ($1,$2,$3,'assistant',$4) "
                    "RETURNING id, role, content, created_at, interrupted", assistant_message_id, turn.chat_id, turn.id,
                    reply,
                )
                msg = message_out(row)
                # a successful turn replaces the old summary: it is cleared now and its own one set when ready
                await c.execute(
                    "UPDATE chatd.chats SET status = 'idle', last_error = NULL, last_turn_summary = NULL, "
                    "last_turn_seq = greatest(last_turn_seq, $2), updated_at = now() WHERE id = $1", turn.chat_id, turn.seq,
                )
            else:
                # an error clears the summary: it described a turn that is no longer the last one
                await c.execute(
                    "UPDATE chatd.chats SET status = 'error', last_error = $2, last_turn_summary = NULL, "
                    "last_turn_seq = greatest(last_turn_seq, $3), updated_at = now() WHERE id = $1",
                    turn.chat_id, error, turn.seq,
                )
            nxt = await self._claim(c, turn.chat_id, runner, lease)
        return msg, nxt

    async def release_turn(self, turn_id: uuid.UUID, runner: str) -> None:
        """Hand a turn we cannot finish (shutdown) back to the queue, for any replica to run."""
        await self.pool.execute(
            "UPDATE chatd.turns SET status = 'queued', runner = NULL, lease_until = NULL "
            "WHERE id = $1 AND status = 'running' AND runner = $2", turn_id, runner,
        )

    async def requeue_expired(self) -> list[uuid.UUID]:
        """Turns whose runner stopped heartbeating go back to the queue; returns the affected chats."""
        rows = await self.pool.fetch(
            "UPDATE chatd.turns SET status = 'queued', runner = NULL, lease_until = NULL "
            "WHERE status = 'running' AND lease_until < now() RETURNING chat_id"
        )
        return list({r["chat_id"] for r in rows})

    async def chats_waiting(self, limit: int = 100) -> list[uuid.UUID]:
        """Chats with queued turns and none running (e.g. their replica died between post and claim)."""
        rows = await self.pool.fetch(
            "SELECT DISTINCT q.chat_id FROM chatd.turns q WHERE q.status = 'queued' AND q.created_at < now() - interval '2 seconds' "
            "AND NOT EXISTS (SELECT 1 FROM chatd.turns r WHERE r.chat_id = q.chat_id AND r.status = 'running') LIMIT $1",
            limit,
        )
        return [r["chat_id"] for r in rows]

    async def set_summary(self, chat_id: uuid.UUID, turn_seq: int, summary: str) -> bool:
        """Store a turn's summary only while that turn is still the chat's newest finished turn."""
        r = await self.pool.execute(
            "UPDATE chatd.chats SET last_turn_summary = $3, updated_at = now() WHERE id = $1 AND last_turn_seq = $2 "
            "AND last_error IS NULL", chat_id, turn_seq, summary,
        )
        return r != "UPDATE 0"

    # ------------------------------------------------------------ audit

    @staticmethod
    async def _audit(c: asyncpg.Connection, actor: str | None, action: str, target_user: str | None, target: str,
                     detail: dict[str, Any] | None = None) -> None:
        await c.execute(
            "INSERT INTO chatd.audit_log (actor_id, action, target_user_id, target, detail) VALUES ($1,$2,$3,$4,$5)",
            actor, action, target_user, target, detail,
        )
