"""Provider keys never appear in logs, dumps, API responses, error messages or bus payloads.

A full flow runs with distinctive keys (none looks like ``sk-…``, so the log scrubber's patterns are
not what hides them): env-seeded pool keys, keys added through the API, Bedrock credentials in
settings, a member's stored BYOK key and keys sent in BYOK requests, failover past a revoked key, a
rate-limited key, upstream errors, refused bad keys, a chatd turn with the stored key. Meanwhile every
log record is formatted by the production JSON formatter, the gateway dumps every interception, a
NATS subscription on ``>`` records every message on the server, and every HTTP answer is kept. Then
all of it is searched for each key, and for the part of it a hint never shows.
"""

from __future__ import annotations

import asyncio

import nats
import pytest

from aigw_testing.system import ANTHROPIC_KEY, OPENAI_KEY, Api, Resp, System

pytestmark = pytest.mark.reliability
EXTRA_KEYS = ["zzextra-one-Hn3Jd8Ks2Lq9", "zzextra-two-Pw7Rt4Yu1Io6", "zzextra-three-Vb5Nm8Cx3Za1"]
BEDROCK_SECRET = "zzbedrock-secret-Ge6Hy9Uj2Ki4"
BEDROCK_ACCESS = "ZZAKIDBEDROCK7Q2W9E4R"
STORED_BYOK = "zzbyok-stored-Mk8Nj3Bh6Vg1"
HEADER_BYOK = "zzbyok-header-Lp4Ok7Ij2Uh5"
REJECTED_BYOK = "zzbyok-rejected-Xs3Dc6Fv9Gb2"
BAD_KEY = "zzbad key-with-space-Qa2Ws5Ed8"
SECRETS = [OPENAI_KEY, ANTHROPIC_KEY, *EXTRA_KEYS, BEDROCK_SECRET, BEDROCK_ACCESS, STORED_BYOK, HEADER_BYOK,
           REJECTED_BYOK, BAD_KEY]


class Recording(Api):
    """An API client that keeps every answer (status line, headers, body)."""

    def __init__(self, api: Api, sink: list[str]) -> None:
        super().__init__(api.http, api.token)
        self.sink = sink

    def as_(self, token: str | None) -> Recording:
        return Recording(Api(self.http, token), self.sink)

    async def call(self, method, url, body=None, **kw) -> Resp:  # type: ignore[no-untyped-def,override]
        r = await super().call(method, url, body, **kw)
        self.sink.append(f"{method} {url} -> {r.status} {r.headers} {r.raw.decode(errors='replace')}")
        return r


async def test_provider_keys_never_leak(start_system, nats_url, tmp_path, logs, reliability) -> None:  # type: ignore[no-untyped-def]
    bus_seen: list[bytes] = []
    spy = await nats.connect(nats_url)

    async def on_msg(m) -> None:  # type: ignore[no-untyped-def]
        bus_seen.append(m.subject.encode() + b" " + repr(m.headers).encode() + b" " + m.data)

    await spy.subscribe(">", cb=on_msg)
    await spy.flush()
    dumps = tmp_path / "dumps"
    s: System = await start_system(services=("registry", "keypool", "budget", "gateway", "chatd"),
                                   env={"AIGW_DUMP_DIR": str(dumps)})
    answers: list[str] = []
    owner = Recording(s.api(s.owner_token), answers)
    reg, gw = s.urls["registry"], s.urls["gateway"]
    up = s.up.rewrite(s.upstream.url)
    try:
        # keys through the API: a pool, one more key, Bedrock credentials in settings, refused bad values
        await owner.ok("POST", reg + "/api/v2/ai/providers", {"name": "extra", "type": "openai", "base_url": up + "/v1",
                                                               "keys": EXTRA_KEYS[:2]})
        await owner.ok("POST", reg + "/api/v2/ai/providers/extra/keys", {"api_key": EXTRA_KEYS[2]})
        await owner.ok("POST", reg + "/api/v2/ai/providers", {
            "name": "rock", "type": "bedrock", "base_url": up,
            "settings": {"region": "us-east-1", "access_key": BEDROCK_ACCESS, "access_key_secret": BEDROCK_SECRET}})
        for body in ({"api_key": BAD_KEY}, {"api_key": BAD_KEY, "position": "first"}):
            assert (await owner.call("POST", reg + "/api/v2/ai/providers/extra/keys", body)).status == 400
        for path in ("/api/v2/ai/providers", "/api/v2/ai/providers/extra", "/api/v2/ai/providers/extra/keys",
                     "/api/v2/ai/providers/rock", "/api/v2/ai/providers/openai/keys"):
            await owner.ok("GET", reg + path)
        m = await s.member("keyholder")
        me = owner.as_(m.token)
        await me.ok("PUT", reg + "/api/v2/users/me/ai/provider-keys/openai", {"api_key": STORED_BYOK})
        assert (await me.call("PUT", reg + "/api/v2/users/me/ai/provider-keys/extra", {"api_key": BAD_KEY})).status == 400
        await me.ok("GET", reg + "/api/v2/users/me/ai/provider-keys")

        # traffic: centralised, streamed and not, both APIs; failover past a revoked key and a rate-limited one
        s.upstream.on_key(EXTRA_KEYS[0], 401, body={"error": {"message": "invalid key", "type": "auth"}})
        s.upstream.on_key(EXTRA_KEYS[1], 429, headers={"Retry-After": "30"})
        for provider in ("openai", "extra"):
            for stream in (False, True):
                await _post(me, gw + f"/{provider}/v1/chat/completions", m.token, stream=stream)
        s.upstream.play("anthropic/simple")
        await _post(me, gw + "/anthropic/v1/messages", m.token, anthropic=True)
        s.upstream.play("openai/chatcompletions/simple")
        # BYOK: a key in the request, the stored key, a key the provider rejects
        await _post(me, gw + "/openai/v1/chat/completions", m.token, byok=HEADER_BYOK)
        await _post(me, gw + "/openai/v1/chat/completions", m.token, byok="")
        s.upstream.on_key(REJECTED_BYOK, 401, body={"error": {"message": "Incorrect API key provided", "type": "auth"}})
        assert await _post(me, gw + "/openai/v1/chat/completions", m.token, byok=REJECTED_BYOK) == 401
        assert {r.key for r in s.upstream.requests} >= {OPENAI_KEY, EXTRA_KEYS[0], EXTRA_KEYS[1], EXTRA_KEYS[2],
                                                         ANTHROPIC_KEY, HEADER_BYOK, STORED_BYOK, REJECTED_BYOK}
        # a chatd turn on the stored key
        mc = await owner.ok("POST", s.url("chatd", "/api/experimental/chats/model-configs"),
                            {"display_name": "GPT", "provider": "openai", "model": "gpt-4.1"})
        chat = await me.ok("POST", s.url("chatd", "/api/experimental/chats"), {"model_config_id": mc["id"]})
        await me.ok("POST", s.url("chatd", f"/api/experimental/chats/{chat['id']}/messages"), {"content": "hi"},
                    status=202)
        for _ in range(100):
            c = await me.ok("GET", s.url("chatd", f"/api/experimental/chats/{chat['id']}"))
            if c["status"] != "running" and len(c["messages"]) >= 2:
                break
            await asyncio.sleep(0.1)
        assert [x["role"] for x in c["messages"]] == ["user", "assistant"], c
        await s.ledger()
        # every read an operator or member could make
        for url in (s.url("budget", "/api/v2/ai/interceptions?limit=500"), s.url("budget", "/api/v2/ai/usage"),
                    s.url("keypool", "/api/v2/ai/providers/extra/keys/health"), reg + "/api/v2/audit-logs?limit=500",
                    reg + "/api/v2/users", s.url("chatd", "/api/experimental/chats/model-configs")):
            await owner.ok("GET", url)
        for svc in s.urls:
            await owner.call("GET", s.url(svc, "/metrics"))
        await asyncio.sleep(0.5)  # let the last bus messages and dump writes land
    finally:
        await spy.close()

    dumped = [p.read_text(errors="replace") for p in dumps.rglob("*") if p.is_file()]
    assert dumped, "no dumps were written"
    places = {"logs": "\n".join(logs.lines), "dumps": "\n".join(dumped), "API answers": "\n".join(answers),
              "bus": b"\n".join(bus_seen).decode(errors="replace")}
    assert len(bus_seen) > 50 and len(logs.lines) > 5
    found = []
    for secret in SECRETS:
        core = secret[3:-4]  # what no hint shows: a hint keeps at most the first 4 and the last 4 characters
        for place, text in places.items():
            if secret in text or core in text:
                at = text.find(core)
                found.append(f"{secret!r} in {place}: …{text[max(0, at - 120):at + 60]}…")
    assert not found, "\n".join(found)
    reliability.record("Provider keys in logs, dumps, API answers, errors, bus",
                       client="—", usage="—",
                       measured=f"{len(SECRETS)} distinctive keys (pool, API-added, Bedrock, stored and request BYOK, "
                                f"rejected, invalid) not found in {len(logs.lines)} log lines, {len(dumped)} dump files, "
                                f"{len(answers)} API answers, {len(bus_seen)} NATS messages")


async def _post(api: Recording, url: str, token: str, *, stream: bool = False, anthropic: bool = False,
                byok: str | None = None) -> int:
    headers = {}
    if byok is not None:
        headers["X-AIGW-Token"] = token
        if byok:
            headers["Authorization"] = f"Bearer {byok}"
    elif anthropic:
        headers["X-Api-Key"] = token
    else:
        headers["Authorization"] = f"Bearer {token}"
    body = {"model": "claude-x" if anthropic else "gpt-4.1", "max_tokens": 20, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}
    r = await api.as_(None).call("POST", url, body, headers=headers)
    assert r.status in (200, 401), r
    return r.status
