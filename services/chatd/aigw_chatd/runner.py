"""The turn runner: one turn at a time per chat, streamed from the model, persisted as it completes.

A claimed turn runs on the replica that claimed it, under a lease it renews;
events go to the chat's hub (local listeners + ``aigw.chat.<id>``). Failures
become a structured error; retryable ones are retried with backoff a bounded
number of times. When a turn ends, the chat's next queued turn is claimed in
the same transaction and run next. On shutdown a running turn is handed back
to the queue; a replica that dies loses its lease and any replica's sweeper
requeues the turn.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from aigw_common.auth import IdentityCache
from aigw_common.crypto import Sealer
from aigw_common.errors import BusError, CryptoError
from aigw_common.metrics import CollectorRegistry, Counter, Gauge, Histogram
from aigw_common.schemas import ChatEvent, Identity
from aigw_common.settings import Settings

from .config import ChatdConfig
from .hub import ChatHub
from .providers import ProviderDirectory, ProviderInfo
from .store import ClaimedTurn, Store
from .upstream import (
    ChatMessage,
    Route,
    Secret,
    TurnError,
    backoff,
    build_body,
    complete_once,
    direct_route,
    gateway_route,
    stream_turn,
)

log = logging.getLogger(__name__)

SUMMARY_INSTRUCTIONS = (
    "Summarise the exchange below in one short line (at most 12 words), for a chat list. "
    "Reply with the summary only, no quotes."
)
SKILL_RE = re.compile(r"^/([a-z0-9]+(?:[-_][a-z0-9]+)*)(?=\s|$)")


def skill_invocation(content: str) -> str | None:
    """The skill name a message invokes (``/<name> …``), or None for a plain message."""
    m = SKILL_RE.match(content)
    return m.group(1) if m else None


def prompt_of(content: str, skill_name: str | None) -> str:
    """What the model sees of a message that invoked a skill: the text after ``/<name>``."""
    if skill_name:
        rest = content[len(skill_name) + 1:].strip()
        return rest or content
    return content


def token_aad(turn_id: uuid.UUID) -> bytes:
    return b"chatd-turn:" + turn_id.bytes


PARTIAL_FLUSH = 0.3  # seconds between saves of the reply streamed so far (for snapshots on other replicas)


@dataclass(slots=True)
class _RunState:
    lost: bool = False  # the lease is gone (chat deleted, or another replica requeued the turn)
    interrupted: bool = False  # an interrupt asked the turn to stop: keep the partial reply
    message_id: uuid.UUID | None = None  # the assistant message being streamed
    parts: list[str] = field(default_factory=list)  # its text so far
    length: int = 0  # characters so far (the next delta's offset)
    flushed: int = -1  # length last saved to the turn row

    def text(self) -> str:
        return "".join(self.parts)


class TurnRunner:
    def __init__(self, *, store: Store, hub: ChatHub, directory: ProviderDirectory, identities: IdentityCache,
                 settings: Settings, config: ChatdConfig, runner_id: str, session: aiohttp.ClientSession,
                 at_rest: Sealer, bus_sealer: Sealer, metrics: CollectorRegistry,
                 direct_session: aiohttp.ClientSession | None = None) -> None:
        self.store = store
        self.hub = hub
        self.directory = directory
        self.identities = identities
        self.settings = settings
        self.config = config
        self.runner_id = runner_id
        self.session = session
        # the direct route calls providers, so its connections are address-checked (aigw_common.netguard)
        self.direct_session = direct_session or session
        self.at_rest = at_rest
        self.bus_sealer = bus_sealer
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[uuid.UUID, tuple[asyncio.Task[Any], _RunState]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.m_turns = Counter("aigw_chatd_turns_total", "Finished turns by outcome and error kind",
                               ["outcome", "kind"], registry=metrics)
        self.m_retries = Counter("aigw_chatd_turn_retries_total", "Model calls retried, by error kind", ["kind"],
                                 registry=metrics)
        self.m_running = Gauge("aigw_chatd_turns_running", "Turns running on this replica", registry=metrics)
        self.m_duration = Histogram("aigw_chatd_turn_seconds", "Turn duration, first attempt to outcome",
                                    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300), registry=metrics)

    # ------------------------------------------------------------ lifecycle

    def start(self, turn: ClaimedTurn) -> None:
        t = asyncio.create_task(self._chain(turn), name=f"chatd-chat-{turn.chat_id}")
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def partial(self, chat_id: uuid.UUID) -> dict[str, Any] | None:
        """The reply a turn running here has streamed so far (exact, unlike the periodically saved copy)."""
        entry = self._running.get(chat_id)
        if entry is None or entry[1].message_id is None:
            return None
        st = entry[1]
        return {"message_id": st.message_id, "text": st.text()}

    def interrupt(self, chat_id: uuid.UUID) -> bool:
        """Stop this replica's running turn of a chat, keeping what it streamed so far."""
        entry = self._running.get(chat_id)
        if entry is None:
            return False
        task, state = entry
        if not state.interrupted:
            state.interrupted = True
            task.cancel()
        return True

    async def listen_interrupts(self) -> None:
        """Interrupts of turns running on another replica arrive on ``<chat subject>.interrupt``."""
        bus = self.hub.bus
        await bus.subscribe(bus.subjects.chat("*") + ".interrupt", ChatEvent, self._on_interrupt)

    async def _on_interrupt(self, msg: ChatEvent, _m: Any) -> None:
        try:
            self.interrupt(uuid.UUID(msg.chat_id))
        except ValueError:
            log.warning("interrupt for a malformed chat id", extra={"chat_id": msg.chat_id[:64]})

    async def send_interrupt(self, chat_id: uuid.UUID) -> None:
        """Tell every replica (the turn's runner among them) to stop the chat's turn; the turn row's flag,
        checked by the runner's heartbeat, backs this up if the message is lost."""
        bus = self.hub.bus
        try:
            await bus.publish(bus.subjects.chat(str(chat_id)) + ".interrupt",
                              ChatEvent(chat_id=str(chat_id), event="interrupt", data=msgspec.Raw(b"{}"),
                                        origin=self.runner_id))
        except BusError as e:
            log.warning("interrupt not sent over the bus; the runner's heartbeat will see it",
                        extra={"chat_id": str(chat_id), "error": str(e)})

    def abandon(self, chat_id: uuid.UUID) -> bool:
        """Stop this replica's running turn of a chat that was deleted (other replicas notice by heartbeat)."""
        entry = self._running.get(chat_id)
        if entry is None:
            return False
        task, state = entry
        state.lost = True
        task.cancel()
        return True

    async def drain(self, grace: float) -> None:
        """Let running turns finish for up to ``grace`` seconds, then hand the rest back to the queue."""
        self._stopping = True
        pending = set(self._tasks) | set(self._background)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for t in still:
                t.cancel()
            if still:
                await asyncio.wait(still, timeout=5)

    async def sweep(self) -> int:
        """Requeue turns whose runner is gone and start chats that wait with nobody running them."""
        started = 0
        for chat_id in set(await self.store.requeue_expired()) | set(await self.store.chats_waiting()):
            turn = await self.store.claim_next(chat_id, self.runner_id, self.config.lease)
            if turn is not None:
                started += 1
                self.start(turn)
        return started

    async def sweeper(self) -> None:
        while True:
            try:
                await self.sweep()
            except (OSError, BusError) as e:
                log.warning("turn sweep failed", extra={"error": str(e)})
            await asyncio.sleep(self.config.sweep_interval)

    # ------------------------------------------------------------ running

    async def _chain(self, turn: ClaimedTurn | None) -> None:
        while turn is not None:
            if self._stopping:
                await self.store.release_turn(turn.id, self.runner_id)
                return
            turn = await self._run(turn)

    async def _run(self, turn: ClaimedTurn) -> ClaimedTurn | None:
        chat_id = str(turn.chat_id)
        user_msg = await self.store.user_message(turn.user_message_id)
        if user_msg is not None:
            await self.hub.publish(chat_id, "message", {"id": user_msg["id"], "role": "user",
                                                        "content": user_msg["content"],
                                                        "created_at": user_msg["created_at"]})
        await self._publish_status(turn.chat_id)
        state = _RunState()
        me = asyncio.current_task()
        assert me is not None
        hb = asyncio.create_task(self._heartbeat(turn, state, me))
        flusher = asyncio.create_task(self._flush_partial(turn, state))
        self._running[turn.chat_id] = (me, state)
        self.m_running.inc()
        started = time.monotonic()
        reply: str | None = None
        asst_id: uuid.UUID | None = None
        error: TurnError | None = None
        ctx: _TurnContext | None = None
        try:
            ctx = await self._prepare(turn)
            reply, asst_id = await self._attempts(turn, ctx, state)
        except TurnError as e:
            error = e
        except asyncio.CancelledError:
            if state.interrupted and not state.lost:
                me.uncancel()  # our own interrupt: finish the turn with what was streamed
                reply, asst_id = state.text(), state.message_id
                log.info("turn interrupted", extra={"chat_id": chat_id, "turn_id": str(turn.id),
                                                    "partial_chars": state.length})
            elif state.lost:
                me.uncancel()
                log.info("turn abandoned: no longer ours", extra={"chat_id": chat_id, "turn_id": str(turn.id)})
                return None
            else:
                await asyncio.shield(self.store.release_turn(turn.id, self.runner_id))
                raise
        finally:
            hb.cancel()
            flusher.cancel()
            self._running.pop(turn.chat_id, None)
            self.m_running.dec()
        self.m_duration.observe(time.monotonic() - started)
        self.m_turns.labels("interrupted" if state.interrupted else "error" if error else "ok",
                            error.kind if error else "").inc()
        if error is not None:
            log.info("turn failed", extra={"chat_id": chat_id, "turn_id": str(turn.id), "kind": error.kind,
                                           "retryable": error.retryable, "status_code": error.status_code})
        if state.interrupted:
            error = None  # an interrupt is not a failure, even if it landed while a retry waited
        res = await self.store.finish_turn(turn, self.runner_id, self.config.lease, reply=reply,
                                           assistant_message_id=asst_id,
                                           error=error.as_dict() if error is not None else None,
                                           interrupted=state.interrupted)
        if res is None:
            return None
        msg, nxt = res
        if error is not None:
            await self.hub.publish(chat_id, "error", {"turn_id": turn.id, **error.as_dict()})
        elif msg is not None:
            await self.hub.publish(chat_id, "message", msg)
            if self.config.summary and ctx is not None and not state.interrupted and ctx.summarize:
                self._spawn(self._summarize(turn, ctx, prompt_of(turn.content, turn.skill_name), reply or ""))
        await self._publish_status(turn.chat_id)
        return nxt

    async def _publish_status(self, chat_id: uuid.UUID) -> None:
        body = await self.store.status_body(chat_id)
        if body is not None:
            await self.hub.publish(str(chat_id), "status", body)

    async def _heartbeat(self, turn: ClaimedTurn, state: _RunState, task: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat)
            try:
                ours = await self.store.heartbeat(turn.id, self.runner_id, self.config.lease)
            except OSError as e:
                log.warning("turn heartbeat failed", extra={"turn_id": str(turn.id), "error": str(e)})
                continue
            if ours is None:  # an interrupt was requested (its bus message may have been lost)
                if not state.interrupted:
                    state.interrupted = True
                    task.cancel()
                return
            if not ours:
                state.lost = True
                task.cancel()
                return

    async def _flush_partial(self, turn: ClaimedTurn, state: _RunState) -> None:
        """Save the reply so far every ``PARTIAL_FLUSH`` s while it grows, for snapshots served elsewhere."""
        while True:
            await asyncio.sleep(PARTIAL_FLUSH)
            if state.message_id is None or state.flushed == state.length:
                continue
            length = state.length
            try:
                await self.store.save_partial(turn.id, self.runner_id, state.message_id, state.text())
                state.flushed = length
            except OSError as e:
                log.warning("partial reply not saved", extra={"turn_id": str(turn.id), "error": str(e)})

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    # ------------------------------------------------------------ one turn

    async def _prepare(self, turn: ClaimedTurn) -> _TurnContext:
        if turn.attempts >= self.config.max_attempts:
            raise TurnError(f"gave up after {turn.attempts} attempts", "generic")
        if not turn.token_sealed:
            raise TurnError("the token that started this turn is gone; post the message again", "auth")
        try:
            token = Secret(self.at_rest.open(turn.token_sealed, aad=token_aad(turn.id)))
        except CryptoError as e:
            raise TurnError("the token that started this turn cannot be opened", "auth", detail=str(e)) from None
        try:
            ident = await self.identities.verify(token.reveal())
        except BusError as e:
            raise TurnError("could not verify the token that started this turn", "auth", retryable=True,
                            detail=str(e)) from None
        if ident is None or ident.user_id != turn.user_id:
            # fail closed: a turn runs only with an active token of the user who posted it
            raise TurnError("the token that started this turn is no longer active", "auth")
        chat = await self.store.get_chat(turn.chat_id)
        mc = await self.store.get_model_config(chat["model_config_id"]) if chat is not None else None
        if mc is None:
            raise TurnError("the chat's model config is gone", "generic")
        if not mc["enabled"]:
            raise TurnError(f"model config {mc['display_name']!r} is disabled: its provider is disabled", "generic",
                            provider=mc["provider_name"])
        # the registry's current view if we have it, else the config's last known provider row
        provider = self.directory.providers.get(mc["provider_id"]) or ProviderInfo(
            mc["provider_id"], mc["provider_name"], mc["provider_type"], mc["base_url"], True, mc["allow_byok"])
        route = self._route(turn, ident, token, provider)
        history = [ChatMessage(r["role"], r["content"]) for r in await self.store.history(turn.chat_id,
                                                                                         turn.user_message_id)]
        if history and history[-1].role == "user":
            history[-1] = ChatMessage("user", prompt_of(turn.content, turn.skill_name))
        return _TurnContext(token=token, ident=ident, provider=provider, model=mc["model"], route=route,
                            history=history, summarize=bool(chat["summarize"]) if chat is not None else True)

    def _route(self, turn: ClaimedTurn, ident: Identity, token: Secret, provider: ProviderInfo) -> Route:
        key = self._byok_key(ident, provider)
        if self.settings.chatd_route == "direct":
            return direct_route(provider.base_url, provider.name, provider.type, provider_key=key)
        return gateway_route(self.settings.gateway_url, provider.name, provider.type, token=token, provider_key=key,
                             chat_id=str(turn.chat_id))

    def _byok_key(self, ident: Identity, provider: ProviderInfo) -> Secret | None:
        """The user's stored key for this provider (sealed for the bus in the identity), when BYOK is allowed."""
        if not (self.settings.allow_byok and provider.allow_byok):
            return None
        for k in ident.provider_keys:
            if k.provider_id == provider.id:
                try:
                    return Secret(self.bus_sealer.open(k.sealed))
                except CryptoError as e:
                    raise TurnError("your stored provider key cannot be opened", "auth", provider=provider.name,
                                    detail=str(e)) from None
        return None

    async def _attempts(self, turn: ClaimedTurn, ctx: _TurnContext, state: _RunState) -> tuple[str, uuid.UUID]:
        chat_id = str(turn.chat_id)
        body = build_body(ctx.route.api, ctx.model, ctx.history, instructions=turn.instructions, stream=True,
                          max_tokens=self.config.max_tokens)
        while True:
            attempt = await self.store.note_attempt(turn.id, self.runner_id)
            asst_id = uuid.uuid4()
            state.message_id, state.parts, state.length = asst_id, [], 0

            async def on_text(text: str, _id: uuid.UUID = asst_id) -> None:
                offset = state.length
                state.parts.append(text)
                state.length += len(text)
                # offset: where this text starts in the reply, so a stream that began with a snapshot's
                # partial text skips what it already has
                await self.hub.publish(chat_id, "message_delta", {"message_id": _id, "text": text, "offset": offset})

            try:
                result = await stream_turn(self._session_for(ctx.route), ctx.route, body, on_text, read_timeout=self.config.read_timeout,
                                           connect_timeout=self.config.connect_timeout)
                return result.text, asst_id
            except TurnError as e:
                if not e.retryable or attempt >= self.config.max_attempts:
                    raise
                self.m_retries.labels(e.kind).inc()
                delay = backoff(attempt, base=self.config.backoff_base, cap=self.config.backoff_max,
                                retry_after=e.retry_after, retry_after_cap=self.config.retry_after_cap)
                log.info("retrying turn", extra={"chat_id": chat_id, "turn_id": str(turn.id), "attempt": attempt,
                                                 "kind": e.kind, "status_code": e.status_code, "delay": round(delay, 2)})
                status = await self.store.status_body(turn.chat_id) or {}
                await self.hub.publish(chat_id, "status", {**status, "retry": {"attempt": attempt, "delay": delay,
                                                                              "error": e.as_dict()}})
                await asyncio.sleep(delay)

    def _session_for(self, route: Route) -> aiohttp.ClientSession:
        return self.direct_session if route.direct else self.session

    async def _summarize(self, turn: ClaimedTurn, ctx: _TurnContext, prompt: str, reply: str) -> None:
        """One line for the chat list, from a small model through the same route; stale results lose."""
        model = ctx.provider.small_model or self.settings.chatd_summary_model or ctx.model
        body = build_body(ctx.route.api, model,
                          [ChatMessage("user", f"User: {prompt[:2000]}\n\nAssistant: {reply[:4000]}")],
                          instructions=SUMMARY_INSTRUCTIONS, stream=False, max_tokens=64)
        try:
            text = await complete_once(self._session_for(ctx.route), ctx.route, body, limit_seconds=self.config.summary_timeout)
        except TurnError as e:
            log.info("turn summary failed", extra={"chat_id": str(turn.chat_id), "kind": e.kind,
                                                   "status_code": e.status_code})
            return
        line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        line = line.strip("\"' ")[: self.config.summary_max_chars]
        if line:
            await self.store.set_summary(turn.chat_id, turn.seq, line)


@dataclass(slots=True)
class _TurnContext:
    token: Secret
    ident: Identity
    provider: ProviderInfo
    model: str
    route: Route
    history: list[ChatMessage]
    summarize: bool = True

    def __repr__(self) -> str:
        return f"_TurnContext(provider={self.provider.name!r}, model={self.model!r}, route={self.route!r})"
