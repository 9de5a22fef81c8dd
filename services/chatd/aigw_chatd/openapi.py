"""``/api/experimental/openapi.json`` of chatd: its routes (``routes``, ``skills``) described for clients and fuzzers.

The response Structs below describe the dicts the handlers return (``store.*_body``, ``skills.skill_body``);
schemathesis checks every answer against them, and a test checks this table against the router.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
from aiohttp import web

from aigw_common.openapi import Query, Route, document_route, finish, serve_document

from .routes import ChatCreate, ChatPatch, MessagePost, ModelConfigCreate
from .skills import SkillCreate, SkillPatch


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


class PartialOut(msgspec.Struct):
    """The reply a running turn has streamed so far (a stream's snapshot; message_delta continues it)."""

    message_id: uuid.UUID
    text: str
    turn_id: uuid.UUID | None = None


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


_CHATS = "/api/experimental/chats"
_SKILLS = "/api/experimental/users/{user}/skills"

ROUTES: list[Route] = [
    Route("GET", _CHATS + "/model-configs", None, "user", "List model configs", "model-configs",
          response=ModelConfigList),
    Route("POST", _CHATS + "/model-configs", None, "admin", "Create a model config", "model-configs",
          body=ModelConfigCreate, response=ModelConfigOut, status=201),
    Route("GET", _CHATS, None, "user", "List your chats, newest first", "chats", response=ChatList, query=(
        Query("archived", {"type": "string", "enum": ["true", "false"]}),
        Query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size (default 50)"),
        Query("cursor", {"type": "string"}, "next_cursor of the previous page"),
    )),
    Route("POST", _CHATS, None, "user", "Create a chat", "chats", body=ChatCreate, response=ChatOut, status=201),
    Route("GET", _CHATS + "/{chat}", None, "user", "Read a chat (others' chats are 404)", "chats", response=ChatOut),
    Route("PATCH", _CHATS + "/{chat}", None, "user", "Rename, (un)archive, or turn summaries on or off",
          "chats", body=ChatPatch, response=ChatOut),
    Route("DELETE", _CHATS + "/{chat}", None, "user", "Delete a chat", "chats"),
    Route("POST", _CHATS + "/{chat}/messages", None, "user", "Post a message: queues a turn", "chats",
          body=MessagePost, response=MessageAccepted, status=202),
    Route("POST", _CHATS + "/{chat}/interrupt", None, "user",
          "Stop the running turn: the upstream call is cancelled, the partial reply kept (interrupted), "
          "the chat goes idle", "chats", response=InterruptAccepted, status=202),
    Route("GET", _CHATS + "/{chat}/stream", None, "user",
          "The chat's live events (SSE: snapshot, status, message_delta, message, error)", "chats",
          response=str, content_type="text/event-stream"),
    Route("GET", _SKILLS, None, "user", "List a user's skills (yours; owners: anyone's)", "skills",
          response=SkillList),
    Route("POST", _SKILLS, None, "user", "Create one of your skills", "skills", body=SkillCreate, response=SkillOut,
          status=201),
    Route("GET", _SKILLS + "/{skill}", None, "user", "Read a skill", "skills", response=SkillOut),
    Route("PATCH", _SKILLS + "/{skill}", None, "user", "Change one of your skills", "skills", body=SkillPatch,
          response=SkillOut),
    Route("DELETE", _SKILLS + "/{skill}", None, "user", "Delete a skill (yours; owners: anyone's)", "skills"),
    document_route("/api/experimental/openapi.json"),
]


_DOCUMENT: dict[str, Any] = dict(title="aigw chatd", version="experimental", unavailable=True,
                   description="Chats, model configs and skills of aigw; every model call goes through the gateway. "
                               "Errors are {message, detail, validations}.")


def document() -> dict[str, Any]:
    """This service's OpenAPI document, as served (``aigw openapi`` writes it to ``docs/openapi/``)."""
    return finish(ROUTES, **_DOCUMENT)


def add_document(app: web.Application) -> None:
    serve_document(app, ROUTES, **_DOCUMENT)
