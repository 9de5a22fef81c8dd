"""Providers and keys through the API: lifecycle, validation, audit, concurrency."""

from __future__ import annotations

import asyncio
import itertools

P = "/api/v2/ai/providers"


async def test_provider_lifecycle(client) -> None:  # type: ignore[no-untyped-def]
    created = await client.ok("POST", P, {
        "name": "  openai-main ", "type": "openai", "base_url": "HTTPS://API.Example.com/v1/",
        "display_name": "Main", "keys": [" sk-aaaaaaaaaaaa1111 ", "sk-bbbbbbbbbbbb2222"],
    })
    assert created["name"] == "openai-main"
    assert created["base_url"] == "https://api.example.com/v1"
    assert created["enabled"] is True and created["allow_byok"] is True
    assert [k["position"] for k in created["keys"]] == [0, 1]
    assert [k["hint"] for k in created["keys"]] == ["sk-…1111", "sk-…2222"]
    assert "sk-aaaaaaaaaaaa1111" not in str(created)

    by_name = await client.ok("GET", f"{P}/openai-main")
    by_id = await client.ok("GET", f"{P}/{created['id']}")
    assert by_name == by_id == created
    listed = await client.ok("GET", P)
    assert [p["name"] for p in listed["providers"]] == ["openai-main"]

    updated = await client.ok("PATCH", f"{P}/openai-main", {"base_url": "http://127.0.0.1:9999/v1", "enabled": False})
    assert updated["base_url"] == "http://127.0.0.1:9999/v1" and updated["enabled"] is False
    renamed = await client.ok("PATCH", f"{P}/{created['id']}", {"name": "oai", "enabled": True})
    assert renamed["name"] == "oai" and renamed["display_name"] == "Main"
    assert (await client.get(f"{P}/openai-main")).status == 404

    # keys: insert at the front, remove from the middle; positions stay dense
    k = await client.ok("POST", f"{P}/oai/keys", {"api_key": "sk-cccccccccccc3333", "position": 0})
    assert k["position"] == 0 and k["hint"] == "sk-…3333"
    keys = (await client.ok("GET", f"{P}/oai/keys"))["keys"]
    assert [x["hint"] for x in keys] == ["sk-…3333", "sk-…1111", "sk-…2222"]
    await client.ok("DELETE", f"{P}/oai/keys/{keys[1]['id']}")
    keys = (await client.ok("GET", f"{P}/oai/keys"))["keys"]
    assert [(x["hint"], x["position"]) for x in keys] == [("sk-…3333", 0), ("sk-…2222", 1)]
    assert (await client.delete(f"{P}/oai/keys/{k['id']}x")).status == 404
    assert (await client.delete(f"{P}/oai/keys/00000000-0000-0000-0000-000000000000")).status == 404
    assert (await client.post(f"{P}/oai/keys", {"api_key": "sk-dddddddddddd4444", "position": 99})).body["position"] == 2

    await client.ok("DELETE", f"{P}/oai")
    assert (await client.get(f"{P}/oai")).status == 404
    assert (await client.delete(f"{P}/oai")).status == 404
    assert (await client.ok("GET", P))["providers"] == []
    # the name is free again after a delete
    again = await client.ok("POST", P, {"name": "oai", "type": "openai", "base_url": "https://api.openai.com/v1"})
    assert again["id"] != created["id"] and again["keys"] == []

    actions = [e["action"] for e in (await client.ok("GET", "/api/v2/audit-logs"))["audit_logs"]]
    assert actions[:1] == ["provider.create"]
    assert {"provider.create", "provider.update", "provider.delete", "provider_key.create",
            "provider_key.delete"} <= set(actions)


async def test_missing_provider_is_404_everywhere(client) -> None:  # type: ignore[no-untyped-def]
    for method, path, body in [
        ("GET", f"{P}/nope", None), ("PATCH", f"{P}/nope", {"enabled": False}), ("DELETE", f"{P}/nope", None),
        ("GET", f"{P}/nope/keys", None), ("POST", f"{P}/nope/keys", {"api_key": "sk-xxxxxxxxxxxx"}),
        ("DELETE", f"{P}/nope/keys/00000000-0000-0000-0000-000000000000", None),
        ("GET", f"{P}/00000000-0000-0000-0000-000000000000", None),
        ("PUT", "/api/v2/users/me/ai/provider-keys/nope", {"api_key": "sk-xxxxxxxxxxxx"}),
        ("DELETE", "/api/v2/users/me/ai/provider-keys/nope", None),
    ]:
        r = await client.call(method, path, body)
        assert r.status == 404, (method, path, r)
        assert r.body["message"].endswith("not found") and r.body["validations"] == []


async def _bad(client, body, field, path=P, method="POST"):  # type: ignore[no-untyped-def]
    r = await client.call(method, path, body)
    assert r.status == 400, (body, r)
    fields = [v["field"] for v in r.body["validations"]]
    assert field in fields, (body, r)
    return r


BASE = {"name": "p", "type": "openai", "base_url": "https://api.openai.com/v1"}


CREATE_CASES = [
    ({"name": ""}, "name"),
    ({"name": "Has-Caps"}, "name"),
    ({"name": "double--hyphen"}, "name"),
    ({"name": "api"}, "name"),
    ({"name": "healthz"}, "name"),
    ({"name": "a" * 64}, "name"),
    ({"name": "12345678-1234-1234-1234-123456789abc"}, "name"),
    ({"type": "gemini"}, "type"),
    ({"base_url": "ftp://x.example.com"}, "base_url"),
    ({"base_url": "api.openai.com/v1"}, "base_url"),
    ({"base_url": "https://user:pw@api.example.com"}, "base_url"),
    ({"base_url": "https://api.example.com/v1#frag"}, "base_url"),
    ({"base_url": "https://api.example.com/v1?x=1"}, "base_url"),
    ({"base_url": "https://api.exa mple.com"}, "base_url"),
    ({"base_url": "http://169.254.169.254/latest"}, "base_url"),
    ({"base_url": "http://[fe80::1]/"}, "base_url"),
    ({"base_url": "http://[fd00:ec2::254]/"}, "base_url"),
    ({"base_url": "http://metadata.google.internal/computeMetadata"}, "base_url"),
    ({"base_url": "http://2852039166/"}, "base_url"),
    ({"base_url": "http://[::ffff:169.254.169.254]/"}, "base_url"),
    ({"base_url": "https://api.example.com:99999"}, "base_url"),
    ({"keys": ["  "]}, "keys[0]"),
    ({"keys": ["sk-ok-key-123", "x" * 10241]}, "keys[1]"),
    ({"keys": ["sk-with space"]}, "keys[0]"),
    ({"keys": ["sk-line\nbreak"]}, "keys[0]"),
    ({"keys": ["sk-aaaaaaaaaaa"], "enabled": False}, "keys"),
    ({"display_name": "x" * 129}, "display_name"),
    ({"settings": {"region": "us-east-1"}}, "settings.region"),
    ({"type": "bedrock", "settings": {"model": "m"}}, "settings.region"),
    ({"type": "bedrock", "settings": {}}, "settings.region"),
    ({"type": "bedrock", "settings": {"region": "r", "model": "m", "access_key": "AKIA1234"}}, "settings.access_key_secret"),
    ({"type": "azure", "settings": {"api_version": "1", "deployment": "x"}}, "settings.deployment"),
    ({"unknown": 1}, "unknown"),
    ({"enabled": "yes"}, "enabled"),
]


async def test_provider_create_validation(client) -> None:  # type: ignore[no-untyped-def]
    for patch, field in CREATE_CASES:
        await _bad(client, {**BASE, **patch}, field)
    assert (await client.ok("GET", P))["providers"] == []


async def test_body_errors(client) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(P, raw=b"{not json")
    assert r.status == 400 and r.body["validations"][0]["field"] == "body"
    r = await client.post(P, raw=b"")
    assert r.status == 400
    r = await client.post(P, raw=b'{"name": "x"}')
    assert r.status == 400 and "type" in r.body["detail"]
    r = await client.post(P, raw=b"[" + b"1," * 600_000 + b"1]")
    assert r.status == 413


async def test_valid_urls_and_settings(client) -> None:  # type: ignore[no-untyped-def]
    cases = {
        "http://127.0.0.1:8080/v1/": "http://127.0.0.1:8080/v1",
        "https://API.anthropic.com:443": "https://api.anthropic.com",
        "http://[::1]:9000//x//": "http://[::1]:9000/x",
        "http://localhost": "http://localhost",
    }
    for i, (raw, norm) in enumerate(cases.items()):
        p = await client.ok("POST", P, {**BASE, "name": f"u{i}", "base_url": raw})
        assert p["base_url"] == norm
    bed = await client.ok("POST", P, {
        "name": "bed", "type": "bedrock", "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
        "settings": {"region": "us-east-1", "access_key": "AKIAABCDEFGHIJKL", "access_key_secret": "secret/abcdefghijkl",
                     "model": "anthropic.claude", "small_fast_model": "anthropic.haiku"},
    })
    s = bed["settings"]
    assert s["region"] == "us-east-1" and s["model"] == "anthropic.claude"
    assert "secret/abcdefghijkl" not in str(bed) and "AKIAABCDEFGHIJKL" not in str(bed)
    assert s["access_key_secret"].endswith("ijkl")
    # PATCH merges; a masked secret sent back keeps the stored value; null removes a field
    p2 = await client.ok("PATCH", f"{P}/bed", {"settings": {**s, "model": "anthropic.claude-2", "small_fast_model": None}})
    assert p2["settings"]["model"] == "anthropic.claude-2" and "small_fast_model" not in p2["settings"]
    r = await client.patch(f"{P}/bed", {"settings": {"region": None}})
    assert r.status == 400 and r.body["validations"][0]["field"] == "settings.region"
    az = await client.ok("POST", P, {"name": "az", "type": "azure", "base_url": "https://x.openai.azure.com",
                                     "settings": {"api_version": "2024-10-21"}})
    assert az["settings"] == {"api_version": "2024-10-21"}
    assert (await client.post(f"{P}/bed/keys", {"api_key": "ABSKbedrock-api-key-1"})).status == 201  # a pool of them


async def test_link_local_allowed_by_setting(start_registry) -> None:  # type: ignore[no-untyped-def]
    reg = await start_registry(AIGW_ALLOW_PRIVATE_UPSTREAMS="link-local,metadata")
    p = await reg.client.ok("POST", P, {**BASE, "base_url": "http://169.254.169.254/v1"})
    assert p["base_url"] == "http://169.254.169.254/v1"


async def test_conflicts_and_disabled(client) -> None:  # type: ignore[no-untyped-def]
    await client.ok("POST", P, BASE)
    r = await client.post(P, {**BASE, "base_url": "https://other.example.com"})
    assert r.status == 409 and "'p'" in r.body["message"]
    await client.ok("POST", P, {**BASE, "name": "q"})
    r = await client.patch(f"{P}/q", {"name": "p"})
    assert r.status == 409 and "'p'" in r.body["message"]
    await client.ok("PATCH", f"{P}/q", {"enabled": False})
    r = await client.post(f"{P}/q/keys", {"api_key": "sk-aaaaaaaaaaaaa"})
    assert r.status == 409 and "disabled" in r.body["message"]
    r = await client.post(f"{P}/p/keys", {"api_key": " "})
    assert r.status == 400 and r.body["validations"][0]["field"] == "api_key"
    r = await client.post(f"{P}/p/keys", {"api_key": "sk-aaaaaaaaaaaaa", "position": -1})
    assert r.status == 400 and r.body["validations"][0]["field"] == "position"
    r = await client.patch(f"{P}/p", {"type": "anthropic"})
    assert r.status == 400 and r.body["validations"][0]["field"] == "type"
    r = await client.patch(f"{P}/p", {"base_url": "http://169.254.1.1"})
    assert r.status == 400
    # an empty PATCH changes nothing and writes no audit entry
    n = len((await client.ok("GET", "/api/v2/audit-logs"))["audit_logs"])
    await client.ok("PATCH", f"{P}/p", {})
    assert len((await client.ok("GET", "/api/v2/audit-logs"))["audit_logs"]) == n


async def test_delete_provider_removes_user_keys(client, registry) -> None:  # type: ignore[no-untyped-def]
    await client.ok("POST", P, BASE)
    _, tok = await client.new_user("alice", ["member"])
    alice = client.as_(tok)
    await alice.ok("PUT", "/api/v2/users/me/ai/provider-keys/p", {"api_key": "sk-alice-key-1234"})
    assert len((await alice.ok("GET", "/api/v2/users/me/ai/provider-keys"))["provider_keys"]) == 1
    await client.ok("DELETE", f"{P}/p")
    assert (await alice.ok("GET", "/api/v2/users/me/ai/provider-keys"))["provider_keys"] == []
    # and the deleted row carries no credentials any more
    row = await registry.reg.pool.fetchrow(
        "SELECT settings_sealed, deleted_at FROM registry.ai_providers WHERE name = 'p'")
    assert row["deleted_at"] is not None and row["settings_sealed"] is None
    n = await registry.reg.pool.fetchval("SELECT count(*) FROM registry.user_ai_provider_keys")
    assert n == 0


async def test_audit_entries_mask_secrets(client, registry) -> None:  # type: ignore[no-untyped-def]
    await client.ok("POST", P, {**BASE, "keys": ["sk-supersecretvalue-9876"]})
    await client.ok("PATCH", f"{P}/p", {"display_name": "Pee"})
    rows = await registry.reg.pool.fetch("SELECT before, after, action, actor_name FROM registry.audit_logs")
    assert "supersecretvalue" not in str([dict(r) for r in rows])
    upd = next(r for r in rows if r["action"] == "provider.update")
    assert upd["before"]["display_name"] == "p" and upd["after"]["display_name"] == "Pee"
    assert upd["actor_name"] == "owner"
    page = await client.ok("GET", "/api/v2/audit-logs", params={"limit": "1", "resource_type": "provider"})
    assert len(page["audit_logs"]) == 1 and page["next_cursor"]
    page2 = await client.ok("GET", "/api/v2/audit-logs",
                            params={"limit": "1", "resource_type": "provider", "cursor": page["next_cursor"]})
    assert page2["audit_logs"][0]["id"] < page["audit_logs"][0]["id"] or int(page2["audit_logs"][0]["id"]) < int(page["audit_logs"][0]["id"])
    assert (await client.get("/api/v2/audit-logs", params={"limit": "0"})).status == 400
    assert (await client.get("/api/v2/audit-logs", params={"cursor": "x"})).status == 400


async def test_concurrent_updates_of_one_provider(client, registry) -> None:  # type: ignore[no-untyped-def]
    p = await client.ok("POST", P, BASE)
    rev0 = await registry.reg.pool.fetchval("SELECT revision FROM registry.state")
    n = 12
    results = await asyncio.gather(*[
        client.patch(f"{P}/p", {"display_name": f"d{i}", "base_url": f"http://127.0.0.1:{9000 + i}/v1"})
        for i in range(n)
    ] + [client.post(f"{P}/p/keys", {"api_key": f"sk-concurrent-key-{i:04d}", "position": 0}) for i in range(n)])
    assert all(r.status in (200, 201) for r in results), results
    final = await client.ok("GET", f"{P}/p")
    i = int(final["display_name"][1:])
    assert final["base_url"] == f"http://127.0.0.1:{9000 + i}/v1"  # both fields from the same writer
    assert sorted(k["position"] for k in final["keys"]) == list(range(n))
    assert await registry.reg.pool.fetchval("SELECT revision FROM registry.state") == rev0 + 2 * n
    # audit entries chain: each update's before is the previous update's after
    rows = await registry.reg.pool.fetch(
        "SELECT before, after FROM registry.audit_logs WHERE action = 'provider.update' AND resource_id = $1 ORDER BY id",
        p["id"])
    assert len(rows) == n
    for a, b in itertools.pairwise(rows):
        assert a["after"]["display_name"] == b["before"]["display_name"]
    # concurrent renames to one name: exactly one wins
    await client.ok("POST", P, {**BASE, "name": "q"})
    await client.ok("POST", P, {**BASE, "name": "r"})
    rs = await asyncio.gather(client.patch(f"{P}/q", {"name": "z"}), client.patch(f"{P}/r", {"name": "z"}))
    assert sorted(r.status for r in rs) == [200, 409]


async def test_timeout_and_thinking_settings(client) -> None:  # type: ignore[no-untyped-def]
    """Upstream timeouts for any type, thinking_mode for Bedrock; values are checked, not passed blindly."""
    p = await client.ok("POST", P, {**BASE, "name": "slow", "settings": {"idle_timeout": "10m", "first_byte_timeout": "90s"}})
    assert p["settings"] == {"idle_timeout": "10m", "first_byte_timeout": "90s"}
    for bad in ("soon", "0s", "2d"):
        r = await client.post(P, {**BASE, "name": "bad-timeout", "settings": {"connect_timeout": bad}})
        assert r.status == 400 and r.body["validations"][0]["field"] == "settings.connect_timeout", bad
    bed = await client.ok("POST", P, {"name": "bed2", "type": "bedrock", "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
                                      "settings": {"region": "us-east-1", "thinking_mode": "adaptive-only"}})
    assert bed["settings"]["thinking_mode"] == "adaptive-only"
    r = await client.post(P, {"name": "bed3", "type": "bedrock", "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
                              "settings": {"region": "us-east-1", "thinking_mode": "sometimes"}})
    assert r.status == 400 and r.body["validations"][0]["field"] == "settings.thinking_mode"


async def test_provider_configs_for_members(client, start_registry) -> None:  # type: ignore[no-untyped-def]
    """GET /users/{user}/ai/provider-configs: which providers a member may call and how, nothing more."""
    P = "/api/v2/ai/providers"
    await client.ok("POST", P, {"name": "oai", "type": "openai", "base_url": "https://api.openai.com/v1",
                                "display_name": "OpenAI", "keys": ["sk-pool-secret-0001"]})
    await client.ok("POST", P, {"name": "ant", "type": "anthropic", "base_url": "https://api.anthropic.com",
                                "allow_byok": False, "keys": ["sk-ant-pool-0002"]})
    await client.ok("POST", P, {"name": "byo", "type": "openai", "base_url": "https://byo.example.com/v1"})
    await client.ok("POST", P, {"name": "gh", "type": "copilot", "base_url": "https://api.githubcopilot.com"})
    await client.ok("POST", P, {"name": "local", "type": "openai-compat", "base_url": "https://vllm.example.com/v1"})
    await client.ok("POST", P, {"name": "bed", "type": "bedrock", "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
                                "settings": {"region": "us-east-1"}})
    await client.ok("POST", P, {"name": "off", "type": "openai", "base_url": "https://off.example.com/v1", "enabled": False})
    await client.ok("POST", P, {"name": "gone", "type": "openai", "base_url": "https://gone.example.com/v1"})
    await client.ok("DELETE", f"{P}/gone")
    mary, token = await client.new_user("mary", ["member"])
    other, _ = await client.new_user("olga", ["member"])
    me = client.as_(token)
    await me.ok("PUT", "/api/v2/users/me/ai/provider-keys/byo", {"api_key": "sk-mary-own-0003"})

    body = await me.ok("GET", "/api/v2/users/me/ai/provider-configs")
    got = {p["name"]: p for p in body["providers"]}
    assert list(got) == ["ant", "bed", "byo", "gh", "local", "oai"]  # enabled, not deleted, by name
    assert got["oai"] == {"name": "oai", "type": "openai", "display_name": "OpenAI", "byok": True,
                          "centralized": True, "has_key": False}
    assert got["ant"]["byok"] is False and got["ant"]["centralized"] is True
    assert got["byo"]["centralized"] is False and got["byo"]["has_key"] is True and got["byo"]["byok"] is True
    assert got["gh"]["centralized"] is False and got["gh"]["byok"] is True
    assert got["local"]["centralized"] is True and got["bed"]["centralized"] is True
    text = str(body)
    for secret_or_internal in ("sk-pool", "sk-ant-pool", "sk-mary", "…", "https://", "region", "base_url", "settings"):
        assert secret_or_internal not in text
    # by id or username; members only for themselves, admins for anyone
    assert (await me.ok("GET", f"/api/v2/users/{mary['id']}/ai/provider-configs")) == body
    assert (await me.get(f"/api/v2/users/{other['id']}/ai/provider-configs")).status == 403
    assert (await me.get("/api/v2/users/olga/ai/provider-configs")).status == 403
    theirs = await client.ok("GET", "/api/v2/users/mary/ai/provider-configs")
    assert theirs == body
    assert (await client.as_(None).get("/api/v2/users/me/ai/provider-configs")).status == 401
    # with AIGW_ALLOW_BYOK=false nothing accepts a user's key
    r2 = await start_registry(AIGW_ALLOW_BYOK="false")
    no_byok = await r2.client.ok("GET", "/api/v2/users/mary/ai/provider-configs")
    assert not any(p["byok"] for p in no_byok["providers"])


async def test_bedrock_pool_of_credentials(client) -> None:  # type: ignore[no-untyped-def]
    """A bedrock provider takes pool keys: Bedrock API keys, or access-key pairs shown by their key id only."""
    P = "/api/v2/ai/providers"
    body = await client.ok("POST", P, {"name": "bed", "type": "bedrock", "settings": {"region": "us-east-1"},
                                       "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
                                       "keys": ["AKIAPAIRONE00001:secret/one/AAAA9999", "ABSKbedrockapikey0002"]})
    hints = [k["hint"] for k in body["keys"]]
    assert hints[0].endswith("0001") and "9999" not in hints[0]  # the pair's hint is of its key id
    assert hints[1].endswith("0002")
    k = await client.ok("POST", f"{P}/bed/keys", {"api_key": "ASIAPAIRTWO00003:secret2:sessiontoken"})
    assert k["hint"].endswith("0003") and "secret2" not in str(k)
