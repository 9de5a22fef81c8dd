"""Token usage recorded for every upstream fixture equals the fixture's own numbers.

The expected numbers are read here straight from each fixture's JSON (every
``usage`` object of a response, later ones completing earlier ones, as the
APIs stream them), independently of the gateway's parsers. Events built from
them go through JetStream and the real consumer; the recorded interceptions
must carry exactly those numbers, summed over the upstream calls of an
injected-tool loop.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from aigw_common.bus import Bus
from aigw_common.schemas import InterceptionEnded, InterceptionStarted, TokenCounts, TokenUsage
from aigw_testing.txtar import Fixture, all_corpora

FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def _docs(raw: bytes) -> list[Any]:
    text = raw.decode()
    if text.startswith("HTTP/"):
        text = text.replace("\r\n", "\n").partition("\n\n")[2]
    out = []
    for line in text.splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                try:
                    out.append(json.loads(data))
                except json.JSONDecodeError:
                    pass
    if not out and text.strip():
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError:
            pass
    return out


def _usages(doc: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "usage" and isinstance(v, dict):
                found.append(v)
            else:
                found += _usages(v)
    elif isinstance(doc, list):
        for v in doc:
            found += _usages(v)
    return found


def expected(fx: Fixture, section: str) -> TokenCounts | None:
    merged: dict[str, Any] = {}
    for doc in _docs(fx.sections[section]):
        for u in _usages(doc):
            merged.update({k: v for k, v in u.items() if v is not None})
    if not merged:
        return None
    if fx.name.startswith("anthropic/"):
        return TokenCounts(input_tokens=merged.get("input_tokens", 0), output_tokens=merged.get("output_tokens", 0),
                           cache_read_tokens=merged.get("cache_read_input_tokens") or 0,
                           cache_write_tokens=merged.get("cache_creation_input_tokens") or 0)
    if "prompt_tokens" in merged:  # chat completions
        cached = (merged.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        reasoning = (merged.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        return TokenCounts(input_tokens=merged["prompt_tokens"] - cached, output_tokens=merged["completion_tokens"],
                           cache_read_tokens=cached, reasoning_tokens=reasoning)
    cached = (merged.get("input_tokens_details") or {}).get("cached_tokens") or 0  # responses
    reasoning = (merged.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return TokenCounts(input_tokens=merged["input_tokens"] - cached, output_tokens=merged["output_tokens"],
                       cache_read_tokens=cached, reasoning_tokens=reasoning)


def interceptions() -> list[tuple[str, Fixture, list[TokenCounts]]]:
    """(interception id, fixture, token counts per upstream call) for each mode the fixture records."""
    out = []
    for fx in all_corpora().values():  # ours, and the external conformance set when present
        for mode in ("streaming", "non-streaming"):
            calls = [s for s in (mode, f"{mode}/tool-call") if fx.has(s)]
            if calls:
                counts = [c for s in calls if (c := expected(fx, s)) is not None]
                out.append((f"{fx.key}#{mode}#{uuid.uuid4().hex[:6]}", fx, counts))
    return out


async def test_recorded_tokens_equal_every_fixture(budget, bus: Bus, eventually, database_url: str) -> None:  # type: ignore[no-untyped-def]
    cases = interceptions()
    assert len(cases) > 40 and sum(len(c) for _, _, c in cases) > 40  # the fixtures are there and carry usage
    published = 0
    for iid, fx, counts in cases:
        model = fx.request_json().get("model", "")
        events: list[Any] = [InterceptionStarted(
            event_id=uuid.uuid4().hex, interception_id=iid, at=1.0e9 + published, user_id="u1", provider_id="p",
            provider_name=fx.name.split("/")[0], provider_type=fx.name.split("/")[0], endpoint="messages", model=model)]
        events += [TokenUsage(event_id=uuid.uuid4().hex, interception_id=iid, at=1.0e9, model=model, tokens=c)
                   for c in counts]
        events.append(InterceptionEnded(event_id=uuid.uuid4().hex, interception_id=iid, at=1.0e9, status="ok"))
        for e in events:
            await bus.js_publish(bus.subjects.usage("x"), e, msg_id=e.event_id)
        published += len(events)
    outcomes = budget.svc.consumer.outcomes
    await eventually(lambda: outcomes.labels("recorded")._value.get() == published, timeout=30, what="all recorded")
    c = await asyncpg.connect(database_url, server_settings={"search_path": "budget"})
    try:
        rows = {r["id"]: r for r in await c.fetch("SELECT * FROM interceptions")}
        per_call = await c.fetchval("SELECT count(*) FROM token_usages")
    finally:
        await c.close()
    assert per_call == sum(len(cs) for _, _, cs in cases)
    for iid, _fx, counts in cases:
        got = tuple(rows[iid][f] for f in FIELDS)
        want = tuple(sum(getattr(c, f) for c in counts) for f in FIELDS)
        assert got == want, iid
    # spot checks against numbers read off the fixtures by hand
    by_name = {iid.split("#")[0] + "#" + iid.split("#")[1]: rows[iid] for iid, _, _ in cases}
    sonnet = by_name["anthropic/single_builtin_tool#streaming"]
    assert (sonnet["input_tokens"], sonnet["cache_write_tokens"], sonnet["cache_read_tokens"]) == (4, 41, 9731)
    chat = by_name["openai/chatcompletions/simple#non-streaming"]
    assert (chat["input_tokens"], chat["output_tokens"]) == (31, 59)
    chat = by_name["openai/chatcompletions/simple#streaming"]
    assert (chat["input_tokens"], chat["output_tokens"]) == (31, 64)
    injected = by_name["anthropic/single_injected_tool#streaming"]
    assert injected["input_tokens"] == 2210 + 2349 and injected["output_tokens"] == 71 + 38
    cached = by_name["openai/responses/blocking/cached_input_tokens#non-streaming"]
    assert (cached["input_tokens"], cached["cache_read_tokens"]) == (4907 - 4864, 4864)
