"""Traces cross services: HTTP (``traceparent``) and NATS headers carry one trace id end to end.

The SDK provider with an in-memory exporter is installed for these tests only and
the OpenTelemetry globals are reset afterwards, so the rest of the suite runs
with tracing off (the cheap path).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.util._once import Once

from aigw_common import tracing
from aigw_common.bus import Bus
from aigw_common.schemas import AuthRevoked
from aigw_common.service import base_app
from aigw_common.settings import Settings


def _reset_globals() -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # what opentelemetry-test-utils' reset_trace_globals does
    trace._TRACER_PROVIDER = None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _reset_globals()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    _reset_globals()


async def _ok(_r: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _item(r: web.Request) -> web.Response:
    return web.json_response({"id": r.match_info["id"]})


async def _unavailable(_r: web.Request) -> web.Response:
    return web.json_response({}, status=503)


async def test_tracing_off_makes_no_span(monkeypatch: pytest.MonkeyPatch, apps, make_settings) -> None:  # type: ignore[no-untyped-def]
    """With no SDK provider, the middleware and consumer_span must not create span objects at all."""
    assert not tracing.enabled()

    def explode(*a: object, **k: object) -> None:
        raise AssertionError("a span was started while tracing is off")

    for cls in (trace.ProxyTracer, trace.NoOpTracer):
        monkeypatch.setattr(cls, "start_as_current_span", explode)
        monkeypatch.setattr(cls, "start_span", explode)
    app = base_app("t", make_settings())
    app.router.add_get("/x", _ok)
    url = await apps.start(app)
    async with aiohttp.ClientSession() as http, http.get(url + "/x") as r:
        assert r.status == 200
    with tracing.consumer_span("c", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) as s:
        assert s is None


class _CountingEnv(dict[str, str]):
    def __init__(self, base: dict[str, str], reads: list[str]) -> None:
        super().__init__(base)
        self.reads = reads

    def __contains__(self, key: object) -> bool:
        self.reads.append(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> str:
        self.reads.append(key)
        return super().__getitem__(key)


def test_tracing_off_is_decided_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process started with tracing off gets a no-op provider: asking whether tracing is on (per request,
    e.g. for each usage record) reads no environment (OpenTelemetry does while no provider is set)."""
    _reset_globals()
    monkeypatch.setattr(tracing, "_configured", False)
    try:
        tracing.setup_tracing("t", {})
        reads: list[str] = []
        monkeypatch.setattr(os, "environ", _CountingEnv(dict(os.environ), reads))
        assert not tracing.enabled() and not tracing.enabled()
        assert reads == []
    finally:
        _reset_globals()


async def test_http_hop_continues_the_callers_trace(spans: InMemorySpanExporter, apps, make_settings) -> None:  # type: ignore[no-untyped-def]
    """Service A calls service B with ``tracing.inject`` headers: B's server span is a child of A's."""
    settings: Settings = make_settings()
    b = base_app("b", settings)
    b.router.add_get("/items/{id}", _item)
    b_url = await apps.start(b)

    async def call_b(_r: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as http, http.get(b_url + "/items/7", headers=tracing.inject({})) as r:
            return web.json_response(await r.json(), status=r.status)

    a = base_app("a", settings)
    a.router.add_get("/front", call_b)
    a_url = await apps.start(a)
    async with aiohttp.ClientSession() as http:
        async with http.get(a_url + "/front") as r:
            assert r.status == 200
        async with http.get(a_url + "/healthz") as r:  # probes are never traced
            assert r.status == 200

    server = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    by_name = {s.name: s for s in server}
    assert set(by_name) == {"GET /front", "GET /items/{id}"}, by_name
    front, item = by_name["GET /front"], by_name["GET /items/{id}"]
    assert item.context.trace_id == front.context.trace_id
    assert item.parent is not None and item.parent.span_id == front.context.span_id
    assert item.attributes["http.response.status_code"] == 200
    assert item.attributes["http.route"] == "/items/{id}"


async def test_server_span_marks_5xx_as_error(spans: InMemorySpanExporter, apps, make_settings) -> None:  # type: ignore[no-untyped-def]
    app = base_app("t", make_settings())
    app.router.add_get("/boom", _unavailable)
    url = await apps.start(app)
    async with aiohttp.ClientSession() as http, http.get(url + "/boom") as r:
        assert r.status == 503
    (s,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert not s.status.is_ok
    assert s.attributes["http.response.status_code"] == 503


async def test_nats_hop_continues_the_publishers_trace(spans: InMemorySpanExporter, bus: Bus) -> None:
    """A publish inside a span carries its context; ``consumer_span`` on the receiving side joins the trace."""
    got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handler(_msg: AuthRevoked, m) -> None:  # type: ignore[no-untyped-def]
        with tracing.consumer_span("revoked", m.headers, m.subject) as span:
            assert span is not None
            got.set_result(span.get_span_context().trace_id)

    subject = bus.subjects.auth_revoked
    await bus.subscribe(subject, AuthRevoked, handler)
    await bus.flush()
    with tracing.tracer("test").start_as_current_span("publisher") as root:
        await bus.publish(subject, AuthRevoked(token_ids=["t1"]))
    trace_id = await asyncio.wait_for(got, 5)
    assert trace_id == root.get_span_context().trace_id
    (consumer,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert consumer.parent is not None and consumer.parent.span_id == root.get_span_context().span_id
    assert consumer.attributes["messaging.destination.name"] == subject


def _importable(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not (_importable("aigw_gateway.app") and _importable("aigw_budget.app")
                         and _importable("aigw_registry.app")),
                    reason="needs the gateway, registry and budget services")
async def test_gateway_request_and_its_usage_in_budget_share_one_trace(  # type: ignore[no-untyped-def]
    spans: InMemorySpanExporter, database_url, mock_upstream, make_settings, apps
) -> None:
    import openai

    from aigw_testing.stack import start_stack

    token = "aigw_" + "t" * 40
    mock_upstream.play("openai/chatcompletions/simple")
    settings = make_settings(AIGW_DATABASE_URL=database_url, AIGW_BOOTSTRAP_TOKEN=token,
                             AIGW_OPENAI_BASE_URL=mock_upstream.url + "/v1", AIGW_OPENAI_KEY="sk-upstream")
    urls = await start_stack(apps, lambda _svc, _urls: settings, ["registry", "budget", "gateway"])
    spans.clear()  # startup traffic (snapshots, token checks) is not what this test is about

    client = openai.AsyncOpenAI(base_url=urls["gateway"] + "/openai/v1", api_key=token, max_retries=0)
    resp = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices

    def finished() -> list:  # type: ignore[type-arg]
        return list(spans.get_finished_spans())

    deadline = asyncio.get_running_loop().time() + 8
    while True:  # usage reaches budget asynchronously (JetStream)
        gw = [s for s in finished() if s.kind == SpanKind.SERVER and s.name.startswith("POST ")]
        consumed = [s for s in finished() if s.kind == SpanKind.CONSUMER and "usage" in s.name]
        if gw and consumed and {s.context.trace_id for s in consumed} & {gw[0].context.trace_id}:
            break
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no budget span in the gateway request's trace: {[(s.name, s.kind) for s in finished()]}")
        await asyncio.sleep(0.1)
    (server,) = gw
    (consumer,) = [s for s in consumed if s.context.trace_id == server.context.trace_id][:1]
    assert consumer.parent is not None  # continued from the gateway's context, not a new root
    gateway_span_ids = {s.context.span_id for s in finished() if s.context.trace_id == server.context.trace_id
                        and s is not consumer}
    assert consumer.parent.span_id in gateway_span_ids
