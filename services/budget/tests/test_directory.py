"""Budget learns users and groups from the registry's directory on the bus, never from its tables.

An unknown name is a 404 (never taken for an id: no budget nothing would enforce), a registry that
cannot be asked is a 503, and a ``registry.directory.changed`` event makes a rename visible at once.
"""

from __future__ import annotations

import asyncpg

from aigw_testing.wait import eventually


async def test_unknown_names_are_404_and_create_nothing(budget, database_url: str) -> None:  # type: ignore[no-untyped-def]
    admin = budget.admin
    for path in ("/api/v2/groups/nosuch/ai/budget", "/api/v2/users/nobody/ai/budget",
                 "/api/v2/groups/00000000-0000-0000-0000-000000000000/ai/budget"):
        status, body = await admin.call("PUT", path, {"spend_limit_micros": 5})
        assert status == 404 and "not found" in body["message"], (path, body)
        assert (await admin.call("GET", path))[0] == 404
    status, _ = await admin.call("GET", "/api/v2/ai/usage", group="nosuch")
    assert status == 404
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "budget"})
    try:
        assert await conn.fetchval("SELECT count(*) FROM group_ai_budgets") == 0
        assert await conn.fetchval("SELECT count(*) FROM user_ai_budgets") == 0
    finally:
        await conn.close()


async def test_names_and_ids_resolve_and_follow_changes(budget) -> None:  # type: ignore[no-untyped-def]
    admin, stub = budget.admin, budget.stub
    gid = stub.add_group("research", "grp-research")
    status, body = await admin.call("PUT", "/api/v2/groups/Research/ai/budget", {"spend_limit_micros": 9})
    assert status == 200, body
    # by id, by name (case-insensitive): the same budget
    assert (await admin.call("GET", f"/api/v2/groups/{gid}/ai/budget"))[1] == body
    asked = stub.directory_requests
    assert (await admin.call("GET", "/api/v2/groups/research/ai/budget"))[0] == 200
    assert stub.directory_requests == asked  # cached
    # renamed in the registry: the change event evicts the cached name at once
    stub.groups[gid] = "lab"
    await stub.directory_changed(group_ids=[gid])
    await eventually(lambda: ("group", gid) not in budget.svc.directory._by_id, timeout=5)
    assert (await admin.call("GET", "/api/v2/groups/lab/ai/budget"))[0] == 200
    assert (await admin.call("GET", "/api/v2/groups/research/ai/budget"))[0] == 404
    assert await budget.svc.directory.names([("group", gid), ("group", "gone")]) == {
        ("group", gid): "lab", ("group", "gone"): "gone"}


async def test_no_registry_is_503_not_a_guess(budget) -> None:  # type: ignore[no-untyped-def]
    assert (await budget.admin.call("GET", "/api/v2/ai/prices"))[0] == 200  # the caller's identity is cached
    await budget.stub.bus.close()  # the only directory responder goes away
    budget.svc.directory.clear()
    status, body = await budget.admin.call("PUT", "/api/v2/groups/ops/ai/budget", {"spend_limit_micros": 5})
    assert status == 503 and "directory" in body["message"], body


def test_budget_reads_no_registry_table() -> None:
    from pathlib import Path

    import aigw_budget

    src = Path(aigw_budget.__file__).parent
    offenders = [f"{p.name}: {line.strip()}" for p in src.rglob("*.py") for line in p.read_text().splitlines()
                 if "registry." in line and ("SELECT" in line or "FROM" in line or "JOIN" in line)]
    assert not offenders, offenders
