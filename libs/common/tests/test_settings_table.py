"""The one table of variables (settings.VARS) is the whole configuration: Settings, the unknown-variable check,
the secret matrix and docs/configuration.md all come from it."""

from __future__ import annotations

import dataclasses

import pytest

from aigw_common.configdoc import default_cell
from aigw_common.errors import ConfigError
from aigw_common.settings import SECRET_HOLDERS, SEEDS, SERVICES, VARS, Settings, unknown_variables


def _example(name: str) -> str:
    return name.replace("<N>", "0")


def test_every_settings_field_is_declared_in_the_table_and_nothing_else() -> None:
    declared = {v.field.partition(".")[0] for v in VARS}
    fields = {f.name for f in dataclasses.fields(Settings)}
    # skipped_providers is filled with providers, from the same seed variables
    assert fields == declared | {"skipped_providers"}
    assert len({v.name for v in VARS}) == len(VARS), "a variable is declared twice"
    assert all(v.group for v in VARS) and all(v.doc for v in VARS)


def test_every_variable_is_read_by_someone_and_confined_ones_by_services() -> None:
    for v in VARS:
        assert v.readers, v.name
        if v.confined:
            assert v.readers <= set(SERVICES), v.name


@pytest.mark.parametrize("v", [v for v in VARS if v.field != SEEDS and v.default is not None and not v.secret],
                         ids=lambda v: v.name)
def test_a_default_as_documented_parses_back_to_itself(v) -> None:  # type: ignore[no-untyped-def]
    shown = v.kind.show(v.default)
    if shown:
        assert v.kind.parse(v.name, shown) == v.default
        assert f"`{shown}`" in default_cell(v)


def test_secrets_have_no_value_to_show() -> None:
    for v in VARS:
        if v.secret:
            assert not v.default, v.name
            assert default_cell(v) == (v.default_doc or "unset"), v.name


def test_no_secret_value_reaches_the_repr() -> None:
    import base64

    key = base64.b64encode(b"s" * 32).decode()
    env = {"AIGW_DATABASE_URL": "postgresql://u:dbpass-9f3@h/db", "AIGW_ENCRYPTION_KEYS": key,
           "AIGW_BUS_SEALING_KEYS": key, "AIGW_BOOTSTRAP_TOKEN": "boot-secret-0123456789",
           "AIGW_ADMIN_TOKEN": "admin-secret-77", "AIGW_CHATD_SERVICE_TOKEN": "svc-secret-55",
           "AIGW_OPENAI_KEY": "sk-openai-secret", "AIGW_NATS_URL": "nats://gw:natspass-31@n:4222",
           "AWS_SECRET_ACCESS_KEY": "aws-secret-66"}
    text = repr(Settings.from_env(env))
    for value in ("dbpass-9f3", key, "boot-secret", "admin-secret", "svc-secret", "sk-openai", "natspass",
                  "aws-secret"):
        assert value not in text, value


def test_the_secret_matrix_of_docs_security_md() -> None:
    assert SECRET_HOLDERS == {
        "AIGW_BOOTSTRAP_TOKEN": {"registry"},
        "AIGW_PROVIDER_*": {"registry"},
        "AIGW_ENCRYPTION_KEYS": {"registry", "chatd"},
        "AIGW_BUS_SEALING_KEYS": {"registry", "gateway", "keypool", "chatd"},
        "AIGW_DATABASE_URL": {"registry", "budget", "chatd"},
    }


def test_unknown_variable_check_knows_exactly_the_table() -> None:
    known = {_example(v.name): "x" for v in VARS}
    assert unknown_variables(known) == []
    env = {"AIGW_GATWAY_ADDR": "0.0.0.0:1", "AIGW_PROVIDER_3_BASEURL": "x", "AIGW_PROVIDER_X_TYPE": "openai",
           "AIGW_OPENAI_KEYS": "x", "PATH": "/bin", "OTEL_SERVICE_NAME": "x", "AWS_REGION": "us-east-1"}
    assert sorted(unknown_variables(env)) == ["AIGW_GATWAY_ADDR", "AIGW_OPENAI_KEYS", "AIGW_PROVIDER_3_BASEURL",
                                              "AIGW_PROVIDER_X_TYPE"]


@pytest.mark.parametrize(("var", "message"), [
    ("AIGW_GATWAY_ADDR",
     "unknown configuration variable AIGW_GATWAY_ADDR (check the spelling; see docs/configuration.md)"),
    ("AIGW_ALLOW_LINK_LOCAL_BASE_URLS",
     "AIGW_ALLOW_LINK_LOCAL_BASE_URLS was replaced by AIGW_ALLOW_PRIVATE_UPSTREAMS (true, false, or a list such as "
     "link-local,private; see docs/configuration.md)"),
])
def test_an_unknown_variable_stops_startup_with_its_name(var: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        Settings.from_env({var: "x", "AIGW_LOG_LEVEL": "info"})
    assert str(e.value) == message

