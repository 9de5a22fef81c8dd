"""Rate and concurrency limits in the budget service: the API (roles, validation, audit, state on the bus) and the
grant arithmetic that holds a limit across gateway replicas."""

from __future__ import annotations

import json
import time

import asyncpg

from aigw_budget.limits import grant_to
from aigw_common.bus import decode
from aigw_common.schemas import LimitLeaseItem, LimitsState

BODY = {"requests_per_minute": 5, "tokens_per_minute": None, "concurrent_requests": 2}


async def test_limits_crud_roles_validation_audit_and_state(budget, bus, database_url: str) -> None:  # type: ignore[no-untyped-def]
    admin, member = budget.admin, budget.member
    seen: list[LimitsState] = []

    async def on_state(m) -> None:  # type: ignore[no-untyped-def]
        seen.append(decode(m.data, LimitsState))

    await bus.nc.subscribe(bus.subjects.budget("limits"), cb=on_state)
    await bus.nc.flush()
    assert (await member.call("GET", "/api/v2/groups/grp-eng/ai/limits"))[0] == 404
    assert (await member.call("PUT", "/api/v2/groups/grp-eng/ai/limits", BODY))[0] == 403
    for bad in ({"requests_per_minute": -1}, {"requests_per_minute": "5"}, {"rpm": 5},
                {"tokens_per_minute": 2**40}):
        status, body = await admin.call("PUT", "/api/v2/groups/grp-eng/ai/limits", bad)
        assert status == 400, (bad, body)
    status, body = await admin.call("PUT", "/api/v2/groups/grp-eng/ai/limits", BODY)
    assert status == 200 and body == BODY
    status, got = await member.call("GET", "/api/v2/groups/grp-eng/ai/limits")
    assert status == 200 and got == BODY
    assert (await member.call("GET", "/api/v2/groups/grp-ops/ai/limits"))[0] == 403  # not a member
    uid = budget.member_user.user_id
    status, body = await admin.call("PUT", f"/api/v2/users/{uid}/ai/limits", {"tokens_per_minute": 1000})
    assert status == 200 and body == {"requests_per_minute": None, "tokens_per_minute": 1000, "concurrent_requests": None}
    assert (await member.call("GET", "/api/v2/users/me/ai/limits"))[1]["tokens_per_minute"] == 1000
    assert (await member.call("GET", f"/api/v2/users/{budget.admin_user.user_id}/ai/limits"))[0] == 403
    assert (await admin.call("PUT", "/api/v2/groups/grp-eng/ai/limits", {**BODY, "requests_per_minute": 9}))[0] == 200
    assert (await admin.call("DELETE", "/api/v2/groups/grp-eng/ai/limits"))[0] == 204
    assert (await admin.call("DELETE", "/api/v2/groups/grp-eng/ai/limits"))[0] == 404
    assert (await member.call("DELETE", f"/api/v2/users/{uid}/ai/limits"))[0] == 403
    c = await asyncpg.connect(database_url, server_settings={"search_path": "budget"})
    try:
        audit = await c.fetch("SELECT actor_id, action, target_type, target_id, before, after FROM audit_logs ORDER BY id")
    finally:
        await c.close()
    assert [(a["action"], a["target_type"], a["target_id"]) for a in audit] == [
        ("limits.created", "group", "grp-eng"), ("limits.created", "user", uid), ("limits.updated", "group", "grp-eng"),
        ("limits.deleted", "group", "grp-eng")]
    assert json.loads(audit[2]["before"])["requests_per_minute"] == 5
    assert json.loads(audit[2]["after"])["requests_per_minute"] == 9
    assert all(a["actor_id"] == budget.admin_user.user_id for a in audit)
    # every change went to the gateways
    for _ in range(100):
        if len(seen) >= 4:
            break
        await __import__("asyncio").sleep(0.02)
    assert [(s.subject_id, s.requests_per_minute, s.deleted) for s in seen] == [
        ("grp-eng", 5, False), (uid, None, False), ("grp-eng", 9, False), ("grp-eng", None, True)]


def test_grant_arithmetic() -> None:
    assert grant_to(5, 0, 0, 0, 1) == (1, False)
    assert grant_to(5, 4, 1, 1, 2) == (1, True)  # the other 4 are elsewhere: full
    assert grant_to(5, 3, 0, 0, 10) == (2, False)  # never beyond what others leave
    assert grant_to(5, 0, 3, 1, 1) == (1, False)  # hand back down to what is used
    assert grant_to(5, 6, 2, 2, 3) == (2, True)  # a lowered limit never takes back what was used


async def test_grants_hold_the_limit_across_gateways(budget) -> None:  # type: ignore[no-untyped-def]
    await budget.admin.call("PUT", "/api/v2/groups/grp-eng/ai/limits", {"requests_per_minute": 5, "concurrent_requests": 3})
    store = budget.svc.limits
    w = int(time.time() // 60)

    def item(seq: int, used: int, want: int, inflight: int = 0, slots: int = 0) -> LimitLeaseItem:
        return LimitLeaseItem(scope="group", subject_id="grp-eng", window=w, seq=seq, requests_used=used,
                              requests_want=want, inflight=inflight, slots_want=slots)

    a, _ = await store.grant("gw-a", item(1, 0, 3, slots=2))
    b, _ = await store.grant("gw-b", item(1, 0, 3, slots=2))
    assert (a.requests, b.requests) == (3, 2) and (a.slots, b.slots) == (2, 1)
    # b wants one more: a holds 3 unused, so it is not full; a is asked to hand back
    b2, reclaim = await store.grant("gw-b", item(2, 2, 3, inflight=1, slots=2))
    assert reclaim and b2.retry_in and b2.requests == 2 and not b2.requests_full and b2.slots == 1 and not b2.slots_full
    a2, _ = await store.grant("gw-a", item(2, 1, 1, slots=0))  # a hands back what it does not use
    assert a2.requests == 1 and a2.slots == 0
    b3, _ = await store.grant("gw-b", item(3, 2, 4, inflight=1, slots=3))
    assert b3.requests == 4 and b3.slots == 3 and not b3.requests_full
    c, reclaim = await store.grant("gw-c", item(1, 0, 1))
    assert c.requests == 0 and reclaim  # 1 + 4 granted, 2 of b's unused
    await store.grant("gw-b", item(4, 4, 4, inflight=3, slots=3))  # b used them all
    c2, reclaim = await store.grant("gw-c", item(2, 0, 1))
    assert c2.requests == 0 and c2.requests_full and not reclaim
    c3, _ = await store.grant("gw-c", item(3, 0, 0, slots=1))
    assert c3.slots == 0 and c3.slots_full  # 3 slots, all in use at b
    gone, _ = await store.grant("gw-a", LimitLeaseItem(scope="user", subject_id="nobody", window=w, seq=1))
    assert not gone.found
