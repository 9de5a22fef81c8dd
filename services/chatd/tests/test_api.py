"""chatd's control API: chats, model configs following the registry, skills RBAC and limits."""

from __future__ import annotations

import asyncio

import asyncpg

from aigw_common.schemas import AuthRevoked

SKILLS = "/api/experimental/users/{}/skills"


async def test_chats_crud_and_visibility(world):
    await world.start()
    member, chat_id = await world.setup_chat()
    api = world.api(member)
    other = world.api(world.registry.add_user())
    owner = world.api(world.registry.add_user(roles=["owner"]))

    mc_id = (await api.ok("GET", "/api/experimental/chats/model-configs"))["model_configs"][0]["id"]
    second = await api.ok("POST", "/api/experimental/chats", {"model_config_id": mc_id, "title": "second"}, status=201)
    assert second["title"] == "second" and second["status"] == "idle" and second["messages"] == []
    assert second["last_error"] is None and second["last_turn_summary"] is None
    listed = (await api.ok("GET", "/api/experimental/chats"))["chats"]
    assert [c["id"] for c in listed] == [second["id"], chat_id]  # newest first

    page = await api.ok("GET", "/api/experimental/chats?limit=1")
    assert [c["id"] for c in page["chats"]] == [second["id"]] and page["next_cursor"]
    page2 = await api.ok("GET", f"/api/experimental/chats?limit=1&cursor={page['next_cursor']}")
    assert [c["id"] for c in page2["chats"]] == [chat_id] and page2["next_cursor"] is None

    renamed = await api.ok("PATCH", f"/api/experimental/chats/{chat_id}", {"title": "renamed"})
    assert renamed["title"] == "renamed"
    await api.ok("PATCH", f"/api/experimental/chats/{chat_id}", {"archived": True})
    assert [c["id"] for c in (await api.ok("GET", "/api/experimental/chats?archived=false"))["chats"]] == [second["id"]]
    assert (await api.call("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "x"}))[0] == 409

    # someone else's chat is invisible; an owner sees everything
    assert (await other.call("GET", f"/api/experimental/chats/{chat_id}"))[0] == 404
    assert (await other.call("DELETE", f"/api/experimental/chats/{chat_id}"))[0] == 404
    assert (await other.ok("GET", "/api/experimental/chats"))["chats"] == []
    assert (await owner.ok("GET", f"/api/experimental/chats/{chat_id}"))["title"] == "renamed"

    # validation, auth
    status, body = await api.call("POST", "/api/experimental/chats", {"model_config_id": mc_id, "colour": "red"})
    assert status == 400 and body["validations"]
    assert (await api.call("POST", "/api/experimental/chats",
                           {"model_config_id": "00000000-0000-0000-0000-000000000000"}))[0] == 400
    assert (await api.call("POST", f"/api/experimental/chats/{second['id']}/messages", {"content": "  "}))[0] == 400
    anon = world.api(member)
    anon.token = "aigw_not-a-real-token-xxxxxxxxxxxx"
    assert (await anon.call("GET", "/api/experimental/chats"))[0] == 401
    assert (await api.call("GET", "/api/experimental/chats/not-a-uuid"))[0] == 404

    await api.ok("DELETE", f"/api/experimental/chats/{chat_id}", status=204)
    assert (await api.call("GET", f"/api/experimental/chats/{chat_id}"))[0] == 404


async def test_model_configs_follow_the_provider(world):
    await world.start()
    member, chat_id = await world.setup_chat()
    api = world.api(member)
    configs = (await api.ok("GET", "/api/experimental/chats/model-configs"))["model_configs"]
    assert len(configs) == 1 and configs[0]["enabled"] is True and configs[0]["provider"] == "openai"
    # members may not create model configs; unknown providers are a 400
    assert (await api.call("POST", "/api/experimental/chats/model-configs",
                           {"display_name": "x", "provider": "openai", "model": "m"}))[0] == 403
    admin = world.api(world.registry.add_user(roles=["admin"]))
    status, body = await admin.call("POST", "/api/experimental/chats/model-configs",
                                    {"display_name": "x", "provider": "nosuch", "model": "m"})
    assert status == 400 and body["validations"][0]["field"] == "provider"
    by_id = await admin.ok("POST", "/api/experimental/chats/model-configs",
                           {"display_name": "by id", "provider": "prov-openai", "model": "gpt-4.1-mini"}, status=201)
    assert by_id["provider"] == "openai"

    async def enabled():
        return [c["enabled"] for c in (await api.ok("GET", "/api/experimental/chats/model-configs"))["model_configs"]]

    world.registry.put_provider("openai", "openai", world.mock.url + "/v1", enabled=False)
    await world.registry.publish_changed()
    await world.eventually(lambda: _eq(enabled(), [False, False]))
    assert (await api.call("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "hi"}))[0] == 409
    assert (await api.call("POST", "/api/experimental/chats", {"model_config_id": configs[0]["id"]}))[0] == 409

    world.registry.put_provider("openai", "openai", world.mock.url + "/v1", enabled=True)
    await world.registry.publish_changed()
    await world.eventually(lambda: _eq(enabled(), [True, True]))
    assert (await api.call("POST", f"/api/experimental/chats/{chat_id}/messages", {"content": "hi"}))[0] == 202


async def _eq(coro, want):
    return (await coro) == want


async def test_registry_away_degrades_to_last_known(world):
    chatd = await world.start()
    member, chat_id = await world.setup_chat()
    directory = chatd.deps.directory
    known = dict(directory.providers)
    # the registry goes away: refreshes fail fast (timeout), and we keep what we knew
    await world.registry.bus.close()
    assert await directory.refresh() is False
    assert directory.providers == known and directory.last_error
    # the identity is still cached from setup; the turn runs on the last known provider row
    events = await world.turn(member, chat_id, "hi")
    assert any(e == "message" and d["role"] == "assistant" for e, d in events)


async def test_skills_crud_rbac_and_limits(world):
    await world.start()
    alice = world.registry.add_user(username="alice")
    bob = world.registry.add_user(username="bob")
    owner_user = world.registry.add_user(roles=["owner"])
    a, b, owner = world.api(alice), world.api(bob), world.api(owner_user)

    s = await a.ok("POST", SKILLS.format("me"), {"name": "review", "description": "d", "content": "be strict"}, 201)
    assert s["name"] == "review" and s["user_id"] == alice.user_id and s["content"] == "be strict"
    assert (await a.ok("GET", SKILLS.format(alice.user_id)))["skills"][0]["id"] == s["id"]
    assert (await a.ok("GET", SKILLS.format("alice") + "/review"))["id"] == s["id"]
    assert (await a.ok("GET", SKILLS.format("me") + f"/{s['id']}"))["name"] == "review"
    patched = await a.ok("PATCH", SKILLS.format("me") + "/review", {"description": "new"})
    assert patched["description"] == "new" and patched["content"] == "be strict"

    # names unique per user, not across users
    assert (await a.call("POST", SKILLS.format("me"), {"name": "review", "content": "x"}))[0] == 409
    await b.ok("POST", SKILLS.format("me"), {"name": "review", "content": "bob's"}, 201)
    await a.ok("POST", SKILLS.format("me"), {"name": "other", "content": "x"}, 201)
    assert (await a.call("PATCH", SKILLS.format("me") + "/other", {"name": "review"}))[0] == 409

    # a member cannot touch another member's skills
    for method, path, body in [("GET", SKILLS.format(alice.user_id), None),
                               ("GET", SKILLS.format("alice") + "/review", None),
                               ("POST", SKILLS.format(alice.user_id), {"name": "x", "content": "y"}),
                               ("PATCH", SKILLS.format(alice.user_id) + "/review", {"content": "y"}),
                               ("DELETE", SKILLS.format(alice.user_id) + "/review", None)]:
        assert (await b.call(method, path, body))[0] == 403, (method, path)
    # an owner may read and delete anyone's skills, but not create or edit them
    assert [x["name"] for x in (await owner.ok("GET", SKILLS.format(alice.user_id)))["skills"]] == ["other", "review"]
    assert (await owner.ok("GET", SKILLS.format("alice") + "/review"))["content"] == "be strict"
    assert (await owner.call("POST", SKILLS.format(alice.user_id), {"name": "x", "content": "y"}))[0] == 403
    assert (await owner.call("PATCH", SKILLS.format(alice.user_id) + "/review", {"content": "y"}))[0] == 403
    await owner.ok("DELETE", SKILLS.format(alice.user_id) + "/other", status=204)
    assert (await a.call("GET", SKILLS.format("me") + "/other"))[0] == 404

    # bounds: description 256 characters, content 64 KiB, names by grammar
    ok_desc, ok_content = "d" * 256, "c" * (64 * 1024)
    await a.ok("POST", SKILLS.format("me"), {"name": "big", "description": ok_desc, "content": ok_content}, 201)
    for body, field in [({"name": "x1", "description": "d" * 257, "content": "c"}, "description"),
                        ({"name": "x2", "content": "c" * (64 * 1024 + 1)}, "content"),
                        ({"name": "x3", "content": "é" * (32 * 1024 + 1)}, "content"),
                        ({"name": "x4", "content": ""}, "content"),
                        ({"name": "Bad Name", "content": "c"}, "name"),
                        ({"name": "x5", "content": "c", "extra": 1}, "extra")]:
        status, err = await a.call("POST", SKILLS.format("me"), body)
        assert status == 400 and err["validations"][0]["field"] == field, (body.keys(), err)

    # at most 100 per user
    have = len((await a.ok("GET", SKILLS.format("me")))["skills"])
    await asyncio.gather(*(a.ok("POST", SKILLS.format("me"), {"name": f"s{i}", "content": "x"}, 201)
                           for i in range(100 - have)))
    status, err = await a.call("POST", SKILLS.format("me"), {"name": "one-too-many", "content": "x"})
    assert status == 409 and "100" in err["message"]
    assert (await b.call("POST", SKILLS.format("me"), {"name": "fine", "content": "x"}))[0] == 201

    # every change audited
    conn = await asyncpg.connect(world.settings.database_url)
    try:
        actions = {r["action"] for r in await conn.fetch("SELECT action FROM chatd.audit_log")}
        deleted_by_owner = await conn.fetchval(
            "SELECT count(*) FROM chatd.audit_log WHERE action = 'skill.delete' AND actor_id = $1 AND target_user_id = $2",
            owner_user.user_id, alice.user_id)
    finally:
        await conn.close()
    assert {"skill.create", "skill.update", "skill.delete"} <= actions and deleted_by_owner == 1


async def test_deleted_users_skills_go(world):
    await world.start()
    alice, bob = world.registry.add_user(), world.registry.add_user()
    a, b = world.api(alice), world.api(bob)
    await a.ok("POST", SKILLS.format("me"), {"name": "mine", "content": "x"}, 201)
    await b.ok("POST", SKILLS.format("me"), {"name": "mine", "content": "x"}, 201)
    bus = world.registry.bus
    # a cache eviction (role change) keeps skills; a deletion drops them
    await bus.publish(bus.subjects.auth_revoked, AuthRevoked(user_ids=[bob.user_id]))
    await bus.publish(bus.subjects.auth_revoked, AuthRevoked(user_ids=[alice.user_id], deleted_user_ids=[alice.user_id]))
    owner = world.api(world.registry.add_user(roles=["owner"]))

    async def alice_skills():
        return (await owner.ok("GET", SKILLS.format(alice.user_id)))["skills"]

    await world.eventually(lambda: _eq(alice_skills(), []))
    assert len((await b.ok("GET", SKILLS.format("me")))["skills"]) == 1


async def test_unknown_route_shapes(world):
    await world.start()
    member = world.registry.add_user()
    api = world.api(member)
    assert (await api.call("GET", "/api/experimental/chats/model-configs"))[0] == 200
    assert (await api.call("DELETE", "/api/experimental/chats/model-configs"))[0] in (404, 405)
    status, body = await api.call("POST", "/api/experimental/chats", raw=b"{not json")
    assert status == 400 and set(body) == {"message", "detail", "validations"}
