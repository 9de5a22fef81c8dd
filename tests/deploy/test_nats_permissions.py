"""The NATS authorization of the kustomize base, on a real nats-server started with its exact block.

Two directions: the rules forbid what the contract forbids (only registry publishes
``aigw.providers.changed``, only the gateway publishes usage; the internet-facing gateway cannot
purge or delete a stream or the key bucket, consume budget's durable, or read another service's
inbox), and they allow everything the services really do (the whole stack serves a request, each
service as its own NATS user, and the server logs no violation).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from aigw_common.bus import Bus, Subjects, encode
from aigw_common.keystate import keys_bucket
from aigw_common.natsauth import BUS_USERS, authorization_block
from aigw_common.schemas import AuthVerifyReply, AuthVerifyRequest, InterceptionEnded
from aigw_testing.buskeys import BusKeys
from aigw_testing.natsauth import AuthNats, k8s_authorization

USERS = BUS_USERS

# subject → the only user allowed to publish it (the contract's single-writer subjects)
SINGLE_WRITER = {
    "aigw.providers.changed": "registry",
    "aigw.auth.revoked": "registry",
    "aigw.registry.directory.changed": "registry",
    "aigw.usage.started": "gateway",
    "aigw.usage.tokens": "gateway",
    "aigw.budget.state": "budget",
    "aigw.budget.reclaim": "budget",
    "aigw.budget.limits": "budget",
    "aigw.budget.limits.reclaim": "budget",
    "$KV.aigw_keys.p1.k1": "keypool",
}


def test_the_k8s_block_is_the_generated_one() -> None:
    """deploy/k8s/nats.yaml carries exactly what aigw_common.natsauth defines (`aigw nats-auth` prints it)."""
    assert k8s_authorization() == authorization_block(), "regenerate the block with `aigw nats-auth`"


async def _publish_errors(url: str, subjects: list[str]) -> set[str]:
    """Publish to each subject; return those the server refused."""
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False)
    try:
        for s in subjects:
            await nc.publish(s, b"{}")
        await nc.flush()
        await asyncio.sleep(0.2)  # -ERR for a violation arrives asynchronously
    finally:
        await nc.close()
    return {s for s in subjects if any(f'"{s.lower()}"' in str(e).lower() for e in errors)}


async def test_only_the_owner_may_publish_single_writer_subjects(auth_nats: AuthNats) -> None:
    subjects = list(SINGLE_WRITER)
    for user in USERS:
        refused = await _publish_errors(auth_nats.url(user), subjects)
        expected = {s for s, owner in SINGLE_WRITER.items() if owner != user}
        assert refused == expected, f"user {user}: refused {sorted(refused)}, expected {sorted(expected)}"


async def test_wrong_password_and_anonymous_connections_are_refused(auth_nats: AuthNats) -> None:
    for url in (f"nats://gateway:wrong@127.0.0.1:{auth_nats.port}", auth_nats.anonymous_url):
        with pytest.raises(nats.errors.Error):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


class _Client:
    """A raw connection as one service user, recording the server's permission errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: nats.NATS | None = None

    @classmethod
    async def connect(cls, server: AuthNats, user: str) -> _Client:
        c = cls()

        async def on_error(e: Exception) -> None:
            c.errors.append(str(e))

        c.nc = await nats.connect(server.url(user), error_cb=on_error, allow_reconnect=False,
                                  inbox_prefix=f"_INBOX.{user}")
        return c

    def violated(self, what: str) -> bool:
        return any("permissions violation" in e.lower() and what.lower() in e.lower() for e in self.errors)


def _bus(server: AuthNats, user: str, keys: BusKeys) -> Bus:
    signers = (user,) if user in ("registry", "budget", "keypool") else ()
    return Bus(servers=(server.url(user),), name=f"t-{user}", subjects=Subjects("aigw"), auth=keys.auth(signers=signers),
               inbox_prefix=f"_INBOX.{user}")


@pytest.fixture
async def owned_streams(auth_nats: AuthNats) -> AsyncIterator[dict[str, Bus]]:
    """The usage stream (with an event and budget's durable) and the key bucket, made by their owners."""
    keys = BusKeys.generate()
    buses = {u: _bus(auth_nats, u, keys) for u in ("budget", "keypool", "gateway")}
    for b in buses.values():
        await b.start(wait=5)
        assert b.connected
    s = buses["budget"].subjects
    await buses["budget"].ensure_usage_stream()
    await buses["budget"].js.pull_subscribe(s.usage_all, durable=s.durable("budget_usage"), stream=s.usage_stream,
                                            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
    await keys_bucket(buses["keypool"])
    ev = InterceptionEnded(event_id="e1", interception_id="i1", at=1.0, status="ok")
    await buses["gateway"].js_publish(s.usage("ended"), ev, msg_id="e1")  # the gateway may publish usage
    yield buses
    for b in buses.values():
        await b.close()


async def _refused(c: _Client, coro, subject: str) -> None:  # type: ignore[no-untyped-def]
    """The JetStream call fails and the server names the denied API subject."""
    with pytest.raises((nats.errors.Error, TimeoutError)):
        await coro
    deadline = time.monotonic() + 3
    while not c.violated(subject):
        assert time.monotonic() < deadline, f"no violation for {subject}: {c.errors}"
        await asyncio.sleep(0.05)


async def test_the_gateway_cannot_purge_delete_or_reconfigure_streams_or_the_bucket(auth_nats: AuthNats,
                                                                                     owned_streams) -> None:  # type: ignore[no-untyped-def]
    s = Subjects("aigw")
    gw = await _Client.connect(auth_nats, "gateway")
    js = gw.nc.jetstream(timeout=1)  # type: ignore[union-attr]
    await _refused(gw, js.purge_stream(s.usage_stream), f"$JS.API.STREAM.PURGE.{s.usage_stream}")
    await _refused(gw, js.delete_stream(s.usage_stream), f"$JS.API.STREAM.DELETE.{s.usage_stream}")
    await _refused(gw, js.delete_key_value(s.keys_bucket), f"$JS.API.STREAM.DELETE.KV_{s.keys_bucket}")
    await _refused(gw, js.purge_stream(f"KV_{s.keys_bucket}"), f"$JS.API.STREAM.PURGE.KV_{s.keys_bucket}")
    info = await js.stream_info(s.usage_stream)  # reading the definition is allowed
    cfg = info.config
    cfg.max_msgs = 1
    await _refused(gw, js.update_stream(cfg), f"$JS.API.STREAM.UPDATE.{s.usage_stream}")
    await _refused(gw, js.delete_msg(s.usage_stream, 1), f"$JS.API.STREAM.MSG.DELETE.{s.usage_stream}")
    # nothing happened: the event is still there for budget
    info = await owned_streams["budget"].js.stream_info(s.usage_stream)
    assert info.state.messages == 1 and info.config.max_msgs != 1
    await owned_streams["keypool"].js.stream_info(f"KV_{s.keys_bucket}")
    await gw.nc.close()  # type: ignore[union-attr]


async def test_the_gateway_cannot_consume_budgets_durable_or_write_the_bucket(auth_nats: AuthNats,
                                                                              owned_streams) -> None:  # type: ignore[no-untyped-def]
    s = Subjects("aigw")
    durable = s.durable("budget_usage")
    gw = await _Client.connect(auth_nats, "gateway")
    js = gw.nc.jetstream(timeout=1)  # type: ignore[union-attr]
    await _refused(gw, js.consumer_info(s.usage_stream, durable), f"$JS.API.CONSUMER.INFO.{s.usage_stream}.{durable}")

    async def pull() -> None:
        sub = await js.pull_subscribe_bind(durable, s.usage_stream)
        await sub.fetch(1, timeout=1)

    await _refused(gw, pull(), f"$JS.API.CONSUMER.MSG.NEXT.{s.usage_stream}.{durable}")
    await _refused(gw, js.add_consumer(s.usage_stream, ConsumerConfig(durable_name="gw_steal")),
                   "$JS.API.CONSUMER.")
    # and the key bucket: readable, not writable
    kv = await js.key_value(s.keys_bucket)
    with contextlib.suppress(nats.js.errors.KeyNotFoundError):
        await kv.get("p.k")
    await _refused(gw, kv.put("p.k", b"{}"), f"$KV.{s.keys_bucket}.p.k")
    # budget still has its event
    sub = await owned_streams["budget"].js.pull_subscribe_bind(durable, s.usage_stream)
    (m,) = await sub.fetch(1, timeout=5)
    assert b"e1" in m.data
    await gw.nc.close()  # type: ignore[union-attr]


async def test_the_gateway_cannot_read_another_services_inbox(auth_nats: AuthNats) -> None:
    s = Subjects("aigw")
    gw = await _Client.connect(auth_nats, "gateway")
    stolen: list[bytes] = []

    async def steal(m) -> None:  # type: ignore[no-untyped-def]
        stolen.append(m.data)

    for pattern in ("_INBOX.budget.>", "_INBOX.>", "_INBOX.*.*"):
        await gw.nc.subscribe(pattern, cb=steal)  # type: ignore[union-attr]
    await gw.nc.flush()  # type: ignore[union-attr]
    # a real exchange: budget asks the registry; the answer travels on budget's inbox
    registry = await _Client.connect(auth_nats, "registry")

    async def answer(m) -> None:  # type: ignore[no-untyped-def]
        await m.respond(encode(AuthVerifyReply(identity=None)))

    await registry.nc.subscribe(s.auth_verify, cb=answer)  # type: ignore[union-attr]
    await registry.nc.flush()  # type: ignore[union-attr]
    budget = await _Client.connect(auth_nats, "budget")
    reply = await budget.nc.request(s.auth_verify, encode(AuthVerifyRequest(token_hash="h")), timeout=5)  # type: ignore[union-attr]
    assert b"auth.verify.reply" in reply.data
    await asyncio.sleep(0.3)
    assert stolen == []
    for pattern in ("_INBOX.budget.>", "_INBOX.>", "_INBOX.*.*"):
        assert gw.violated(f'subscription to "{pattern}"'), gw.errors
    # nor answer a request as someone else: the gateway may not publish into budget's inbox
    await gw.nc.publish("_INBOX.budget.x.y", b"{}")  # type: ignore[union-attr]
    await gw.nc.flush()  # type: ignore[union-attr]
    await asyncio.sleep(0.2)
    assert gw.violated('publish to "_INBOX.budget.x.y"'), gw.errors
    for c in (gw, registry, budget):
        await c.nc.close()  # type: ignore[union-attr]


def _have_stack() -> bool:
    from aigw_common.cli import available_services

    return {"gateway", "registry", "budget"} <= set(available_services())


@pytest.fixture
async def stack_under_auth(auth_nats, database_url, mock_upstream, make_settings, apps) -> AsyncIterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    from aigw_testing.stack import start_stack

    mock_upstream.play("openai/chatcompletions/simple")

    def settings_for(svc: str, urls: dict[str, str]):  # type: ignore[no-untyped-def]
        return make_settings(
            AIGW_NATS_URL=auth_nats.url(svc), AIGW_BUS_PREFIX="aigw", AIGW_DATABASE_URL=database_url,
            AIGW_BOOTSTRAP_TOKEN=TOKEN, AIGW_OPENAI_BASE_URL=mock_upstream.url + "/v1", AIGW_OPENAI_KEY="sk-up",
            AIGW_GATEWAY_URL=urls.get("gateway"),
        )

    yield await start_stack(apps, settings_for)


TOKEN = "aigw_" + "p" * 40


@pytest.mark.skipif(not _have_stack(), reason="needs gateway, registry and budget installed")
async def test_services_work_under_the_production_permissions(auth_nats: AuthNats, stack_under_auth) -> None:  # type: ignore[no-untyped-def]
    import openai

    urls = stack_under_auth
    client = openai.AsyncOpenAI(base_url=urls["gateway"] + "/openai/v1", api_key=TOKEN, max_retries=0)
    resp = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices
    # the usage crossed JetStream from the gateway user to the budget user
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        while True:
            async with http.get(urls["budget"] + "/api/v2/ai/interceptions") as r:
                assert r.status == 200, await r.text()
                rows = (await r.json())["interceptions"]
            if rows and rows[0].get("ended_at"):
                break
            assert time.monotonic() < deadline, f"budget never recorded the request: {rows}"
            await asyncio.sleep(0.2)
    assert rows[0]["provider"] == "openai"
    assert auth_nats.violations() == []
