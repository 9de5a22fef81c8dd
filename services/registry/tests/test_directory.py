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


async def test_audit_records_from_keypool(registry, client, bus) -> None:  # type: ignore[no-untyped-def]
    """keypool writes no registry table: it sends its audit records (key resets), signed, and the registry
    writes them. An unsigned record is dropped; an action keypool does not perform is refused."""
    import nats.errors
    import pytest

    from aigw_common.bus import encode
    from aigw_common.schemas import AuditAck, AuditRecord

    me = await client.ok("GET", f"{U}/me")
    rec = AuditRecord(actor_id=me["id"], actor_name=me["username"], action="provider_key.reset",
                      resource_type="provider_key", resource_id="k-1", before={"state": "revoked"},
                      after={"state": "valid"})
    ack = await bus.request(bus.subjects.registry_audit, rec, AuditAck, timeout=5)
    assert ack.error is None
    [row] = (await client.ok("GET", "/api/v2/audit-logs", params={"action": "provider_key.reset"}))["audit_logs"]
    assert (row["actor_name"], row["resource_id"], row["after"]) == (me["username"], "k-1", {"state": "valid"})
    bad = await bus.request(bus.subjects.registry_audit, AuditRecord(
        actor_id=None, actor_name="x", action="user.delete", resource_type="user", resource_id="u"), AuditAck,
        timeout=5)
    assert bad.error and "keypool" in bad.error
    assert bus.nc is not None
    with pytest.raises(nats.errors.TimeoutError):  # unsigned: dropped, never written
        await bus.nc.request(bus.subjects.registry_audit, encode(rec), timeout=1)
    assert len((await client.ok("GET", "/api/v2/audit-logs", params={"action": "provider_key.reset"}))[
        "audit_logs"]) == 1
