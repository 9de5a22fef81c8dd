"""The one list of provider types and their records (aigw_common.llm.providers)."""

from __future__ import annotations

import pytest

from aigw_common.llm import (
    CAPABILITIES,
    PROVIDER_TYPES,
    ProviderType,
    Wire,
    capabilities,
    provider_type,
)


def test_every_type_has_exactly_one_record() -> None:
    assert set(CAPABILITIES) == set(ProviderType)
    assert PROVIDER_TYPES == tuple(t.value for t in ProviderType)
    for t, cap in CAPABILITIES.items():
        assert cap.type is t


@pytest.mark.parametrize("ptype", list(ProviderType))
def test_every_type_serves_its_apis_chat_route(ptype: ProviderType) -> None:
    cap = CAPABILITIES[ptype]
    assert cap.endpoints, "a type with no bridged route could never be metered"
    want = "messages" if cap.api == "anthropic" else "chat_completions"
    assert cap.endpoints[cap.chat_path] == want


@pytest.mark.parametrize(("ptype", "path"), [
    ("openai", "/v1/chat/completions"), ("azure", "/v1/chat/completions"), ("openrouter", "/v1/chat/completions"),
    ("openai-compat", "/v1/chat/completions"), ("copilot", "/chat/completions"), ("anthropic", "/v1/messages"),
    ("bedrock", "/v1/messages"),
])
def test_chat_paths(ptype: str, path: str) -> None:
    cap = capabilities(ptype)
    assert cap is not None and cap.chat_path == path


def test_aliases_are_not_types() -> None:
    # OpenAI-compatible products are one type with their base URL, never a name each
    for name in ("vllm", "ollama", "together", "groq", "deepseek", "mistral", "OpenAI", " openai", ""):
        assert provider_type(name) is None and capabilities(name) is None
    compat = {t for t, c in CAPABILITIES.items() if c.openai_compatible}
    assert compat == {ProviderType.OPENAI_COMPAT, ProviderType.OPENROUTER}
    assert all(CAPABILITIES[t].wire is Wire.OPENAI for t in compat)


def test_only_what_needs_no_pool_key_is_keyless() -> None:
    assert {t for t, c in CAPABILITIES.items() if c.keyless} == {ProviderType.BEDROCK, ProviderType.OPENAI_COMPAT}
    assert {t for t, c in CAPABILITIES.items() if c.byok_only} == {ProviderType.COPILOT}


def test_model_list_routes() -> None:
    assert {t: c.models_path for t, c in CAPABILITIES.items() if c.models_path != "/v1/models"} == {
        ProviderType.COPILOT: "/models"}


def test_type_settings() -> None:
    by_type = {t: {f.name: (f.required, f.secret) for f in c.settings} for t, c in CAPABILITIES.items() if c.settings}
    assert set(by_type) == {ProviderType.BEDROCK, ProviderType.AZURE}
    assert by_type[ProviderType.BEDROCK]["region"] == (True, False)
    assert {n for n, (_, secret) in by_type[ProviderType.BEDROCK].items() if secret} == {
        "access_key", "access_key_secret", "session_token"}
    assert by_type[ProviderType.AZURE] == {"api_version": (False, False)}
