"""``aigw admin`` against a real registry: every registry command, token discovery, errors."""

from __future__ import annotations

import asyncio
import io
import json

from aigw_common import admin


async def run(url: str, *argv: str, env: dict[str, str] | None = None, stdin: str = "",
              token: str | None = None) -> tuple[int, object, str]:
    out, err = io.StringIO(), io.StringIO()
    args = ["--registry-url", url, *(["--token", token] if token else []), *argv]
    rc = await asyncio.to_thread(admin.main, args, env or {}, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return rc, (json.loads(out.getvalue()) if out.getvalue() else None), err.getvalue()


async def test_admin_commands(registry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url, tok = registry.url, registry.owner_token

    async def ok(*argv: str, stdin: str = ""):  # type: ignore[no-untyped-def]
        rc, out, err = await run(url, *argv, token=tok, stdin=stdin)
        assert rc == 0, (argv, err)
        return out

    p = await ok("providers", "create", "--name", "oai", "--type", "openai", "--base-url", "http://127.0.0.1:7/v1",
                 "--key", "sk-admin-key-0001", "--key-stdin", stdin="sk-admin-key-0002\n\n")
    assert [k["hint"] for k in p["keys"]] == ["sk-…0001", "sk-…0002"]
    b = await ok("providers", "create", "--name", "bed", "--type", "bedrock", "--base-url",
                 "https://bedrock-runtime.us-east-1.amazonaws.com", "--setting", "region=us-east-1",
                 "--setting", "model=claude")
    assert b["settings"] == {"region": "us-east-1", "model": "claude"}
    assert (await ok("providers", "update", "bed", "--setting", "model=", "--disable"))["enabled"] is False
    assert [x["name"] for x in (await ok("providers", "list"))["providers"]] == ["bed", "oai"]
    assert (await ok("providers", "get", "oai"))["id"] == p["id"]
    k = await ok("keys", "add", "oai", "--key-stdin", "--position", "0", stdin="sk-admin-key-0003\n")
    assert k["position"] == 0
    assert len((await ok("keys", "list", "oai"))["keys"]) == 3
    assert await ok("keys", "remove", "oai", k["id"]) == {"ok": True}

    u = await ok("users", "create", "ivy", "--role", "admin", "--email", "ivy@example.com")
    assert u["roles"] == ["admin"]
    assert (await ok("users", "update", "ivy", "--role", "member"))["roles"] == ["member"]
    t = await ok("tokens", "create", "--user", "ivy", "--name", "ci", "--scope", "admin")
    assert t["token"].startswith("aigw_")
    assert [x["name"] for x in (await ok("tokens", "list", "--user", "ivy"))["tokens"]] == ["ci"]
    rc, me, _ = await run(url, "users", "get", "me", token=t["token"])
    assert rc == 0 and me["username"] == "ivy"
    rc, _, _ = await run(url, "user-keys", "set", "oai", "--key", "sk-ivy-own-00001", token=t["token"])
    assert rc == 0
    rc, keys, _ = await run(url, "user-keys", "list", token=t["token"])
    assert [x["provider_name"] for x in keys["provider_keys"]] == ["oai"]
    await ok("groups", "create", "eng")
    await ok("groups", "add-member", "eng", "ivy")
    assert [m["username"] for m in (await ok("groups", "get", "eng"))["members"]] == ["ivy"]
    await ok("groups", "rename", "eng", "platform")
    await ok("groups", "remove-member", "platform", "ivy")
    assert [g["name"] for g in (await ok("groups", "list"))["groups"]] == ["platform"]
    await ok("groups", "delete", "platform")
    await ok("tokens", "revoke", "--user", "ivy", t["token"] and (await ok("tokens", "list", "--user", "ivy"))["tokens"][0]["id"])
    await ok("users", "delete", "ivy")
    assert len((await ok("users", "list"))["users"]) == 1
    await ok("providers", "delete", "bed")
    audit = await ok("audit", "--limit", "3", "--action", "provider.delete")
    assert [a["resource_id"] for a in audit["audit_logs"]] == [b["id"]]

    # errors: the API's error body on stderr, exit 1
    rc, out, err = await run(url, "providers", "create", "--name", "oai", "--type", "openai",
                             "--base-url", "https://x.example.com", token=tok)
    assert rc == 1 and out is None and json.loads(err)["status"] == 409 and "'oai'" in json.loads(err)["message"]
    rc, _, err = await run(url, "providers", "get", "oai", token="aigw_wrong")
    assert rc == 1 and json.loads(err)["status"] == 401
    rc, _, _ = await run(url, "providers", "bogus-verb", token=tok)
    assert rc == 2

    # token discovery: AIGW_ADMIN_TOKEN, then <dir>/owner-token; none → a clear message
    rc, _, _ = await run(url, "users", "get", "me", env={"AIGW_ADMIN_TOKEN": tok})
    assert rc == 0
    (tmp_path / "owner-token").write_text(tok + "\n")
    rc, _, _ = await run(url, "--dir", str(tmp_path), "users", "get", "me")
    assert rc == 0
    rc, _, err = await run(url, "--dir", str(tmp_path / "none"), "users", "get", "me")
    assert rc == 1 and "no token" in err
    rc, _, err = await run("http://127.0.0.1:9", "users", "list", token=tok)
    assert rc == 1 and "cannot reach" in err


async def test_admin_budgets(registry, apps) -> None:  # type: ignore[no-untyped-def]
    from aigw_budget.app import create_app as budget_app

    burl = await apps.start(budget_app(registry.settings))
    c = registry.client
    await c.ok("POST", "/api/v2/groups", {"name": "eng"})
    base = ["--budget-url", burl]
    rc, out, err = await run(registry.url, *base, "budgets", "set", "--group", "eng", "--limit-usd", "12.5",
                             token=registry.owner_token)
    assert rc == 0, err
    rc, out, err = await run(registry.url, *base, "budgets", "get", "--group", "eng", token=registry.owner_token)
    assert rc == 0 and out["spend_limit_micros"] == 12_500_000 and out["period"] == "month", err
    rc, out, err = await run(registry.url, *base, "budgets", "delete", "--group", "eng", token=registry.owner_token)
    assert rc == 0, err
    rc, _, err = await run(registry.url, *base, "budgets", "get", "--group", "eng", token=registry.owner_token)
    assert rc == 1 and json.loads(err)["status"] == 404
    rc, _, err = await run(registry.url, *base, "budgets", "get", token=registry.owner_token)
    assert rc == 1 and "exactly one" in err
