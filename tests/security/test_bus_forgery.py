"""A neighbour on the bus cannot pose as the registry, budget or keypool.

The whole stack runs twice: on a NATS server with **no** authorization, where the attacker may publish
and subscribe to anything (only the signatures in the messages stop them), and under the production
permissions (deploy/k8s/nats.yaml), where the attacker holds the gateway's own NATS credentials (a
compromised gateway). Each time the attacker tries the four forgeries of #14 and the system does not act
on them: a rogue ``auth.verify`` responder answering any token as owner, a ``budget.state`` blocking the
owner, a key-state write revoking the only pool key, and a rogue ``registry.snapshot`` answer (after a
forged ``providers.changed``) adding a provider that points at the attacker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import msgspec
import nats
import pytest

from aigw_common.bus import Subjects, encode
from aigw_common.schemas import (
    AuthVerifyReply,
    BudgetState,
    Identity,
    KeyState,
    ProviderConfig,
    ProvidersChanged,
    RegistrySnapshot,
    SignedEntry,
)
from aigw_common.signing import HEADER, Signer, generate_keypair
from aigw_testing.natsauth import AuthNats
from aigw_testing.wait import eventually

TOKEN = "aigw_" + "f" * 40
MADE_UP = "aigw_" + "m" * 40  # a token nobody issued


@dataclass
class World:
    mode: str
    urls: dict[str, str]
    rogue_url: str  # where and as whom the attacker connects
    subjects: Subjects
    server: AuthNats | None

    def violations(self) -> list[str]:
        return self.server.violations() if self.server else []


@pytest.fixture(params=["open-nats", "production-permissions"])
async def world(request, nats_url, bus_prefix, database_url, mock_upstream, make_settings, apps) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    from aigw_testing.stack import start_stack

    mock_upstream.play("openai/chatcompletions/simple")
    server: AuthNats | None = None
    if request.param == "production-permissions":
        server = request.getfixturevalue("auth_nats")
        prefix, rogue = "aigw", server.url("gateway")  # the attacker has the gateway's credentials
    else:
        prefix, rogue = bus_prefix, nats_url  # anyone on an open server

    def settings_for(svc: str, urls: dict[str, str]):  # type: ignore[no-untyped-def]
        return make_settings(
            AIGW_NATS_URL=server.url(svc) if server else nats_url, AIGW_BUS_PREFIX=prefix,
            AIGW_DATABASE_URL=database_url, AIGW_BOOTSTRAP_TOKEN=TOKEN, AIGW_OPENAI_BASE_URL=mock_upstream.url + "/v1",
            AIGW_OPENAI_KEY="sk-the-only-pool-key", AIGW_GATEWAY_URL=urls.get("gateway"), AIGW_IDENTITY_TTL="1s",
            AIGW_REVISION_CHECK_INTERVAL="1s",  # the gateway asks for snapshots often: rogue answers race the registry
        )

    urls = await start_stack(apps, settings_for, ["registry", "keypool", "budget", "gateway"])
    yield World(request.param, urls, rogue, Subjects(prefix), server)


async def _rogue(w: World) -> nats.NATS:
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)  # permission violations under production permissions: expected

    return await nats.connect(w.rogue_url, error_cb=on_error, allow_reconnect=False, connect_timeout=3,
                              inbox_prefix="_INBOX.gateway")


async def _chat(w: World, provider: str = "openai", token: str = TOKEN) -> int:
    async with aiohttp.ClientSession() as http, http.post(
            f"{w.urls['gateway']}/{provider}/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}) as r:
        await r.read()
        return r.status


async def _api(w: World, svc: str, path: str, token: str = TOKEN) -> tuple[int, object]:
    async with aiohttp.ClientSession() as http, http.get(w.urls[svc] + path,
                                                        headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def _rejected(w: World, svc: str, kind: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(w.urls[svc] + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("aigw_bus_rejected_messages_total{") and f'kind="{kind}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_forged_owner_identity_is_refused(world: World) -> None:
    w = world
    s = w.subjects
    rogue = await _rogue(w)
    fake_signer = Signer.from_b64("registry", generate_keypair()[0])
    owner = Identity(user_id="u-evil", username="evil", roles=["owner"], token_id="t-evil")

    async def answer(m) -> None:  # type: ignore[no-untyped-def]
        data = encode(AuthVerifyReply(identity=owner))
        await rogue.publish(m.reply, data)  # unsigned
        await rogue.publish(m.reply, data, headers={HEADER: fake_signer.header(m.reply, m.subject, data)})

    await rogue.subscribe(s.auth_verify, cb=answer)
    await rogue.flush()
    # every admin API and the gateway refuse the made-up token (the genuine registry says "unknown")
    assert (await _api(w, "budget", "/api/v2/ai/interceptions", MADE_UP))[0] == 401
    assert (await _api(w, "keypool", "/api/v2/ai/providers/openai/keys/health", MADE_UP))[0] == 401
    assert await _chat(w, token=MADE_UP) == 401
    # the real owner still works
    assert (await _api(w, "budget", "/api/v2/ai/interceptions"))[0] == 200
    if w.mode == "open-nats":  # the forged replies reached the services and were dropped
        assert await _rejected(w, "budget", "AuthVerifyReply") >= 1
        assert await _rejected(w, "gateway", "AuthVerifyReply") >= 1
    await rogue.close()


async def test_forged_budget_state_and_key_state_are_ignored(world: World) -> None:
    w = world
    s = w.subjects
    assert await _chat(w) == 200
    status, me = await _api(w, "registry", "/api/v2/users/me")
    assert status == 200, me
    status, prov = await _api(w, "registry", "/api/v2/ai/providers/openai")
    assert status == 200, prov
    status, keys = await _api(w, "registry", "/api/v2/ai/providers/openai/keys")
    assert status == 200, keys
    key_list = keys["keys"] if isinstance(keys, dict) else keys  # type: ignore[index]
    (key,) = key_list
    rogue = await _rogue(w)
    # 1. budget.state: the owner is over budget (unsigned, and signed by a key nobody trusts)
    fake_budget = Signer.from_b64("budget", generate_keypair()[0])
    blocked = encode(BudgetState(scope="user", subject_id=me["id"], blocked=True, spent_micros=10**9,  # type: ignore[index]
                                 limit_micros=1, period_end=time.time() + 3600))
    await rogue.publish(s.budget_state, blocked)
    await rogue.publish(s.budget_state, blocked, headers={HEADER: fake_budget.header(s.budget_state, "", blocked)})
    # 2. key state: the only pool key revoked (a raw value, and a well-formed envelope by a fake keypool)
    kv_subject = f"$KV.{s.keys_bucket}.{prov['id']}.{key['id']}"  # type: ignore[index]
    revoked = encode(KeyState(provider_id=prov["id"], key_id=key["id"], state="revoked", status_code=401,  # type: ignore[index]
                              updated_at=time.time()))
    fake_keypool = Signer.from_b64("keypool", generate_keypair()[0])
    ts, sig = fake_keypool.sign(f"{s.keys_bucket}.{prov['id']}.{key['id']}", "", revoked)  # type: ignore[index]
    envelope = encode(SignedEntry(signer="keypool", ts=ts, sig=sig, payload=msgspec.Raw(revoked)))
    for value in (revoked, envelope):
        await rogue.publish(kv_subject, value)
    await rogue.flush()
    await asyncio.sleep(1.0)
    for _ in range(3):  # the owner is served, with the pool key (a revoked key would leave no key: 503)
        assert await _chat(w) == 200
    if w.mode == "open-nats":
        assert await _rejected(w, "gateway", "BudgetState") >= 2
        assert await _rejected(w, "gateway", "KeyState") >= 2
    await rogue.close()


async def test_forged_registry_snapshot_adds_no_provider(world: World) -> None:
    w = world
    s = w.subjects
    rogue = await _rogue(w)
    fake_registry = Signer.from_b64("registry", generate_keypair()[0])
    evil = ProviderConfig(id="p-evil", name="evil", type="openai", display_name="Evil",
                          base_url="http://attacker.invalid/v1", updated_at=time.time())

    async def answer(m) -> None:  # type: ignore[no-untyped-def]
        data = encode(RegistrySnapshot(revision=10**6, providers=[evil]))
        await rogue.publish(m.reply, data)
        await rogue.publish(m.reply, data, headers={HEADER: fake_registry.header(m.reply, m.subject, data)})

    await rogue.subscribe(s.registry_snapshot, cb=answer)
    await rogue.flush()
    changed = encode(ProvidersChanged(revision=10**6, provider_ids=["p-evil"]))
    for _ in range(3):
        await rogue.publish(s.providers_changed, changed)
        await rogue.publish(s.providers_changed, changed,
                            headers={HEADER: fake_registry.header(s.providers_changed, "", changed)})
        await rogue.flush()
        await asyncio.sleep(0.5)
    assert await _chat(w, "evil") == 404
    assert await _chat(w) == 200
    if w.mode == "open-nats":
        assert await _rejected(w, "gateway", "ProvidersChanged") >= 1

        async def rogue_answer_refused() -> bool:
            return await _rejected(w, "gateway", "RegistrySnapshot") >= 1

        # the gateway asks every second; a rogue answer is seen only when it beats the registry's to the
        # inbox (after the genuine one the request is over), so give it several asks rather than one
        await eventually(rogue_answer_refused, 15, "a rogue registry.snapshot answer refused by the gateway")
        assert await _chat(w, "evil") == 404
    else:
        assert any("aigw.providers.changed" in v for v in w.violations()), "the server refused the publish"
    await rogue.close()


async def test_nats_passwords_never_reach_a_log_line(auth_nats: AuthNats, logs, database_url, make_settings,  # type: ignore[no-untyped-def]
                                                    mock_upstream, apps) -> None:
    """Every service connects with a password in its NATS URL (one with a wrong one, so the error paths
    log too); no log line, as the production JSON formatter or the text formatter writes it, holds one."""
    import logging

    from aigw_common.logging import TextFormatter
    from aigw_testing.stack import start_stack

    mock_upstream.play("openai/chatcompletions/simple")
    wrong = "Wr0ngS3cretPw"

    def settings_for(svc: str, urls: dict[str, str]):  # type: ignore[no-untyped-def]
        return make_settings(AIGW_NATS_URL=auth_nats.url(svc), AIGW_BUS_PREFIX="aigw", AIGW_DATABASE_URL=database_url,
                             AIGW_BOOTSTRAP_TOKEN=TOKEN, AIGW_OPENAI_BASE_URL=mock_upstream.url + "/v1",
                             AIGW_OPENAI_KEY="sk-the-only-pool-key", AIGW_GATEWAY_URL=urls.get("gateway"))

    urls = await start_stack(apps, settings_for, ["registry", "keypool", "budget", "gateway"])
    w = World("production-permissions", urls, auth_nats.url("gateway"), Subjects("aigw"), auth_nats)
    assert await _chat(w) == 200
    # a service whose password is wrong keeps retrying (and logging) without showing it
    from aigw_common.cli import load_service

    bad = make_settings(AIGW_NATS_URL=f"nats://chatd:{wrong}@127.0.0.1:{auth_nats.port}", AIGW_BUS_PREFIX="aigw",
                        AIGW_DATABASE_URL=database_url, AIGW_GATEWAY_URL=urls["gateway"])
    await apps.start(load_service("chatd").create_app(bad))
    await asyncio.sleep(2.0)
    text = TextFormatter("test")
    lines = logs.lines + [text.format(r) for r in logs.records]
    assert any("nats connected" in ln for ln in lines)
    assert any('"user":"gateway"' in ln for ln in logs.lines), "the user name is logged, the password is not"
    leaked = [ln for ln in lines for pw in [*auth_nats.passwords.values(), wrong] if pw in ln]
    assert leaked == []
    assert logging.getLogger().level == logging.DEBUG  # every level was captured
