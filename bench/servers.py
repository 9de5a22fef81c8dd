"""Processes the benchmark measures against: the mock upstream and a bare aiohttp pass-through proxy.

    python -m bench.servers mock PORT LATENCY_MS
    python -m bench.servers bare PORT UPSTREAM_URL

The mock answers the three bridged APIs with small synthetic bodies written here
(the shapes of OpenAI chat completions, OpenAI Responses and Anthropic Messages,
blocking and streamed), so the benchmark depends on no test corpus. It waits
``LATENCY_MS`` before the first byte, like a model's time to first token.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys

import aiohttp
import msgspec
import uvloop
from aiohttp import web

_WORDS = ["Nine", " angels", " can", " dance", " on", " the", " head", " of", " a", " pin", ",", " they", " say", "."]


def _sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def chat_blocking(model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-bench1", "object": "chat.completion", "created": 1764400000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(_WORDS), "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 24, "completion_tokens": len(_WORDS), "total_tokens": 24 + len(_WORDS),
                  "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
    }).encode()


def chat_stream(model: str) -> list[bytes]:
    base = {"id": "chatcmpl-bench1", "object": "chat.completion.chunk", "created": 1764400000, "model": model}
    out = [_sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})]
    out += [_sse({**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}) for w in _WORDS]
    out.append(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    out.append(_sse({**base, "choices": [], "usage": {"prompt_tokens": 24, "completion_tokens": len(_WORDS),
                                                        "total_tokens": 24 + len(_WORDS)}}))
    out.append(b"data: [DONE]\n\n")
    return out


def messages_blocking(model: str) -> bytes:
    return json.dumps({
        "id": "msg_bench1", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "".join(_WORDS)}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 24, "output_tokens": len(_WORDS), "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0},
    }).encode()


def messages_stream(model: str) -> list[bytes]:
    msg = {"id": "msg_bench1", "type": "message", "role": "assistant", "model": model, "content": [],
           "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 24, "output_tokens": 1}}
    out = [_sse({"type": "message_start", "message": msg}, "message_start"),
           _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start")]
    out += [_sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
                 "content_block_delta") for w in _WORDS]
    out.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    out.append(_sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                     "usage": {"output_tokens": len(_WORDS)}}, "message_delta"))
    out.append(_sse({"type": "message_stop"}, "message_stop"))
    return out


def responses_stream(model: str) -> list[bytes]:
    resp = {"id": "resp_bench1", "object": "response", "created_at": 1764400000, "status": "in_progress",
            "model": model, "output": [], "usage": None}
    item = {"id": "msg_bench1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    text = "".join(_WORDS)
    seq = iter(range(1000))
    out = [_sse({"type": "response.created", "sequence_number": next(seq), "response": resp}, "response.created"),
           _sse({"type": "response.in_progress", "sequence_number": next(seq), "response": resp},
                "response.in_progress"),
           _sse({"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0,
                 "item": item}, "response.output_item.added"),
           _sse({"type": "response.content_part.added", "sequence_number": next(seq), "item_id": "msg_bench1",
                 "output_index": 0, "content_index": 0, "part": part}, "response.content_part.added")]
    out += [_sse({"type": "response.output_text.delta", "sequence_number": next(seq), "item_id": "msg_bench1",
                  "output_index": 0, "content_index": 0, "delta": w}, "response.output_text.delta") for w in _WORDS]
    done_part = {**part, "text": text}
    done_item = {**item, "status": "completed", "content": [done_part]}
    usage = {"input_tokens": 24, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": len(_WORDS),
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 24 + len(_WORDS)}
    out += [_sse({"type": "response.output_text.done", "sequence_number": next(seq), "item_id": "msg_bench1",
                  "output_index": 0, "content_index": 0, "text": text}, "response.output_text.done"),
            _sse({"type": "response.content_part.done", "sequence_number": next(seq), "item_id": "msg_bench1",
                  "output_index": 0, "content_index": 0, "part": done_part}, "response.content_part.done"),
            _sse({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": 0,
                  "item": done_item}, "response.output_item.done"),
            _sse({"type": "response.completed", "sequence_number": next(seq),
                  "response": {**resp, "status": "completed", "output": [done_item], "usage": usage}},
                 "response.completed")]
    return out


class _Asked(msgspec.Struct):
    model: str = ""
    stream: bool = False


@functools.lru_cache(maxsize=64)
def _answer(path: str, model: str, stream: bool) -> tuple[bytes | None, list[bytes] | None] | None:
    """(blocking body, stream events) for a request; built once per kind and model (the mock shares a core
    with the load generator and the control plane: what it spends is taken from them)."""
    if path.endswith("/chat/completions"):
        return (None, chat_stream(model)) if stream else (chat_blocking(model), None)
    if path.endswith("/messages"):
        return (None, messages_stream(model)) if stream else (messages_blocking(model), None)
    if path.endswith("/responses") and stream:
        return None, responses_stream(model)
    return None


def mock_app(latency_ms: float) -> web.Application:
    """One handler per bridged endpoint; the model echoes the request's (so prices apply)."""
    delay = latency_ms / 1000.0

    async def handle(request: web.Request) -> web.StreamResponse:
        asked = msgspec.json.decode(await request.read(), type=_Asked)
        path = request.path
        if delay:
            await asyncio.sleep(delay)
        answer = _answer(path, asked.model, asked.stream)
        if answer is not None:
            blocking, events = answer
        else:
            return web.json_response({"error": {"message": f"bench mock: no {path}", "type": "invalid_request_error"}},
                                     status=404)
        if blocking is not None:
            return web.Response(body=blocking, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for e in events or ():
            await resp.write(e)
        await resp.write_eof()
        return resp

    async def ping(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_post("/{tail:.*}", handle)
    return app


def bare_app(upstream: str) -> web.Application:
    """The floor to compare against: forward method, path, headers and body; relay the response as it streams."""
    drop = {"host", "content-length", "transfer-encoding", "connection"}

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
        async with request.app["session"].request(request.method, upstream + request.path_qs, data=body,
                                                   headers=headers) as up:
            resp = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in drop})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    app = mock_app(float(argv[2]) if len(argv) > 2 else 0.0) if kind == "mock" else bare_app(argv[2])
    # the mock on uvloop (it shares a core with the load generator and the control plane); the bare proxy on
    # aiohttp's default loop, as a plain aiohttp pass-through runs
    loop = uvloop.new_event_loop() if kind == "mock" else None
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main(sys.argv[1:])
