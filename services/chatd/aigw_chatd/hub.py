"""Chat event fan-out: local SSE listeners plus ``aigw.chat.<id>`` across replicas.

A replica publishes every event of a turn it runs to its own listeners
directly and to the bus; other replicas subscribe to a chat's subject only
while one of their clients watches it, and skip their own echo (``origin``).
``listen`` returns after the server has registered the subscription (flush),
so a caller that subscribes first and then reads the snapshot loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg

from aigw_common.bus import Bus
from aigw_common.errors import BusError
from aigw_common.schemas import ChatEvent

log = logging.getLogger(__name__)

Item = tuple[str, bytes] | None  # (event name, JSON data); None: the stream should end


@dataclass(slots=True)
class _Chat:
    listeners: set[asyncio.Queue[Item]] = field(default_factory=set)
    sub: Any = None


class ChatHub:
    def __init__(self, bus: Bus, origin: str, *, queue_size: int = 2000) -> None:
        self.bus = bus
        self.origin = origin
        self.queue_size = queue_size
        self._chats: dict[str, _Chat] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    @contextlib.asynccontextmanager
    async def listen(self, chat_id: str) -> AsyncIterator[asyncio.Queue[Item]]:
        q: asyncio.Queue[Item] = asyncio.Queue(self.queue_size)
        async with self._lock:
            ch = self._chats.setdefault(chat_id, _Chat())
            ch.listeners.add(q)
            if ch.sub is None:
                ch.sub = await self.bus.subscribe(self.bus.subjects.chat(chat_id), ChatEvent, self._on_bus)
        try:
            if self.bus.connected:
                await self.bus.flush()
        except BusError as e:
            log.warning("chat subscription not confirmed; other replicas' events may be missed", extra={"error": str(e)})
        try:
            yield q
        finally:
            async with self._lock:
                cur = self._chats.get(chat_id)
                if cur is not None:
                    cur.listeners.discard(q)
                    if not cur.listeners:
                        del self._chats[chat_id]
                        if cur.sub is not None:
                            await self.bus.unsubscribe(cur.sub)

    def listeners(self, chat_id: str) -> int:
        ch = self._chats.get(chat_id)
        return len(ch.listeners) if ch else 0

    async def _on_bus(self, msg: ChatEvent, _m: Msg) -> None:
        if msg.origin != self.origin:
            self._deliver(msg.chat_id, (msg.event, bytes(msg.data)))

    def _deliver(self, chat_id: str, item: Item) -> None:
        ch = self._chats.get(chat_id)
        if ch is None:
            return
        for q in list(ch.listeners):
            try:
                q.put_nowait(item)
            except asyncio.QueueFull:
                # a client too slow to keep up is cut off (it reconnects and gets a fresh snapshot)
                log.warning("chat stream listener overflowed; closing it", extra={"chat_id": chat_id})
                ch.listeners.discard(q)
                _end(q)

    async def publish(self, chat_id: str, event: str, data: Any) -> None:
        """Deliver to local listeners, then to the other replicas (best effort: NATS may be down)."""
        raw = msgspec.json.encode(data)
        self._deliver(chat_id, (event, raw))
        if not self.bus.connected:
            return
        try:
            await self.bus.publish(self.bus.subjects.chat(chat_id),
                                   ChatEvent(chat_id=chat_id, event=event, data=msgspec.Raw(raw), origin=self.origin))
        except BusError as e:
            log.warning("chat event not fanned out", extra={"chat_id": chat_id, "error": str(e)})

    def close(self) -> None:
        """End every open stream (shutdown)."""
        self._closed = True
        for ch in self._chats.values():
            for q in ch.listeners:
                _end(q)

    @property
    def closed(self) -> bool:
        return self._closed


def _end(q: asyncio.Queue[Item]) -> None:
    """Tell a listener to stop, making room for the marker if its queue is full."""
    if q.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            q.get_nowait()
    q.put_nowait(None)
