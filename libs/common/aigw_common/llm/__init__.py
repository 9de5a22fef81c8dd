"""What aigw knows about LLM provider APIs: provider types and their capabilities (``providers``),
upstream error bodies (``error_body``), rate-limit headers (``ratelimit``) and Bedrock's endpoints and
credential forms (``bedrock``). Nothing here does I/O."""

from . import bedrock, error_body
from .bedrock import runtime_url as bedrock_runtime_url
from .error_body import MAX_ERROR_BODY, ProviderError
from .providers import (
    ANTHROPIC_BASE_URL,
    ANTHROPIC_VERSION,
    CAPABILITIES,
    COMMON_SETTINGS,
    OPENAI_BASE_URL,
    PROVIDER_TYPES,
    Api,
    Auth,
    Capabilities,
    Endpoint,
    ProviderType,
    SettingField,
    Wire,
    capabilities,
    provider_type,
)

__all__ = [
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_VERSION",
    "CAPABILITIES",
    "COMMON_SETTINGS",
    "MAX_ERROR_BODY",
    "OPENAI_BASE_URL",
    "PROVIDER_TYPES",
    "Api",
    "Auth",
    "Capabilities",
    "Endpoint",
    "ProviderError",
    "ProviderType",
    "SettingField",
    "Wire",
    "bedrock",
    "bedrock_runtime_url",
    "capabilities",
    "error_body",
    "provider_type",
]
