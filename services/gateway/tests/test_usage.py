"""The usage dialects against every recorded upstream response, in many chunkings, plus property tests.

Expected numbers come from a plain ``json`` parse of the fixture written here
(``_reference``), never from the module under test; a few literal anchors keep
that reference honest. ``python -m bench.usage_extract`` is the benchmark.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aigw_common.llm.error_body import MAX_MESSAGE
from aigw_common.schemas import TokenCounts
from aigw_gateway.usage import stream as usage_stream
from aigw_gateway.usage.chat import inject_include_usage
from aigw_gateway.usage.common import Extracted, ToolCall
from aigw_gateway.usage.dialects import ENDPOINTS, dialect
from aigw_testing.txtar import EXT, Fixture, all_corpora, load_all, load_external


def endpoint_of(name: str) -> str:
    name = name.removeprefix(EXT)
    if name.startswith("anthropic/"):
        return "messages"
    if name.startswith("openai/chatcompletions/"):
        return "chat_completions"
    if name.startswith("openai/responses/"):
        return "responses"
    raise AssertionError(name)


# both corpora when the external one is present (its cases prefixed "ext:"); the model lists are pass-through
FIXTURES: dict[str, Fixture] = {n: f for n, f in all_corpora().items() if "fallthrough" not in n}
CASES = [
    pytest.param(name, section, id=f"{name}:{section}")
    for name, f in FIXTURES.items()
    for section in f.sections
    if section != "request"
]
STREAM_CASES = [c for c in CASES if c.values[1].startswith("streaming")]


def test_every_fixture_is_covered() -> None:
    ours = {n for n in FIXTURES if not n.startswith(EXT)}
    assert len(ours) >= 50 and len(FIXTURES) == len(ours) + sum("fallthrough" not in n for n in load_external())
    assert len([c for c in CASES if not c.values[0].startswith(EXT)]) >= 85
    assert {endpoint_of(n) for n in ours} == {"chat_completions", "responses", "messages"}
    assert len(load_all()) == len(ours) + 2  # the two model lists


# ------------------------------------------------------------ the reference


def _sse(body: bytes) -> list[tuple[str | None, str]]:
    events = []
    for block in re.split(r"\n\n+", body.decode().replace("\r\n", "\n")):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, "\n".join(data)))
    return events


def _loads(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _openai(inp: int, out: int, cached: int, reasoning: int) -> dict[str, int]:
    return dict(
        input_tokens=inp - cached,
        output_tokens=out,
        cache_read_tokens=cached,
        cache_write_tokens=0,
        reasoning_tokens=reasoning,
    )


def _chat_tokens(u: dict | None) -> dict[str, int]:
    u = u or {}
    return _openai(
        u.get("prompt_tokens", 0),
        u.get("completion_tokens", 0),
        (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
        (u.get("completion_tokens_details") or {}).get("reasoning_tokens", 0),
    )


def _responses_tokens(u: dict | None) -> dict[str, int]:
    u = u or {}
    return _openai(
        u.get("input_tokens", 0),
        u.get("output_tokens", 0),
        (u.get("input_tokens_details") or {}).get("cached_tokens", 0),
        (u.get("output_tokens_details") or {}).get("reasoning_tokens", 0),
    )


def _anthropic_tokens(u: dict) -> dict[str, int]:
    return dict(
        input_tokens=u.get("input_tokens", 0),
        output_tokens=u.get("output_tokens", 0),
        cache_read_tokens=u.get("cache_read_input_tokens", 0),
        cache_write_tokens=u.get("cache_creation_input_tokens", 0),
        reasoning_tokens=0,
    )


def _error_message(err: Any) -> str | None:
    return err.get("message") if isinstance(err, dict) else err


def _response_item_call(item: dict) -> tuple[str, str, str] | None:
    if not item.get("type", "").endswith("_call"):
        return None
    args = item.get("arguments") if "arguments" in item else item.get("input", "")
    return (item["name"], item["call_id"], args)


def _reference(endpoint: str, section: str, body: bytes, whole_status: int | None) -> dict:
    """What a careful reader of the fixture expects, by a full json parse."""
    out: dict[str, Any] = dict(
        model=None,
        tokens=_openai(0, 0, 0, 0),
        tools=[],
        terminal=not section.startswith("streaming"),
        error=None,
    )
    if whole_status is not None and whole_status >= 400:
        out["error"] = _error_message(json.loads(body)["error"])
        return out
    if not section.startswith("streaming"):
        j = _loads(body)
        if not isinstance(j, dict):
            return out
        out["model"] = j.get("model")
        out["error"] = _error_message(j.get("error"))
        if endpoint == "chat_completions":
            out["tokens"] = _chat_tokens(j.get("usage"))
            for choice in j.get("choices") or []:
                for tc in choice["message"].get("tool_calls") or []:
                    fn = tc["function"]
                    out["tools"].append((fn["name"], tc["id"], fn["arguments"]))
        elif endpoint == "responses":
            out["tokens"] = _responses_tokens(j.get("usage"))
            out["tools"] = [c for c in map(_response_item_call, j.get("output") or []) if c]
        else:
            out["tokens"] = _anthropic_tokens(j.get("usage") or {})
            for block in j.get("content") or []:
                if block["type"] == "tool_use":
                    out["tools"].append((block["name"], block["id"], _compact(block["input"])))
        return out

    events = _sse(body)
    if endpoint == "chat_completions":
        chat_usage, calls = None, {}
        for _, data in events:
            if data.strip() == "[DONE]":
                out["terminal"] = True
                continue
            j = _loads(data)
            if not isinstance(j, dict):
                continue
            out["model"] = j.get("model") or out["model"]
            chat_usage = j.get("usage") or chat_usage
            if j.get("error"):
                out["error"] = _error_message(j["error"])
            for choice in j.get("choices") or []:
                for tc in (choice.get("delta") or {}).get("tool_calls") or []:
                    call = calls.setdefault(tc["index"], ["", "", ""])
                    call[1] = tc.get("id") or call[1]
                    fn = tc.get("function") or {}
                    call[0] = fn.get("name") or call[0]
                    call[2] += fn.get("arguments") or ""
        out["tokens"] = _chat_tokens(chat_usage)
        out["tools"] = [tuple(c) for c in calls.values()]
    elif endpoint == "responses":
        for _, data in events:
            j = _loads(data)
            if not isinstance(j, dict):
                continue
            kind = j.get("type")
            if kind == "response.output_item.done":
                call = _response_item_call(j["item"])
                if call:
                    out["tools"].append(call)
            elif kind == "response.created":
                out["model"] = j["response"].get("model") or out["model"]
            elif kind in ("response.completed", "response.failed", "response.incomplete"):
                out["terminal"] = True
                r = j["response"]
                out["model"] = r.get("model") or out["model"]
                out["tokens"] = _responses_tokens(r.get("usage"))
                if kind == "response.failed":
                    out["error"] = _error_message(r["error"])
            elif kind == "error":
                out["error"] = _error_message(j.get("error")) or j.get("message")
    else:
        merged: dict[str, int] = {}
        blocks: dict[int, list[str]] = {}
        for _, data in events:
            j = _loads(data)
            if not isinstance(j, dict):
                continue
            kind = j.get("type")
            if kind == "message_start":
                out["model"] = j["message"]["model"]
                merged.update({k: v for k, v in j["message"]["usage"].items() if v is not None})
            elif kind == "message_delta":
                merged.update({k: v for k, v in (j.get("usage") or {}).items() if v is not None})
            elif kind == "content_block_start" and j["content_block"]["type"] == "tool_use":
                b = j["content_block"]
                blocks[j["index"]] = [b["name"], b["id"], ""]
            elif kind == "content_block_delta" and j["delta"]["type"] == "input_json_delta":
                blocks[j["index"]][2] += j["delta"]["partial_json"]
            elif kind == "message_stop":
                out["terminal"] = True
            elif kind == "error":
                out["error"] = _error_message(j["error"])
        out["tokens"] = _anthropic_tokens(merged)
        out["tools"] = [tuple(b) for b in blocks.values()]
    return out


def _as_dict(x: Extracted) -> dict:
    return dict(
        model=x.model,
        tokens=msgspec.structs.asdict(x.tokens),
        tools=[(t.name, t.call_id, t.arguments) for t in x.tool_calls],
        terminal=x.terminal,
        error=x.error,
    )


def _expected(name: str, section: str) -> tuple[str, bytes, dict]:
    f = FIXTURES[name]
    resp = f.response(section)
    endpoint = endpoint_of(name)
    status = resp.status if resp.is_whole else None
    return endpoint, resp.body, _reference(endpoint, section, resp.body, status)


def _stream(endpoint: str, chunks: list[bytes]) -> Extracted:
    x = dialect(endpoint).stream()
    for c in chunks:
        x.feed(c)
    return x.finish()


def _split(body: bytes, rng: random.Random, hi: int) -> list[bytes]:
    out, i = [], 0
    while i < len(body):
        n = rng.randint(1, hi)
        out.append(body[i : i + n])
        i += n
    return out


# ------------------------------------------------------------ the fixtures


@pytest.mark.parametrize(("name", "section"), CASES)
def test_fixture_matches_reference(name: str, section: str) -> None:
    endpoint, body, want = _expected(name, section)
    if section.startswith("streaming"):
        got = _stream(endpoint, [body])
    else:
        got = dialect(endpoint).extract_blocking(body)
    assert _as_dict(got) == want
    for call in got.tool_calls:
        assert call.injected is False and call.error is None


@pytest.mark.parametrize(("name", "section"), STREAM_CASES)
def test_stream_chunking_does_not_matter(name: str, section: str) -> None:
    endpoint, body, want = _expected(name, section)
    rng = random.Random(f"{name}:{section}")
    crlf = body.replace(b"\n", b"\r\n")
    chunkings = {
        "whole": [body],
        "bytes": [body[i : i + 1] for i in range(len(body))],
        "small": _split(body, rng, 17),
        "large": _split(body, rng, 3000),
        "crlf": _split(crlf, rng, 50),
        "crlf bytes": [crlf[i : i + 1] for i in range(len(crlf))],
        "cr": _split(body.replace(b"\n", b"\r"), rng, 200),
        "per line": body.splitlines(keepends=True),
    }
    for how, chunks in chunkings.items():
        assert _as_dict(_stream(endpoint, chunks)) == want, how


@pytest.mark.parametrize(("name", "section"), STREAM_CASES)
def test_stream_without_event_names(name: str, section: str) -> None:
    """Proxies that drop ``event:`` lines: the payload's own ``type`` decides."""
    endpoint, body, want = _expected(name, section)
    bare = re.sub(rb"(?m)^event:[^\n]*\n", b"", body)
    assert _as_dict(_stream(endpoint, [bare])) == want


ANCHORS = [
    ("anthropic/simple", "streaming", dict(input_tokens=22, output_tokens=58), None, True, None),
    (
        "anthropic/single_builtin_tool",
        "streaming",
        dict(input_tokens=4, output_tokens=67, cache_read_tokens=9731, cache_write_tokens=41),
        ("Read", "toolu_Xtac3qTrw83bqsdmKJpwya0g", '{"file_path": "config/server.toml"}'),
        True,
        None,
    ),
    (
        "anthropic/single_injected_tool",
        "non-streaming",
        dict(input_tokens=2210, output_tokens=66),
        ("mcp_tracker_list_issues", "toolu_ddz0RHG37ERbFWjr9Bp4cK6c", '{"project":"gateway"}'),
        True,
        None,
    ),
    ("anthropic/stream_error", "streaming", dict(input_tokens=14, output_tokens=1), None, False, "Overloaded"),
    (
        "openai/chatcompletions/streaming_injected_tool_nonzero_index",
        "streaming",
        dict(input_tokens=4242 - 3968, output_tokens=27, cache_read_tokens=3968),
        ("mcp_tracker_list_issues", "call_8cea9129d8c6cb54ded6aa99", "{}"),
        True,
        None,
    ),
    (
        "openai/chatcompletions/single_builtin_tool",
        "streaming",
        dict(input_tokens=68, output_tokens=17),
        ("read_file", "call_03107f32745360974751b3f1", '{"path":"CHANGELOG.md"}'),
        True,
        None,
    ),
    (
        "openai/chatcompletions/reasoning_tokens",
        "non-streaming",
        dict(input_tokens=19, output_tokens=146, reasoning_tokens=128),
        None,
        True,
        None,
    ),
    (
        "openai/responses/streaming/custom_tool",
        "streaming",
        dict(input_tokens=73, output_tokens=219, reasoning_tokens=192),
        ("run_python", "call_770f806a66246cc885c028ac", "print([n * n for n in range(1, 6)])"),
        True,
        None,
    ),
    (
        "openai/responses/blocking/cached_input_tokens",
        "non-streaming",
        dict(input_tokens=4907 - 4864, output_tokens=41, cache_read_tokens=4864),
        None,
        True,
        None,
    ),
    (
        "openai/responses/streaming/incomplete",
        "streaming",
        dict(input_tokens=15, output_tokens=16),
        None,
        True,
        None,
    ),
    (
        "openai/responses/streaming/stream_failure",
        "streaming",
        {},
        None,
        True,
        "The model produced invalid output.",
    ),
    (
        "openai/responses/streaming/stream_error",
        "streaming",
        {},
        None,
        False,
        "An error occurred while processing your request.",
    ),
    (
        "openai/chatcompletions/non_stream_error",
        "non-streaming",
        {},
        None,
        True,
        "This model's maximum context length is 1047576 tokens. However, your messages resulted in 1200311 "
        "tokens. Please reduce the length of the messages.",
    ),
]

# the same kind of anchors for the external conformance corpus, when it is there
_EXT_ANCHORS = [
    ("ext:anthropic/simple", "streaming", dict(input_tokens=18, output_tokens=240), None, True, None),
    (
        "ext:anthropic/single_builtin_tool",
        "streaming",
        dict(input_tokens=2, output_tokens=61, cache_read_tokens=13993, cache_write_tokens=22),
        ("Read", "toolu_01RX68weRSquLx6HUTj65iBo", '{"file_path": "/tmp/blah/foo"}'),
        True,
        None,
    ),
    (
        "ext:anthropic/single_injected_tool",
        "non-streaming",
        dict(input_tokens=7545, output_tokens=75),
        ("bmcp_coder_coder_list_workspaces", "toolu_01QjNz5b3HxAqAccTVnSMsKP", '{"owner":"admin"}'),
        True,
        None,
    ),
    (
        "ext:anthropic/stream_error",
        "streaming",
        dict(input_tokens=18, output_tokens=1),
        None,
        False,
        "Overloaded",
    ),
    (
        "ext:openai/chatcompletions/streaming_injected_tool_nonzero_index",
        "streaming",
        dict(input_tokens=25939 - 25429, output_tokens=58, cache_read_tokens=25429),
        ("bmcp_coder_coder_list_workspaces", "toolu_vrtx_01DbFqUgk6aAtJ4nDBqzFWDF", ""),
        True,
        None,
    ),
    (
        "ext:openai/chatcompletions/single_builtin_tool",
        "streaming",
        dict(input_tokens=60, output_tokens=15),
        ("read_file", "call_HjeqP7YeRkoNj0de9e3U4X4B", '{"path":"README.md"}'),
        True,
        None,
    ),
    (
        "ext:openai/responses/streaming/custom_tool",
        "streaming",
        dict(input_tokens=64, output_tokens=340, reasoning_tokens=320),
        ("code_exec", "call_2gSnF58IEhXLwlbnqbm5XKMd", 'print("hello world")'),
        True,
        None,
    ),
    (
        "ext:openai/responses/blocking/cached_input_tokens",
        "non-streaming",
        dict(input_tokens=129, output_tokens=44, cache_read_tokens=11904),
        None,
        True,
        None,
    ),
    (
        "ext:openai/responses/streaming/stream_failure",
        "streaming",
        {},
        None,
        True,
        "The model failed to generate a response.",
    ),
    (
        "ext:openai/responses/streaming/stream_error",
        "streaming",
        {},
        None,
        False,
        "Something went wrong",
    ),
    (
        "ext:openai/chatcompletions/non_stream_error",
        "non-streaming",
        {},
        None,
        True,
        "Input tokens exceed the configured limit of 272000 tokens. Your messages resulted in "
        "3148588 tokens. Please reduce the length of the messages.",
    ),
]
if load_external():
    ANCHORS += _EXT_ANCHORS


@pytest.mark.parametrize(("name", "section", "tokens", "tool", "terminal", "error"), ANCHORS)
def test_anchor_values(name, section, tokens, tool, terminal, error) -> None:
    """Literal numbers read off the fixtures: guards the reference above as much as the module."""
    endpoint, body, want = _expected(name, section)
    got = (
        _stream(endpoint, [body])
        if section.startswith("streaming")
        else dialect(endpoint).extract_blocking(body)
    )
    assert got.tokens == TokenCounts(**tokens)
    assert want["tokens"] == msgspec.structs.asdict(TokenCounts(**tokens))
    assert [(t.name, t.call_id, t.arguments) for t in got.tool_calls] == ([tool] if tool else [])
    assert got.terminal is terminal
    assert got.error == error


def test_blocking_not_json_yields_nothing() -> None:
    for endpoint in ENDPOINTS:
        got = dialect(endpoint).extract_blocking(b"<html>bad gateway</html>")
        assert got == Extracted(None, TokenCounts(), [], True, None)


# ------------------------------------------------------------ stream edge cases


def test_unterminated_last_event_is_read() -> None:
    x = dialect("chat_completions").stream()
    x.feed(b'data: {"model":"m","usage":{"prompt_tokens":3,"completion_tokens":2}}\n\ndata: [DONE]')
    got = x.finish()
    assert got.terminal and got.tokens == TokenCounts(input_tokens=3, output_tokens=2)


def test_multi_line_data_is_joined() -> None:
    x = dialect("messages").stream()
    x.feed(b'event: message_start\ndata: {"type":"message_start",\ndata:  "message":{"model":"c",')
    x.feed(b'\ndata: "usage":{"input_tokens":7}}}\n\nevent: message_stop\ndata: {}\n\n')
    got = x.finish()
    assert (got.model, got.tokens.input_tokens, got.terminal) == ("c", 7, True)


def test_overlong_line_is_dropped_and_the_stream_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_stream, "MAX_LINE", 64)
    x = dialect("chat_completions").stream()
    x.feed(b'data: {"model":"' + b"x" * 40)
    x.feed(b"y" * 100)
    x.feed(b'"}\n\ndata: {"model":"ok","usage":{"prompt_tokens":1}}\n\ndata: [DONE]\n\n')
    got = x.finish()
    assert (got.model, got.tokens.input_tokens, got.terminal) == ("ok", 1, True)
    assert len(x.held) == 0
    # an overlong tail in the same chunk as complete lines does not cost those lines
    x = dialect("chat_completions").stream()
    x.feed(b'data: {"model":"ok","usage":{"prompt_tokens":2}}\n\n' + b"z" * 100)
    x.feed(b"z\n\ndata: [DONE]\n\n")
    got = x.finish()
    assert (got.model, got.tokens.input_tokens, got.terminal) == ("ok", 2, True)


def test_stream_error_events_are_read_by_error_body_and_bounded() -> None:
    """Each dialect's in-band error event goes through aigw_common.llm.error_body's reading: message, else
    code, else type, cut to MAX_MESSAGE like every upstream error field (a recorded error stays small)."""
    long = "x" * (MAX_MESSAGE * 3)
    events = {
        "chat_completions": b'data: {"error":{"message":"%s","type":"server_error"}}\n\n' % long.encode(),
        "messages": b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"%s"}}\n\n'
                    % long.encode(),
        "responses": b'event: error\ndata: {"type":"error","code":"server_error","message":"%s"}\n\n' % long.encode(),
    }
    for endpoint, body in events.items():
        assert _stream(endpoint, [body]).error == long[:MAX_MESSAGE], endpoint
    no_message = b'data: {"error":{"type":"server_error","code":"boom"}}\n\n'
    assert _stream("chat_completions", [no_message]).error == "boom"


def test_anthropic_usage_takes_latest_non_null() -> None:
    body = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"c","usage":'
        b'{"input_tokens":10,"output_tokens":1,"cache_read_input_tokens":5,"cache_creation_input_tokens":2}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":30,'
        b'"input_tokens":12,"cache_read_input_tokens":null}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    got = _stream("messages", [body])
    assert got.tokens == TokenCounts(
        input_tokens=12, output_tokens=30, cache_read_tokens=5, cache_write_tokens=2
    )


def test_anthropic_server_tools_count_and_carry_errors() -> None:
    body = json.dumps(
        {
            "model": "c",
            "content": [
                {
                    "type": "server_tool_use",
                    "id": "srv_1",
                    "name": "web_search",
                    "input": {"query": "q"},
                },
                {
                    "type": "web_search_tool_result",
                    "tool_use_id": "srv_1",
                    "content": {
                        "type": "web_search_tool_result_error",
                        "error_code": "max_uses_exceeded",
                    },
                },
                {
                    "type": "mcp_tool_use",
                    "id": "mcp_1",
                    "name": "list",
                    "server_name": "s",
                    "input": {},
                },
                {"type": "tool_use", "id": "t_1", "name": "Read", "input": {}},
            ],
            "usage": {"input_tokens": 1, "output_tokens": 2},
        }
    ).encode()
    got = dialect("messages").extract_blocking(body)
    assert got.tool_calls == [
        ToolCall("web_search", "srv_1", '{"query":"q"}', error="max_uses_exceeded"),
        ToolCall("list", "mcp_1", "{}"),
        ToolCall("Read", "t_1", "{}"),
    ]
    # the same as a stream: blocks arrive whole in content_block_start
    events = [{"type": "message_start", "message": {"model": "c", "usage": {"input_tokens": 1}}}]
    for i, block in enumerate(json.loads(body)["content"]):
        events.append({"type": "content_block_start", "index": i, "content_block": block})
    events.append({"type": "message_stop"})
    sse = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    assert _stream("messages", [sse]).tool_calls == got.tool_calls


def test_responses_builtin_and_mcp_items_are_tool_calls() -> None:
    body = json.dumps(
        {
            "model": "g",
            "status": "completed",
            "output": [
                {
                    "type": "web_search_call",
                    "id": "ws_1",
                    "status": "completed",
                    "action": {"type": "search", "query": "x"},
                },
                {
                    "type": "mcp_call",
                    "id": "mcp_1",
                    "name": "list",
                    "server_label": "s",
                    "arguments": "{}",
                    "error": "boom",
                },
                {
                    "type": "code_interpreter_call",
                    "id": "ci_1",
                    "code": "print(1)",
                    "status": "failed",
                },
                {"type": "function_call_output", "call_id": "c", "output": "x"},
                {"type": "message", "role": "assistant", "content": []},
            ],
            "usage": {"input_tokens": 5, "output_tokens": 1},
        }
    ).encode()
    got = dialect("responses").extract_blocking(body)
    assert got.tool_calls == [
        ToolCall("web_search", "ws_1", '{"type":"search","query":"x"}'),
        ToolCall("list", "mcp_1", "{}", error="boom"),
        ToolCall("code_interpreter", "ci_1", "print(1)", error="failed"),
    ]


def test_responses_incomplete_is_terminal_without_error() -> None:
    body = (
        b'event: response.incomplete\ndata: {"type":"response.incomplete","response":{"model":"g",'
        b'"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},'
        b'"usage":{"input_tokens":9,"output_tokens":4,"output_tokens_details":{"reasoning_tokens":4}}}}\n\n'
    )
    got = _stream("responses", [body])
    assert got.terminal and got.error is None
    assert got.tokens == TokenCounts(input_tokens=9, output_tokens=4, reasoning_tokens=4)


def test_responses_terminal_output_fills_in_missed_items() -> None:
    body = (
        b'event: response.completed\ndata: {"type":"response.completed","response":{"model":"g",'
        b'"output":[{"type":"function_call","call_id":"c1","name":"f","arguments":"{}"}]}}\n\n'
    )
    assert _stream("responses", [body]).tool_calls == [ToolCall("f", "c1", "{}")]


def test_chat_tool_calls_without_index_and_legacy_function_call() -> None:
    chunks = [
        {
            "model": "m",
            "choices": [
                {
                    "delta": {
                        "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}]
                    }
                }
            ],
        },
        {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": "}"}}]}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "[]"}}]
                    }
                }
            ]
        },
        {"choices": [{"index": 1, "delta": {"function_call": {"name": "h", "arguments": "1"}}}]},
        {"choices": [{"index": 1, "delta": {"function_call": {"arguments": "2"}}}]},
    ]
    body = (
        b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    )
    got = _stream("chat_completions", [body])
    assert [(t.name, t.call_id, t.arguments) for t in got.tool_calls] == [
        ("f", "a", "{}"),
        ("g", "b", "[]"),
        ("h", "", "12"),
    ]


def test_chat_usage_null_is_not_decoded_but_usage_object_is() -> None:
    x = dialect("chat_completions").stream()
    x.feed(b'data: {"model":"m","choices":[],"usage":null}\n\n')
    x.feed(
        b'data: {"model":"n","choices":[],"usage" : {"prompt_tokens":4,"completion_tokens":1}}\n\n'
    )
    got = x.finish()
    assert got.model == "n" and got.tokens == TokenCounts(input_tokens=4, output_tokens=1)


def test_unknown_endpoint() -> None:
    with pytest.raises(ValueError):
        dialect("embeddings")


# ------------------------------------------------------------ requests


def _reference_prompt(endpoint: str, req: dict) -> str | None:
    kinds = {
        "chat_completions": {"text"},
        "responses": {"input_text", "text"},
        "messages": {"text"},
    }[endpoint]
    if endpoint == "responses":
        items = req.get("input")
        if isinstance(items, str):
            return items
        items = [
            i
            for i in items or []
            if i.get("role") == "user" and i.get("type", "message") == "message"
        ]
    else:
        items = [m for m in req.get("messages") or [] if m.get("role") == "user"]
    if not items:
        return None
    content = items[-1].get("content")
    if content is None or isinstance(content, str):
        return content
    texts = [p["text"] for p in content if p.get("type") in kinds]
    return "\n".join(texts) if texts else None


@pytest.mark.parametrize("name", [n for n, f in FIXTURES.items() if f.request])
def test_fixture_requests(name: str) -> None:
    f = FIXTURES[name]
    endpoint = endpoint_of(name)
    req = json.loads(f.request)
    info = dialect(endpoint).parse_request(f.request)
    assert info.model == req["model"]
    assert info.stream is bool(req.get("stream"))
    assert info.input_bytes == len(f.request)
    max_key = {
        "chat_completions": ("max_completion_tokens", "max_tokens"),
        "responses": ("max_output_tokens",),
        "messages": ("max_tokens",),
    }
    assert info.max_output_tokens == next((req[k] for k in max_key[endpoint] if req.get(k)), None)
    assert info.prompt == _reference_prompt(endpoint, req)


def _req(endpoint: str, doc: Any) -> Any:
    return dialect(endpoint).parse_request(json.dumps(doc).encode())


def test_prompt_shapes() -> None:
    chat = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "first"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                    {"type": "text", "text": "b"},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "tool", "tool_call_id": "x", "content": "result"},
        ],
        "max_tokens": 5,
        "max_completion_tokens": 7,
    }
    info = _req("chat_completions", chat)
    assert (info.prompt, info.max_output_tokens, info.stream, info.model) == ("a\nb", 7, False, "m")
    assert (
        _req("chat_completions", {"messages": [{"role": "system", "content": "s"}]}).prompt is None
    )
    assert _req("chat_completions", {}).model == ""
    odd_parts = [{"type": {}, "text": "x"}, {"type": ["text"]}, {"type": "text", "text": 5}]
    assert (
        _req("chat_completions", {"messages": [{"role": "user", "content": odd_parts}]}).prompt
        is None
    )
    assert (
        _req("responses", {"input": [{"role": "user", "type": {}, "content": "x"}]}).prompt is None
    )

    resp = {
        "model": "g",
        "stream": True,
        "max_output_tokens": 9,
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "hi"},
                    {"type": "input_image", "image_url": "x"},
                ],
            },
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "ok"},
        ],
    }
    info = _req("responses", resp)
    assert (info.prompt, info.max_output_tokens, info.stream) == ("hi", 9, True)
    assert _req("responses", {"input": [{"role": "user", "content": "plain"}]}).prompt == "plain"

    tool_result = {
        "type": "tool_result",
        "tool_use_id": "t",
        "content": [{"type": "text", "text": "out"}],
    }
    anth = {
        "model": "c",
        "max_tokens": 3,
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}],
            },
            {"role": "user", "content": [tool_result]},
        ],
    }
    assert _req("messages", anth).prompt is None
    anth["messages"][-1]["content"] = [tool_result, {"type": "text", "text": "and then"}]
    assert _req("messages", anth).prompt == "and then"
    anth["messages"][-1]["content"] = "s"
    assert _req("messages", anth).max_output_tokens == 3


@pytest.mark.parametrize(
    ("endpoint", "body", "message"),
    [
        ("chat_completions", b'{"model": 1}', "model: expected a string"),
        ("chat_completions", b'{"model": null}', "model: expected a string"),
        ("chat_completions", b'{"stream": "yes"}', "stream: expected a boolean"),
        ("chat_completions", b'{"messages": {}}', "messages: expected an array"),
        ("chat_completions", b'{"messages": [1]}', "messages[0]: expected an object"),
        ("chat_completions", b'{"messages": [{"role": 1}]}', "messages[0].role: expected a string"),
        (
            "chat_completions",
            b'{"messages": [{"role": "user", "content": 5}]}',
            "messages[0].content: expected a string or an array",
        ),
        (
            "chat_completions",
            b'{"messages": [{"role": "user", "content": [3]}]}',
            "messages[0].content[0]: expected an object",
        ),
        ("chat_completions", b'{"max_tokens": "5"}', "max_tokens: expected an integer"),
        ("responses", b'{"input": 5}', "input: expected a string or an array"),
        ("responses", b'{"input": ["x"]}', "input[0]: expected an object"),
        ("responses", b'{"max_output_tokens": 1.5}', "max_output_tokens: expected an integer"),
        ("messages", b'{"messages": "hi"}', "messages: expected an array"),
        ("messages", b'{"max_tokens": true}', "max_tokens: expected an integer"),
        ("messages", b"[]", "request body: expected a JSON object"),
        ("messages", b"not json", "request body is not valid JSON"),
        ("messages", b"", "request body is not valid JSON"),
        (
            "messages",
            b'{"messages": [{"role":"user","content":' + b"[" * 5000 + b"]" * 5000 + b"}]}",
            "request body is nested too deeply",
        ),
    ],
)
def test_bad_requests(endpoint: str, body: bytes, message: str) -> None:
    with pytest.raises(ValueError) as e:
        dialect(endpoint).parse_request(body)
    assert str(e.value).startswith(message), str(e.value)


def test_unknown_fields_are_fine() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"x","name":"n","extra":{"a":[1]}}],"whatever":[1,{"b":null}]}'
    assert dialect("chat_completions").parse_request(body).prompt == "x"


# ------------------------------------------------------------ include_usage


def test_inject_include_usage() -> None:
    plain = b'  {"model":"m","stream":true,"messages":[]}'
    out = inject_include_usage(plain)
    assert out is not None
    assert json.loads(out) == {
        "model": "m",
        "stream": True,
        "messages": [],
        "stream_options": {"include_usage": True},
    }
    for opts, want in [
        ({}, {"include_usage": True}),
        (None, {"include_usage": True}),
        ({"include_usage": False, "x": 1}, {"include_usage": True, "x": 1}),
    ]:
        doc = {"model": "m", "stream": True, "stream_options": opts}
        out = inject_include_usage(json.dumps(doc).encode())
        assert out is not None and json.loads(out) == {**doc, "stream_options": want}
    for body in [
        b'{"stream":true,"stream_options":{"include_usage":true}}',
        b'{"stream":false}',
        b'{"model":"m"}',
        b'{"stream":"true"}',
        b"[1]",
        b"nope",
    ]:
        assert inject_include_usage(body) is None, body


def test_injected_body_parses_the_same() -> None:
    for name, f in FIXTURES.items():
        if endpoint_of(name) != "chat_completions" or not f.request:
            continue
        out = inject_include_usage(f.request)
        req = json.loads(f.request)
        wants = (
            req.get("stream") is True
            and (req.get("stream_options") or {}).get("include_usage") is not True
        )
        assert (out is not None) == wants, name
        if out is not None:
            assert json.loads(out) == {
                **req,
                "stream_options": {**(req.get("stream_options") or {}), "include_usage": True},
            }
            a, b = (
                dialect("chat_completions").parse_request(out),
                dialect("chat_completions").parse_request(f.request),
            )
            assert (a.model, a.stream, a.prompt) == (b.model, b.stream, b.prompt)


# ------------------------------------------------------------ properties

_KEYS = [
    "type", "model", "usage", "message", "content_block", "delta", "index", "partial_json", "error",
    "response", "item", "output", "choices", "tool_calls", "function", "arguments", "id", "name",
    "call_id", "input_tokens", "output_tokens", "prompt_tokens", "completion_tokens", "cached_tokens",
    "prompt_tokens_details", "input_tokens_details", "cache_read_input_tokens", "content", "role",
    "messages", "input", "stream", "max_tokens", "text", "status", "code", "tool_use_id", "stream_options",
    "include_usage", "is_error", "action",
]  # fmt: skip
_TYPES = [
    "message_start", "message_delta", "message_stop", "content_block_start", "content_block_delta",
    "input_json_delta", "tool_use", "server_tool_use", "web_search_tool_result", "error", "text",
    "response.completed", "response.failed", "response.incomplete", "response.created",
    "response.output_item.done", "function_call", "custom_tool_call", "web_search_call", "user",
    "input_text", "message",
]  # fmt: skip
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(_TYPES)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=25,
)
_event_names = (
    st.sampled_from([t.encode() for t in _TYPES] + [b"ping", b"content_block_stop", b"x"])
    | st.none()
)


@st.composite
def _sse_streams(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(_event_names)
        data = draw(
            st.one_of(
                _json.map(lambda v: json.dumps(v).encode()),
                st.sampled_from([b"[DONE]", b"{", b'{"usage":{', b"", b"\xff\xfe"]),
                st.binary(max_size=20),
            )
        )
        sep = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
        head = b"event: " + name + sep if name is not None else b""
        parts.append(head + b"data: " + data + sep + sep)
    return b"".join(parts) + draw(st.binary(max_size=10))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=_sse_streams(),
    raw=st.lists(st.binary(max_size=40), max_size=6),
    cut=st.integers(1, 30),
    ep=st.sampled_from(ENDPOINTS),
)
def test_feed_never_raises(stream: bytes, raw: list[bytes], cut: int, ep: str) -> None:
    for chunks in (
        [stream],
        [stream[i : i + cut] for i in range(0, len(stream), cut)],
        raw,
        [*raw, stream],
    ):
        x = dialect(ep).stream()
        for c in chunks:
            x.feed(c)
        got = x.finish()
        assert isinstance(got, Extracted)
        assert all(isinstance(t.arguments, str) and isinstance(t.name, str) for t in got.tool_calls)
    # and the chunking never changes the answer
    whole = _stream(ep, [stream])
    assert _as_dict(
        _stream(ep, [stream[i : i + cut] for i in range(0, len(stream), cut)])
    ) == _as_dict(whole)


@settings(max_examples=150, deadline=None)
@given(doc=_json, ep=st.sampled_from(ENDPOINTS))
def test_blocking_never_raises(doc: Any, ep: str) -> None:
    assert isinstance(dialect(ep).extract_blocking(json.dumps(doc).encode()), Extracted)


@settings(max_examples=300, deadline=None)
@given(
    doc=_json
    | st.dictionaries(
        st.sampled_from(_KEYS),
        _json | st.lists(st.dictionaries(st.sampled_from(_KEYS), _json), max_size=3),
        max_size=6,
    ),
    ep=st.sampled_from(ENDPOINTS),
)
def test_parse_request_raises_only_value_error(doc: Any, ep: str) -> None:
    body = json.dumps(doc).encode()
    try:
        info = dialect(ep).parse_request(body)
    except ValueError as e:
        assert str(e)
    else:
        assert isinstance(info.model, str) and info.input_bytes == len(body)
        assert info.prompt is None or isinstance(info.prompt, str)
    out = inject_include_usage(body)
    if out is not None:
        assert json.loads(out)["stream_options"]["include_usage"] is True


_parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "input_text", "tool_result"]) | _json},
        optional={"text": _json, "content": _json},
    )
    | _json,
    max_size=3,
)
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant"]) | _json},
        optional={
            "content": st.text(max_size=5) | _parts | _json,
            "type": st.just("message") | _json,
        },
    )
    | _json,
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    doc=st.fixed_dictionaries(
        {},
        optional={
            "model": st.text(max_size=3) | _json,
            "stream": st.booleans() | _json,
            "messages": _messages | _json,
            "input": st.text(max_size=3) | _messages | _json,
            "max_tokens": st.integers(0, 10**6) | _json,
            "stream_options": st.fixed_dictionaries({}, optional={"include_usage": _json}) | _json,
        },
    ),
    ep=st.sampled_from(ENDPOINTS),
)
def test_parse_request_on_request_shapes(doc: Any, ep: str) -> None:
    test_parse_request_raises_only_value_error.hypothesis.inner_test(doc, ep)  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=64), ep=st.sampled_from(ENDPOINTS))
def test_parse_request_on_bytes(body: bytes, ep: str) -> None:
    try:
        dialect(ep).parse_request(body)
    except ValueError:
        pass
    inject_include_usage(body)


@pytest.mark.parametrize(("body", "want"), [
    (b'{"error":{"message":"m","type":"t","code":"c"}}', "m"),
    (b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "Overloaded"),
    (b'{"error":"boom"}', "boom"),
    (b'{"error":{"code":"c","type":"t"}}', "c"),
    (b'{"error":{}}', "error"),
    (b'{"id":"msg_1","type":"message","content":[]}', None),  # a Messages object is not an error body
    (b'{"message":"no error member"}', None),
    (b'{"error":{"message":"cut', None),
])
def test_body_error(body: bytes, want: str | None) -> None:
    from aigw_gateway.usage.common import body_error

    assert body_error(body) == want
