"""What differs between provider types: routes, upstream URLs, credentials, and request/response transforms.

The proxy is written once against :class:`Adapter`; each provider type
supplies one. ``api`` is the client-facing API, which also decides the error
format (OpenAI or Anthropic).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from multidict import CIMultiDict, CIMultiDictProxy

from .errors import Api

if TYPE_CHECKING:
    from .providers import Provider

Endpoint = Literal["chat_completions", "responses", "messages"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts (seconds): long defaults, because reasoning models think before the first byte."""

    connect: float = 10.0
    first_byte: float = 600.0
    idle: float = 300.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, object]) -> Timeouts:
        def num(key: str, default: float) -> float:
            v = settings.get(key)
            return float(v) if isinstance(v, (int, float, str)) and str(v).replace(".", "", 1).isdigit() else default

        d = cls()
        return cls(num("connect_timeout", d.connect), num("first_byte_timeout", d.first_byte), num("idle_timeout", d.idle))


@dataclass(slots=True)
class Outgoing:
    """An upstream request as the proxy will send it."""

    method: str
    url: str
    headers: CIMultiDict[str]
    body: bytes


class Adapter:
    api: Api = "openai"
    byok_only: bool = False

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        raise NotImplementedError

    def passthrough(self, method: str, path: str) -> bool:
        raise NotImplementedError

    def upstream_url(self, provider: Provider, path: str, query: str) -> str:
        raise NotImplementedError

    def set_credential(self, headers: CIMultiDict[str], credential: str) -> None:
        raise NotImplementedError

    def client_credential(self, headers: CIMultiDictProxy[str]) -> tuple[str, str] | None:
        """The user's own provider credential on a BYOK request, as (header name, value)."""
        raise NotImplementedError

    def prepare(self, provider: Provider, endpoint: Endpoint | None, out: Outgoing) -> Outgoing:
        """Last-moment transform of an attempt (signing, model rewrite); identity by default."""
        return out


def _with_query(url: str, query: str) -> str:
    return f"{url}?{query}" if query else url


_OPENAI_PASSTHROUGH = re.compile(r"^/v1/(models(/[^/]+)?|responses/.+|conversations(/.*)?)$")


class OpenAIAdapter(Adapter):
    """OpenAI and OpenAI-compatible APIs: the base URL includes ``/v1``."""

    api: Api = "openai"

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        if method == "POST":
            if path == "/v1/chat/completions":
                return "chat_completions"
            if path == "/v1/responses":
                return "responses"
        return None

    def passthrough(self, method: str, path: str) -> bool:
        m = _OPENAI_PASSTHROUGH.match(path)
        if not m:
            return False
        if path.startswith("/v1/models"):
            return method == "GET"
        return True

    def upstream_url(self, provider: Provider, path: str, query: str) -> str:
        rest = path[3:] if path.startswith("/v1/") else path
        return _with_query(provider.base_url + rest, query)

    def set_credential(self, headers: CIMultiDict[str], credential: str) -> None:
        headers["Authorization"] = f"Bearer {credential}"

    def client_credential(self, headers: CIMultiDictProxy[str]) -> tuple[str, str] | None:
        if a := headers.get("Authorization"):
            return ("Authorization", a)
        if k := headers.get("X-Api-Key"):
            return ("Authorization", f"Bearer {k}")
        return None


_ANTHROPIC_MODELS = re.compile(r"^/v1/models(/[^/]+)?$")


class AnthropicAdapter(Adapter):
    """Anthropic Messages: the base URL does not include ``/v1``."""

    api: Api = "anthropic"

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        return "messages" if method == "POST" and path == "/v1/messages" else None

    def passthrough(self, method: str, path: str) -> bool:
        if method == "GET" and _ANTHROPIC_MODELS.match(path):
            return True
        return method == "POST" and path == "/v1/messages/count_tokens"

    def upstream_url(self, provider: Provider, path: str, query: str) -> str:
        return _with_query(provider.base_url + path, query)

    def set_credential(self, headers: CIMultiDict[str], credential: str) -> None:
        headers.popall("Authorization", None)
        headers["X-Api-Key"] = credential

    def client_credential(self, headers: CIMultiDictProxy[str]) -> tuple[str, str] | None:
        if k := headers.get("X-Api-Key"):  # for Anthropic, X-Api-Key wins
            return ("X-Api-Key", k)
        if a := headers.get("Authorization"):
            return ("Authorization", a)
        return None


_OPENAI = OpenAIAdapter()
_ANTHROPIC = AnthropicAdapter()

ADAPTERS: dict[str, Adapter] = {
    "openai": _OPENAI,
    "openai-compat": _OPENAI,
    "openrouter": _OPENAI,
    "anthropic": _ANTHROPIC,
}


def adapter_for(provider_type: str) -> Adapter | None:
    return ADAPTERS.get(provider_type)


def guess_api(path: str) -> Api:
    """For errors before a provider is known (unknown provider, bad token)."""
    return "anthropic" if "/messages" in path else "openai"
