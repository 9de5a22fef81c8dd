"""chatd's HTTP API (``docs/api.md``): model configs, chats, messages and the live stream."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from aigw_common.api import (
    ApiError,
    bad_request,
    conflict,
    forbidden,
    json_response,
    not_found,
    read_json,
)
from aigw_common.auth import authenticate, bearer_token, is_admin, is_owner
from aigw_common.crypto import hash_token
from aigw_common.schemas import Identity

from .deps import Deps
from .runner import skill_invocation, token_aad
from .store import chat_summary_body, model_config_body

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


@dataclass(slots=True)
class Caller:
    ident: Identity
    token: str

    def __repr__(self) -> str:
        return f"Caller(user_id={self.ident.user_id!r})"


def _uuid_param(request: web.Request, name: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise not_found(what) from None


def _cursor(c: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not c:
        return None
    try:
        ts, _, cid = base64.urlsafe_b64decode(c + "=" * (-len(c) % 4)).decode().partition("|")
        return datetime.fromisoformat(ts), uuid.UUID(cid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_request("invalid cursor", "cursor") from None


def _make_cursor(r: asyncpg.Record) -> str:
    return base64.urlsafe_b64encode(f"{r['created_at'].isoformat()}|{r['id']}".encode()).decode().rstrip("=")


class ChatRoutes:
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    def register(self, router: web.UrlDispatcher) -> None:
        # model-configs first: it would otherwise match /chats/{chat}
        router.add_get("/api/experimental/chats/model-configs", self.list_model_configs)
        router.add_post("/api/experimental/chats/model-configs", self.create_model_config)
        router.add_get("/api/experimental/chats", self.list_chats)
        router.add_post("/api/experimental/chats", self.create_chat)
        router.add_get("/api/experimental/chats/{chat}", self.get_chat)
        router.add_patch("/api/experimental/chats/{chat}", self.patch_chat)
        router.add_delete("/api/experimental/chats/{chat}", self.delete_chat)
        router.add_post("/api/experimental/chats/{chat}/messages", self.post_message)
        router.add_post("/api/experimental/chats/{chat}/interrupt", self.interrupt)
        router.add_get("/api/experimental/chats/{chat}/stream", self.stream)

    async def identity(self, request: web.Request) -> Identity:
        return await authenticate(request, self.d.identities)

    async def caller(self, request: web.Request) -> Caller:
        ident = await authenticate(request, self.d.identities)
        token = bearer_token(request)
        assert token is not None  # authenticate refused a request without one
        return Caller(ident, token)

    async def _chat(self, request: web.Request, ident: Identity) -> asyncpg.Record:
        chat = await self.d.store.get_chat(_uuid_param(request, "chat", "chat"))
        # an owner may see every chat; anyone else only their own (others' are invisible: 404)
        if chat is None or (chat["owner_id"] != ident.user_id and not is_owner(ident)):
            raise not_found("chat")
        return chat

    # ------------------------------------------------------------ model configs

    async def list_model_configs(self, request: web.Request) -> web.Response:
        await self.identity(request)
        return json_response({"model_configs": [model_config_body(r) for r in await self.d.store.list_model_configs()]})

    async def create_model_config(self, request: web.Request) -> web.Response:
        ident = await self.identity(request)
        if not is_admin(ident):
            raise forbidden("only an owner or admin may create model configs")
        body = await read_json(request, ModelConfigCreate)
        problems = []
        if not body.display_name.strip() or len(body.display_name) > MAX_TITLE:
            problems.append(("display_name", f"1 to {MAX_TITLE} characters"))
        if not body.model.strip():
            problems.append(("model", "must not be empty"))
        if problems:
            raise bad_request("invalid model config", problems[0][0], problems[0][1])
        provider = self.d.directory.resolve(body.provider)
        if provider is None:
            await self.d.directory.refresh()
            provider = self.d.directory.resolve(body.provider)
        if provider is None:
            if self.d.directory.revision is None:
                raise ApiError(503, "the provider registry is unavailable, try again", headers={"Retry-After": "1"})
            raise bad_request(f"unknown or disabled provider {body.provider!r}", "provider")
        row = await self.d.store.create_model_config(display_name=body.display_name.strip(), provider=provider,
                                                   model=body.model.strip(), created_by=ident.user_id)
        return json_response(model_config_body(row), status=201)

    # ------------------------------------------------------------ chats

    async def list_chats(self, request: web.Request) -> web.Response:
        ident = await self.identity(request)
        q = request.query
        archived = None
        if "archived" in q:
            if q["archived"] not in ("true", "false"):
                raise bad_request("archived is true or false", "archived")
            archived = q["archived"] == "true"
        try:
            limit = min(max(int(q.get("limit", "50")), 1), 200)
        except ValueError:
            raise bad_request("limit must be an integer", "limit") from None
        rows = await self.d.store.list_chats(ident.user_id, archived=archived, limit=limit + 1,
                                           before=_cursor(q.get("cursor")))
        nxt = _make_cursor(rows[limit - 1]) if len(rows) > limit else None
        return json_response({"chats": [chat_summary_body(r) for r in rows[:limit]], "next_cursor": nxt})

    async def create_chat(self, request: web.Request) -> web.Response:
        ident = await self.identity(request)
        body = await read_json(request, ChatCreate)
        if len(body.title) > MAX_TITLE:
            raise bad_request(f"title is at most {MAX_TITLE} characters", "title")
        mc = await self.d.store.get_model_config(body.model_config_id)
        if mc is None:
            raise bad_request("unknown model config", "model_config_id")
        if not mc["enabled"]:
            raise conflict(f"model config {mc['display_name']!r} is disabled: its provider is disabled")
        chat = await self.d.store.create_chat(ident.user_id, mc["id"], body.title.strip())
        return json_response(await self.d.store.chat_body(chat["id"]), status=201)

    async def get_chat(self, request: web.Request) -> web.Response:
        ident = await self.identity(request)
        chat = await self._chat(request, ident)
        body = await self.d.store.chat_body(chat["id"])
        if body is None:
            raise not_found("chat")
        return json_response(body)

    async def patch_chat(self, request: web.Request) -> web.Response:
        ident = await self.identity(request)
        chat = await self._chat(request, ident)
        body = await read_json(request, ChatPatch)
        if body.title is not None and len(body.title) > MAX_TITLE:
            raise bad_request(f"title is at most {MAX_TITLE} characters", "title")
        row = await self.d.store.update_chat(chat["id"], title=body.title.strip() if body.title is not None else None,
                                           archived=body.archived, summarize=body.summarize)
        if row is None:
            raise not_found("chat")
        return json_response(await self.d.store.chat_body(chat["id"]))

    async def delete_chat(self, request: web.Request) -> web.Response:
        ident = await self.identity(request)
        chat = await self._chat(request, ident)
        if await self.d.store.delete_chat(chat["id"]):
            self.d.runner.abandon(chat["id"])
            await self.d.hub.publish(str(chat["id"]), "status", {"status": "deleted"})
        return web.Response(status=204)

    # ------------------------------------------------------------ messages

    async def post_message(self, request: web.Request) -> web.Response:
        caller = await self.caller(request)
        chat = await self._chat(request, caller.ident)
        body = await read_json(request, MessagePost)
        if not body.content.strip():
            raise bad_request("content must not be empty", "content")
        if len(body.content.encode()) > MAX_MESSAGE_BYTES:
            raise bad_request("content is at most 1 MiB", "content")
        if chat["archived"]:
            raise conflict("the chat is archived; unarchive it to continue")
        mc = await self.d.store.get_model_config(chat["model_config_id"])
        if mc is None or not mc["enabled"]:
            raise conflict("the chat's model config is disabled: its provider is disabled")
        skill_name = skill_invocation(body.content)
        instructions = None
        if skill_name is not None:
            skill = await self.d.skills.get(caller.ident.user_id, skill_name)
            if skill is None:
                raise bad_request(f"unknown skill /{skill_name}: create it under "
                                  "/api/experimental/users/me/skills, or do not start the message with /",
                                  "content")
            instructions = skill["content"]
        turn_id, message_id = uuid.uuid4(), uuid.uuid4()
        await self.d.store.enqueue_turn(
            turn_id=turn_id, chat_id=chat["id"], user_message_id=message_id, content=body.content,
            skill_name=skill_name, instructions=instructions, user_id=caller.ident.user_id,
            token_id=caller.ident.token_id, token_hash=hash_token(caller.token),
            token_sealed=self.d.at_rest.seal(caller.token, aad=token_aad(turn_id)),
        )
        claimed = await self.d.store.claim_next(chat["id"], self.d.replica_id, self.d.config.lease)
        if claimed is not None:
            self.d.runner.start(claimed)
        else:  # queued behind the running turn
            status = await self.d.store.status_body(chat["id"])
            if status is not None:
                await self.d.hub.publish(str(chat["id"]), "status", status)
        return json_response({"message_id": message_id, "turn_id": turn_id}, status=202)

    async def interrupt(self, request: web.Request) -> web.Response:
        """Stop the chat's running turn: its partial reply is kept (marked interrupted) and the chat goes idle.

        202 at once; the runner — on this replica or another, told over the bus, with the turn row's flag as
        the backstop its heartbeat reads — cancels the upstream call. ``turn_id`` is null when nothing ran.
        """
        ident = await self.identity(request)
        chat = await self._chat(request, ident)
        res = await self.d.store.request_interrupt(chat["id"])
        if res is not None and not self.d.runner.interrupt(chat["id"]):
            await self.d.runner.send_interrupt(chat["id"])
        return json_response({"turn_id": res[0] if res is not None else None}, status=202)

    # ------------------------------------------------------------ the live stream

    async def stream(self, request: web.Request) -> web.StreamResponse:
        ident = await self.identity(request)
        chat = await self._chat(request, ident)
        chat_id = str(chat["id"])
        # subscribe first, then read the snapshot: nothing between the two is lost
        async with self.d.hub.listen(chat_id) as q:
            snapshot = await self.d.store.chat_body(chat["id"])
            if snapshot is None:
                raise not_found("chat")
            if (exact := self.d.runner.partial(chat["id"])) is not None and snapshot.get("partial") is not None:
                snapshot["partial"].update(exact)  # the turn runs here: what it streamed so far, exactly
            elif exact is not None:
                snapshot["partial"] = exact
            # deltas queued since we subscribed may already be in the snapshot's partial text: skip that part;
            # text the snapshot lacks (another replica's saved copy lags) is filled in from that copy
            follow = _Continuation(self.d.store, chat["id"], snapshot.get("partial"))
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

    def __init__(self, store: Any, chat_id: uuid.UUID, partial: dict[str, Any] | None) -> None:
        self.store, self.chat_id = store, chat_id
        self.message_id = str(partial["message_id"]) if partial else None
        self.known = len(partial.get("text") or "") if partial else 0

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


async def _send(resp: web.StreamResponse, event: str, data: bytes) -> None:
    await resp.write(b"event: " + event.encode() + b"\ndata: " + data + b"\n\n")


async def _eof(resp: web.StreamResponse) -> None:
    try:
        await resp.write_eof()
    except ConnectionResetError:
        log.debug("stream client gone before the end")
