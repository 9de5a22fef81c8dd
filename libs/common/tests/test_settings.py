import base64

import pytest

from aigw_common.errors import ConfigError
from aigw_common.settings import Settings

KEY = base64.b64encode(b"k" * 32).decode()


def test_defaults():
    s = Settings.from_env({})
    assert s.nats_urls == ("nats://127.0.0.1:4222",)
    assert s.addrs["gateway"].port == 8080 and s.addrs["chatd"].port == 8084
    assert s.max_body_bytes == 32 * 1024 * 1024
    assert s.retention_seconds == 60 * 86400
    assert s.breaker.failure_threshold == 5 and s.breaker.timeout == 30
    assert s.allow_byok is True
    assert s.providers == ()


def test_unknown_aigw_variable_is_named():
    with pytest.raises(ConfigError, match="AIGW_GATWAY_ADDR"):
        Settings.from_env({"AIGW_GATWAY_ADDR": "0.0.0.0:1"})


def test_non_aigw_variables_ignored():
    Settings.from_env({"PATH": "/bin", "OTEL_SERVICE_NAME": "x"})


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("AIGW_MAX_BODY_BYTES", "lots"),
        ("AIGW_ALLOW_BYOK", "maybe"),
        ("AIGW_GATEWAY_ADDR", "nohost"),
        ("AIGW_GATEWAY_ADDR", "0.0.0.0:99999"),
        ("AIGW_RETENTION", "forever"),
        ("AIGW_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0"),
        ("AIGW_ENCRYPTION_KEYS", "bm90IDMyIGJ5dGVz"),
        ("AIGW_DATABASE_URL", "mysql://x"),
        ("AIGW_LOG_FORMAT", "xml"),
    ],
)
def test_bad_values_name_the_variable(var, value):
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: value})


def test_values_parsed():
    s = Settings.from_env(
        {
            "AIGW_GATEWAY_ADDR": "0.0.0.0:9000",
            "AIGW_MAX_BODY_BYTES": "1MiB",
            "AIGW_RETENTION": "7d",
            "AIGW_CIRCUIT_BREAKER_TIMEOUT": "2s",
            "AIGW_ENCRYPTION_KEYS": f"{KEY},{base64.b64encode(b'o' * 32).decode()}",
            "AIGW_NATS_URL": "nats://a:4222,nats://b:4222",
        }
    )
    assert str(s.addrs["gateway"]) == "0.0.0.0:9000"
    assert s.max_body_bytes == 1024 * 1024
    assert s.retention_seconds == 7 * 86400
    assert s.breaker.timeout == 2
    assert s.encryption_keys == (b"k" * 32, b"o" * 32)
    assert s.nats_urls == ("nats://a:4222", "nats://b:4222")


def test_legacy_and_indexed_providers():
    s = Settings.from_env(
        {
            "AIGW_OPENAI_KEY": "sk-a,sk-b",
            "AIGW_ANTHROPIC_KEY": "sk-ant-x",
            "AIGW_ANTHROPIC_BASE_URL": "http://127.0.0.1:9999/",
            "AIGW_PROVIDER_0_TYPE": "openai-compat",
            "AIGW_PROVIDER_0_NAME": "vllm",
            "AIGW_PROVIDER_0_BASE_URL": "http://vllm:8000/v1",
            "AIGW_PROVIDER_0_KEYS": "k1,k2",
            "AIGW_PROVIDER_1_TYPE": "bedrock",
            "AIGW_PROVIDER_1_NAME": "claude-aws",
            "AIGW_PROVIDER_1_REGION": "us-east-1",
            "AIGW_PROVIDER_1_MODEL": "anthropic.claude",
        }
    )
    by = {p.name: p for p in s.providers}
    assert by["openai"].keys == ("sk-a", "sk-b")
    assert by["openai"].base_url == "https://api.openai.com/v1"
    assert by["anthropic"].base_url == "http://127.0.0.1:9999"
    assert by["vllm"].keys == ("k1", "k2") and by["vllm"].type == "openai-compat"
    assert by["claude-aws"].base_url == "https://bedrock-runtime.us-east-1.amazonaws.com"
    assert by["claude-aws"].settings["model"] == "anthropic.claude"
    assert "sk-a" not in repr(s) and "sk-a" not in repr(by["openai"])


def test_indexed_name_colliding_with_legacy_fails():
    with pytest.raises(ConfigError, match="openai"):
        Settings.from_env({"AIGW_OPENAI_KEY": "x", "AIGW_PROVIDER_0_TYPE": "openai", "AIGW_PROVIDER_0_NAME": "openai"})


def test_unknown_provider_field_fails():
    with pytest.raises(ConfigError, match="AIGW_PROVIDER_0_BASEURL"):
        Settings.from_env({"AIGW_PROVIDER_0_TYPE": "openai", "AIGW_PROVIDER_0_BASEURL": "x"})


def test_bad_provider_name():
    with pytest.raises(ConfigError, match="AIGW_PROVIDER_0_NAME"):
        Settings.from_env({"AIGW_PROVIDER_0_TYPE": "openai", "AIGW_PROVIDER_0_NAME": "Bad_Name"})
    with pytest.raises(ConfigError, match="reserved"):
        Settings.from_env({"AIGW_PROVIDER_0_TYPE": "openai", "AIGW_PROVIDER_0_NAME": "metrics"})
