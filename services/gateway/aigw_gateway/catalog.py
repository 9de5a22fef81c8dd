"""``GET /v1/models`` without a provider: every model the caller may use, across providers.

Design (the contract leaves it to us):
- *Which providers*: those the caller's token alone can use (a pool key, or a type that needs none), and
  those the caller has a stored key for (BYOK), when BYOK is allowed. A provider that takes only the
  user's own credential and has none stored is left out.
- *How the lists are fetched*: each provider's own ``/v1/models`` pass-through route, through the same
  key-pool walk as any request (failover, marks), concurrently, each bounded by ``FETCH_TIMEOUT``.
- *Cached briefly*: a provider's list for ``TTL`` seconds (per provider for pool keys; per provider and
  user for stored keys, in a bounded LRU), so a tool that polls the list does not poll every provider.
  Concurrent callers share one fetch. A failure is cached for ``FAILURE_TTL`` so a dead provider is not
  asked on every call.
- *One failing provider does not fail the list*: it is left out (and logged); the answer is 200 with what
  the others returned. With no provider at all the list is empty.
- Ids are ``<provider>/<model id>``; ``owned_by`` is the provider name. OpenAI's list shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from aiohttp import web
from multidict import CIMultiDict, MultiDict

if TYPE_CHECKING:
    from aigw_common.schemas import Identity

    from .providers import Provider
    from .proxy import Caller, Gateway

log = logging.getLogger(__name__)

TTL = 60.0
FAILURE_TTL = 5.0
FETCH_TIMEOUT = 10.0
MAX_LIST_BYTES = 8 * 1024 * 1024
MAX_ENTRIES = 1024  # cached lists (providers, and users with stored keys)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str
    created: int


class _ModelList(msgspec.Struct):
    data: list[dict[str, Any]] = []


def parse_models(raw: bytes) -> list[ModelEntry]:
    """Model ids from an OpenAI (``created``) or Anthropic (``created_at``) list body."""
    doc = msgspec.json.decode(raw, type=_ModelList)
    out = []
    for m in doc.data:
        mid = m.get("id")
        if not isinstance(mid, str) or not mid or len(mid) > 256:
            continue
        created = m.get("created")
        if not isinstance(created, int) or isinstance(created, bool):
            created = 0
            if isinstance(ca := m.get("created_at"), str):
                try:
                    created = int(datetime.fromisoformat(ca.replace("Z", "+00:00")).timestamp())
                except ValueError:
                    created = 0
        out.append(ModelEntry(mid, created))
    return out


class ModelCatalog:
    def __init__(self, ttl: float = TTL, failure_ttl: float = FAILURE_TTL, timeout: float = FETCH_TIMEOUT) -> None:
        self.ttl, self.failure_ttl, self.timeout = ttl, failure_ttl, timeout
        self._cache: OrderedDict[tuple[str, ...], tuple[float, list[ModelEntry] | None]] = OrderedDict()
        self._inflight: dict[tuple[str, ...], asyncio.Future[list[ModelEntry] | None]] = {}

    async def handle(self, gw: Gateway, request: web.Request) -> web.Response:
        from .errors import error_response
        from .proxy import Refused

        h = request.headers
        auth = h.get("Authorization", "")
        token = h.get("X-AIGW-Token") or (auth[7:].strip() if auth[:7].lower() == "bearer " else h.get("X-Api-Key"))
        try:
            identity = await gw.verify_token(token, request.remote or "")
        except Refused as r:
            return error_response("openai", r.status, r.message, retry_after=r.retry_after)
        jobs = [(p, caller) for p in gw.loader.current.by_name.values()
                if (caller := self._caller(gw, identity, p)) is not None]
        lists = await asyncio.gather(*(self._list(gw, request, p, c) for p, c in jobs))
        data = [{"id": f"{p.name}/{m.id}", "object": "model", "created": m.created, "owned_by": p.name}
                for (p, _), models in zip(jobs, lists, strict=True) if models for m in models]
        return web.json_response({"object": "list", "data": data})

    @staticmethod
    def _caller(gw: Gateway, identity: Identity, p: Provider) -> Caller | None:
        from .proxy import Caller

        if not p.adapter.byok_only and (p.pool.keys or p.adapter.keyless):
            return Caller(identity, False, None, None, "")
        if gw.settings.allow_byok and p.allow_byok:
            return gw.stored_key_caller(identity, p)
        return None

    async def _list(self, gw: Gateway, request: web.Request, p: Provider, caller: Caller) -> list[ModelEntry] | None:
        # pool keys: one list per provider (and revision: a changed provider is asked again); stored keys: per user
        key: tuple[str, ...] = (p.id, str(gw.loader.current.revision)) + ((caller.identity.user_id, caller.hint)
                                                                          if caller.byok else ())
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(key)
            return hit[1]
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            models = None
            try:
                models = await self._fetch(gw, request, p, caller)
                self._cache[key] = (time.monotonic() + (self.ttl if models is not None else self.failure_ttl), models)
                self._cache.move_to_end(key)
                while len(self._cache) > MAX_ENTRIES:
                    self._cache.popitem(last=False)
            finally:
                self._inflight.pop(key, None)
                fut.set_result(models)  # waiters get the list, or None if this fetch was cancelled
            return models
        return await asyncio.shield(fut)

    async def _fetch(self, gw: Gateway, request: web.Request, p: Provider, caller: Caller) -> list[ModelEntry] | None:
        from .proxy import Refused

        try:
            async with asyncio.timeout(self.timeout):
                # each type's own model-list pass-through route (Copilot's has no /v1)
                url = p.adapter.upstream_url(p, p.adapter.cap.models_path, MultiDict[str]())
                resp, _key, filt, _out = await gw._send(request, p, None, url, CIMultiDict(), b"", caller)
                try:
                    if resp.status != 200:
                        log.warning("model list refused by provider", extra={"provider": p.name, "status": resp.status})
                        return None
                    parts: list[bytes] = []
                    size = 0
                    while chunk := await resp.content.readany():
                        size += len(chunk)
                        if size > MAX_LIST_BYTES:
                            log.warning("model list too large; provider left out", extra={"provider": p.name})
                            return None
                        parts.append(chunk)
                    raw = b"".join(parts)
                    if filt is not None:
                        raw = filt.feed(raw) + filt.finish()
                finally:
                    resp.close()
            return parse_models(raw)
        except (Refused, TimeoutError, aiohttp.ClientError, msgspec.DecodeError, msgspec.ValidationError) as e:
            log.warning("model list unavailable; provider left out of /v1/models",
                        extra={"provider": p.name, "error": getattr(e, "message", None) or str(e) or type(e).__name__})
            return None
