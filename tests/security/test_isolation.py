"""One member cannot see another member's BYOK keys, usage, interceptions, chats, skills or tokens.

Bea owns one of each (her BYOK key is used for a real request, so her usage exists). Al then tries every
way in: direct reads by id, filters naming Bea, lists that could include her rows, and writes. Every
answer must be a refusal or an empty/own-only result, and nothing Al receives may contain Bea's ids,
prompt or key.
"""

from __future__ import annotations

import pytest

from aigw_testing.system import System

pytestmark = pytest.mark.reliability
BEA_KEY = "zzbyok-bea-Q4t8Wm2Zr6Yc"
BEA_PROMPT = "bea's private question about the merger"


async def test_a_member_cannot_read_another_members_data(start_system, reliability) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=("registry", "keypool", "budget", "gateway", "chatd"))
    reg, bud, chat = s.urls["registry"], s.urls["budget"], s.urls["chatd"]
    bea, al = await s.member("bea"), await s.member("al")
    b, a = s.api(bea.token), s.api(al.token)
    await b.ok("PUT", reg + "/api/v2/users/me/ai/provider-keys/openai", {"api_key": BEA_KEY})
    bea_token2 = await b.ok("POST", reg + "/api/v2/users/me/tokens", {"name": "laptop"})
    # a BYOK request with her stored key (X-AIGW-Token, no provider credential in the request)
    async with s.http.post(s.url("gateway", "/openai/v1/chat/completions"), headers={"X-AIGW-Token": bea.token},
                           json={"model": "gpt-4.1", "messages": [{"role": "user", "content": BEA_PROMPT}]}) as resp:
        assert resp.status == 200, await resp.text()
    assert s.upstream.requests[-1].key == BEA_KEY
    [row] = (await s.ledger(expect=1)).interceptions
    assert row["user_id"] == bea.id and row["credential_kind"] == "byok"
    mc = await s.owner.ok("POST", chat + "/api/experimental/chats/model-configs",
                          {"display_name": "GPT", "provider": "openai", "model": "gpt-4.1"})
    bea_chat = (await b.ok("POST", chat + "/api/experimental/chats", {"model_config_id": mc["id"], "title": "merger"}))["id"]
    await b.ok("POST", chat + "/api/experimental/users/me/skills", {"name": "secret-sauce", "content": "bea only"})

    refused = [
        ("GET", reg + f"/api/v2/users/{bea.id}", None),
        ("GET", reg + "/api/v2/users/bea", None),
        ("GET", reg + f"/api/v2/users/{bea.id}/ai/provider-keys", None),
        ("PUT", reg + f"/api/v2/users/{bea.id}/ai/provider-keys/openai", {"api_key": "zzal-overwrites-1234"}),
        ("DELETE", reg + f"/api/v2/users/{bea.id}/ai/provider-keys/openai", None),
        ("GET", reg + f"/api/v2/users/{bea.id}/tokens", None),
        ("POST", reg + f"/api/v2/users/{bea.id}/tokens", {"name": "mine-now"}),
        ("DELETE", reg + f"/api/v2/users/{bea.id}/tokens/{bea_token2['id']}", None),
        ("DELETE", reg + f"/api/v2/users/me/tokens/{bea_token2['id']}", None),
        ("GET", bud + f"/api/v2/users/{bea.id}/ai/budget", None),
        ("GET", bud + f"/api/v2/ai/interceptions/{row['id']}", None),
        ("GET", chat + f"/api/experimental/chats/{bea_chat}", None),
        ("PATCH", chat + f"/api/experimental/chats/{bea_chat}", {"title": "mine"}),
        ("DELETE", chat + f"/api/experimental/chats/{bea_chat}", None),
        ("POST", chat + f"/api/experimental/chats/{bea_chat}/messages", {"content": "hi"}),
        ("GET", chat + f"/api/experimental/users/{bea.id}/skills", None),
        ("GET", chat + f"/api/experimental/users/{bea.id}/skills/secret-sauce", None),
        ("GET", chat + "/api/experimental/users/bea/skills", None),
    ]
    seen: list[tuple[str, bytes]] = []  # (what al sent, what he got): echoing his own request back is no leak
    problems = []
    for method, url, body in refused:
        r = await a.call(method, url, body)
        seen.append((f"{url} {body}", r.raw))
        if r.status not in (403, 404):
            problems.append(f"{method} {url}: {r.status} {r.body}")
    async with s.http.get(chat + f"/api/experimental/chats/{bea_chat}/stream",
                          headers={"Authorization": f"Bearer {al.token}"}) as resp:
        if resp.status != 404:
            problems.append(f"stream of bea's chat: {resp.status}")
    # filters naming bea, and lists: only al's own rows (none)
    lists = {
        bud + f"/api/v2/ai/usage?user={bea.id}": lambda body: body["total"]["interceptions"] == 0,
        bud + "/api/v2/ai/usage?user=bea&group_by=user": lambda body: body["rows"] == [],
        bud + "/api/v2/ai/usage?group_by=model": lambda body: body["total"]["interceptions"] == 0,
        bud + f"/api/v2/ai/interceptions?user={bea.id}": lambda body: body["interceptions"] == [],
        bud + "/api/v2/ai/interceptions?session=&limit=500": lambda body: body["interceptions"] == [],
        chat + "/api/experimental/chats?limit=200": lambda body: body["chats"] == [],
        chat + "/api/experimental/chats?archived=false": lambda body: body["chats"] == [],
        chat + "/api/experimental/users/me/skills": lambda body: body["skills"] == [],
        reg + "/api/v2/users/me/ai/provider-keys": lambda body: body["provider_keys"] == [],
        reg + "/api/v2/users/me/tokens": lambda body: [t["id"] for t in body["tokens"]] == [al.token_id],
    }
    for url, ok in lists.items():
        r = await a.call("GET", url)
        seen.append((url, r.raw))
        if r.status != 200 or not ok(r.body):
            problems.append(f"GET {url}: {r.status} {r.body}")
    assert not problems, "\n".join(problems)
    leaked = [(x, raw[:300]) for x in (bea.id, row["id"], bea_chat, BEA_PROMPT, BEA_KEY, bea_token2["id"], "secret-sauce",
                                       "merger", "bea only") for sent, raw in seen if x.encode() in raw and x not in sent]
    assert not leaked, f"al's answers contain bea's {leaked}"
    # and bea still has everything
    assert len((await b.ok("GET", reg + "/api/v2/users/me/ai/provider-keys"))["provider_keys"]) == 1
    assert len((await b.ok("GET", reg + "/api/v2/users/me/tokens"))["tokens"]) == 2
    assert (await b.ok("GET", chat + f"/api/experimental/chats/{bea_chat}"))["title"] == "merger"
    assert (await b.ok("GET", bud + "/api/v2/ai/usage"))["total"]["interceptions"] == 1
    reliability.record("A member reads another member's data",
                       client=f"{len(refused) + 1} direct reads/writes refused (403/404); {len(lists)} lists and "
                              "filters naming the other member return only the caller's rows",
                       usage="—", measured="none of the other member's ids, prompt or key in any answer")
