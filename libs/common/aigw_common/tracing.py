"""OpenTelemetry: off unless ``OTEL_*`` says otherwise; context carried in HTTP and NATS headers.

One trace follows a request across services: the HTTP server span comes from
:func:`tracing_middleware` (``base_app`` installs it first, so every service has
it), :func:`inject` puts the current context into outgoing HTTP or NATS
headers (``Bus`` publishes do it), and :func:`consumer_span` continues the trace
in whatever consumes a NATS message. With no SDK tracer provider installed,
all of it costs one ``isinstance`` check: no span object is made.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    SpanKind,
    Status,
    StatusCode,
)

log = logging.getLogger(__name__)

_configured = False


def setup_tracing(service: str, env: Mapping[str, str] | None = None) -> None:
    """Install an SDK tracer provider when the standard OTEL variables ask for one, else a no-op provider.

    The no-op one makes "is tracing on?" (asked per request: :func:`enabled`) a global read: while no
    provider is set, OpenTelemetry's ``get_tracer_provider`` looks ``OTEL_PYTHON_TRACER_PROVIDER`` up in
    ``os.environ`` on every call (~1 µs). A process that names a provider there keeps that mechanism.
    """
    global _configured
    env = os.environ if env is None else env
    if _configured:
        return
    provider = _sdk_provider(service, env)
    if provider is None and "OTEL_PYTHON_TRACER_PROVIDER" in env:
        return
    trace.set_tracer_provider(provider if provider is not None else NoOpTracerProvider())
    _configured = True


def _sdk_provider(service: str, env: Mapping[str, str]) -> trace.TracerProvider | None:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "")
    if not exporter_name and not env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", f"aigw-{service}")}))
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTLP exporter not installed; install opentelemetry-exporter-otlp-proto-http to export traces")
            return None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> otel_context.Context:
    return propagate.extract(carrier or {})


_active: tuple[object, trace.Tracer | None] = (None, None)


def _active_tracer() -> trace.Tracer | None:
    """The installed SDK provider's tracer, or None when tracing is off (no proxy, no no-op spans)."""
    global _active
    provider = trace.get_tracer_provider()
    if _active[0] is not provider:
        off = isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)
        _active = (provider, None if off else provider.get_tracer("aigw"))
    return _active[1]


def enabled() -> bool:
    """True once an SDK tracer provider is installed (by :func:`setup_tracing` or a test)."""
    return _active_tracer() is not None


_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


def _route(request: web.Request) -> str:
    """The route template (``/{provider}/v1/chat/completions``), never the raw path: low cardinality."""
    info = request.match_info
    resource = info.route.resource if info is not None and info.route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def tracing_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """A SERVER span per request, child of the caller's ``traceparent`` when there is one."""
    tracer = None if request.path in _UNTRACED else _active_tracer()
    if tracer is None:
        return await handler(request)
    route = _route(request)
    with tracer.start_as_current_span(
        f"{request.method} {route}",
        context=propagate.extract(request.headers),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            _set_status(span, e.status)
            raise
        except BaseException as e:
            span.record_exception(e)
            span.set_status(Status(StatusCode.ERROR, type(e).__name__))
            raise
        _set_status(span, resp.status)
        return resp


def _set_status(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


@contextlib.contextmanager
def consumer_span(name: str, headers: Mapping[str, str] | None, subject: str = "") -> Iterator[trace.Span | None]:
    """Continue the producer's trace while handling one NATS message (``msg.headers``).

    ``with tracing.consumer_span("budget usage", msg.headers, msg.subject): ...``
    Yields ``None`` (and makes no span) when tracing is off.
    """
    tracer = _active_tracer()
    if tracer is None:
        yield None
        return
    attrs = {"messaging.system": "nats"}
    if subject:
        attrs["messaging.destination.name"] = subject
    with tracer.start_as_current_span(name, context=extract(headers), kind=SpanKind.CONSUMER,
                                       attributes=attrs) as span:
        yield span
