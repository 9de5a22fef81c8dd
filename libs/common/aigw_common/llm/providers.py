"""Provider types and what each one is: the one list every service derives from.

The registry accepts exactly these types (API, OpenAPI enum, env seeding), the
gateway builds one adapter per type from its record, chatd picks the API it
speaks and keypool the re-check call from it. A type that is not here does not
exist anywhere. OpenAI-compatible products (vLLM, Ollama, Together, Groq,
DeepSeek, Mistral, …) are one type, ``openai-compat``, with their base URL:
they differ in nothing else the gateway knows, so a name per product would be
a name without behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Literal


class ProviderType(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    BEDROCK = "bedrock"
    COPILOT = "copilot"
    OPENAI_COMPAT = "openai-compat"
    AZURE = "azure"
    OPENROUTER = "openrouter"


class Wire(StrEnum):
    """The API family the gateway speaks to the upstream."""

    OPENAI = "openai"  # OpenAI's REST API at the provider's base URL (which includes /v1)
    ANTHROPIC = "anthropic"  # Anthropic Messages (base URL without /v1)
    BEDROCK = "bedrock"  # AWS Bedrock runtime (Anthropic Messages mapped onto InvokeModel)
    AZURE = "azure"  # Azure OpenAI (OpenAI's API with api-key and api-version)
    COPILOT = "copilot"  # GitHub Copilot (OpenAI-like, no /v1)


class Auth(StrEnum):
    """How a credential is presented upstream."""

    BEARER = "bearer"  # Authorization: Bearer <key>
    X_API_KEY = "x-api-key"  # X-Api-Key: <key> (Anthropic)
    API_KEY = "api-key"  # api-key: <key> (Azure; an Entra ID JWT stays a bearer)
    SIGV4 = "sigv4"  # AWS SigV4 (settings, the AWS chain or an AKID:SECRET key), or a Bedrock API key as bearer


# The client-facing API of a type: its routes' bodies and the format of the errors the gateway answers.
Api = Literal["openai", "anthropic"]
# What a bridged (metered) route is.
Endpoint = Literal["chat_completions", "responses", "messages"]

_OPENAI_PATHS: Mapping[str, Endpoint] = MappingProxyType(
    {"/v1/chat/completions": "chat_completions", "/v1/responses": "responses"})
_COPILOT_PATHS: Mapping[str, Endpoint] = MappingProxyType(
    {"/chat/completions": "chat_completions", "/responses": "responses"})
_MESSAGES_PATHS: Mapping[str, Endpoint] = MappingProxyType({"/v1/messages": "messages"})


@dataclass(frozen=True, slots=True)
class SettingField:
    """One provider setting a type takes besides the common ones (timeouts, forward_headers)."""

    name: str
    required: bool = False
    secret: bool = False  # sealed at rest, masked when read back, write-only in the console
    kind: Literal["text", "duration", "header_names"] = "text"  # how the registry checks the value


# Settings every type takes besides its own: upstream timeouts (durations) and the extra client headers
# forwarded to the provider ("X-Foo, X-Bar"). None of them is secret.
COMMON_SETTINGS = (
    SettingField("connect_timeout", kind="duration"),
    SettingField("first_byte_timeout", kind="duration"),
    SettingField("idle_timeout", kind="duration"),
    SettingField("forward_headers", kind="header_names"),
)

_BEDROCK_SETTINGS = (
    SettingField("region", required=True),
    SettingField("access_key", secret=True),
    SettingField("access_key_secret", secret=True),
    SettingField("session_token", secret=True),
    SettingField("model"),
    SettingField("small_fast_model"),
    SettingField("thinking_mode"),
)
_AZURE_SETTINGS = (SettingField("api_version"),)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one provider type is, as every service needs to know it."""

    type: ProviderType
    wire: Wire
    api: Api
    auth: Auth
    # the gateway's bridged routes of this type (POST, path under /{name}) and what each one is
    endpoints: Mapping[str, Endpoint]
    default_base_url: str | None = None  # None: the provider's base URL is required (Bedrock: from its region,
    #                                      llm.bedrock.runtime_url)
    openai_compatible: bool = False  # another product's OpenAI-compatible API at its own base URL
    # may be called with no pool key: Bedrock signs with its AWS credentials, a local server needs none
    keyless: bool = False
    byok_only: bool = False  # only ever the user's own credential (Copilot)
    models_path: str = "/v1/models"  # the gateway's model-list pass-through route of this type
    settings: tuple[SettingField, ...] = ()  # the type's own provider settings (registry validation, console)

    @property
    def secret_settings(self) -> frozenset[str]:
        """The settings declared secret: sealed at rest, masked when read back or dumped."""
        return frozenset(f.name for f in self.settings if f.secret)

    @property
    def public_settings(self) -> frozenset[str]:
        """The settings that may be shown: declared and not secret (its own and the common ones). Anything
        else a provider's settings hold is treated as a secret wherever it could be shown."""
        return frozenset(f.name for f in (*self.settings, *COMMON_SETTINGS) if not f.secret)

    def path_of(self, endpoint: Endpoint) -> str | None:
        """The gateway route (under ``/{name}``) of an endpoint, if this type serves it."""
        return next((p for p, e in self.endpoints.items() if e == endpoint), None)

    @property
    def chat_path(self) -> str:
        """The route of a plain chat turn: Messages for the Anthropic API, chat completions otherwise."""
        path = self.path_of("messages" if self.api == "anthropic" else "chat_completions")
        assert path is not None  # every type serves its API's chat route (checked by the tests)
        return path


ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version header aigw's own calls send (chatd turns, keypool probes)
OPENAI_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_BASE_URL = "https://api.anthropic.com"


CAPABILITIES: Mapping[ProviderType, Capabilities] = MappingProxyType({c.type: c for c in (
    Capabilities(ProviderType.OPENAI, Wire.OPENAI, "openai", Auth.BEARER, _OPENAI_PATHS,
                 default_base_url=OPENAI_BASE_URL),
    Capabilities(ProviderType.ANTHROPIC, Wire.ANTHROPIC, "anthropic", Auth.X_API_KEY, _MESSAGES_PATHS,
                 default_base_url=ANTHROPIC_BASE_URL),
    Capabilities(ProviderType.BEDROCK, Wire.BEDROCK, "anthropic", Auth.SIGV4, _MESSAGES_PATHS, keyless=True,
                 settings=_BEDROCK_SETTINGS),
    Capabilities(ProviderType.COPILOT, Wire.COPILOT, "openai", Auth.BEARER, _COPILOT_PATHS, byok_only=True,
                 models_path="/models"),  # Copilot's API has no /v1
    Capabilities(ProviderType.OPENAI_COMPAT, Wire.OPENAI, "openai", Auth.BEARER, _OPENAI_PATHS,
                 openai_compatible=True, keyless=True),
    Capabilities(ProviderType.AZURE, Wire.AZURE, "openai", Auth.API_KEY, _OPENAI_PATHS, settings=_AZURE_SETTINGS),
    Capabilities(ProviderType.OPENROUTER, Wire.OPENAI, "openai", Auth.BEARER, _OPENAI_PATHS,
                 openai_compatible=True),
)})

# The type names, in a stable order (messages, the OpenAPI enum).
PROVIDER_TYPES: tuple[str, ...] = tuple(t.value for t in ProviderType)


def provider_type(raw: str) -> ProviderType | None:
    """The type named ``raw`` (exact, lowercase), or None when there is no such type."""
    try:
        return ProviderType(raw)
    except ValueError:
        return None


def capabilities(ptype: str) -> Capabilities | None:
    """The record of a type name; None for a name that is not a provider type."""
    t = provider_type(ptype)
    return None if t is None else CAPABILITIES[t]
