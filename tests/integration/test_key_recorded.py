"""The key that finally answered is recorded, end to end: real registry, keypool, budget and gateway."""

from __future__ import annotations

from aigw_testing.system import OPENAI_KEY
from aigw_testing.wait import eventually

SECOND_KEY = "zzpool-openai-second-5Gh8Jk2Lm"


async def test_key_id_and_hint_recorded_after_failover(start_system) -> None:  # type: ignore[no-untyped-def]
    s = await start_system()
    reg, bud = s.urls["registry"], s.urls["budget"]
    prov = await s.owner.ok("GET", reg + "/api/v2/ai/providers/openai")
    first = prov["keys"][0]
    second = await s.owner.ok("POST", reg + "/api/v2/ai/providers/openai/keys", {"api_key": SECOND_KEY})

    async def gateway_has_both() -> bool:
        from aigw_gateway.app import LOADER

        p = s.app["gateway"][LOADER].current.by_name.get("openai")
        return p is not None and len(p.pool.keys) == 2
    await eventually(gateway_has_both, 10, "the gateway sees the second key")

    member = await s.member("kim")
    s.upstream.on_key(OPENAI_KEY, 429, {"Retry-After": "30"}, times=1)
    async with s.openai(member.token) as c:
        r = await c.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content
        # the first key cools: this one goes straight to the second as well
        await c.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "again"}])
    await s.ledger(expect=2)

    page = await s.owner.ok("GET", bud + "/api/v2/ai/interceptions")
    rows = page["interceptions"]
    assert len(rows) == 2
    for row in rows:
        assert row["credential_kind"] == "centralised"
        assert row["key_id"] == second["id"] and row["key_hint"] == second["hint"]
        assert SECOND_KEY not in str(row) and OPENAI_KEY not in str(row)
    usage = await s.owner.ok("GET", bud + "/api/v2/ai/usage", params={"group_by": "key"})
    assert {r["key"]: r["interceptions"] for r in usage["rows"]} == {second["id"]: 2}
    assert first["id"] != second["id"]
