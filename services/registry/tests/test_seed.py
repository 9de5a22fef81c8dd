"""Seeding providers and the owner from the environment at boot."""

from __future__ import annotations

import asyncio
import logging

import pytest

from aigw_common.errors import ConfigError
from aigw_common.settings import Settings
from aigw_registry.seed import SeedConflict, canonical_hash

P = "/api/v2/ai/providers"

ENV = {
    "AIGW_OPENAI_KEY": "sk-envkey-aaaa1111, sk-envkey-bbbb2222",
    "AIGW_ANTHROPIC_BASE_URL": "http://127.0.0.1:7001/",
    "AIGW_ANTHROPIC_KEY": "sk-ant-envkey-cccc3333",
    "AIGW_BEDROCK_REGION": "us-west-2",
    "AIGW_BEDROCK_ACCESS_KEY": "AKIAENVKEY000001",
    "AIGW_BEDROCK_ACCESS_KEY_SECRET": "envsecret/0000000001",
    "AIGW_BEDROCK_MODEL": "anthropic.claude-sonnet",
    "AIGW_PROVIDER_0_TYPE": "openai-compat",
    "AIGW_PROVIDER_0_NAME": "local",
    "AIGW_PROVIDER_0_DISPLAY_NAME": "Local LLM",
    "AIGW_PROVIDER_0_BASE_URL": "http://127.0.0.1:7002/v1",
    "AIGW_PROVIDER_0_KEYS": "sk-local-dddd4444",
}


async def _audit_count(reg) -> int:  # type: ignore[no-untyped-def]
    return int(await reg.reg.pool.fetchval("SELECT count(*) FROM registry.audit_logs"))


async def test_fresh_then_noop_restart(start_registry, apps) -> None:  # type: ignore[no-untyped-def]
    r1 = await start_registry(**ENV)
    ps = {p["name"]: p for p in (await r1.client.ok("GET", P))["providers"]}
    assert set(ps) == {"openai", "anthropic", "bedrock", "local"}
    assert [k["hint"] for k in ps["openai"]["keys"]] == ["sk-…1111", "sk-…2222"]
    assert ps["openai"]["base_url"] == "https://api.openai.com/v1"
    assert ps["anthropic"]["base_url"] == "http://127.0.0.1:7001"
    assert ps["local"]["display_name"] == "Local LLM" and ps["local"]["type"] == "openai-compat"
    assert ps["bedrock"]["keys"] == [] and ps["bedrock"]["settings"]["region"] == "us-west-2"
    assert "envsecret" not in str(ps["bedrock"])
    audit = (await r1.client.ok("GET", "/api/v2/audit-logs", params={"action": "provider.seed"}))["audit_logs"]
    assert len(audit) == 4 and {a["actor_name"] for a in audit} == {"system"} and {a["actor_id"] for a in audit} == {None}
    n_audit, rev = await _audit_count(r1), await r1.reg.pool.fetchval("SELECT revision FROM registry.state")
    assert rev == 4
    await apps.stop(r1.app)

    # restart: same config (keys differ: keys are not part of the hash and never re-seeded) → nothing changes
    r2 = await start_registry(**{**ENV, "AIGW_OPENAI_KEY": "sk-rotated-eeee5555"})
    assert await _audit_count(r2) == n_audit
    assert await r2.reg.pool.fetchval("SELECT revision FROM registry.state") == rev
    ps2 = {p["name"]: p for p in (await r2.client.ok("GET", P))["providers"]}
    assert ps2 == ps


async def test_conflict_fails_startup_naming_both_sides(start_registry, apps) -> None:  # type: ignore[no-untyped-def]
    r1 = await start_registry(**ENV)
    await apps.stop(r1.app)
    with pytest.raises(SeedConflict) as e:
        await start_registry(**{**ENV, "AIGW_ANTHROPIC_BASE_URL": "http://127.0.0.1:7999"})
    msg = str(e.value)
    assert "'anthropic'" in msg and "AIGW_ANTHROPIC_*" in msg
    assert "http://127.0.0.1:7999" in msg and "http://127.0.0.1:7001" in msg and "base_url" in msg
    assert "To resolve" in msg
    with pytest.raises(SeedConflict) as e:
        await start_registry(**{**ENV, "AIGW_BEDROCK_ACCESS_KEY_SECRET": "othersecret/000000001"})
    assert "settings.access_key_secret (secret; values differ)" in str(e.value)
    assert "othersecret" not in str(e.value) and "envsecret" not in str(e.value)
    # an API change to the row is also a mismatch: env must follow the registry
    r3 = await start_registry(**ENV)
    await r3.client.ok("PATCH", f"{P}/local", {"base_url": "http://127.0.0.1:7003/v1"})
    await apps.stop(r3.app)
    with pytest.raises(SeedConflict, match="'local'"):
        await start_registry(**ENV)
    # display name is not part of the hash
    r4 = await start_registry(**{**ENV, "AIGW_PROVIDER_0_BASE_URL": "http://127.0.0.1:7003/v1/",
                                 "AIGW_PROVIDER_0_DISPLAY_NAME": "Renamed"})
    assert (await r4.client.ok("GET", f"{P}/local"))["display_name"] == "Local LLM"


async def test_soft_deleted_stays_deleted(start_registry, apps) -> None:  # type: ignore[no-untyped-def]
    r1 = await start_registry(**ENV)
    await r1.client.ok("DELETE", f"{P}/openai")
    await apps.stop(r1.app)
    r2 = await start_registry(**ENV)
    assert (await r2.client.get(f"{P}/openai")).status == 404
    assert len((await r2.client.ok("GET", P))["providers"]) == 3


async def test_unknown_type_skipped_with_log(start_registry, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    # unknown types are skipped whatever else is set: with a base URL, without one, with a name the
    # API would refuse, with Bedrock-only fields
    r = await start_registry(AIGW_PROVIDER_0_TYPE="gemini", AIGW_PROVIDER_0_NAME="gem",
                             AIGW_PROVIDER_0_BASE_URL="https://gem.example.com",
                             AIGW_PROVIDER_1_TYPE="openai", AIGW_PROVIDER_1_NAME="o2",
                             AIGW_PROVIDER_2_TYPE="Vertex", AIGW_PROVIDER_2_NAME="Not A Name",
                             AIGW_PROVIDER_2_REGION="eu")
    assert [p["name"] for p in (await r.client.ok("GET", P))["providers"]] == ["o2"]
    rec = [x for x in caplog.records if "unknown type" in x.getMessage()]
    assert len(rec) == 2
    assert rec[0].__dict__["variable"] == "AIGW_PROVIDER_0_TYPE" and rec[0].__dict__["type"] == "gemini"
    assert "AIGW_PROVIDER_0_TYPE" in rec[0].getMessage()
    assert rec[1].__dict__["variable"] == "AIGW_PROVIDER_2_TYPE" and rec[1].__dict__["type"] == "vertex"


def test_unknown_type_without_base_url_parses() -> None:
    s = Settings.from_env({"AIGW_PROVIDER_0_TYPE": "gemini"})
    assert s.providers == () and [(x.variable, x.type) for x in s.skipped_providers] == [("AIGW_PROVIDER_0_TYPE", "gemini")]
    # an unknown type never takes a name from a valid provider either
    s = Settings.from_env({"AIGW_OPENAI_KEY": "sk-x", "AIGW_PROVIDER_0_TYPE": "gemini", "AIGW_PROVIDER_0_NAME": "openai"})
    assert [p.name for p in s.providers] == ["openai"]


async def test_api_only_settings_never_conflict(start_registry, apps) -> None:  # type: ignore[no-untyped-def]
    """Every setting no env variable governs can change through the API, and the registry still restarts."""
    env = {**ENV, "AIGW_BEDROCK_SESSION_TOKEN": "envsession-0000001",
           "AIGW_PROVIDER_1_TYPE": "azure", "AIGW_PROVIDER_1_NAME": "az",
           "AIGW_PROVIDER_1_BASE_URL": "https://az.example.com/openai", "AIGW_PROVIDER_1_API_VERSION": "2024-06-01",
           "AIGW_PROVIDER_1_KEY": "az-key-000000001"}
    r = await start_registry(**env)
    changes = [
        ("bedrock", {"session_token": "apisession-0000002"}),
        ("bedrock", {"session_token": None}),
        ("bedrock", {"thinking_mode": "adaptive"}),
        ("az", {"api_version": "2025-01-01"}),
    ] + [(name, {t: "17s"}) for name in ("bedrock", "openai", "local", "az")
         for t in ("connect_timeout", "first_byte_timeout", "idle_timeout")]
    for name, change in changes:
        await r.client.ok("PATCH", f"{P}/{name}", {"settings": change})
        await apps.stop(r.app)
        # the same env, and a rotated session token, both restart cleanly
        for e in (env, {**env, "AIGW_BEDROCK_SESSION_TOKEN": "rotated-session-0003"}):
            r = await start_registry(**e)
            await apps.stop(r.app)
        r = await start_registry(**env)
    ps = {p["name"]: p for p in (await r.client.ok("GET", P))["providers"]}
    assert ps["bedrock"]["settings"]["thinking_mode"] == "adaptive" and "session_token" not in ps["bedrock"]["settings"]
    assert ps["az"]["settings"]["api_version"] == "2025-01-01"
    assert all(ps[n]["settings"]["idle_timeout"] == "17s" for n in ("bedrock", "openai", "local", "az"))
    # a field env seeding does govern still conflicts
    for field_, value in (("region", "eu-central-1"), ("model", "other-model"), ("small_fast_model", "small"),
                          ("access_key", "AKIAAPIKEY000002"), ("access_key_secret", "apisecret/00000002")):
        await r.client.ok("PATCH", f"{P}/bedrock", {"settings": {field_: value}})
        await apps.stop(r.app)
        with pytest.raises(SeedConflict, match=f"settings.{field_}"):
            await start_registry(**env)
        r = await start_registry()  # no env: nothing to reconcile
        await r.client.ok("PATCH", f"{P}/bedrock", {"settings": {"region": "us-west-2", "model": "anthropic.claude-sonnet",
                                                             "small_fast_model": None, "access_key": "AKIAENVKEY000001",
                                                             "access_key_secret": "envsecret/0000000001"}})
        await apps.stop(r.app)
        r = await start_registry(**env)


async def test_bad_env_values_fail_startup(start_registry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="metadata address"):
        await start_registry(AIGW_PROVIDER_0_TYPE="openai", AIGW_PROVIDER_0_BASE_URL="http://169.254.169.254/v1")
    with pytest.raises(ConfigError):
        Settings.from_env({"AIGW_OPENAI_KEY": "sk-x", "AIGW_PROVIDER_0_TYPE": "openai", "AIGW_PROVIDER_0_NAME": "openai"})


async def test_two_registries_start_at_once(registry_settings, apps, http) -> None:  # type: ignore[no-untyped-def]
    from aigw_registry.app import create_app

    a, b = create_app(registry_settings(**ENV)), create_app(registry_settings(**ENV))
    urls = await asyncio.gather(apps.start(a), apps.start(b))
    assert len(urls) == 2
    from aigw_registry.api import REGISTRY

    pool = a[REGISTRY].pool
    assert await pool.fetchval("SELECT count(*) FROM registry.ai_providers") == 4
    assert await pool.fetchval("SELECT count(*) FROM registry.ai_provider_keys") == 4
    assert await pool.fetchval("SELECT count(*) FROM registry.audit_logs WHERE action = 'provider.seed'") == 4
    assert await pool.fetchval("SELECT count(*) FROM registry.users") == 1
    assert await pool.fetchval("SELECT revision FROM registry.state") == 4


async def test_bootstrap_owner_once(start_registry, apps, owner_token) -> None:  # type: ignore[no-untyped-def]
    r1 = await start_registry()
    me = await r1.client.ok("GET", "/api/v2/users/me")
    assert me["roles"] == ["owner"]
    await apps.stop(r1.app)
    r2 = await start_registry(AIGW_BOOTSTRAP_TOKEN="aigw_another-bootstrap-token-123")
    assert len((await r2.client.ok("GET", "/api/v2/users"))["users"]) == 1
    assert (await r2.client.as_("aigw_another-bootstrap-token-123").get("/api/v2/users/me")).status == 401
    actions = {a["action"] for a in (await r2.client.ok("GET", "/api/v2/audit-logs"))["audit_logs"]}
    assert actions == {"user.bootstrap", "token.bootstrap"}


def test_canonical_hash_ignores_order_and_empty() -> None:
    a = canonical_hash("bedrock", "https://x", {"region": "r", "model": "m"})
    assert a == canonical_hash("bedrock", "https://x", {"model": "m", "region": "r", "session_token": ""})
    assert a == canonical_hash("bedrock", "https://x", {"model": "m", "region": "r", "session_token": "t",
                                                        "thinking_mode": "adaptive", "idle_timeout": "5s"})
    assert canonical_hash("azure", "https://x", {"api_version": "1"}) == canonical_hash("azure", "https://x", {})
    assert a != canonical_hash("bedrock", "https://x", {"model": "m", "region": "r2"})
    assert a != canonical_hash("anthropic", "https://x", {"model": "m", "region": "r"})
