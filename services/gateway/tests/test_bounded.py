"""Per-value state on the hot path is bounded: model length, breakers, metric label values."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import msgspec

from aigw_common.metrics import LabelCap
from aigw_common.settings import Settings
from aigw_gateway.breaker import Breakers


async def test_a_model_over_256_bytes_is_a_400(gw) -> None:  # type: ignore[no-untyped-def]
    gw.upstream.play("openai/chatcompletions/simple")
    async with aiohttp.ClientSession() as s:
        for api, path, model in (("openai", "/openai/v1/chat/completions", "m" * 257),
                                 ("anthropic", "/anthropic/v1/messages", "é" * 129),  # 258 bytes, 129 characters
                                 ("openai", "/openai/v1/responses", "x" * 5 * 1024 * 1024)):
            body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "input": "hi"}
            async with s.post(gw.url + path, data=msgspec.json.encode(body),
                              headers={"Authorization": f"Bearer {gw.user.token}",
                                       "Content-Type": "application/json"}) as r:
                doc = await r.json()
            assert r.status == 400, doc
            msg = doc["error"]["message"]
            assert "model" in msg and "256" in msg and (api != "anthropic" or doc["type"] == "error")
        body = {"model": "m" * 256, "messages": [{"role": "user", "content": "hi"}]}
        async with s.post(gw.url + "/openai/v1/chat/completions", data=msgspec.json.encode(body),
                          headers={"Authorization": f"Bearer {gw.user.token}", "Content-Type": "application/json"}) as r:
            assert r.status == 200
    assert len(gw.upstream.requests) == 1


def test_breakers_are_an_lru() -> None:
    b = Breakers(replace(Settings.from_env({}).breaker, failure_threshold=1), max_entries=100)
    hot = b.get("p", "chat_completions", "gpt-4o")
    assert hot is not None
    b.record(hot, ("p", "chat_completions", "gpt-4o"), 503)  # open
    for i in range(10_000):
        b.get("p", "chat_completions", f"invented-{i}")
        if i % 50 == 0:
            assert b.get("p", "chat_completions", "gpt-4o") is hot  # in use: kept, with its state
    assert len(b) == 100
    assert b.get("p", "chat_completions", "gpt-4o") is hot and hot.state == 1


def test_label_cap() -> None:
    cap = LabelCap(3)
    assert [cap(v) for v in ("a", "b", "a", "c", "d", "e", "b")] == ["a", "b", "a", "c", "other", "other", "b"]
