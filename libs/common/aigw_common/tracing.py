"""OpenTelemetry: off unless ``OTEL_*`` says otherwise; context carried in HTTP and NATS headers."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

log = logging.getLogger(__name__)

_configured = False


def setup_tracing(service: str, env: Mapping[str, str] | None = None) -> None:
    """Install an SDK tracer provider when the standard OTEL variables ask for one."""
    global _configured
    env = os.environ if env is None else env
    if _configured or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "")
    if not exporter_name and not env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", f"aigw-{service}")}))
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found]
        except ImportError:
            log.warning("OTLP exporter not installed; install opentelemetry-exporter-otlp-proto-http to export traces")
            return
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> otel_context.Context:
    return propagate.extract(carrier or {})
