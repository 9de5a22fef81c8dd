"""Each service holds only its own secrets: the matrix in settings, applied to Settings and to a launcher's env."""

from __future__ import annotations

from aigw_common.crypto import generate_key
from aigw_common.settings import SECRET_HOLDERS, SERVICES, Settings, env_for_service

AT_REST, BUS = generate_key(), generate_key()
ENV = {
    "AIGW_DATABASE_URL": "postgresql://u:p@db/aigw",
    "AIGW_ENCRYPTION_KEYS": AT_REST,
    "AIGW_BUS_SEALING_KEYS": BUS,
    "AIGW_BOOTSTRAP_TOKEN": "aigw_bootstrap-token-0123456789",
    "AIGW_OPENAI_KEY": "sk-seed-0001",
    "AIGW_PROVIDER_0_TYPE": "anthropic",
    "AIGW_PROVIDER_0_KEY": "sk-ant-seed-0002",
    "AIGW_LOG_FORMAT": "text",
}


def test_each_service_keeps_only_what_it_holds() -> None:
    s = Settings.from_env(ENV)
    gw = s.for_service("gateway")
    assert gw.bus_sealing_keys and not gw.encryption_keys and gw.database_url is None
    assert gw.bootstrap_token is None and gw.providers == ()
    assert gw.require_bus_keys() == s.bus_sealing_keys
    reg = s.for_service("registry")
    assert reg.encryption_keys and reg.bus_sealing_keys and reg.bootstrap_token and len(reg.providers) == 2
    bud = s.for_service("budget")
    assert bud.database_url and not bud.encryption_keys and not bud.bus_sealing_keys and bud.bootstrap_token is None
    chat = s.for_service("chatd")
    assert chat.encryption_keys and chat.bus_sealing_keys and chat.bootstrap_token is None and chat.providers == ()
    con = s.for_service("console")
    assert not (con.encryption_keys or con.bus_sealing_keys or con.database_url or con.bootstrap_token)
    assert s.foreign_secrets("registry") == []
    assert set(s.foreign_secrets("gateway")) == {"AIGW_BOOTSTRAP_TOKEN", "AIGW_PROVIDER_*", "AIGW_DATABASE_URL",
                                                 "AIGW_ENCRYPTION_KEYS"}
    assert "AIGW_BUS_SEALING_KEYS" in s.foreign_secrets("budget")


def test_launcher_env_per_service() -> None:
    for svc in SERVICES:
        env = env_for_service(svc, ENV)
        assert env["AIGW_LOG_FORMAT"] == "text"
        for var, group in (("AIGW_BOOTSTRAP_TOKEN", "AIGW_BOOTSTRAP_TOKEN"), ("AIGW_OPENAI_KEY", "AIGW_PROVIDER_*"),
                           ("AIGW_PROVIDER_0_KEY", "AIGW_PROVIDER_*"), ("AIGW_DATABASE_URL", "AIGW_DATABASE_URL"),
                           ("AIGW_ENCRYPTION_KEYS", "AIGW_ENCRYPTION_KEYS"),
                           ("AIGW_BUS_SEALING_KEYS", "AIGW_BUS_SEALING_KEYS")):
            assert (var in env) == (svc in SECRET_HOLDERS[group]), (svc, var)
        Settings.from_env(env).for_service(svc)  # what it got still parses
    assert "AIGW_BOOTSTRAP_TOKEN" not in env_for_service("gateway", ENV)
    assert env_for_service("registry", ENV)["AIGW_BOOTSTRAP_TOKEN"] == ENV["AIGW_BOOTSTRAP_TOKEN"]


def test_legacy_single_key_install_still_works() -> None:
    """Without AIGW_BUS_SEALING_KEYS the bus key derives from AIGW_ENCRYPTION_KEYS, as before the split."""
    env = {k: v for k, v in ENV.items() if k != "AIGW_BUS_SEALING_KEYS"}
    s = Settings.from_env(env)
    gw = s.for_service("gateway")
    assert gw.require_bus_keys() == s.encryption_keys
    assert "AIGW_ENCRYPTION_KEYS" in env_for_service("gateway", env)
    assert "AIGW_ENCRYPTION_KEYS" not in env_for_service("budget", env)
    assert s.for_service("registry").bus_keys() == s.encryption_keys
    # the gap-free split (docs/security.md): openers list the new bus key and the old master second
    from aigw_common.crypto import PURPOSE_BUS, Sealer

    sealed_old_way = Sealer.from_keys(s.bus_keys(), PURPOSE_BUS).seal("sk-pool-key")
    split = Settings.from_env({**env, "AIGW_BUS_SEALING_KEYS": f"{BUS},{AT_REST}"}).for_service("gateway")
    assert Sealer.from_keys(split.require_bus_keys(), PURPOSE_BUS).open(sealed_old_way) == "sk-pool-key"


def test_aigw_dev_hands_each_child_only_its_slice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from aigw_common.dev import DevStack

    chatd_key = generate_key()
    stack = DevStack(tmp_path, dict(ENV), chatd_keys=chatd_key)
    gw = stack.child_env("gateway")
    assert gw["AIGW_BUS_SEALING_KEYS"] == BUS
    for var in ("AIGW_ENCRYPTION_KEYS", "AIGW_BOOTSTRAP_TOKEN", "AIGW_DATABASE_URL", "AIGW_OPENAI_KEY",
                "AIGW_PROVIDER_0_KEY"):
        assert var not in gw, var
    reg = stack.child_env("registry")
    assert reg["AIGW_ENCRYPTION_KEYS"] == AT_REST and reg["AIGW_BOOTSTRAP_TOKEN"] == ENV["AIGW_BOOTSTRAP_TOKEN"]
    chat = stack.child_env("chatd")
    assert chat["AIGW_ENCRYPTION_KEYS"] == chatd_key != AT_REST  # chatd's own at-rest key
    assert "AIGW_BOOTSTRAP_TOKEN" not in chat
    bud = stack.child_env("budget")
    assert "AIGW_BUS_SEALING_KEYS" not in bud and "AIGW_ENCRYPTION_KEYS" not in bud and bud["AIGW_DATABASE_URL"]
    assert not any(k in stack.child_env("console") for k in ENV if k != "AIGW_LOG_FORMAT")
