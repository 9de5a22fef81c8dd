"""Hostile input at the gateway: arbitrary bodies, headers and paths never give a 5xx of the gateway's
own making, never crash it and never hang; bodies over the limit are refused from their headers.

The upstream always answers (the fixture mock), so any 5xx would be the gateway's. Every request has a
deadline; after the fuzzing the gateway must still serve a normal request. SSE parsing is fuzzed in
services/gateway/tests/test_usage.py.
"""

from __future__ import annotations

import asyncio
import string

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from aigw_testing.system import System

pytestmark = pytest.mark.reliability
LIMIT = 64 * 1024  # AIGW_MAX_BODY_BYTES for these tests
SERVICES = ("registry", "keypool", "budget", "gateway")
ENDPOINTS = ["/openai/v1/chat/completions", "/openai/v1/responses", "/anthropic/v1/messages",
             "/anthropic/v1/messages/count_tokens", "/api/v2/aibridge/openai/v1/chat/completions"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


SENT: dict[str, int] = {}  # test name → examples sent (for the reliability report)


@pytest.fixture
async def fuzz(start_system, request, reliability):  # type: ignore[no-untyped-def]
    """(system, member token, http session): one stack for every example of a test."""
    s: System = await start_system(services=SERVICES, env={"AIGW_MAX_BODY_BYTES": str(LIMIT)})
    m = await s.member("fuzzer")
    async with aiohttp.ClientSession() as http:
        yield s, m.token, http
    SENT[request.node.name] = SENT.get(request.node.name, 0) + 1
    reliability.record("Hostile bodies, headers and paths at the gateway (hypothesis)",
                       client="never a 5xx of the gateway's own, never a hang (15 s deadline each); still serving "
                              "after", usage="—",
                       measured=", ".join(f"{k.removeprefix('test_arbitrary_')}: {FUZZ.max_examples} examples"
                                          for k in sorted(SENT)))
    # the gateway survived: a normal request is still answered
    async with aiohttp.ClientSession() as http, http.post(
            s.url("gateway", "/openai/v1/chat/completions"), headers={"Authorization": f"Bearer {m.token}"},
            json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200, await r.text()


async def _send(http: aiohttp.ClientSession, method: str, url: str, *, headers: dict[str, str],
                data: bytes | None) -> int:
    try:
        async with asyncio.timeout(15):  # a hang is a failure
            async with http.request(method, url, headers=headers, data=data) as r:
                await r.read()
                return r.status
    except TimeoutError:
        raise AssertionError(f"no answer within 15 s: {method} {url} {headers} {data[:200] if data else data!r}") \
            from None


def _assert_not_ours(status: int, what: object) -> None:
    assert status < 500, f"the gateway answered {status} to {what!r}"


_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64) | st.floats() | st.text(max_size=30)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
_message = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "system", "tool", ""]) | _json,
                                               "content": _json, "tool_calls": _json, "name": _json})
_body = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["gpt-4.1", "claude-x", ""]) | _json,
    "messages": st.lists(_message | _json, max_size=4) | _json,
    "input": _json, "stream": st.booleans() | _json, "max_tokens": _json, "max_output_tokens": _json,
    "stream_options": _json, "tools": _json, "system": _json,
})
_raw_bodies = (
    _body.map(msgspec.json.encode)
    | _json.map(lambda v: msgspec.json.encode(v))
    | st.binary(max_size=300)
    | st.text(max_size=200).map(str.encode)
    | st.just(b'{"model": "gpt-4.1", "messages": [' * 2000)  # deep nesting, unterminated
)


@FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS), body=_raw_bodies)
async def test_arbitrary_bodies(fuzz, endpoint: str, body: bytes) -> None:  # type: ignore[no-untyped-def]
    s, token, http = fuzz
    status = await _send(http, "POST", s.url("gateway", endpoint), data=body,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    _assert_not_ours(status, body[:300])


_FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade"}  # the client's own
_header_name = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=20).filter(
    lambda n: n.lower() not in _FRAMING)
_header_value = st.text(string.printable.strip("\r\n\x0b\x0c"), max_size=200)
_headers = st.dictionaries(
    st.sampled_from(["Authorization", "X-Api-Key", "X-AIGW-Token", "Content-Type", "Content-Encoding",
                     "Accept-Encoding", "X-Claude-Code-Session-Id", "session_id", "X-AIGW-Chat-Id", "User-Agent",
                     "anthropic-beta", "anthropic-version", "Cookie", "Api-Key", "Transfer-Encoding-X"])
    | _header_name, _header_value, max_size=6)


@FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS), headers=_headers, with_token=st.sampled_from(["bearer", "x-api-key", "none"]))
async def test_arbitrary_headers(fuzz, endpoint: str, headers: dict[str, str], with_token: str) -> None:  # type: ignore[no-untyped-def]
    s, token, http = fuzz
    h = dict(headers)
    if with_token == "bearer":
        h.setdefault("Authorization", f"Bearer {token}")
    elif with_token == "x-api-key":
        h.setdefault("X-Api-Key", token)
    body = msgspec.json.encode({"model": "gpt-4.1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    status = await _send(http, "POST", s.url("gateway", endpoint), headers=h, data=body)
    _assert_not_ours(status, h)


_segment = st.text(string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:@", max_size=12)


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       segments=st.lists(_segment, max_size=6), prefix=st.sampled_from(["", "/openai", "/anthropic", "/api/v2/ai-gateway"]))
async def test_arbitrary_paths(fuzz, method: str, segments: list[str], prefix: str) -> None:  # type: ignore[no-untyped-def]
    s, token, http = fuzz
    url = s.url("gateway", prefix + "/" + "/".join(segments))
    status = await _send(http, method, url, headers={"Authorization": f"Bearer {token}"}, data=None)
    _assert_not_ours(status, (method, url))


# ---------------------------------------------------------------------- body limits


async def _headers_only(url: str, method: str, path: str, headers: dict[str, str], length: int) -> bytes:
    """Send a request line and headers announcing ``length`` bytes, send no body, and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {length}",
                "Content-Type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except TimeoutError:
            return b"(no answer within 5 s: the server is waiting for the body)"
    finally:
        writer.close()


async def test_bodies_over_the_limit_are_refused_from_their_headers(start_system, reliability) -> None:  # type: ignore[no-untyped-def]
    s: System = await start_system(services=(*SERVICES, "chatd"), env={"AIGW_MAX_BODY_BYTES": str(LIMIT)})
    m = await s.member("big")
    over = LIMIT + 1
    announced = 2 * 1024 * 1024 + 1  # over every service's limit (the registry keeps its own 1 MiB)
    cases = [
        ("gateway", "POST", "/openai/v1/chat/completions", {"Authorization": f"Bearer {m.token}"}),
        ("gateway", "POST", "/anthropic/v1/messages", {"X-Api-Key": m.token}),
        ("registry", "POST", "/api/v2/ai/providers", {"Authorization": f"Bearer {s.owner_token}"}),
        ("budget", "PUT", "/api/v2/ai/prices", {"Authorization": f"Bearer {s.owner_token}"}),
        ("chatd", "POST", "/api/experimental/chats", {"Authorization": f"Bearer {m.token}"}),
    ]
    answers = {}
    for svc, method, path, headers in cases:
        answer = await _headers_only(s.urls[svc], method, path, headers, announced)
        answers[f"{svc} {method} {path}"] = answer.split(b"\r\n")[0].decode()
    wrong = {k: v for k, v in answers.items() if " 413 " not in v + " "}
    assert not wrong, f"not refused from the Content-Length alone: {wrong}"
    # the gateway's refusal is in the provider's own format, so the SDK raises its usual error
    import openai

    client = s.openai(m.token)
    with pytest.raises(openai.APIStatusError) as e:
        await client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x" * over}])
    assert e.value.status_code == 413 and "exceeds the limit" in e.value.message
    # a chunked body (no Content-Length) is cut off at the limit, not read to its end
    sent = 0

    async def chunks():  # type: ignore[no-untyped-def]
        nonlocal sent
        for _ in range(64):
            sent += LIMIT // 4
            yield b"x" * (LIMIT // 4)
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as http:
        try:
            async with http.post(s.url("gateway", "/openai/v1/chat/completions"), data=chunks(),
                                 headers={"Authorization": f"Bearer {m.token}"}) as r:
                chunked_status = r.status
        except aiohttp.ClientError:  # the server may close before the client finished sending
            chunked_status = 413
    assert chunked_status == 413 and sent < 64 * (LIMIT // 4), (chunked_status, sent)
    # a chunked body just over the limit written in one go (it is all there with the head) is refused too
    u = URL(s.url("gateway", "/openai/v1/chat/completions"))
    reader, writer = await asyncio.open_connection(u.host, u.port)
    try:
        one = b"x" * over
        writer.write(b"POST " + u.raw_path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + m.token.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + f"{len(one):x}\r\n".encode() + one + b"\r\n0\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            status_line = await reader.readline()
    finally:
        writer.close()
    assert b" 413 " in status_line, status_line
    reliability.record("Body over AIGW_MAX_BODY_BYTES",
                       client="413 answered from the Content-Length header alone (no body sent) by the gateway and "
                              "every control-plane service; gateway 413s are in the provider's format",
                       usage="none (refused before an interception starts)",
                       measured=f"limit {LIMIT} B; a chunked upload was cut off after {sent} of {64 * (LIMIT // 4)} B")
