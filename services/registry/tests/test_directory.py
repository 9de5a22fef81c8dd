"""The directory on the bus: lookups by id or name (live users only for references, deleted users' names
for ids), group membership, a bound on the batch, and ``directory.changed`` through the outbox."""

from __future__ import annotations

from aigw_common.schemas import DirectoryChanged, DirectoryLookup, DirectoryReply

from .test_bus import Inbox

U = "/api/v2/users"
G = "/api/v2/groups"


async def test_directory_lookup_and_change_events(registry, client, bus) -> None:  # type: ignore[no-untyped-def]
    changes = Inbox()
    await bus.subscribe(bus.subjects.directory_changed, DirectoryChanged, changes)
    await bus.flush()

    async def ask(**kw: list[str]) -> DirectoryReply:
        return await bus.request(bus.subjects.registry_directory, DirectoryLookup(**kw), DirectoryReply, timeout=5)

    ann, _ = await client.new_user("Ann", ["member"])
    await changes.wait_for(lambda m: ann["id"] in m.user_ids)
    g = await client.ok("POST", G, {"name": "eng"})
    await client.ok("PUT", f"{G}/eng/members/ann", status=204)
    await changes.wait_for(lambda m: ann["id"] in m.user_ids and g["id"] in m.group_ids)

    r = await ask(user_refs=["ANN", "nobody", "x\x00y"], group_refs=["Eng", g["id"], "nosuch"])
    assert [(e.id, e.name, e.group_ids, e.deleted) for e in r.users] == [(ann["id"], "Ann", [g["id"]], False)]
    assert [(e.id, e.name) for e in r.groups] == [(g["id"], "eng")]
    assert (await ask(user_refs=[ann["id"]])).users[0].name == "Ann"

    await client.ok("PATCH", f"{G}/eng", {"name": "platform"})
    await changes.wait_for(lambda m: m.group_ids == [g["id"]] and not m.user_ids)
    await client.ok("DELETE", f"{U}/ann")
    await changes.wait_for(lambda m: ann["id"] in m.user_ids and g["id"] in m.group_ids)
    # a deleted user is no longer a reference, but its id still has a name (history keeps its labels)
    assert (await ask(user_refs=["ann", ann["id"]])).users == []
    [e] = (await ask(user_ids=[ann["id"], "not-a-uuid"])).users
    assert (e.name, e.deleted) == ("Ann", True)

    refused = await ask(user_refs=["x"] * 501)
    assert refused.error and not refused.users
