"""chatd's HTTP API (``docs/api.md``): model configs, chats, messages and the live stream.

:data:`ROUTES` (these and ``skills.SKILL_ROUTES``) drives the router, the OpenAPI document and the RBAC
matrix test; every handler returns the Struct (``models``) its route declares."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from aigw_common import sse
from aigw_common.api import (
    BadRequest,
    Conflict,
    Invoke,
    NotFound,
    Query,
    Route,
    Unavailable,
    mount,
    read_json,
)
from aigw_common.auth import authenticate, bearer_token, is_owner
from aigw_common.crypto import hash_token
from aigw_common.openapi import document_route
from aigw_common.schemas import Identity

from .deps import Deps
from .models import (
    ChatList,
    ChatOut,
    InterruptAccepted,
    MessageAccepted,
    ModelConfigList,
    ModelConfigOut,
    PartialOut,
    chat_summary_out,
    model_config_out,
)
from .runner import skill_invocation, token_aad
from .skills import SKILL_ROUTES, SkillRoutes

log = logging.getLogger(__name__)

MAX_TITLE = 200
MAX_MESSAGE_BYTES = 1024 * 1024


class ModelConfigCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    display_name: str
    provider: str
    model: str


class ChatCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model_config_id: uuid.UUID
    title: str = ""


class ChatPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    title: str | None = None
    archived: bool | None = None
    summarize: bool | None = None  # false: no last_turn_summary is generated for this chat


class MessagePost(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    content: str


def _uuid_param(request: web.Request, name: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise NotFound(f"{what} not found") from None


def _cursor(c: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not c:
        return None
    try:
        ts, _, cid = base64.urlsafe_b64decode(c + "=" * (-len(c) % 4)).decode().partition("|")
        return datetime.fromisoformat(ts), uuid.UUID(cid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("invalid cursor", "cursor") from None


def _make_cursor(r: asyncpg.Record) -> str:
    return base64.urlsafe_b64encode(f"{r['created_at'].isoformat()}|{r['id']}".encode()).decode().rstrip("=")


class ChatRoutes:
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def _chat(self, request: web.Request, ident: Identity) -> asyncpg.Record:
        chat = await self.d.store.get_chat(_uuid_param(request, "chat", "chat"))
        # an owner may see every chat; anyone else only their own (others' are invisible: 404)
        if chat is None or (chat["owner_id"] != ident.user_id and not is_owner(ident)):
            raise NotFound("chat not found")
        return chat

    # ------------------------------------------------------------ model configs

    async def list_model_configs(self, request: web.Request, _ident: Identity) -> ModelConfigList:
        return ModelConfigList(model_configs=[model_config_out(r) for r in await self.d.store.list_model_configs()])

    async def create_model_config(self, request: web.Request, ident: Identity) -> ModelConfigOut:
        body = await read_json(request, ModelConfigCreate)
        problems = []
        if not body.display_name.strip() or len(body.display_name) > MAX_TITLE:
            problems.append(("display_name", f"1 to {MAX_TITLE} characters"))
        if not body.model.strip():
            problems.append(("model", "must not be empty"))
        if problems:
            raise BadRequest("invalid model config", problems[0][0], problems[0][1])
        provider = self.d.directory.resolve(body.provider)
        if provider is None:
            await self.d.directory.refresh()
            provider = self.d.directory.resolve(body.provider)
        if provider is None:
            if self.d.directory.revision is None:
                raise Unavailable("the provider registry is unavailable, try again")
            raise BadRequest(f"unknown or disabled provider {body.provider!r}", "provider")
        row = await self.d.store.create_model_config(display_name=body.display_name.strip(), provider=provider,
                                                   model=body.model.strip(), created_by=ident.user_id)
        return model_config_out(row)

    # ------------------------------------------------------------ chats

    async def list_chats(self, request: web.Request, ident: Identity) -> ChatList:
        q = request.query
        archived = None
        if "archived" in q:
            if q["archived"] not in ("true", "false"):
                raise BadRequest("archived is true or false", "archived")
            archived = q["archived"] == "true"
        try:
            limit = min(max(int(q.get("limit", "50")), 1), 200)
        except ValueError:
            raise BadRequest("limit must be an integer", "limit") from None
        rows = await self.d.store.list_chats(ident.user_id, archived=archived, limit=limit + 1,
                                           before=_cursor(q.get("cursor")))
        nxt = _make_cursor(rows[limit - 1]) if len(rows) > limit else None
        return ChatList(chats=[chat_summary_out(r) for r in rows[:limit]], next_cursor=nxt)

    async def create_chat(self, request: web.Request, ident: Identity) -> ChatOut:
        body = await read_json(request, ChatCreate)
        if len(body.title) > MAX_TITLE:
            raise BadRequest(f"title is at most {MAX_TITLE} characters", "title")
        mc = await self.d.store.get_model_config(body.model_config_id)
        if mc is None:
            raise BadRequest("unknown model config", "model_config_id")
        if not mc["enabled"]:
            raise Conflict(f"model config {mc['display_name']!r} is disabled: its provider is disabled")
        chat = await self.d.store.create_chat(ident.user_id, mc["id"], body.title.strip())
        return await self._chat_out(chat["id"])

    async def _chat_out(self, chat_id: uuid.UUID) -> ChatOut:
        body = await self.d.store.chat_body(chat_id)
        if body is None:  # deleted a moment ago
            raise NotFound("chat not found")
        return body

    async def get_chat(self, request: web.Request, ident: Identity) -> ChatOut:
        chat = await self._chat(request, ident)
        return await self._chat_out(chat["id"])

    async def patch_chat(self, request: web.Request, ident: Identity) -> ChatOut:
        chat = await self._chat(request, ident)
        body = await read_json(request, ChatPatch)
        if body.title is not None and len(body.title) > MAX_TITLE:
            raise BadRequest(f"title is at most {MAX_TITLE} characters", "title")
        row = await self.d.store.update_chat(chat["id"], title=body.title.strip() if body.title is not None else None,
                                           archived=body.archived, summarize=body.summarize)
        if row is None:
            raise NotFound("chat not found")
        return await self._chat_out(chat["id"])

    async def delete_chat(self, request: web.Request, ident: Identity) -> None:
        chat = await self._chat(request, ident)
        if await self.d.store.delete_chat(chat["id"]):
            self.d.runner.abandon(chat["id"])
            await self.d.hub.publish(str(chat["id"]), "status", {"status": "deleted"})

    # ------------------------------------------------------------ messages

    async def post_message(self, request: web.Request, ident: Identity) -> MessageAccepted:
        token = bearer_token(request)
        assert token is not None  # authenticate refused a request without one
        chat = await self._chat(request, ident)
        body = await read_json(request, MessagePost)
        if not body.content.strip():
            raise BadRequest("content must not be empty", "content")
        if len(body.content.encode()) > MAX_MESSAGE_BYTES:
            raise BadRequest("content is at most 1 MiB", "content")
        if chat["archived"]:
            raise Conflict("the chat is archived; unarchive it to continue")
        mc = await self.d.store.get_model_config(chat["model_config_id"])
        if mc is None or not mc["enabled"]:
            raise Conflict("the chat's model config is disabled: its provider is disabled")
        skill_name = skill_invocation(body.content)
        instructions = None
        if skill_name is not None:
            skill = await self.d.skills.get(ident.user_id, skill_name)
            if skill is None:
                raise BadRequest(f"unknown skill /{skill_name}: create it under "
                                  "/api/experimental/users/me/skills, or do not start the message with /",
                                  "content")
            instructions = skill["content"]
        turn_id, message_id = uuid.uuid4(), uuid.uuid4()
        await self.d.store.enqueue_turn(
            turn_id=turn_id, chat_id=chat["id"], user_message_id=message_id, content=body.content,
            skill_name=skill_name, instructions=instructions, user_id=ident.user_id,
            token_id=ident.token_id, token_hash=hash_token(token),
            token_sealed=self.d.at_rest.seal(token, aad=token_aad(turn_id)),
        )
        claimed = await self.d.store.claim_next(chat["id"], self.d.replica_id, self.d.config.lease)
        if claimed is not None:
            self.d.runner.start(claimed)
        else:  # queued behind the running turn
            status = await self.d.store.status_body(chat["id"])
            if status is not None:
                await self.d.hub.publish(str(chat["id"]), "status", status)
        return MessageAccepted(message_id=message_id, turn_id=turn_id)

    async def interrupt(self, request: web.Request, ident: Identity) -> InterruptAccepted:
        """Stop the chat's running turn: its partial reply is kept (marked interrupted) and the chat goes idle.

        202 at once; the runner — on this replica or another, told over the bus, with the turn row's flag as
        the backstop its heartbeat reads — cancels the upstream call. ``turn_id`` is null when nothing ran.
        """
        chat = await self._chat(request, ident)
        res = await self.d.store.request_interrupt(chat["id"])
        if res is not None and not self.d.runner.interrupt(chat["id"]):
            await self.d.runner.send_interrupt(chat["id"])
        return InterruptAccepted(turn_id=res[0] if res is not None else None)

    # ------------------------------------------------------------ the live stream

    async def stream(self, request: web.Request, ident: Identity) -> web.StreamResponse:
        chat = await self._chat(request, ident)
        chat_id = str(chat["id"])
        # subscribe first, then read the snapshot: nothing between the two is lost
        async with self.d.hub.listen(chat_id) as q:
            snapshot = await self.d.store.chat_body(chat["id"])
            if snapshot is None:
                raise NotFound("chat not found")
            if (exact := self.d.runner.partial(chat["id"])) is not None:
                # the turn runs here: what it streamed so far, exactly
                if snapshot.partial is not None:
                    snapshot.partial.message_id, snapshot.partial.text = exact["message_id"], exact["text"]
                else:
                    snapshot.partial = PartialOut(message_id=exact["message_id"], text=exact["text"])
            # deltas queued since we subscribed may already be in the snapshot's partial text: skip that part;
            # text the snapshot lacks (another replica's saved copy lags) is filled in from that copy
            follow = _Continuation(self.d.store, chat["id"], snapshot.partial)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
            await resp.prepare(request)
            try:
                await _send(resp, "snapshot", msgspec.json.encode(snapshot))
                while not self.d.hub.closed:
                    try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the client-gone cancel
                        async with asyncio.timeout(self.d.config.keepalive):
                            item = await q.get()
                    except TimeoutError:
                        await resp.write(b": keepalive\n\n")
                        continue
                    if item is None:
                        break
                    event, data = item
                    if event == "message_delta":
                        for part in await follow.deltas(data):
                            await _send(resp, event, part)
                        continue
                    await _send(resp, event, data)
                    if event == "status" and data == b'{"status":"deleted"}':
                        break
            except ConnectionResetError:
                return resp
            await _eof(resp)
        return resp


class _Delta(msgspec.Struct):
    message_id: uuid.UUID
    text: str
    offset: int | None = None


GAP_WAIT = 1.5  # how long a stream waits for the runner's saved copy to cover text it missed


class _Continuation:
    """Keeps one stream's assistant text contiguous: a delta it already has (in the snapshot) is trimmed,
    and a gap — a delta starting past what it has, when the snapshot came from another replica's saved
    copy — is filled from that copy (saved every 0.3 s) before the delta is sent."""

    def __init__(self, store: Any, chat_id: uuid.UUID, partial: PartialOut | None) -> None:
        self.store, self.chat_id = store, chat_id
        self.message_id = str(partial.message_id) if partial else None
        self.known = len(partial.text) if partial else 0

    async def deltas(self, data: bytes) -> list[bytes]:
        try:
            d = msgspec.json.decode(data, type=_Delta)
        except msgspec.DecodeError:
            return [data]
        if d.offset is None:
            return [data]
        if str(d.message_id) != self.message_id:  # a new reply (or a retry): start counting afresh
            self.message_id, self.known = str(d.message_id), 0
        out: list[bytes] = []
        if d.offset > self.known:
            gap = await self._saved(d.message_id, d.offset)
            if gap is not None:
                out.append(msgspec.json.encode({"message_id": d.message_id, "text": gap[self.known:d.offset],
                                                "offset": self.known}))
                self.known = d.offset
        end = d.offset + len(d.text)
        if end <= self.known:
            return out
        if d.offset < self.known:
            out.append(msgspec.json.encode({"message_id": d.message_id, "text": d.text[self.known - d.offset:],
                                            "offset": self.known}))
        else:
            out.append(data)
        self.known = end
        return out

    async def _saved(self, message_id: uuid.UUID, upto: int) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GAP_WAIT
        while True:
            running, text = await self.store.saved_partial(self.chat_id, message_id)
            if text is not None and len(text) >= upto:
                return text
            if not running or loop.time() >= deadline:  # ended: its final message carries the whole reply
                log.warning("stream missed part of a reply it joined mid-turn", extra={"chat_id": str(self.chat_id)})
                return None
            await asyncio.sleep(0.1)


_CHATS = "/api/experimental/chats"

# model-configs first: it would otherwise match /chats/{chat}
CHAT_ROUTES: list[Route] = [
    Route("GET", _CHATS + "/model-configs", ChatRoutes.list_model_configs, "user", "List model configs",
          "model-configs", response=ModelConfigList),
    Route("POST", _CHATS + "/model-configs", ChatRoutes.create_model_config, "admin", "Create a model config",
          "model-configs", body=ModelConfigCreate, response=ModelConfigOut, status=201),
    Route("GET", _CHATS, ChatRoutes.list_chats, "user", "List your chats, newest first", "chats", response=ChatList,
          query=(
              Query("archived", {"type": "string", "enum": ["true", "false"]}),
              Query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size (default 50)"),
              Query("cursor", {"type": "string"}, "next_cursor of the previous page"),
          )),
    Route("POST", _CHATS, ChatRoutes.create_chat, "user", "Create a chat", "chats", body=ChatCreate,
          response=ChatOut, status=201),
    Route("GET", _CHATS + "/{chat}", ChatRoutes.get_chat, "user", "Read a chat (others' chats are 404)", "chats",
          response=ChatOut),
    Route("PATCH", _CHATS + "/{chat}", ChatRoutes.patch_chat, "user",
          "Rename, (un)archive, or turn summaries on or off", "chats", body=ChatPatch, response=ChatOut),
    Route("DELETE", _CHATS + "/{chat}", ChatRoutes.delete_chat, "user", "Delete a chat", "chats"),
    Route("POST", _CHATS + "/{chat}/messages", ChatRoutes.post_message, "user", "Post a message: queues a turn",
          "chats", body=MessagePost, response=MessageAccepted, status=202),
    Route("POST", _CHATS + "/{chat}/interrupt", ChatRoutes.interrupt, "user",
          "Stop the running turn: the upstream call is cancelled, the partial reply kept (interrupted), "
          "the chat goes idle", "chats", response=InterruptAccepted, status=202),
    Route("GET", _CHATS + "/{chat}/stream", ChatRoutes.stream, "user",
          "The chat's live events (SSE: snapshot, status, message_delta, message, error)", "chats",
          response=str, content_type="text/event-stream"),
]

ROUTES: list[Route] = [*CHAT_ROUTES, *SKILL_ROUTES, document_route("/api/experimental/openapi.json")]


def _on(handlers: object) -> Invoke:
    """Call a route's handler (a method of ``handlers``' class, as listed in the table) on ``handlers``."""

    async def invoke(route: Route, request: web.Request, caller: Identity) -> Any:
        return await route.handler(handlers, request, caller)

    return invoke


def add_routes(app: web.Application, deps: Deps) -> None:
    async def caller(request: web.Request) -> Identity:
        return await authenticate(request, deps.identities)

    mount(app, CHAT_ROUTES, caller, _on(ChatRoutes(deps)))
    mount(app, SKILL_ROUTES, caller, _on(SkillRoutes(deps)))


async def _send(resp: web.StreamResponse, event: str, data: bytes) -> None:
    await resp.write(sse.encode(event.encode(), data))


async def _eof(resp: web.StreamResponse) -> None:
    try:
        await resp.write_eof()
    except ConnectionResetError:
        log.debug("stream client gone before the end")
