"""Compare-and-set writes to the key-state bucket on real NATS."""

from __future__ import annotations

import asyncio
import random
import time

from aigw_common.keystate import KeyStateWatch
from aigw_keypool.logic import cool
from aigw_keypool.store import KeyStore


async def test_concurrent_writers_keep_the_longest_cooldown(bus, eventually):
    watches = [KeyStateWatch(bus, lambda *_: None) for _ in range(2)]
    for w in watches:
        w.start()
    try:
        for w in watches:
            await asyncio.wait_for(w.loaded.wait(), 5)
        stores = [KeyStore(w) for w in watches]
        now = time.time()
        untils = [now + 10 + i for i in range(40)]
        random.Random(7).shuffle(untils)
        results = await asyncio.gather(*(
            stores[i % 2].change("p", "k", lambda cur, u=u: cool(cur, "p", "k", u, 429, now))
            for i, u in enumerate(untils)))
        assert any(r is None for r in results)  # some writers found a longer cooldown already there
        entry = await stores[0]._kv.get("p.k")
        await eventually(lambda: all(w.states.get("p.k", (None, 0))[1] == entry.revision for w in watches), 5)
        assert {w.states["p.k"][0].until for w in watches} == {max(untils)}
        await stores[1].clear("p", "k")
        await eventually(lambda: all(w.states["p.k"][0].state == "valid" for w in watches), 5, "clear seen by mirrors")
        assert await stores[0].change("p", "k", lambda cur: cool(cur, "p", "k", time.time() + 5, 429, now)) is not None
        # writing over a delete marker works (create handles the tombstone); readers ignore the marker itself
        await stores[0]._kv.purge("p.k")
        await asyncio.sleep(0.2)
        assert all(w.states["p.k"][0].state == "cooling" for w in watches), [w.states for w in watches]
        await stores[0]._kv.create("p.k", b"x")  # noise, also ignored
        assert await stores[1].change("p", "k", lambda cur: cool(cur, "p", "k", time.time() + 9, 429, now)) is not None
    finally:
        for w in watches:
            await w.stop()
