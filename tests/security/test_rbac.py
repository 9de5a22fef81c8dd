"""The role x route matrix of budget, keypool and chatd (the registry's is in services/registry/tests).

The routes come from each service's OpenAPI route table, and the test fails when a route has no row
here, so a new route cannot ship unchecked. Every row is called as a member, an admin and the owner,
and as nobody, an unknown token and a revoked token (401 for all three). Members act on their own
resources and on someone else's; the expected status of each is spelled out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from aigw_budget.api import ROUTES as BUDGET_ROUTES
from aigw_chatd.routes import ROUTES as CHATD_ROUTES
from aigw_keypool.api import ROUTES as KEYPOOL_ROUTES
from aigw_testing.system import Api, Member, System
from aigw_testing.wait import eventually

pytestmark = pytest.mark.reliability
ROLES = ("member", "admin", "owner")


@dataclass
class World:
    s: System
    tokens: dict[str, str]  # role -> token
    users: dict[str, Member]  # "member", "admin", "other" (a second member)
    ids: dict[str, str]  # named resources

    def api(self, role: str) -> Api:
        return self.s.api(self.tokens[role])


@dataclass(frozen=True)
class Case:
    """One call: ``path``/``body`` may use {names} of ``World.ids``; ``want`` is the status per role."""

    path: str
    want: dict[str, int]
    body: Any = None
    prepare: Callable[[World, str], Any] | None = None  # (world, role) → awaitable, before each call


def same(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


def admin_only(ok: int) -> dict[str, int]:
    return {"member": 403, "admin": ok, "owner": ok}


async def _put_group_budget(w: World, _role: str) -> None:
    await w.api("owner").ok("PUT", w.s.url("budget", "/api/v2/groups/eng/ai/budget"), {"spend_limit_micros": 10**6})


async def _put_user_budget(w: World, _role: str) -> None:
    await w.api("owner").ok("PUT", w.s.url("budget", f"/api/v2/users/{w.users['member'].id}/ai/budget"),
                            {"spend_limit_micros": 10**6})


async def _put_group_limits(w: World, _role: str) -> None:
    await w.api("owner").ok("PUT", w.s.url("budget", "/api/v2/groups/eng/ai/limits"), {"requests_per_minute": 1000})


async def _put_user_limits(w: World, _role: str) -> None:
    await w.api("owner").ok("PUT", w.s.url("budget", f"/api/v2/users/{w.users['member'].id}/ai/limits"),
                            {"concurrent_requests": 100})


async def _own_chat(w: World, role: str) -> None:
    w.ids["own_chat"] = (await w.api(role).ok("POST", w.s.url("chatd", "/api/experimental/chats"),
                                              {"model_config_id": w.ids["mc"]}, status=201))["id"]


async def _own_skill(w: World, role: str) -> None:
    api = w.api(role)
    await api.call("DELETE", w.s.url("chatd", "/api/experimental/users/me/skills/mine"))
    await api.ok("POST", w.s.url("chatd", "/api/experimental/users/me/skills"), {"name": "mine", "content": "x"},
                 status=201)


async def _others_skill(w: World, _role: str) -> None:
    other = w.s.api(w.users["other"].token)
    if (await other.call("GET", w.s.url("chatd", "/api/experimental/users/me/skills/theirs"))).status == 404:
        await other.ok("POST", w.s.url("chatd", "/api/experimental/users/me/skills"),
                       {"name": "theirs", "content": "y"}, status=201)


B, C, K = "/api/v2", "/api/experimental", "/api/v2/ai/providers/openai/keys/health"
MATRIX: dict[tuple[str, str, str], list[Case]] = {
    # budget: members read their own user budget and their groups' budgets; admins write
    ("budget", "GET", B + "/groups/{ref}/ai/budget"): [
        Case(B + "/groups/eng/ai/budget", same(200), prepare=_put_group_budget),
        Case(B + "/groups/ops/ai/budget", {"member": 403, "admin": 404, "owner": 404}),
    ],
    ("budget", "PUT", B + "/groups/{ref}/ai/budget"): [
        Case(B + "/groups/eng/ai/budget", admin_only(200), {"spend_limit_micros": 5}),
    ],
    ("budget", "DELETE", B + "/groups/{ref}/ai/budget"): [
        Case(B + "/groups/eng/ai/budget", admin_only(204), prepare=_put_group_budget),
    ],
    ("budget", "GET", B + "/users/{ref}/ai/budget"): [
        Case(B + "/users/{member_id}/ai/budget", {"member": 200, "admin": 200, "owner": 200}, prepare=_put_user_budget),
        Case(B + "/users/{other_id}/ai/budget", {"member": 403, "admin": 404, "owner": 404}),
    ],
    ("budget", "PUT", B + "/users/{ref}/ai/budget"): [
        Case(B + "/users/me/ai/budget", admin_only(200), {"spend_limit_micros": 5}),
    ],
    ("budget", "DELETE", B + "/users/{ref}/ai/budget"): [
        Case(B + "/users/{member_id}/ai/budget", admin_only(204), prepare=_put_user_budget),
    ],
    # limits: the same roles as budgets
    ("budget", "GET", B + "/groups/{ref}/ai/limits"): [
        Case(B + "/groups/eng/ai/limits", same(200), prepare=_put_group_limits),
        Case(B + "/groups/ops/ai/limits", {"member": 403, "admin": 404, "owner": 404}),
    ],
    ("budget", "PUT", B + "/groups/{ref}/ai/limits"): [
        Case(B + "/groups/eng/ai/limits", admin_only(200), {"requests_per_minute": 5000}),
    ],
    ("budget", "DELETE", B + "/groups/{ref}/ai/limits"): [
        Case(B + "/groups/eng/ai/limits", admin_only(204), prepare=_put_group_limits),
    ],
    ("budget", "GET", B + "/users/{ref}/ai/limits"): [
        Case(B + "/users/{member_id}/ai/limits", same(200), prepare=_put_user_limits),
        Case(B + "/users/{other_id}/ai/limits", {"member": 403, "admin": 404, "owner": 404}),
    ],
    ("budget", "PUT", B + "/users/{ref}/ai/limits"): [
        Case(B + "/users/me/ai/limits", admin_only(200), {"concurrent_requests": 500}),
    ],
    ("budget", "DELETE", B + "/users/{ref}/ai/limits"): [
        Case(B + "/users/{member_id}/ai/limits", admin_only(204), prepare=_put_user_limits),
    ],
    ("budget", "GET", B + "/ai/prices"): [Case(B + "/ai/prices", same(200))],
    ("budget", "PUT", B + "/ai/prices"): [
        Case(B + "/ai/prices", admin_only(200), {"model": "rbac-model", "input_per_mtok_micros": 1,
                                                   "output_per_mtok_micros": 2}),
    ],
    ("budget", "GET", B + "/ai/usage"): [Case(B + "/ai/usage", same(200))],
    ("budget", "GET", B + "/ai/interceptions"): [Case(B + "/ai/interceptions", same(200))],
    ("budget", "GET", B + "/ai/interceptions/{id}"): [
        Case(B + "/ai/interceptions/{member_interception}", same(200)),
        Case(B + "/ai/interceptions/{other_interception}", {"member": 404, "admin": 200, "owner": 200}),
    ],
    # keypool: admins only
    ("keypool", "GET", "/api/v2/ai/providers/{idOrName}/keys/health"): [Case(K, admin_only(200))],
    ("keypool", "POST", "/api/v2/ai/providers/{idOrName}/keys/{keyId}/reset"): [
        Case("/api/v2/ai/providers/openai/keys/{openai_key}/reset", admin_only(200)),
    ],
    # chatd: model configs are created by admins; chats and skills are their owner's (others' chats are 404)
    ("chatd", "GET", C + "/chats/model-configs"): [Case(C + "/chats/model-configs", same(200))],
    ("chatd", "POST", C + "/chats/model-configs"): [
        Case(C + "/chats/model-configs", admin_only(201), {"display_name": "X", "provider": "openai", "model": "m"}),
    ],
    ("chatd", "GET", C + "/chats"): [Case(C + "/chats", same(200))],
    ("chatd", "POST", C + "/chats"): [Case(C + "/chats", same(201), {"model_config_id": "{mc}"})],
    ("chatd", "GET", C + "/chats/{chat}"): [
        Case(C + "/chats/{own_chat}", same(200), prepare=_own_chat),
        Case(C + "/chats/{other_chat}", {"member": 404, "admin": 404, "owner": 200}),
    ],
    ("chatd", "PATCH", C + "/chats/{chat}"): [
        Case(C + "/chats/{own_chat}", same(200), {"title": "renamed"}, prepare=_own_chat),
        Case(C + "/chats/{other_chat}", {"member": 404, "admin": 404, "owner": 200}, {"archived": False}),
    ],
    ("chatd", "DELETE", C + "/chats/{chat}"): [
        Case(C + "/chats/{own_chat}", same(204), prepare=_own_chat),
        Case(C + "/chats/{other_chat_2}", {"member": 404, "admin": 404, "owner": 204}),
    ],
    ("chatd", "POST", C + "/chats/{chat}/messages"): [
        Case(C + "/chats/{own_chat}/messages", same(202), {"content": "hello"}, prepare=_own_chat),
        Case(C + "/chats/{other_chat}/messages", {"member": 404, "admin": 404, "owner": 202}, {"content": "hi"}),
    ],
    ("chatd", "POST", C + "/chats/{chat}/interrupt"): [
        Case(C + "/chats/{own_chat}/interrupt", same(202), prepare=_own_chat),
        Case(C + "/chats/{other_chat}/interrupt", {"member": 404, "admin": 404, "owner": 202}),
    ],
    ("chatd", "GET", C + "/chats/{chat}/stream"): [
        Case(C + "/chats/{own_chat}/stream", same(200), prepare=_own_chat),
        Case(C + "/chats/{other_chat}/stream", {"member": 404, "admin": 404, "owner": 200}),
    ],
    ("chatd", "GET", C + "/users/{user}/skills"): [
        Case(C + "/users/me/skills", same(200)),
        Case(C + "/users/{other_id}/skills", {"member": 403, "admin": 403, "owner": 200}),
    ],
    ("chatd", "POST", C + "/users/{user}/skills"): [
        Case(C + "/users/{other_id}/skills", same(403), {"name": "planted", "content": "x"}),
    ],
    ("chatd", "GET", C + "/users/{user}/skills/{skill}"): [
        Case(C + "/users/me/skills/mine", same(200), prepare=_own_skill),
        Case(C + "/users/{other_id}/skills/theirs", {"member": 403, "admin": 403, "owner": 200},
             prepare=_others_skill),
    ],
    ("chatd", "PATCH", C + "/users/{user}/skills/{skill}"): [
        Case(C + "/users/me/skills/mine", same(200), {"description": "d"}, prepare=_own_skill),
        Case(C + "/users/{other_id}/skills/theirs", same(403), {"content": "hijacked"}, prepare=_others_skill),
    ],
    ("chatd", "DELETE", C + "/users/{user}/skills/{skill}"): [
        Case(C + "/users/me/skills/mine", same(204), prepare=_own_skill),
        Case(C + "/users/{other_id}/skills/theirs", {"member": 403, "admin": 403, "owner": 204},
             prepare=_others_skill),
    ],
}


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


async def _world(s: System) -> World:
    owner = s.api(s.owner_token)
    reg = s.urls["registry"]
    users = {"member": await s.member("mia"), "admin": await s.member("ada", ("admin",)),
             "other": await s.member("otto")}
    for g in ("eng", "ops"):
        await owner.ok("POST", reg + "/api/v2/groups", {"name": g})
    await owner.ok("PUT", reg + f"/api/v2/groups/eng/members/{users['member'].id}", status=204)
    ids = {"member_id": users["member"].id, "other_id": users["other"].id}
    ids["openai_key"] = (await owner.ok("GET", reg + "/api/v2/ai/providers/openai"))["keys"][0]["id"]
    # an interception each for the member and the other member
    for who in ("member", "other"):
        await s.openai(users[who].token).chat.completions.create(model="gpt-4.1",
                                                                 messages=[{"role": "user", "content": "hi"}])
    ledger = await s.ledger(expect=2)
    for row in ledger.interceptions:
        ids["member_interception" if row["user_id"] == users["member"].id else "other_interception"] = row["id"]
    ids["mc"] = (await owner.ok("POST", s.url("chatd", "/api/experimental/chats/model-configs"),
                                {"display_name": "GPT", "provider": "openai", "model": "gpt-4.1"}))["id"]
    other = s.api(users["other"].token)
    for name in ("other_chat", "other_chat_2"):
        ids[name] = (await other.ok("POST", s.url("chatd", "/api/experimental/chats"), {"model_config_id": ids["mc"]}))["id"]
    tokens = {"member": users["member"].token, "admin": users["admin"].token, "owner": s.owner_token}
    return World(s, tokens, users, ids)


async def _call(w: World, role_or_token: str | None, method: str, svc: str, case: Case) -> int:
    api = w.api(role_or_token) if role_or_token in w.tokens else w.s.api(role_or_token)
    url = w.s.url(svc, _fill(case.path, w.ids))
    body = _fill(case.body, w.ids)
    if url.endswith("/stream"):  # an SSE stream: the status line is the answer; do not wait for its end
        headers = {"Authorization": f"Bearer {api.token}"} if api.token else {}
        async with w.s.http.get(url, headers=headers) as r:
            return r.status
    return (await api.call(method, url, body)).status


async def test_role_matrix_budget_keypool_chatd(start_system, reliability) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=("registry", "keypool", "budget", "gateway", "chatd"))
    documented = {(svc, r.method, r.path) for svc, routes in (("budget", BUDGET_ROUTES), ("keypool", KEYPOOL_ROUTES),
                                                               ("chatd", CHATD_ROUTES)) for r in routes
                  if r.access != "public"}
    assert documented == set(MATRIX), f"routes without a row: {documented - set(MATRIX)}; " \
                                      f"rows without a route: {set(MATRIX) - documented}"
    w = await _world(s)
    revoked = await s.member("gone")
    await s.owner.ok("DELETE", s.url("registry", f"/api/v2/users/{revoked.id}/tokens/{revoked.token_id}"))
    wrong: list[str] = []
    calls = 0
    for (svc, method, _template), cases in MATRIX.items():
        for case in cases:
            for role in ROLES:
                if case.prepare is not None:
                    await case.prepare(w, role)
                got = await _call(w, role, method, svc, case)
                calls += 1
                if got != case.want[role]:
                    wrong.append(f"{role} {method} {svc}{_fill(case.path, w.ids)}: {got}, want {case.want[role]}")
            for bad in (None, "aigw_not-a-real-token", revoked.token):
                got = await _call(w, bad, method, svc, case)
                calls += 1
                if got != 401:
                    wrong.append(f"token {bad and bad[:12]!r} {method} {svc}{case.path}: {got}, want 401")
    assert not wrong, "\n".join(wrong)
    reliability.record("RBAC matrix (budget, keypool, chatd)",
                       client=f"{calls} calls: every route x member/admin/owner (own and others' resources) "
                              "and x no/unknown/revoked token (401)",
                       usage="—", measured="0 mismatches; the route list comes from the OpenAPI tables")


async def test_revoked_token_is_refused_by_every_control_plane_service(start_system) -> None:  # type: ignore[no-untyped-def]
    """A token that worked a moment ago (and is cached by each service) is refused everywhere once revoked."""
    s: System = await start_system(services=("registry", "keypool", "budget", "gateway", "chatd"))
    m = await s.member("briefly")
    api = s.api(m.token)
    urls = [s.url("budget", "/api/v2/ai/usage"), s.url("chatd", "/api/experimental/chats"),
            s.url("registry", "/api/v2/users/me")]
    for u in urls:
        assert (await api.call("GET", u)).status == 200
    await s.owner.ok("DELETE", s.url("registry", f"/api/v2/users/{m.id}/tokens/{m.token_id}"))

    async def refused() -> bool:
        return all([(await api.call("GET", u)).status == 401 for u in urls])

    took = await eventually(refused, 1.0, "every service to refuse the revoked token", interval=0.05)
    assert took <= 1.0
