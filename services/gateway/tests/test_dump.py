"""API dumps: every attempt (the failed-over ones too), pass-through routes, credentials and vendor
secrets masked, 0600 files in 0700 dirs, bounded per file and in total, written as the stream goes."""

from __future__ import annotations

import asyncio
import dataclasses
import stat
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDict

from aigw_common.llm import CAPABILITIES, ProviderType, SettingField
from aigw_gateway.app import LOADER, create_app
from aigw_gateway.dump import render_headers, secret_settings

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


async def dumped_gateway(gw, apps, make_settings, tmp_path: Path, **env: str) -> str:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(AIGW_DUMP_DIR=str(tmp_path / "dumps"), **env))
    url = await apps.start(app)
    for _ in range(250):
        if app[LOADER].current.revision == gw.registry.revision:
            break
        await asyncio.sleep(0.02)
    return url


def listing(d: Path, pattern: str = "*") -> list[Path]:
    return sorted(d.glob(pattern)) if d.exists() else []


async def files_of(d: Path, n: int, timeout: float = 5.0) -> list[Path]:
    """The dump files, once ``n`` exist and the writer has closed them (sizes stop changing)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        files = listing(d)
        if len(files) >= n:
            await asyncio.sleep(0.2)
            return listing(d)
        assert asyncio.get_running_loop().time() < deadline, files
        await asyncio.sleep(0.05)


async def post(url: str, token: str, path: str = "/openai/v1/chat/completions", body: object = CHAT,
               headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as s, s.post(url + path, data=msgspec.json.encode(body),
                                                    headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": "application/json", **(headers or {})}) as r:
        await r.read()
        return r.status


def test_settings_are_masked_by_what_the_type_declares_not_by_their_names() -> None:
    """A field declared secret is masked whatever it is called; a declared public one is shown even when its
    name sounds secret; a setting the record does not declare is masked (allowlist)."""
    cap = dataclasses.replace(CAPABILITIES[ProviderType.BEDROCK], settings=(
        SettingField("region", required=True), SettingField("tenant_pin", secret=True),
        SettingField("key_alias"),
    ))
    settings = {"region": "eu-central-1", "tenant_pin": "pin-0042-xyzzy", "key_alias": "alias-visible-1",
                "leftover": "left-over-value", "forward_headers": "X-Tenant, X-Alias", "idle_timeout": "600s"}
    secrets = secret_settings(cap, settings)
    assert sorted(secrets) == ["left-over-value", "pin-0042-xyzzy"]
    text = render_headers(CIMultiDict({"X-Tenant": "pin-0042-xyzzy", "X-Alias": "alias-visible-1",
                                       "X-Region": "eu-central-1"}), secrets)
    assert "pin-0042-xyzzy" not in text and "X-Alias: alias-visible-1" in text and "X-Region: eu-central-1" in text
    # the real records: Bedrock's credentials are declared secret, its region and model are not
    bedrock = {"region": "us-east-1-long", "access_key": "AKIAEXAMPLE123", "access_key_secret": "s3cr3t-v4lue",
               "session_token": "tok-0123456789", "model": "anthropic.claude-x"}
    assert sorted(secret_settings(CAPABILITIES[ProviderType.BEDROCK], bedrock)) == [
        "AKIAEXAMPLE123", "s3cr3t-v4lue", "tok-0123456789"]


async def test_every_attempt_is_dumped_and_masked(gw, apps, make_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw.registry.put_provider("openai", "openai", gw.upstream.url + "/v1", ["sk-dump-key-1111", "sk-dump-key-2222"],
                             settings={"forward_headers": "Ocp-Apim-Subscription-Key, X-Vendor-Thing",
                                       "vendor_token": "vt-abcdefgh-12345"})
    await gw.registry.publish_changed()
    url = await dumped_gateway(gw, apps, make_settings, tmp_path)
    gw.upstream.play("openai/chatcompletions/simple")
    gw.upstream.on_key("sk-dump-key-1111", 429, headers={"Retry-After": "30"},
                       body={"error": {"message": "slow down, key one", "type": "rate_limit"}})
    status = await post(url, gw.user.token, headers={"Ocp-Apim-Subscription-Key": "apim-sub-secret-9999",
                                                     "X-Vendor-Thing": "vt-abcdefgh-12345"})
    assert status == 200
    iid = (await gw.usage.wait_ended(1))[-1].interception_id
    d = tmp_path / "dumps" / "openai"
    files = await files_of(d, 4)
    assert [f.name for f in files] == [f"{iid}.1.request", f"{iid}.1.response", f"{iid}.2.request", f"{iid}.2.response"]
    text = {f.name.split(".", 1)[1]: f.read_text() for f in files}
    assert text["1.response"].startswith("HTTP 429") and "slow down, key one" in text["1.response"]
    assert text["2.response"].startswith("HTTP 200") and "retrogradation" in text["2.response"]
    assert text["1.request"].startswith("POST http") and '"messages"' in text["1.request"]
    everything = "".join(text.values())
    for secret in ("sk-dump-key-1111", "sk-dump-key-2222", gw.user.token, "apim-sub-secret-9999", "vt-abcdefgh-12345"):
        assert secret not in everything, secret
    assert "Ocp-Apim-Subscription-Key: apim***99" in text["2.request"]
    # the vendor headers did go upstream, as sent
    assert gw.upstream.requests[-1].headers["Ocp-Apim-Subscription-Key"] == "apim-sub-secret-9999"
    # permissions: nothing for anyone but the gateway's user
    assert stat.S_IMODE((tmp_path / "dumps").stat().st_mode) == 0o700
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


async def test_passthrough_routes_are_dumped(gw, apps, make_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = await dumped_gateway(gw, apps, make_settings, tmp_path)

    async def models(request: web.Request, _body: bytes) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "gpt-dumped"}]})

    gw.upstream.handler = models
    async with aiohttp.ClientSession() as s, s.get(url + "/openai/v1/models",
                                                   headers={"Authorization": f"Bearer {gw.user.token}"}) as r:
        assert r.status == 200
    files = await files_of(tmp_path / "dumps" / "openai", 2)
    assert [f.name.split(".", 1)[1] for f in files] == ["1.request", "1.response"]
    assert files[0].read_text().startswith("GET http") and "gpt-dumped" in files[1].read_text()
    assert "sk-test-key-1" not in files[0].read_text()


async def test_bounded_per_file_and_in_total(gw, apps, make_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = await dumped_gateway(gw, apps, make_settings, tmp_path, AIGW_DUMP_MAX_BYTES="64KiB")
    big = "z" * 20_000

    async def answer(request: web.Request, _body: bytes) -> web.Response:
        return web.json_response({"id": "c", "object": "chat.completion", "model": "gpt-4o", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": big}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    gw.upstream.handler = answer
    for _ in range(30):
        assert await post(url, gw.user.token, body={**CHAT, "padding": "p" * 3000}) == 200
    await asyncio.sleep(0.5)
    d = tmp_path / "dumps" / "openai"
    sizes = [f.stat().st_size for f in listing(d)]
    assert max(sizes) <= 4096 + 100  # per file: 64 KiB / 16, plus the truncation note
    assert sum(sizes) <= 64 * 1024
    assert any("[dump truncated: per-file limit" in f.read_text() for f in listing(d, "*.response"))
    assert len(sizes) < 60  # the oldest were deleted to stay under the total


async def test_a_stream_is_written_as_it_goes(gw, apps, make_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = await dumped_gateway(gw, apps, make_settings, tmp_path)
    release = asyncio.Event()

    async def slow_stream(request: web.Request, _body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o",
                 "choices": [{"index": 0, "delta": {"content": "first-part-of-the-stream"}}]}
        await resp.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
        await release.wait()
        await resp.write(b"data: [DONE]\n\n")
        return resp

    gw.upstream.handler = slow_stream
    task = asyncio.create_task(post(url, gw.user.token, body={**CHAT, "stream": True}))
    d = tmp_path / "dumps" / "openai"
    try:
        for _ in range(200):  # the first event is on disk while the upstream still holds the stream open
            resp_files = listing(d, "*.response")
            if resp_files and b"first-part-of-the-stream" in resp_files[0].read_bytes():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the streamed chunk never reached the dump file while the stream was open")
        assert not task.done()
    finally:
        release.set()
    assert await task == 200


async def test_a_cut_bedrock_stream_dumps_the_error_event_the_client_got(  # type: ignore[no-untyped-def]
        gw, mock_bedrock, apps, make_settings, tmp_path) -> None:
    """What the translating filter adds at the end (the error event of a stream cut mid-frame) is part of the
    response the client got, so it is in the dump too."""
    from aigw_gateway.eventstream import encode_chunk

    gw.registry.put_provider("bedrock", "bedrock", mock_bedrock.url, [], settings={
        "region": mock_bedrock.region, "access_key": mock_bedrock.access_key,
        "access_key_secret": mock_bedrock.secret_key, "model": "anthropic.claude-sonnet-4-5-20250929-v1:0"})
    await gw.registry.publish_changed()
    url = await dumped_gateway(gw, apps, make_settings, tmp_path)
    start = msgspec.json.encode({"type": "message_start", "message": {
        "id": "msg_cut", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}})

    async def cut(request: web.Request, _body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await resp.prepare(request)
        await resp.write(encode_chunk(start) + encode_chunk(start)[:20])  # the second frame stops halfway
        await resp.write_eof()
        return resp

    mock_bedrock.handler = cut
    body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s, s.post(url + "/bedrock/v1/messages", data=msgspec.json.encode(body),
                                                    headers={"Authorization": f"Bearer {gw.user.token}",
                                                             "anthropic-version": "2023-06-01"}) as r:
        assert r.status == 200
        got = await r.read()
    assert b"event: error" in got and b"ended in the middle of a message" in got
    [resp_file] = [f for f in await files_of(tmp_path / "dumps" / "bedrock", 2) if f.name.endswith(".response")]
    dumped = resp_file.read_bytes()
    assert b"msg_cut" in dumped
    assert b"ended in the middle of a message" in dumped
