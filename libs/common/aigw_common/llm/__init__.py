"""What aigw knows about LLM provider APIs: provider types and their capabilities (``providers``),
upstream error bodies (``error_body``) and rate-limit headers (``ratelimit``). Nothing here does I/O."""

from . import error_body
from .error_body import MAX_ERROR_BODY, ProviderError
from .providers import (
    ANTHROPIC_BASE_URL,
    ANTHROPIC_VERSION,
    CAPABILITIES,
    OPENAI_BASE_URL,
    PROVIDER_TYPES,
    Api,
    Auth,
    Capabilities,
    Endpoint,
    ProviderType,
    Wire,
    bedrock_runtime_url,
    capabilities,
    provider_type,
)

__all__ = [
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_VERSION",
    "CAPABILITIES",
    "MAX_ERROR_BODY",
    "OPENAI_BASE_URL",
    "PROVIDER_TYPES",
    "Api",
    "Auth",
    "Capabilities",
    "Endpoint",
    "ProviderError",
    "ProviderType",
    "Wire",
    "bedrock_runtime_url",
    "capabilities",
    "error_body",
    "provider_type",
]
