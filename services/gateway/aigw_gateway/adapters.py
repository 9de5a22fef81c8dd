"""What differs between provider types: routes, upstream URLs, credentials, and request/response transforms.

The proxy is written once against :class:`Adapter`; each provider type
supplies one. ``api`` is the client-facing API, which also decides the error
format (OpenAI or Anthropic).
"""

from __future__ import annotations

import functools
from collections.abc import ItemsView, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiMapping
from yarl import URL

from aigw_common.durations import parse_duration
from aigw_common.errors import AigwError
from aigw_common.llm import CAPABILITIES, Api, Capabilities, Endpoint, Wire
from aigw_common.sse import EventSink

from . import bedrock, paths, sigv4
from . import headers as hdr

if TYPE_CHECKING:
    from aigw_common.settings import Settings

    from .providers import Provider

__all__ = ["Adapter", "AdapterRefusal", "Adapters", "Endpoint", "Outgoing", "ResponseFilter", "Route", "Timeouts",
           "guess_api", "routes"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts (seconds): long defaults, because reasoning models think before the first byte."""

    connect: float = 10.0
    first_byte: float = 600.0
    idle: float = 300.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, object]) -> Timeouts:
        def num(key: str, default: float) -> float:
            # seconds as a number, or a duration string ("30s", "500ms", "5m"); anything else keeps the default
            v = settings.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                return default
            try:
                secs = float(v) if not isinstance(v, str) else parse_duration(v)
            except ValueError:
                return default
            return secs if secs > 0 else default

        d = cls()
        return cls(num("connect_timeout", d.connect), num("first_byte_timeout", d.first_byte), num("idle_timeout", d.idle))


@dataclass(slots=True)
class Outgoing:
    """An upstream request as the proxy will send it."""

    method: str
    url: URL  # built from parsed parts (paths.build), sent as is
    headers: CIMultiDict[str]
    body: bytes
    context: object = None  # what an adapter's prepare() learned, for its response_filter() (Bedrock: the plan)


class AdapterRefusal(AigwError):
    """prepare() cannot build the upstream request (bad body, no AWS credentials): answer ``status`` in the API's format."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ResponseFilter(Protocol):
    """Rewrites an upstream response body for the client, chunk by chunk (Bedrock event stream → SSE)."""

    content_type: str  # the Content-Type the client gets
    streaming: bool  # relay as a stream (SSE) rather than one body

    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...

    def meter(self, sink: EventSink) -> bool:
        """Hand ``sink`` the events it decodes as it writes them (True), or leave the usage extractor to read
        the bytes it returns (False)."""
        ...


class Adapter:
    """One provider type's behaviour; what the type *is* (API, routes, credentials) comes from its
    :class:`~aigw_common.llm.Capabilities`."""

    def __init__(self, cap: Capabilities) -> None:
        self.cap = cap

    @property
    def api(self) -> Api:
        """The client-facing API (also the error format)."""
        return self.cap.api

    @property
    def byok_only(self) -> bool:
        return self.cap.byok_only

    @property
    def keyless(self) -> bool:
        """Credentials that are not pool keys (Bedrock signs with the AWS credentials in its settings) or none at
        all (a local vLLM or Ollama): with an empty key pool the proxy makes one attempt without a pool key."""
        return self.cap.keyless

    def response_filter(self, provider: Provider, out: Outgoing, status: int,
                        headers: Mapping[str, str]) -> ResponseFilter | None:
        """How to rewrite this response for the client; None relays it byte for byte."""
        return None

    def endpoint(self, method: str, path: str) -> Endpoint | None:
        """The bridged endpoint a client route is, from the type's record; None for any other route."""
        return self.cap.endpoints.get(path) if method == "POST" else None

    passthrough_routes: tuple[Route, ...] = ()
    # client headers forwarded upstream besides headers.COMMON (lowercase names and prefixes)
    forward_names: frozenset[str] = hdr.allowed(())
    forward_prefixes: tuple[str, ...] = ()

    @functools.cached_property
    def headers(self) -> hdr.Allowlist:
        """The request-header allowlist of this type (built once per adapter)."""
        return hdr.Allowlist(self.forward_names, self.forward_prefixes)

    def passthrough(self, method: str, path: str) -> bool:
        """Whether ``method path`` is on this type's pass-through allowlist (``path`` passed paths.refusal)."""
        segs = paths.segments(path)
        return any(r.match(method, segs) for r in self.passthrough_routes)

    def upstream_url(self, provider: Provider, path: str, query: MultiMapping[str]) -> URL:
        """The upstream URL of a client route: ``path``'s segments under the provider's base URL."""
        return paths.build(provider.base, paths.segments(path), query)

    def set_credential(self, headers: CIMultiDict[str], credential: str) -> None:
        raise NotImplementedError

    def client_credential(self, headers: CIMultiDictProxy[str]) -> tuple[str, str] | None:
        """The user's own provider credential on a BYOK request, as (header name, value)."""
        raise NotImplementedError

    def prepare(self, provider: Provider, endpoint: Endpoint | None, out: Outgoing) -> Outgoing:
        """Last-moment transform of an attempt (signing, model rewrite); identity by default."""
        return out


@dataclass(frozen=True, slots=True)
class Route:
    """One pass-through route: methods and path segments, ``{id}`` standing for one id segment
    (``[A-Za-z0-9_.:-]+``, never ``.`` or ``..``)."""

    methods: frozenset[str]
    parts: tuple[str, ...]

    def match(self, method: str, segs: list[str]) -> bool:
        if method not in self.methods or len(segs) != len(self.parts):
            return False
        for want, seg in zip(self.parts, segs, strict=True):
            if want == "{id}":
                if seg in (".", "..") or not paths.ID_SEGMENT.fullmatch(seg):
                    return False
            elif want != seg:
                return False
        return True


def routes(*spec: str) -> tuple[Route, ...]:
    """``routes("GET|DELETE /v1/responses/{id}", …)`` → the allowlist."""
    out = []
    for line in spec:
        methods, _, path = line.partition(" ")
        out.append(Route(frozenset(methods.split("|")), tuple(paths.segments(path))))
    return tuple(out)


# As OpenAI's API reference lists them (models, stored responses, conversations and their items).
OPENAI_PASSTHROUGH = routes(
    "GET /v1/models",
    "GET /v1/models/{id}",
    "GET|DELETE /v1/responses/{id}",
    "GET /v1/responses/{id}/input_items",
    "POST /v1/responses/{id}/cancel",
    "POST /v1/conversations",
    "GET|POST|DELETE /v1/conversations/{id}",
    "GET|POST /v1/conversations/{id}/items",
    "GET|DELETE /v1/conversations/{id}/items/{id}",
)
# Anthropic (and Bedrock, which maps these onto its own API).
ANTHROPIC_PASSTHROUGH = routes(
    "GET /v1/models",
    "GET /v1/models/{id}",
    "POST /v1/messages/count_tokens",
)


class OpenAIAdapter(Adapter):
    """OpenAI and OpenAI-compatible APIs: the base URL includes ``/v1``."""

    route_prefix = "/v1"  # Copilot's bridged routes have none
    forward_names = hdr.allowed({"originator", "session_id", "conversation_id"})  # Codex
    forward_prefixes: tuple[str, ...] = ("openai-", "x-stainless-")

    passthrough_routes = OPENAI_PASSTHROUGH

    def upstream_url(self, provider: Provider, path: str, query: MultiMapping[str]) -> URL:
        segs = paths.segments(path)
        if self.route_prefix and segs[:1] == [self.route_prefix[1:]]:
            segs = segs[1:]  # the base URL includes /v1
        return paths.build(provider.base, segs, query)

    def set_credential(self, headers: CIMultiDict[str], credential: str) -> None:
        headers["Authorization"] = f"Bearer {credential}"

    def client_credential(self, headers: CIMultiDictProxy[str]) -> tuple[str, str] | None:
        if a := headers.get("Authorization"):
            return ("Authorization", a)
        if k := headers.get("X-Api-Key"):
            return ("Authorization", f"Bearer {k}")
        return None


class AnthropicAdapter(Adapter):
    """Anthropic Messages: the base URL does not include ``/v1``."""

    passthrough_routes = ANTHROPIC_PASSTHROUGH
    forward_names = hdr.allowed({"x-app", "x-claude-code-session-id"})  # Claude Code
    forward_prefixes: tuple[str, ...] = ("anthropic-", "x-stainless-")

    def set_credential(self, headers: CIMultiDict[str], credential: str) -> None:
        headers.popall("Authorization", None)
        headers["X-Api-Key"] = credential

    def client_credential(self, headers: CIMultiDictProxy[str]) -> tuple[str, str] | None:
        if k := headers.get("X-Api-Key"):  # for Anthropic, X-Api-Key wins
            return ("X-Api-Key", k)
        if a := headers.get("Authorization"):
            return ("Authorization", a)
        return None


# ---------------------------------------------------------------- Copilot, Azure, Bedrock
# (OpenAI-compatible types are OpenAIAdapter: their record says whether they may go without a key.)


# Copilot's API has no /v1: models, extensions (agents) and its MCP endpoint (streamable HTTP: GET, POST, DELETE).
COPILOT_PASSTHROUGH = routes(
    "GET /models",
    "GET /models/{id}",
    "GET /agents",
    "GET|POST /agents/{id}",
    "GET|POST /agents/{id}/{id}",
    "GET|POST|DELETE /mcp",
    "GET|POST|DELETE /mcp/{id}",
    "GET /.well-known/{id}",
)


class CopilotAdapter(OpenAIAdapter):
    """GitHub Copilot: always BYOK (the user's Copilot bearer); routes have no ``/v1``.

    ``Editor-Version``, ``Copilot-Integration-Id`` and the other client headers are forwarded as sent.
    """

    route_prefix = ""
    passthrough_routes = COPILOT_PASSTHROUGH
    # what Copilot clients (VS Code, the CLI) send and Copilot's API reads
    forward_names = hdr.allowed({"openai-intent", "x-initiator", "x-interaction-id", "x-interaction-type",
                               "x-onbehalf-extension-id", "x-agent-task-id", "x-github-api-version",
                               "copilot-integration-id", "copilot-vision-request", "editor-version",
                               "editor-plugin-version", "vscode-sessionid", "vscode-machineid",
                               "x-vscode-user-agent-library-version"})
    forward_prefixes: tuple[str, ...] = ("openai-", "x-stainless-", "copilot-", "editor-", "x-github-")


def _looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2


class AzureAdapter(OpenAIAdapter):
    """Azure OpenAI: ``api-key`` header; ``api-version`` query parameter from settings ``api_version``.

    The base URL is the v1 API (``https://<resource>.openai.azure.com/openai/v1``) or one deployment
    (``…/openai/deployments/<name>``). A BYOK Entra ID token (a JWT bearer) is forwarded as
    ``Authorization``; any other user credential goes out as ``api-key``.
    """

    forward_names = OpenAIAdapter.forward_names | hdr.allowed({"x-ms-client-request-id", "x-ms-useragent"})

    def upstream_url(self, provider: Provider, path: str, query: MultiMapping[str]) -> URL:
        version = provider.settings.get("api_version")
        if isinstance(version, str) and version and "api-version" not in query:
            query = MultiDict(query)
            query["api-version"] = version
        return super().upstream_url(provider, path, query)

    def set_credential(self, headers: CIMultiDict[str], credential: str) -> None:
        headers.popall("Authorization", None)
        headers["api-key"] = credential

    def client_credential(self, headers: CIMultiDictProxy[str]) -> tuple[str, str] | None:
        if k := headers.get("api-key") or headers.get("X-Api-Key"):
            return ("api-key", k)
        if a := headers.get("Authorization"):
            token = a[7:].strip() if a[:7].lower() == "bearer " else a
            return ("Authorization", a) if _looks_like_jwt(token) else ("api-key", token)
        return None

    def prepare(self, provider: Provider, endpoint: Endpoint | None, out: Outgoing) -> Outgoing:
        # A stored user key arrives as "Authorization: Bearer <key>"; Azure wants it in api-key.
        a = out.headers.get("Authorization", "")
        if a[:7].lower() == "bearer " and "api-key" not in out.headers and not _looks_like_jwt(a[7:].strip()):
            out.headers.popall("Authorization")
            out.headers["api-key"] = a[7:].strip()
        return out


class BedrockAdapter(AnthropicAdapter):
    """Anthropic Messages on AWS Bedrock (see :mod:`aigw_gateway.bedrock`): SigV4 with the provider's AWS
    credentials (or the AWS chain); or, per pool key or BYOK credential, a Bedrock API key (bearer) or an
    access-key pair ``AKID:SECRET[:TOKEN]`` (SigV4 with it). A pool of them fails over like any other type."""

    def __init__(self, cap: Capabilities, aws_env: Mapping[str, str]) -> None:
        super().__init__(cap)
        self.aws_env = aws_env  # Settings.aws_env: the AWS credential chain's environment
        self._configs: dict[str, tuple[Mapping[str, object], str, bedrock.BedrockConfig]] = {}

    def config(self, provider: Provider) -> bedrock.BedrockConfig:
        """Built once per provider version (the credential chain keeps its file cache across requests)."""
        hit = self._configs.get(provider.id)
        if hit is not None and hit[0] is provider.settings and hit[1] == provider.base_url:
            return hit[2]
        try:
            cfg = bedrock.BedrockConfig.from_provider(provider.base_url, provider.settings, self.aws_env)
        except bedrock.BedrockConfigError as e:
            raise AdapterRefusal(502, f"provider {provider.name!r} is misconfigured: {e}") from None
        self._configs[provider.id] = (provider.settings, provider.base_url, cfg)
        return cfg

    def prepare(self, provider: Provider, endpoint: Endpoint | None, out: Outgoing) -> Outgoing:
        h = out.headers
        betas = h.getall("anthropic-beta", [])
        bearer = h.get("X-Api-Key")
        if bearer is None and (a := h.get("Authorization", ""))[:7].lower() == "bearer ":
            bearer = a[7:].strip()
        cfg = self.config(provider)
        if bearer is not None and (pair := bedrock.key_pair(bearer)) is not None:
            cfg, bearer = bedrock.with_credentials(cfg, pair), None  # an access-key pair: SigV4 with it
        try:
            req = bedrock.plan(cfg, out.method, _path_of(out.url, provider.base), out.body,
                               betas, bearer=bearer)
        except ValueError as e:
            raise AdapterRefusal(400, f"invalid request body: {e}") from None
        except sigv4.CredentialsError as e:
            raise AdapterRefusal(502, f"provider {provider.name!r}: {e}") from None
        if req is None:
            raise AdapterRefusal(404, f"{out.method} {_path_of(out.url, provider.base)} has no Bedrock equivalent")
        for name in ("Authorization", "X-Api-Key", "Host", "Content-Type", "Accept", "anthropic-version",
                     "anthropic-beta"):
            h.popall(name, None)
        h.update(req.headers)
        return Outgoing(req.method, req.url, h, req.body, req)

    def response_filter(self, provider: Provider, out: Outgoing, status: int,
                        headers: Mapping[str, str]) -> ResponseFilter | None:
        req = out.context
        if not isinstance(req, bedrock.BedrockRequest):
            return None
        return bedrock.response_filter(req.kind, req.stream, status, headers)


def _path_of(url: URL, base: URL) -> str:
    """The client route of a URL built by upstream_url (the base URL's path taken off)."""
    prefix = base.path.rstrip("/")
    return url.path[len(prefix):] if url.path.startswith(prefix + "/") else url.path


_BY_WIRE: Mapping[Wire, type[Adapter]] = MappingProxyType({
    Wire.OPENAI: OpenAIAdapter, Wire.ANTHROPIC: AnthropicAdapter, Wire.AZURE: AzureAdapter,
    Wire.COPILOT: CopilotAdapter,
})


class Adapters:
    """One adapter per provider type (``aigw_common.llm.CAPABILITIES``), configured from Settings at startup
    and held by the app: no adapter state is process-wide."""

    def __init__(self, aws_env: Mapping[str, str] | None = None) -> None:
        by_type: dict[str, Adapter] = {}
        for t, cap in CAPABILITIES.items():
            by_type[t] = (BedrockAdapter(cap, aws_env or {}) if cap.wire is Wire.BEDROCK
                          else _BY_WIRE[cap.wire](cap))
        self._by_type: Mapping[str, Adapter] = MappingProxyType(by_type)

    @classmethod
    def from_settings(cls, settings: Settings) -> Adapters:
        return cls(settings.aws_env)

    def get(self, provider_type: str) -> Adapter | None:
        return self._by_type.get(provider_type)

    def items(self) -> ItemsView[str, Adapter]:
        return self._by_type.items()


def guess_api(path: str) -> Api:
    """For errors before a provider is known (unknown provider, bad token)."""
    return "anthropic" if "/messages" in path else "openai"
