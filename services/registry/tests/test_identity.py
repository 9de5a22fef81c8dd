"""Users, tokens, groups, membership and BYOK keys through the API, and the role matrix."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

U = "/api/v2/users"
G = "/api/v2/groups"
P = "/api/v2/ai/providers"
ZERO = "00000000-0000-0000-0000-000000000000"


async def test_user_token_lifecycle(client, registry) -> None:  # type: ignore[no-untyped-def]
    me = await client.ok("GET", f"{U}/me")
    assert me["username"] == "owner" and me["roles"] == ["owner"]
    bob = await client.ok("POST", U, {"username": " Bob.Smith ", "email": "bob@example.com", "roles": ["member", "admin", "member"]})
    assert bob["username"] == "Bob.Smith" and bob["roles"] == ["admin", "member"] and bob["groups"] == []
    assert await client.ok("GET", f"{U}/bob.smith") == bob  # usernames are case-insensitive on lookup
    assert (await client.post(U, {"username": "BOB.SMITH"})).status == 409
    assert [u["username"] for u in (await client.ok("GET", U))["users"]] == ["Bob.Smith", "owner"]

    tok = await client.ok("POST", f"{U}/{bob['id']}/tokens", {"name": "laptop", "scope": "admin",
                          "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()})
    assert tok["token"].startswith("aigw_") and tok["name"] == "laptop" and tok["expires_at"]
    b = client.as_(tok["token"])
    assert (await b.ok("GET", f"{U}/me"))["id"] == bob["id"]
    listed = (await client.ok("GET", f"{U}/bob.smith/tokens"))["tokens"]
    assert [t["id"] for t in listed] == [tok["id"]] and "token" not in listed[0]
    stored = await registry.reg.pool.fetchval("SELECT token_hash FROM registry.api_tokens WHERE id = $1", tok["id"])
    assert tok["token"] not in stored

    upd = await client.ok("PATCH", f"{U}/{bob['id']}", {"email": None, "roles": ["member"], "username": "bob"})
    assert upd["email"] is None and upd["roles"] == ["member"] and upd["username"] == "bob"
    assert (await b.get(U)).status == 403  # no longer admin

    await b.ok("DELETE", f"{U}/me/tokens/{tok['id']}")
    assert (await b.get(f"{U}/me")).status == 401
    assert (await client.delete(f"{U}/bob/tokens/{tok['id']}")).status == 404

    _, t2 = await client.new_user("carol", ["member"])
    carol = client.as_(t2)
    await client.ok("POST", P, {"name": "p", "type": "openai", "base_url": "https://api.openai.com/v1"})
    await carol.ok("PUT", f"{U}/me/ai/provider-keys/p", {"api_key": "sk-carol-1234567"})
    g = await client.ok("POST", G, {"name": "eng"})
    await client.ok("PUT", f"{G}/eng/members/carol", status=204)
    await client.ok("DELETE", f"{U}/carol")
    assert (await carol.get(f"{U}/me")).status == 401
    assert (await client.get(f"{U}/carol")).status == 404
    assert (await client.delete(f"{U}/carol")).status == 404
    assert (await client.ok("GET", f"{G}/{g['id']}"))["members"] == []
    assert await registry.reg.pool.fetchval("SELECT count(*) FROM registry.user_ai_provider_keys") == 0
    assert await registry.reg.pool.fetchval(
        "SELECT count(*) FROM registry.api_tokens t JOIN registry.users u ON u.id = t.user_id WHERE u.username = 'carol'") == 0
    # the username is free again
    await client.ok("POST", U, {"username": "carol"})


async def test_user_validation(client) -> None:  # type: ignore[no-untyped-def]
    for body, field in [
        ({"username": ""}, "username"), ({"username": "me"}, "username"), ({"username": "a b"}, "username"),
        ({"username": "x" * 65}, "username"), ({"username": "-x"}, "username"),
        ({"username": ZERO}, "username"), ({"username": "ok", "email": "nope"}, "email"),
        ({"username": "ok", "roles": ["root"]}, "roles[0]"), ({"username": "ok", "roles": []}, "roles"),
        ({"username": "ok", "extra": 1}, "extra"),
    ]:
        r = await client.post(U, body)
        assert r.status == 400 and r.body["validations"][0]["field"] == field, (body, r)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    for body, field in [({"expires_at": past}, "expires_at"), ({"name": "x" * 129}, "name"),
                        ({"expires_at": "9999-12-31T23:00:00-12:00"}, "expires_at"), ({"expires_at": "soon"}, "expires_at")]:
        r = await client.post(f"{U}/me/tokens", body)
        assert r.status == 400 and r.body["validations"][0]["field"] == field, (body, r)
    for body in [{"name": ""}, {"name": "a/b"}, {"name": "me"}]:
        assert (await client.post(G, body)).status == 400


async def test_expired_token_is_401(client, registry) -> None:  # type: ignore[no-untyped-def]
    u, t = await client.new_user("eve", ["admin"])
    await registry.reg.pool.execute("UPDATE registry.api_tokens SET expires_at = now() - interval '1 second' WHERE user_id = $1", u["id"])
    assert (await client.as_(t).get(f"{U}/me")).status == 401


async def test_last_owner_and_owner_protection(client) -> None:  # type: ignore[no-untyped-def]
    r = await client.patch(f"{U}/me", {"roles": ["admin"]})
    assert r.status == 409 and "owner" in r.body["message"]
    assert (await client.delete(f"{U}/me")).status == 409
    adm, at = await client.new_user("adm", ["admin"])
    a = client.as_(at)
    assert (await a.post(U, {"username": "o2", "roles": ["owner"]})).status == 403
    assert (await a.patch(f"{U}/owner", {"email": "x@y.io"})).status == 403
    assert (await a.delete(f"{U}/owner")).status == 403
    assert (await a.post(f"{U}/owner/tokens", {})).status == 403
    assert (await a.patch(f"{U}/adm", {"roles": ["owner"]})).status == 403
    o2 = await client.ok("POST", U, {"username": "o2", "roles": ["owner"]})
    # two owners demoting each other at once: one of them must stay
    t2 = (await client.ok("POST", f"{U}/o2/tokens", {"scope": "admin"}))["token"]
    rs = await asyncio.gather(client.patch(f"{U}/o2", {"roles": ["member"]}),
                              client.as_(t2).patch(f"{U}/owner", {"roles": ["member"]}))
    assert sorted(r.status for r in rs) in ([200, 409], [200, 401], [200, 403])
    owners = [u for u in (await a.ok("GET", U))["users"] if "owner" in u["roles"]]
    assert len(owners) == 1, owners
    assert adm and o2


async def test_groups_and_membership(client) -> None:  # type: ignore[no-untyped-def]
    g = await client.ok("POST", G, {"name": "Eng"})
    assert (await client.post(G, {"name": "eng"})).status == 409
    u, _ = await client.new_user("dave", ["member"])
    await client.ok("PUT", f"{G}/eng/members/dave", status=204)
    await client.ok("PUT", f"{G}/{g['id']}/members/{u['id']}", status=204)  # idempotent
    assert [m["username"] for m in (await client.ok("GET", f"{G}/eng"))["members"]] == ["dave"]
    assert (await client.ok("GET", f"{U}/dave"))["groups"] == [{"id": g["id"], "name": "Eng"}]
    assert (await client.put(f"{G}/eng/members/nobody")).status == 404
    assert (await client.put(f"{G}/nogroup/members/dave")).status == 404
    await client.ok("PATCH", f"{G}/eng", {"name": "platform"})
    await client.ok("POST", G, {"name": "eng"})
    assert (await client.patch(f"{G}/eng", {"name": "Platform"})).status == 409
    assert [x["name"] for x in (await client.ok("GET", G))["groups"]] == ["eng", "platform"]
    await client.ok("DELETE", f"{G}/platform/members/dave")
    assert (await client.delete(f"{G}/platform/members/dave")).status == 404
    await client.ok("DELETE", f"{G}/platform")
    assert (await client.get(f"{G}/platform")).status == 404
    assert (await client.delete(f"{G}/platform")).status == 404


async def test_byok_keys(client, start_registry) -> None:  # type: ignore[no-untyped-def]
    await client.ok("POST", P, {"name": "p", "type": "openai", "base_url": "https://api.openai.com/v1"})
    await client.ok("POST", P, {"name": "closed", "type": "openai", "base_url": "https://api.openai.com/v1",
                                "allow_byok": False})
    await client.ok("POST", P, {"name": "off", "type": "openai", "base_url": "https://api.openai.com/v1",
                                "enabled": False})
    _, t = await client.new_user("fay", ["member"])
    f = client.as_(t)
    k = await f.ok("PUT", f"{U}/me/ai/provider-keys/p", {"api_key": " sk-fay-one-12345 "})
    assert k["hint"] == "sk-…2345" and k["provider_name"] == "p"
    k2 = await f.ok("PUT", f"{U}/fay/ai/provider-keys/p", {"api_key": "sk-fay-two-67890"})
    assert k2["hint"] == "sk-…7890" and k2["created_at"] == k["created_at"]
    assert [x["hint"] for x in (await f.ok("GET", f"{U}/me/ai/provider-keys"))["provider_keys"]] == ["sk-…7890"]
    assert (await f.put(f"{U}/me/ai/provider-keys/closed", {"api_key": "sk-xxxxxxxxx"})).status == 403
    assert (await f.put(f"{U}/me/ai/provider-keys/off", {"api_key": "sk-xxxxxxxxx"})).status == 409
    r = await f.put(f"{U}/me/ai/provider-keys/p", {"api_key": ""})
    assert r.status == 400 and r.body["validations"][0]["field"] == "api_key"
    # an admin can see and remove a member's key (offboarding)
    assert len((await client.ok("GET", f"{U}/fay/ai/provider-keys"))["provider_keys"]) == 1
    await client.ok("DELETE", f"{U}/fay/ai/provider-keys/p")
    assert (await f.delete(f"{U}/me/ai/provider-keys/p")).status == 404
    # AIGW_ALLOW_BYOK=false refuses storing keys
    other = await start_registry(AIGW_ALLOW_BYOK="false")
    r = await other.client.put(f"{U}/me/ai/provider-keys/p", {"api_key": "sk-xxxxxxxxx"})
    assert r.status == 403 and "BYOK" in r.body["message"]


# ------------------------------------------------------------------ role matrix

ROUTES = [
    # (method, path, body, who may: "admin" = owner+admin, "self" = everyone on their own account)
    ("GET", P, None, "admin"),
    ("POST", P, {"name": "new", "type": "openai", "base_url": "https://a.example.com"}, "admin"),
    ("GET", f"{P}/p", None, "admin"),
    ("PATCH", f"{P}/p", {"display_name": "x"}, "admin"),
    ("GET", f"{P}/p/keys", None, "admin"),
    ("POST", f"{P}/p/keys", {"api_key": "sk-aaaaaaaaaaaa"}, "admin"),
    ("DELETE", f"{P}/p/keys/{{key}}", None, "admin"),
    ("DELETE", f"{P}/gone", None, "admin"),
    ("GET", f"{U}/me/ai/provider-keys", None, "self"),
    ("PUT", f"{U}/me/ai/provider-keys/p", {"api_key": "sk-aaaaaaaaaaaa"}, "self"),
    ("DELETE", f"{U}/me/ai/provider-keys/p", None, "self"),
    ("GET", f"{U}/target/ai/provider-keys", None, "admin"),
    ("GET", f"{U}/me/ai/provider-configs", None, "self"),
    ("GET", f"{U}/target/ai/provider-configs", None, "admin"),
    ("GET", U, None, "admin"),
    ("POST", U, {"username": "new-{role}"}, "admin"),
    ("GET", f"{U}/me", None, "self"),
    ("GET", f"{U}/target", None, "admin"),
    ("PATCH", f"{U}/target", {"email": "t@example.com"}, "admin"),
    ("DELETE", f"{U}/victim-{{role}}", None, "admin"),
    ("GET", f"{U}/me/tokens", None, "self"),
    ("POST", f"{U}/me/tokens", {"name": "x"}, "self"),
    ("GET", f"{U}/target/tokens", None, "admin"),
    ("POST", f"{U}/target/tokens", {}, "admin"),
    ("DELETE", f"{U}/me/tokens/{{own_token}}", None, "self"),
    ("GET", G, None, "admin"),
    ("POST", G, {"name": "g-{role}"}, "admin"),
    ("GET", f"{G}/eng", None, "admin"),
    ("PATCH", f"{G}/eng", {"name": "eng"}, "admin"),
    ("PUT", f"{G}/eng/members/target", None, "admin"),
    ("DELETE", f"{G}/eng/members/target", None, "admin"),
    ("DELETE", f"{G}/g-del-{{role}}", None, "admin"),
    ("GET", "/api/v2/audit-logs", None, "admin"),
    ("POST", "/api/v2/secrets/rotate", {"batch_size": 10}, "owner"),
]


def test_role_matrix_covers_the_route_table() -> None:
    """Every route of the registry's table has a row above, and a route the table marks admin-only is not
    expected to let a member through (the table is what the router checks)."""
    from aigw_registry.api import ROUTES as TABLE

    for r in TABLE:
        if r.access == "public":
            continue
        template = re.compile("^" + re.sub(r"\{\w+\}", "[^/]+", r.path) + "$")  # paths hold no other metacharacters
        rows = [who for method, path, _, who in ROUTES if method == r.method and template.match(path)]
        assert rows, f"{r.method} {r.path} has no row in the role matrix"
        if r.access == "admin":
            assert "self" not in rows, f"{r.method} {r.path} is admin-only in the table"


async def test_role_matrix(client) -> None:  # type: ignore[no-untyped-def]
    await client.ok("POST", P, {"name": "p", "type": "openai", "base_url": "https://a.example.com"})
    await client.ok("POST", P, {"name": "gone", "type": "openai", "base_url": "https://a.example.com"})
    await client.ok("POST", G, {"name": "eng"})
    await client.new_user("target", ["member"])
    tokens = {"owner": client.token}
    for role in ("admin", "member"):
        tokens[role] = (await client.new_user(f"{role}-user", [role]))[1]
    checked = 0
    for role in ("member", "admin", "owner"):
        c = client.as_(tokens[role])
        await client.ok("POST", U, {"username": f"victim-{role}"})
        await client.ok("POST", G, {"name": f"g-del-{role}"})
        for method, path, body, who in ROUTES:
            if "{key}" in path:
                path = path.replace("{key}", (await client.ok("POST", f"{P}/p/keys", {"api_key": "sk-bbbbbbbbbbbb"}))["id"])
            if "{own_token}" in path:
                path = path.replace("{own_token}", (await c.ok("POST", f"{U}/me/tokens", {}))["id"])
            path = path.replace("{role}", role)
            if body:
                body = {k: (val.replace("{role}", role) if isinstance(val, str) else val) for k, val in body.items()}
            allowed = who == "self" or role == "owner" or (who == "admin" and role == "admin")
            r = await c.call(method, path, body)
            if allowed:
                assert r.status < 300, (role, method, path, r)
            else:
                assert r.status == 403, (role, method, path, r)
                assert r.body["message"]
            if method == "DELETE" and path == f"{P}/gone" and allowed:
                await client.ok("POST", P, {"name": "gone", "type": "openai", "base_url": "https://a.example.com"})
            if method == "POST" and path == P and allowed:
                await client.ok("DELETE", f"{P}/new")
            for bad in (None, "aigw_not-a-real-token", tokens[role] + "x"):
                r = await client.as_(bad).call(method, path, body)
                assert r.status == 401, (bad, method, path, r)
            checked += 1
    assert checked == 3 * len(ROUTES)
    # the OpenAPI document needs no token
    r = await client.as_(None).get("/api/v2/openapi.json")
    assert r.status == 200 and r.body["openapi"].startswith("3.")
    # a member cannot reach another user's account
    m = client.as_(tokens["member"])
    for method, path in [("GET", f"{U}/target"), ("GET", f"{U}/target/tokens"), ("POST", f"{U}/target/tokens"),
                         ("GET", f"{U}/target/ai/provider-keys"), ("PUT", f"{U}/target/ai/provider-keys/p"),
                         ("DELETE", f"{U}/target/tokens/{ZERO}"), ("PATCH", f"{U}/me")]:
        r = await m.call(method, path, {"api_key": "sk-aaaaaaaaaa"} if method == "PUT" else ({} if method != "GET" and method != "DELETE" else None))
        assert r.status == 403, (method, path, r)
