"""Key marks that cannot be stored while the connection stays up (a JetStream cluster electing the stream's
leader looks like no stream at all) are retried by the gateway on its own: no reconnect will come to flush
them."""

from __future__ import annotations

import time

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aigw_common.bus import Bus, decode
from aigw_common.keystate import ensure_marks_stream
from aigw_common.schemas import KeyMarked
from aigw_gateway.app import _MarkSink
from aigw_testing.wait import eventually


async def test_a_mark_not_stored_is_published_again_once_the_stream_answers(bus: Bus) -> None:
    sink = _MarkSink(bus, retry_interval=0.2)
    mark = KeyMarked(event_id="m1", provider_id="p1", key_id="k1", state="cooling", until=time.time() + 60,
                     status_code=429, gateway_id="gw", at=time.time())
    try:
        sink(mark)  # no stream yet: JetStream answers nothing, the publish fails with the connection up
        await eventually(lambda: sink.backlog == [mark], 5, "the mark kept in the backlog")
        await ensure_marks_stream(bus)  # the stream answers again (a leader was elected)
        await eventually(lambda: not sink.backlog, 5, "the backlog published")
        s = bus.subjects
        sub = await bus.js.pull_subscribe(s.keys_marked, stream=s.keys_marked_stream, config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE))
        (m,) = await sub.fetch(1, timeout=5)
        assert decode(m.data, KeyMarked) == mark
    finally:
        await sink.stop()
