"""The bus on a real three-node JetStream cluster: replicated streams and buckets, and clients that follow the
cluster when the node they are connected to dies."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from aigw_common.bus import Bus, Subjects
from aigw_common.keystate import KeyStateWatch, entry_subject, keys_bucket
from aigw_common.schemas import AuthVerifyReply, AuthVerifyRequest, InterceptionEnded, KeyState
from aigw_common.settings import Settings
from aigw_testing.buskeys import BusKeys
from aigw_testing.natscluster import NatsCluster
from aigw_testing.wait import eventually

_KEYS = BusKeys.generate()


def _bus(cluster: NatsCluster, prefix: str, replicas: int, name: str = "t") -> Bus:
    return Bus(servers=cluster.urls, name=name, subjects=Subjects(prefix), js_replicas=replicas, auth=_KEYS.auth())


def test_comma_list_and_replicas_from_env() -> None:
    s = Settings.from_env({"AIGW_NATS_URL": "nats://a:4222, nats://b:4222,nats://c:4222", "AIGW_JS_REPLICAS": "3"})
    assert s.nats_urls == ("nats://a:4222", "nats://b:4222", "nats://c:4222") and s.js_replicas == 3


async def test_streams_and_bucket_scale_in_place(nats_cluster: NatsCluster) -> None:
    """Created with one replica, then a service configured with three: the same stream (its events kept) now
    has three replicas; the key-state bucket too."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    one, three = _bus(nats_cluster, prefix, 1), _bus(nats_cluster, prefix, 3)
    await one.start(wait=10)
    await three.start(wait=10)
    try:
        s = one.subjects
        await one.ensure_usage_stream()
        for i in range(5):
            ev = InterceptionEnded(event_id=f"e{i}", interception_id="i", at=1.0, status="ok")
            await one.js_publish(s.usage("ended"), ev, msg_id=ev.event_id)
        kv = await keys_bucket(one)
        # a bucket just created on a cluster answers puts once its stream has elected a leader (until then a
        # put meets no responder: seen under load); keypool's writes retry through its consumer's nak
        await nats_cluster.stream_leader(f"KV_{s.keys_bucket}")
        await kv.put("p.k", b'{"v":1}')
        assert (await one.js.stream_info(s.usage_stream)).config.num_replicas == 1

        await three.ensure_usage_stream()
        await three.ensure_usage_stream()  # nothing differs now: no update
        info = await three.js.stream_info(s.usage_stream)
        assert info.config.num_replicas == 3 and info.state.messages == 5
        assert info.config.duplicate_window == 600.0
        await keys_bucket(three)
        kv_info = await three.js.stream_info(f"KV_{s.keys_bucket}")
        assert kv_info.config.num_replicas == 3 and kv_info.state.messages == 1
        await eventually(lambda: nats_cluster.stream_current(s.usage_stream), 30, "three current replicas")
    finally:
        await one.close()
        await three.close()


async def _connected_node(bus: Bus, cluster: NatsCluster) -> str:
    assert bus.nc is not None and bus.nc.connected_url is not None
    port = bus.nc.connected_url.port
    return next(n.name for n in cluster.nodes if n.port == port)


async def test_clients_follow_the_cluster_when_their_node_dies(nats_cluster: NatsCluster) -> None:
    """Kill the node a responder and a key-state watcher are connected to, and also the node that leads the
    bucket: requests are answered again and bucket changes reach the watcher, within seconds, without any
    help from the test."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    writer = _bus(nats_cluster, prefix, 3, "writer")
    await writer.start(wait=10)
    kv = await keys_bucket(writer)
    leader = await nats_cluster.stream_leader(f"KV_{writer.subjects.keys_bucket}")
    # the watcher and the responder connect to the leader's node (the client picks a node of the list at
    # random; retry until it picked that one): one kill takes the watch's consumer and the connection away
    for _ in range(30):
        watched = _bus(nats_cluster, prefix, 3, "watched")
        await watched.start(wait=10)
        if await _connected_node(watched, nats_cluster) == leader:
            break
        await watched.close()
    seen: dict[str, KeyState | None] = {}
    watch = KeyStateWatch(watched, lambda p, k, st: seen.__setitem__(f"{p}.{k}", st))
    watch.start()

    async def responder(_req: AuthVerifyRequest, _m: object) -> AuthVerifyReply:
        return AuthVerifyReply(identity=None)

    await watched.subscribe(watched.subjects.auth_verify, AuthVerifyRequest, responder, queue="registry")
    try:
        await eventually(lambda: watch.loaded.is_set(), 10, "the watch to load")
        assert await _connected_node(watched, nats_cluster) == leader
        await nats_cluster.kill(leader)
        t0 = time.monotonic()

        async def answered() -> bool:
            try:
                await writer.request(writer.subjects.auth_verify, AuthVerifyRequest(token_hash="x"), AuthVerifyReply,
                                     timeout=0.5)
                return True
            except Exception:
                return False

        t_answer = await eventually(answered, 30, "the responder to answer again", interval=0.1)
        state = KeyState(provider_id="p", key_id="k", state="revoked", status_code=401, updated_at=time.time())

        async def put() -> bool:
            with contextlib.suppress(Exception):
                await kv.put("p.k", writer.auth.seal_entry(entry_subject(writer, "p.k"), state))
                return True
            return False

        t_put = await eventually(put, 30, "a bucket write on the surviving nodes", interval=0.1)
        t_seen = await eventually(lambda: seen.get("p.k") == state, 30, "the watcher to see the write")
        assert await _connected_node(watched, nats_cluster) != leader
        print(f"after the kill: answered in {t_answer:.2f}s, bucket writable {t_put:.2f}s later, "
              f"the write seen {t_seen:.2f}s after that ({time.monotonic() - t0:.1f}s)")
    finally:
        await watch.stop()
        await watched.close()
        await writer.close()
        await asyncio.sleep(0)


async def test_watch_recovers_when_its_consumers_node_dies_but_its_connection_does_not(
        nats_cluster: NatsCluster) -> None:
    """The watch's consumer lives on one node; the watcher is connected to another. Killing the consumer's node
    leaves the connection up (no reconnect, no resync): only the heartbeat can tell, and the watch must see the
    next write anyway."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    writer = _bus(nats_cluster, prefix, 3, "writer")
    await writer.start(wait=10)
    kv = await keys_bucket(writer)
    seen: dict[str, KeyState | None] = {}
    watched = watch = None
    try:
        for _ in range(30):  # until the consumer sits on another node than the watcher's connection
            watched = _bus(nats_cluster, prefix, 3, "watched")
            await watched.start(wait=10)
            watch = KeyStateWatch(watched, lambda p, k, st: seen.__setitem__(f"{p}.{k}", st))
            watch.start()
            await eventually(lambda w=watch: w.loaded.is_set(), 10, "the watch to load")
            assert watch.current is not None
            info = await watch.current.consumer_info()
            host = info.cluster.leader if info.cluster else None
            if host and host != await _connected_node(watched, nats_cluster):
                break
            await watch.stop()
            await watched.close()
        assert watched is not None and watch is not None
        before = await _connected_node(watched, nats_cluster)
        await nats_cluster.kill(host)
        state = KeyState(provider_id="p", key_id="w", state="cooling", until=time.time() + 60, status_code=429,
                         updated_at=time.time())

        async def put() -> bool:
            with contextlib.suppress(Exception):
                await kv.put("p.w", writer.auth.seal_entry(entry_subject(writer, "p.w"), state))
                return True
            return False

        await eventually(put, 30, "a bucket write on the surviving nodes", interval=0.2)
        took = await eventually(lambda: seen.get("p.w") == state, 10, "the watcher to see the write")
        assert await _connected_node(watched, nats_cluster) == before, "the watcher's connection moved"
        print(f"the write seen {took:.2f}s after it was stored")
    finally:
        if watch is not None:
            await watch.stop()
        if watched is not None:
            await watched.close()
        await writer.close()
