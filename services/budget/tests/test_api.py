"""The HTTP API (``docs/api.md``): budgets, prices, usage and interceptions, with roles."""

from __future__ import annotations

import json
import time

import asyncpg

from aigw_common.schemas import ToolUsage


async def record(budget, ev, events) -> None:  # type: ignore[no-untyped-def]
    for e in events:
        await budget.svc.record_batch([e])


async def test_budget_crud_roles_and_audit(budget, database_url: str) -> None:  # type: ignore[no-untyped-def]
    admin, member = budget.admin, budget.member
    assert (await member.call("GET", "/api/v2/groups/grp-eng/ai/budget"))[0] == 404  # member of it: no budget yet
    status, body = await member.call("PUT", "/api/v2/groups/grp-eng/ai/budget", {"spend_limit_micros": 1})
    assert status == 403 and body["message"]
    status, body = await admin.call("PUT", "/api/v2/groups/grp-eng/ai/budget", {"spend_limit_micros": -1})
    assert status == 400 and body["validations"][0]["field"] == "spend_limit_micros"
    status, body = await admin.call("PUT", "/api/v2/groups/grp-eng/ai/budget", {"spend_limit_micros": 5, "x": 1})
    assert status == 400
    status, body = await admin.call("PUT", "/api/v2/groups/grp-eng/ai/budget",
                                    {"spend_limit_micros": 100_000_000, "period": "month"})
    assert status == 200, body
    assert set(body) == {"spend_limit_micros", "period", "spent_micros", "reserved_micros", "period_start", "period_end"}
    assert body["spend_limit_micros"] == 100_000_000 and body["period"] == "month" and body["spent_micros"] == 0
    assert body["period_start"].endswith("-01T00:00:00Z") and body["period_end"] > body["period_start"]
    status, got = await member.call("GET", "/api/v2/groups/grp-eng/ai/budget")
    assert status == 200 and got == body
    assert (await member.call("GET", "/api/v2/groups/grp-ops/ai/budget"))[0] == 403  # not a member
    # user budgets: own via "me", others only for admins
    uid = budget.member_user.user_id
    assert (await admin.call("PUT", f"/api/v2/users/{uid}/ai/budget", {"spend_limit_micros": 7}))[0] == 200
    status, mine = await member.call("GET", "/api/v2/users/me/ai/budget")
    assert status == 200 and mine["spend_limit_micros"] == 7
    assert (await member.call("GET", f"/api/v2/users/{budget.admin_user.user_id}/ai/budget"))[0] == 403
    assert (await admin.call("DELETE", "/api/v2/groups/grp-eng/ai/budget"))[0] == 204
    assert (await admin.call("DELETE", "/api/v2/groups/grp-eng/ai/budget"))[0] == 404
    assert (await admin.call("GET", "/api/v2/groups/grp-eng/ai/budget"))[0] == 404
    c = await asyncpg.connect(database_url, server_settings={"search_path": "budget"})
    try:
        audit = await c.fetch("SELECT actor_id, action, target_type, target_id, before, after FROM audit_logs ORDER BY id")
    finally:
        await c.close()
    assert [(a["action"], a["target_type"], a["target_id"]) for a in audit] == [
        ("budget.created", "group", "grp-eng"), ("budget.created", "user", uid), ("budget.deleted", "group", "grp-eng")]
    assert audit[0]["actor_id"] == budget.admin_user.user_id and json.loads(audit[0]["after"])["spend_limit_micros"] == 100_000_000
    assert (await budget.client(budget.admin_user).call("GET", "/api/v2/ai/usage"))[0] == 200
    async with budget.session.get(budget.url + "/api/v2/ai/prices") as r:
        assert r.status == 401


async def test_prices_get_and_put(budget) -> None:  # type: ignore[no-untyped-def]
    status, body = await budget.member.call("GET", "/api/v2/ai/prices")
    assert status == 200 and {"gpt-4o", "claude-sonnet-4"} <= {p["model"] for p in body["prices"]}
    new = {"model": "my-model", "input_per_mtok_micros": 1_000_000, "output_per_mtok_micros": 2_000_000}
    assert (await budget.member.call("PUT", "/api/v2/ai/prices", new))[0] == 403
    status, row = await budget.admin.call("PUT", "/api/v2/ai/prices", new)
    assert status == 200 and row["cache_read_per_mtok_micros"] == 1_000_000 == row["cache_write_per_mtok_micros"]
    assert budget.svc.prices.table.lookup("my-model-2") is not None  # used for costs at once
    bad = dict(new, output_per_mtok_micros=-1)
    assert (await budget.admin.call("PUT", "/api/v2/ai/prices", bad))[0] == 400


async def test_usage_and_interceptions(budget, ev) -> None:  # type: ignore[no-untyped-def]
    me, other = budget.member_user.user_id, budget.admin_user.user_id
    now = time.time()
    for i in range(5):
        iid = f"m{i}"
        await record(budget, ev, [ev.started(iid, me, ["grp-eng"], at=now - 100 + i, session_id="s1", client="codex"),
                                  ev.tokens(iid, 0, input_tokens=1000, output_tokens=10, cache_read_tokens=5,
                                            reasoning_tokens=2, at=now - 99 + i),
                                  ev.ended(iid, at=now - 98 + i)])
    await record(budget, ev, [ToolUsage(event_id="tu", interception_id="m4", at=now, name="bash", call_id="c9",
                                        arguments="{}", injected=False)])
    await record(budget, ev, [ev.started("o1", other, [], model="claude-sonnet-4-0", at=now - 50),
                              ev.tokens("o1", 0, model="claude-sonnet-4-20250514", input_tokens=100, output_tokens=100)])
    status, u = await budget.admin.call("GET", "/api/v2/ai/usage", group_by="user")
    assert status == 200, u
    assert u["total"]["interceptions"] == 6 and u["total"]["input_tokens"] == 5100
    rows = {r["key"]: r for r in u["rows"]}
    assert rows[me]["interceptions"] == 5 and rows[me]["spend_micros"] == 5 * (150 + 6 + 1)
    assert rows[other]["spend_micros"] == 300 + 1500
    assert set(u["total"]) == {"interceptions", "spend_micros", "input_tokens", "output_tokens", "cache_read_tokens",
                               "cache_write_tokens", "reasoning_tokens"}
    # members see only their own
    status, mu = await budget.member.call("GET", "/api/v2/ai/usage", group_by="model")
    assert status == 200 and mu["total"]["interceptions"] == 5 and [r["key"] for r in mu["rows"]] == ["gpt-4o-mini"]
    status, g = await budget.admin.call("GET", "/api/v2/ai/usage", group_by="group", group="grp-eng")
    assert [(r["key"], r["interceptions"]) for r in g["rows"]] == [("grp-eng", 5)]
    status, d = await budget.admin.call("GET", "/api/v2/ai/usage", group_by="day")
    assert status == 200 and sum(r["interceptions"] for r in d["rows"]) == 6
    assert (await budget.admin.call("GET", "/api/v2/ai/usage", group_by="nope"))[0] == 400
    # interceptions: newest first, paginated by cursor, filters
    seen, cursor = [], None
    while True:
        params = {"limit": "2", "user": me}
        if cursor:
            params["cursor"] = cursor
        status, page = await budget.admin.call("GET", "/api/v2/ai/interceptions", **params)
        assert status == 200, page
        seen += [i["id"] for i in page["interceptions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["m4", "m3", "m2", "m1", "m0"]
    status, page = await budget.member.call("GET", "/api/v2/ai/interceptions", client="codex", session="s1")
    first = page["interceptions"][0]
    assert set(first) == {"id", "user_id", "provider", "model", "client", "session_id", "credential_kind", "status",
                          "started_at", "ended_at", "cost_micros", "token_usage", "prompt", "prompt_truncated", "tool_calls",
                          "key_id", "key_hint"}
    assert first["tool_calls"] == [{"name": "bash", "call_id": "c9", "arguments": "{}", "injected": False, "error": None,
                                    "truncated": False}]
    assert first["token_usage"] == {"input_tokens": 1000, "output_tokens": 10, "cache_read_tokens": 5,
                                    "cache_write_tokens": 0, "reasoning_tokens": 2}
    assert {i["id"] for i in page["interceptions"]} == {f"m{i}" for i in range(5)}
    status, one = await budget.member.call("GET", "/api/v2/ai/interceptions/o1")
    assert status == 404  # not theirs
    status, one = await budget.admin.call("GET", "/api/v2/ai/interceptions/o1")
    assert status == 200 and one["status"] == "running" and one["model"] == "claude-sonnet-4-0"
    status, _ = await budget.admin.call("GET", "/api/v2/ai/interceptions", cursor="garbage!")
    assert status == 400


async def test_key_that_answered_recorded_and_grouped(budget, ev) -> None:  # type: ignore[no-untyped-def]
    """key_id / key_hint come from the started event or, when it went out before any key answered, the ended one."""
    from aigw_common.schemas import InterceptionEnded

    me = budget.member_user.user_id
    await record(budget, ev, [ev.started("k1", me, key_id="key-a", credential_hint="sk-…aaaa"),
                              ev.tokens("k1", 0, input_tokens=10), ev.ended("k1")])
    late_end = InterceptionEnded(event_id="k2-e", interception_id="k2", at=time.time(), status="ok", status_code=200,
                                 key_id="key-b", key_hint="sk-…bbbb")
    await record(budget, ev, [ev.started("k2", me), late_end])
    # events out of order: the end (with the key) before the start (without one) keeps the key
    await record(budget, ev, [InterceptionEnded(event_id="k3-e", interception_id="k3", at=time.time(), status="interrupted",
                                                key_id="key-b", key_hint="sk-…bbbb"), ev.started("k3", me)])
    await record(budget, ev, [ev.started("k4", me, credential_kind="byok", credential_hint="sk-…user"), ev.ended("k4")])
    got = {}
    for iid in ("k1", "k2", "k3", "k4"):
        status, one = await budget.admin.call("GET", f"/api/v2/ai/interceptions/{iid}")
        assert status == 200, one
        got[iid] = (one["key_id"], one["key_hint"])
    assert got == {"k1": ("key-a", "sk-…aaaa"), "k2": ("key-b", "sk-…bbbb"), "k3": ("key-b", "sk-…bbbb"),
                   "k4": (None, None)}
    status, one = await budget.admin.call("GET", "/api/v2/ai/interceptions/k3")
    assert one["status"] == "interrupted"
    status, u = await budget.admin.call("GET", "/api/v2/ai/usage", group_by="key")
    assert status == 200, u
    assert {r["key"]: r["interceptions"] for r in u["rows"]} == {"key-a": 1, "key-b": 2, "": 1}
