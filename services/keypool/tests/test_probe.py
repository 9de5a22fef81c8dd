"""Which call re-checks a key, per provider type (API family and auth style from aigw_common.llm)."""

from __future__ import annotations

import pytest

from aigw_common.llm import PROVIDER_TYPES
from aigw_keypool.probe import probe_request


@pytest.mark.parametrize(("ptype", "base", "settings", "secret", "want"), [
    ("openai", "https://api.openai.com/v1/", {}, "k", ("https://api.openai.com/v1/models", {"Authorization": "Bearer k"})),
    ("openai-compat", "http://vllm:8000/v1", {}, "k", ("http://vllm:8000/v1/models", {"Authorization": "Bearer k"})),
    ("openrouter", "https://openrouter.ai/api/v1", {}, "k",
     ("https://openrouter.ai/api/v1/models", {"Authorization": "Bearer k"})),
    ("copilot", "https://api.githubcopilot.com", {}, "k",
     ("https://api.githubcopilot.com/models", {"Authorization": "Bearer k"})),
    ("azure", "https://r.openai.azure.com/openai/v1", {"api_version": "2025-01-01"}, "k",
     ("https://r.openai.azure.com/openai/v1/models?api-version=2025-01-01", {"api-key": "k"})),
    ("anthropic", "https://api.anthropic.com", {}, "k",
     ("https://api.anthropic.com/v1/models", {"X-Api-Key": "k", "anthropic-version": "2023-06-01"})),
    ("bedrock", "https://bedrock-runtime.us-east-1.amazonaws.com", {}, "ABSK-bedrock-api-key",
     ("https://bedrock.us-east-1.amazonaws.com/foundation-models?byProvider=Anthropic",
      {"Authorization": "Bearer ABSK-bedrock-api-key"})),
    ("bedrock", "https://bedrock-runtime.us-east-1.amazonaws.com", {}, "AKIAAAAAAAAAAAAAAAAA:secret", None),
    ("vllm", "http://vllm:8000/v1", {}, "k", None),  # not a provider type
])
def test_probe_request(ptype: str, base: str, settings: dict[str, str], secret: str,
                       want: tuple[str, dict[str, str]] | None) -> None:
    assert probe_request(ptype, base, settings, secret) == want


def test_every_type_has_an_answer() -> None:
    for t in PROVIDER_TYPES:
        assert probe_request(t, "https://x.example/v1", {}, "k") is not None
