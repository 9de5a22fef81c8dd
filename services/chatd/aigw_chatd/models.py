"""chatd's response bodies: the Structs its handlers return, its stream events carry, and its OpenAPI document
describes (one definition each), with the builders from database rows."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec


class ModelConfigOut(msgspec.Struct):
    id: uuid.UUID
    display_name: str
    provider_id: str
    provider: str
    provider_type: str
    model: str
    enabled: bool
    created_at: datetime
    updated_at: datetime


class ModelConfigList(msgspec.Struct):
    model_configs: list[ModelConfigOut]


class ChatErrorOut(msgspec.Struct):
    message: str
    kind: str
    provider: str | None
    retryable: bool
    status_code: int | None
    detail: str | None


class MessageOut(msgspec.Struct, omit_defaults=True, kw_only=True):
    id: uuid.UUID
    role: str
    content: str
    created_at: datetime
    interrupted: bool = False  # present (true) on an assistant reply cut short by an interrupt


class PartialOut(msgspec.Struct, omit_defaults=True):
    """The reply a running turn has streamed so far (a stream's snapshot; message_delta continues it)."""

    message_id: uuid.UUID
    text: str
    turn_id: uuid.UUID | None = None  # absent when only the runner's replica knows the reply (not yet saved)


class QueuedOut(MessageOut):
    turn_id: uuid.UUID


class ChatSummaryOut(msgspec.Struct):
    id: uuid.UUID
    title: str
    status: Literal["idle", "running", "error"]
    archived: bool
    model_config_id: uuid.UUID
    owner_id: str
    last_turn_summary: str | None
    last_error: ChatErrorOut | None
    summarize: bool  # false: no summary is generated for this chat's turns
    created_at: datetime
    updated_at: datetime


class ChatOut(ChatSummaryOut):
    messages: list[MessageOut]
    queue: list[QueuedOut]
    partial: PartialOut | None


class InterruptAccepted(msgspec.Struct):
    turn_id: uuid.UUID | None  # the turn asked to stop; null when none was running


class ChatList(msgspec.Struct):
    chats: list[ChatSummaryOut]
    next_cursor: str | None


class MessageAccepted(msgspec.Struct):
    message_id: uuid.UUID
    turn_id: uuid.UUID


class SkillOut(msgspec.Struct):
    id: uuid.UUID
    user_id: str
    name: str
    description: str
    content: str
    created_at: datetime
    updated_at: datetime


class SkillList(msgspec.Struct):
    skills: list[SkillOut]


def message_out(r: asyncpg.Record) -> MessageOut:
    return MessageOut(id=r["id"], role=r["role"], content=r["content"], created_at=r["created_at"],
                      interrupted=bool(r["interrupted"]))


def queued_out(r: asyncpg.Record) -> QueuedOut:
    return QueuedOut(id=r["user_message_id"], role="user", content=r["content"], created_at=r["created_at"],
                     turn_id=r["id"])


def _summary_fields(r: asyncpg.Record) -> dict[str, Any]:
    last_error = r["last_error"]
    return {"id": r["id"], "title": r["title"], "status": r["status"], "archived": r["archived"],
            "model_config_id": r["model_config_id"], "owner_id": r["owner_id"],
            "last_turn_summary": r["last_turn_summary"],
            "last_error": msgspec.convert(last_error, ChatErrorOut) if last_error is not None else None,
            "summarize": r["summarize"], "created_at": r["created_at"], "updated_at": r["updated_at"]}


def chat_summary_out(r: asyncpg.Record) -> ChatSummaryOut:
    return ChatSummaryOut(**_summary_fields(r))


def chat_out(r: asyncpg.Record, messages: list[MessageOut], queue: list[QueuedOut],
             partial: PartialOut | None) -> ChatOut:
    return ChatOut(**_summary_fields(r), messages=messages, queue=queue, partial=partial)


def model_config_out(r: asyncpg.Record) -> ModelConfigOut:
    return ModelConfigOut(id=r["id"], display_name=r["display_name"], provider_id=r["provider_id"],
                          provider=r["provider_name"], provider_type=r["provider_type"], model=r["model"],
                          enabled=r["enabled"], created_at=r["created_at"], updated_at=r["updated_at"])


def skill_out(r: asyncpg.Record) -> SkillOut:
    return SkillOut(id=r["id"], user_id=r["user_id"], name=r["name"], description=r["description"],
                    content=r["content"], created_at=r["created_at"], updated_at=r["updated_at"])
