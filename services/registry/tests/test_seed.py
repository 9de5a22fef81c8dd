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
    r = await start_registry(AIGW_PROVIDER_0_TYPE="gemini", AIGW_PROVIDER_0_NAME="gem",
                             AIGW_PROVIDER_0_BASE_URL="https://gem.example.com",
                             AIGW_PROVIDER_1_TYPE="openai", AIGW_PROVIDER_1_NAME="o2")
    assert [p["name"] for p in (await r.client.ok("GET", P))["providers"]] == ["o2"]
    rec = [x for x in caplog.records if "unknown type" in x.getMessage()]
    assert rec and rec[0].__dict__["provider"] == "gem" and rec[0].__dict__["type"] == "gemini"


async def test_bad_env_values_fail_startup(start_registry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="link-local"):
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
    assert a != canonical_hash("bedrock", "https://x", {"model": "m", "region": "r2"})
    assert a != canonical_hash("anthropic", "https://x", {"model": "m", "region": "r"})
