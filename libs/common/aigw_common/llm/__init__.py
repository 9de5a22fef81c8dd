"""What aigw knows about LLM provider APIs: provider types and their capabilities (``providers``)
and upstream error bodies (``error_body``). Nothing here does I/O."""

from .providers import (
    ANTHROPIC_BASE_URL,
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
    "ANTHROPIC_BASE_URL", "CAPABILITIES", "OPENAI_BASE_URL", "PROVIDER_TYPES", "Api", "Auth", "Capabilities",
    "Endpoint", "ProviderType", "Wire", "bedrock_runtime_url", "capabilities", "provider_type",
]
